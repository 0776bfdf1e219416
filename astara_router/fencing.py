"""Fencing of config pushes by ownership epoch (``X-Astara-Epoch``).

Several orchestrators can share the work; each resource has one owner at a time, and every
change of owner raises the resource's *epoch* in the orchestrators' store. The owner sends
its epoch with every push. A paused owner (SIGSTOP, a long GC, a partition) may wake after
another took over, still believing it owns the resource: its push carries the old epoch,
and this fence refuses it (409) because a higher one was already accepted. Without the
header (the original orchestrator) a push is accepted as before.

The highest epoch accepted (and who sent it) is persisted in ``<state_dir>/epoch.json``
before the push is applied, so a restarted agent still refuses the stale owner. The check
and the apply run under one lock: a stale push can never overtake the newer one.
"""
import contextlib
import json
import os
import threading

from .errors import state_full_is_507
from .store import atomic_write

EPOCH_HEADER = "X-Astara-Epoch"
ORCHESTRATOR_HEADER = "X-Astara-Orchestrator"
EPOCH_FILE = "epoch.json"


class StaleEpoch(Exception):
    """A push from an owner whose epoch is older than one already accepted."""

    def __init__(self, epoch, accepted, holder):
        self.epoch = epoch
        self.accepted = accepted
        self.holder = holder
        super().__init__(f"ownership epoch {epoch} is older than epoch {accepted} already "
                         f"accepted from orchestrator {holder or '(unknown)'}")

    def to_dict(self):
        return {"error": "Conflict", "message": str(self), "accepted_epoch": self.accepted,
                "accepted_from": self.holder}


def push_sender(orchestrator, epoch):
    """How the log names who sent a push: ``from orchestrator=<name> epoch=<n>`` (``-`` for
    a header not sent); None when neither header came (the original orchestrator)."""
    if not orchestrator and epoch is None:
        return None
    return f"from orchestrator={orchestrator or '-'} epoch={'-' if epoch is None else epoch}"


def parse_epoch(raw):
    """The header's value as a non-negative int; None when absent; ValueError if bad."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise ValueError(f"{EPOCH_HEADER} must be a non-negative integer, not {raw[:40]!r}")
    return int(raw)


class EpochFence:
    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, EPOCH_FILE)
        self._lock = threading.Lock()
        self.accepted, self.holder = self._load()

    def _load(self):
        try:
            with open(self.path) as handle:
                data = json.load(handle)
            return int(data["epoch"]), str(data.get("orchestrator") or "")
        except (OSError, ValueError, KeyError, TypeError):
            return None, ""

    @contextlib.contextmanager
    def admitted(self, epoch, orchestrator=""):
        """Hold the fence while the push is applied; StaleEpoch if ``epoch`` is older than
        one accepted before. A newer epoch is persisted before the body runs."""
        with self._lock:
            if epoch is not None:
                if self.accepted is not None and epoch < self.accepted:
                    raise StaleEpoch(epoch, self.accepted, self.holder)
                if self.accepted is None or epoch > self.accepted or \
                        orchestrator != self.holder:
                    with state_full_is_507("the ownership epoch"):
                        atomic_write(self.path, json.dumps({"epoch": epoch,
                                                            "orchestrator": orchestrator}))
                    self.accepted, self.holder = epoch, orchestrator
            yield
