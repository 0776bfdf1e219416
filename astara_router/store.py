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


def atomic_write(path, text, mode=0o600):
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a mix,
    even across a power loss: temp file in the same directory, fsync, rename, fsync dir."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def payload_hash(body):
    """Stable digest of a payload's JSON value (key order and spacing do not matter); the
    orchestrator computes the same to detect drift."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


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

    def load(self) -> Optional[Generation]:
        try:
            with open(self.config_path) as handle:
                data = json.load(handle)
            return Generation(int(data["generation"]), data["payload"], data["hash"],
                              float(data.get("committed_at", 0)))
        except FileNotFoundError:
            return None

    def commit(self, number, payload) -> Generation:
        generation = Generation(number, payload, payload_hash(payload), time.time())
        atomic_write(self.config_path, json.dumps({
            "generation": generation.number, "hash": generation.hash,
            "committed_at": generation.committed_at, "payload": payload}, sort_keys=True))
        return generation

    def load_pending(self):
        try:
            with open(self.pending_path) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def write_pending(self, payload):
        atomic_write(self.pending_path, json.dumps(payload))

    def clear_pending(self):
        try:
            os.unlink(self.pending_path)
        except FileNotFoundError:
            pass
