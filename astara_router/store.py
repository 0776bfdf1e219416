"""Crash-safe persistence of the last good configuration.

``config.json`` holds the committed generation; ``pending.json`` is written before an apply
starts and removed when it ends, so after a crash the boot re-apply knows which interfaces
the interrupted apply may have touched.

Commit-confirm (README, "Commit-confirm"): ``previous.json`` keeps the generation before the
committed one (a hard link, no copy) — while a generation awaits confirmation, the last
confirmed one. ``confirm.json`` names the generation that awaits confirmation; it is written
before that generation's config.json, so a crash in between leaves a marker naming a
generation that was never committed, which is ignored. An agent that starts while
config.json's generation awaits confirmation comes back on ``previous.json``.

Manual rollback (``astara-router-ctl rollback``): the generations before the committed one
stay on disk as ``generations/<n>.json`` (hard links of the config.json each was, made when
the next one replaces it), the newest ``KEEP_GENERATIONS`` of them. Keeping them is not
part of the transaction: a link that cannot be made is logged and the commit goes on.
"""
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import msgspec

LOG = logging.getLogger(__name__)
KEEP_GENERATIONS = 5  # generations kept before the committed one (manual rollback)
PAYLOAD_KEY = b', "payload": '  # commit() writes the header's keys first, then this
HEADER_BYTES = 512  # more than a header takes (number, sha256 hash, time)


def atomic_write(path, data, mode=0o600, durable=True):
    """Write ``data`` (text or bytes) to ``path`` so that readers see the old or the new
    file, never a mix: temp file in the same directory, rename. ``durable``: also across a
    power loss (fsync of the file before the rename and of the directory after)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def canonical_json(body):
    """The payload's JSON value with sorted keys and no spacing: what its hash is taken of.
    msgspec writes it ten times faster than the json module and byte for byte the same for
    ASCII without escapes — always the case for the orchestrator's payloads; anything else
    takes the json module's path, so the hash never depends on which one ran."""
    encoded = msgspec.json.encode(body, order="sorted")
    if encoded.isascii() and b"\\" not in encoded:
        return encoded
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def payload_hash(body):
    """Stable digest of a payload's JSON value (key order and spacing do not matter); the
    orchestrator computes the same to detect drift."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass(frozen=True)
class Generation:
    number: int
    payload: dict
    hash: str
    committed_at: float


@dataclass(frozen=True)
class GenerationHeader:
    """A stored generation without its payload (listing a megabyte payload need not parse
    it)."""
    number: int
    hash: str
    committed_at: float


class Store:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.config_path = os.path.join(state_dir, "config.json")
        self.pending_path = os.path.join(state_dir, "pending.json")
        self.previous_path = os.path.join(state_dir, "previous.json")
        self.confirm_path = os.path.join(state_dir, "confirm.json")
        self.generations_dir = os.path.join(state_dir, "generations")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def free_space(self):
        """(bytes, inodes) an unprivileged writer may still use in the state directory;
        inodes None when the file system does not count them (btrfs)."""
        stats = os.statvfs(self.state_dir)
        return stats.f_bavail * stats.f_frsize, (stats.f_favail if stats.f_files else None)

    def load(self) -> Optional[Generation]:
        """The committed generation; when it still awaits confirmation (the agent restarted
        before the orchestrator confirmed it), the previous one, committed again under the
        next number."""
        current = self._read(self.config_path)
        if current is None or self.awaiting() != current.number:
            return current
        previous = self._read(self.previous_path)
        if previous is None:
            return current
        reverted = self.commit(current.number + 1, previous.payload, previous.hash,
                               keep_previous=False)
        self.confirm()
        return reverted

    def current(self) -> Optional[Generation]:
        """config.json as it is (``load`` also settles a generation awaiting confirmation)."""
        return self._read(self.config_path)

    def load_previous(self) -> Optional[Generation]:
        return self._read(self.previous_path)

    @staticmethod
    def _read(path):
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        return Generation(int(data["generation"]), data["payload"], data["hash"],
                          float(data.get("committed_at", 0)))

    def commit(self, number, payload=None, digest=None, raw=None, awaiting=False,
               keep_previous=True) -> Generation:
        """Persist generation ``number``, the one after config.json's (which is kept as
        generations/<number - 1>.json), durably: its ``payload`` or the JSON bytes ``raw``
        it was decoded from (written as they are; the engine passes these and the ``digest``).
        ``awaiting``: the generation awaits confirmation (previous.json then keeps the last
        confirmed one)."""
        generation = Generation(number, payload, digest or payload_hash(payload), time.time())
        header = json.dumps({"generation": generation.number, "hash": generation.hash,
                             "committed_at": generation.committed_at}, sort_keys=True)
        body = raw if raw is not None else msgspec.json.encode(payload)
        self._archive(number - 1)
        if keep_previous and not (awaiting and self.awaiting() is not None):
            self._keep_previous()
        if awaiting:
            atomic_write(self.confirm_path, json.dumps({"generation": number}))
        atomic_write(self.config_path, header[:-1].encode() + PAYLOAD_KEY + body + b"}")
        if not awaiting:
            self.confirm()
        return generation

    def _keep_previous(self):
        """previous.json := the committed config.json, by a hard link (atomic, no copy)."""
        link = self.previous_path + ".new"
        try:
            if os.path.lexists(link):
                os.unlink(link)
            os.link(self.config_path, link)
        except FileNotFoundError:
            return
        os.replace(link, self.previous_path)

    # -- the generations kept for a manual rollback ------------------------------------------
    def _archive(self, number):
        """generations/<number>.json := the committed config.json (a hard link), before it
        is replaced; then only the newest KEEP_GENERATIONS stay."""
        if number < 1:
            return
        try:
            os.makedirs(self.generations_dir, mode=0o700, exist_ok=True)
            target = self._generation_path(number)
            if not os.path.exists(target):
                os.link(self.config_path, target)
            for old in self._archived()[:-KEEP_GENERATIONS]:
                os.unlink(self._generation_path(old))
        except FileNotFoundError:  # no config.json: nothing committed to keep
            return
        except OSError as exc:  # a rollback target fewer; the commit itself must go on
            LOG.warning("cannot keep generation %d for rollback: %s", number, exc)

    def _generation_path(self, number):
        return os.path.join(self.generations_dir, f"{number}.json")

    def _archived(self):
        """The generation numbers in generations/, oldest first."""
        try:
            names = os.listdir(self.generations_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def generations(self):
        """The generations a rollback can go to, newest first: the committed one and those
        kept before it, as ``GenerationHeader`` (``load_generation`` reads a payload)."""
        paths = [self.config_path] + [self._generation_path(n)
                                      for n in reversed(self._archived())]
        return [g for g in map(self._read_header, paths) if g is not None]

    def _read_header(self, path):
        """A stored generation's number, hash and time from the header commit() writes
        before the payload (so a megabyte payload is not parsed), else from the whole
        file; None when there is no such file (any more: a commit prunes them)."""
        try:
            with open(path, "rb") as handle:
                head = handle.read(HEADER_BYTES)
        except FileNotFoundError:
            return None
        header, found, _ = head.partition(PAYLOAD_KEY)
        try:
            data = json.loads(header + b"}") if found else None
            return GenerationHeader(int(data["generation"]), data["hash"],
                                    float(data.get("committed_at", 0)))
        except (ValueError, KeyError, TypeError):
            whole = self._read(path)
            return whole and GenerationHeader(whole.number, whole.hash, whole.committed_at)

    def load_generation(self, number) -> Optional[Generation]:
        """Generation ``number`` when it is the committed one or kept, else None."""
        current = self.current()
        if current is not None and current.number == number:
            return current
        return self._read(self._generation_path(number))

    def awaiting(self) -> Optional[int]:
        """The generation that awaits confirmation, or None."""
        try:
            with open(self.confirm_path) as handle:
                return int(json.load(handle)["generation"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def confirm(self):
        try:
            os.unlink(self.confirm_path)
        except FileNotFoundError:
            pass

    def load_pending(self):
        try:
            with open(self.pending_path) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def write_pending(self, raw):
        """The JSON bytes of the payload being applied. Not fsync'd: it only matters after
        the agent itself died mid-apply, when the page cache still holds it; after a power
        loss the kernel state is gone anyway."""
        atomic_write(self.pending_path, raw, durable=False)

    def clear_pending(self):
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            pass
