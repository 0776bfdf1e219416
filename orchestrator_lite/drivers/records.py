"""Instance records of the drivers that run appliances on this host (netns, qemu): one
``<root>/<instance id>/instance.json`` each, written atomically. They are how a restarted
orchestrator finds its running appliances again (``list(prefix)``): read from disk once,
then kept current by ``save``/``forget``, since this process is their only writer (every
health poll lists instances; re-reading N files per poll made a round O(N²))."""
import json
import pathlib
import threading

from astara_router.store import atomic_write

RECORD = "instance.json"


class InstanceRecords:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._cache = None  # id -> record

    def dir(self, instance_id):
        return self.root / instance_id

    def load(self, instance_id):
        """The record as on disk, or None."""
        try:
            return json.loads((self.dir(instance_id) / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def save(self, record):
        atomic_write(str(self.dir(record["id"]) / RECORD),
                     json.dumps(record, indent=1, sort_keys=True), mode=0o644)
        with self._lock:
            self._all()[record["id"]] = record

    def cached(self, instance_id):
        with self._lock:
            return self._all().get(instance_id)

    def all(self):
        """Every record, by id."""
        with self._lock:
            return sorted(self._all().values(), key=lambda r: r["id"])

    def forget(self, instance_id):
        with self._lock:
            self._all().pop(instance_id, None)

    def _all(self):
        if self._cache is None:
            self._cache = {}
            for entry in sorted(self.root.iterdir()):
                record = self.load(entry.name) if entry.is_dir() else None
                if record is not None:
                    self._cache[entry.name] = record
        return self._cache
