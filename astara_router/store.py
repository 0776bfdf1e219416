"""Crash-safe persistence of the last good configuration.

``config.json`` holds the committed generation; ``pending.json`` is written before an apply
starts and removed when it ends, so after a crash the boot re-apply knows which interfaces
the interrupted apply may have touched.
"""
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import msgspec


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


class Store:
    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.config_path = os.path.join(state_dir, "config.json")
        self.pending_path = os.path.join(state_dir, "pending.json")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def free_space(self):
        """(bytes, inodes) an unprivileged writer may still use in the state directory;
        inodes None when the file system does not count them (btrfs)."""
        stats = os.statvfs(self.state_dir)
        return stats.f_bavail * stats.f_frsize, (stats.f_favail if stats.f_files else None)

    def load(self) -> Optional[Generation]:
        try:
            with open(self.config_path) as handle:
                data = json.load(handle)
            return Generation(int(data["generation"]), data["payload"], data["hash"],
                              float(data.get("committed_at", 0)))
        except FileNotFoundError:
            return None

    def commit(self, number, payload, digest=None, raw=None) -> Generation:
        """Persist a generation, durably. ``raw``: the JSON bytes the payload was decoded
        from, written as they are instead of encoding the payload again."""
        generation = Generation(number, payload, digest or payload_hash(payload), time.time())
        header = json.dumps({"generation": generation.number, "hash": generation.hash,
                             "committed_at": generation.committed_at}, sort_keys=True)
        body = raw if raw is not None else msgspec.json.encode(payload)
        atomic_write(self.config_path, header[:-1].encode() + b', "payload": ' + body + b"}")
        return generation

    def load_pending(self):
        try:
            with open(self.pending_path) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def write_pending(self, payload, raw=None):
        """Not fsync'd: it only matters after the agent itself died mid-apply, when the
        page cache still holds it; after a power loss the kernel state is gone anyway."""
        atomic_write(self.pending_path, raw if raw is not None else msgspec.json.encode(payload),
                     durable=False)

    def clear_pending(self):
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            pass
