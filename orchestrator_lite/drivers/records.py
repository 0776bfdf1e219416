"""Instance records of the drivers that run appliances on this host (netns, qemu): one
``<root>/<instance id>/instance.json`` each, written atomically. They are how a restarted
orchestrator finds its running appliances again (``list(prefix)``). A record is re-read
only when its file changed (inode, mtime and size, one ``stat`` each): other orchestrators
of a cluster on this host create, change and delete records in the same root, and a new
owner must see them to adopt. Every health poll lists instances; re-reading N files per
poll made a round O(N²) in parsing, a stat per record is cheap."""
import json
import os
import pathlib
import threading

from astara_netns import pid_alive
from astara_router.store import atomic_write

from .base import DriverError

RECORD = "instance.json"


def runs(pid, marker):
    """True while ``pid`` is alive and its command line holds ``marker`` (bytes): a
    recorded PID may have been reused by another process since."""
    if not pid or not pid_alive(pid):
        return False
    try:
        return marker in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class InstanceRecords:
    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._cache = None  # id -> record
        self._stamps = {}  # id -> (inode, mtime, size) of the record read

    def dir(self, instance_id):
        return self.root / instance_id

    def load(self, instance_id):
        """The record as on disk, or None."""
        try:
            return json.loads((self.dir(instance_id) / RECORD).read_text())
        except (OSError, ValueError):
            return None

    def require(self, instance_id):
        """The record as on disk; DriverError when there is none."""
        record = self.load(instance_id)
        if record is None:
            raise DriverError(f"no instance {instance_id}")
        return record

    @staticmethod
    def nic(record, mac):
        """The record's NIC entry with ``mac``; DriverError when it has none."""
        entry = next((n for n in record["nics"] if n["mac"] == mac), None)
        if entry is None:
            raise DriverError(f"{record['id']} has no NIC {mac}")
        return entry

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
            self._stamps.pop(instance_id, None)

    def _all(self):
        if self._cache is None:
            self._cache, self._stamps = {}, {}
        seen = set()
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    info = os.stat(os.path.join(entry.path, RECORD))
                except OSError:
                    continue  # being created or deleted
                seen.add(entry.name)
                stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
                if self._stamps.get(entry.name) != stamp:
                    record = self.load(entry.name)
                    if record is None:
                        continue
                    self._cache[entry.name] = record
                    self._stamps[entry.name] = stamp
        for name in set(self._cache) - seen:
            self._cache.pop(name, None)
            self._stamps.pop(name, None)
        return self._cache
