"""The last transactions the agent ran, for the operator (``GET /v1/system/history``,
``astara-router-ctl history``): a bounded ring in memory, newest last.

Each entry is one *activity*: a push (``PUT /v1/system/config``), a manual rollback, the
boot re-apply, a supervisor repair or a commit-confirm revert. While it runs, its request id
and generation are bound to the log context (``logs.log_fields``), so every line any module
logs for it carries them; when it ends, one summary line is logged and the entry is kept:
when it started, how long it took (and each subsystem's apply step), the generation before
and after, the number of changes, the result and the error.

Results: ``applied`` (a transaction ran and committed: a new generation, or a repair of the
same one), ``unchanged`` (nothing to do: an identical push), ``refused`` (an error status
below 500: the payload or the request, nothing touched or everything rolled back),
``failed`` (the appliance's own failure; the previous generation stays in place).
"""
import collections
import contextlib
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from .logs import log_fields, new_request_id

LOG = logging.getLogger(__name__)
HISTORY_SIZE = 50


@dataclass
class Activity:
    origin: str  # push, rollback, boot, reconcile, revert
    request_id: str
    started_at: float  # wall clock
    previous_generation: int
    detail: Optional[str] = None  # "to generation 4", the drift repaired, who pushed
    generation: Optional[int] = None  # the committed generation afterwards
    changes: int = 0
    result: Optional[str] = None
    status: Optional[int] = None  # the HTTP status an error maps to
    error: Optional[str] = None
    seconds: float = 0.0
    subsystem_seconds: dict = field(default_factory=dict)
    transaction: bool = False  # a transaction ran (its subsystems applied something)

    def finish(self, generation, changes):
        self.generation, self.changes = generation, changes

    def fail(self, exc):
        status = getattr(exc, "status", 500)
        self.status = status
        self.result = "refused" if status < 500 else "failed"
        self.error = str(exc) or exc.__class__.__name__

    def as_dict(self):
        entry = asdict(self)
        entry["seconds"] = round(self.seconds, 6)
        entry["subsystem_seconds"] = {k: round(v, 6) for k, v in self.subsystem_seconds.items()}
        return entry


class History:
    def __init__(self, size=HISTORY_SIZE):
        self._entries = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self._current = threading.local()

    def entries(self, limit=None):
        """The kept entries as dicts, oldest first (the last ``limit`` ones)."""
        with self._lock:
            entries = list(self._entries)
        return [activity.as_dict() for activity in (entries[-limit:] if limit else entries)]

    @contextlib.contextmanager
    def activity(self, origin, request_id=None, previous_generation=0, detail=None):
        """Record the block as one activity (an exception marks it refused or failed and
        propagates); yields the Activity, which the block completes with ``finish``."""
        activity = Activity(origin, request_id or new_request_id(), time.time(),
                            previous_generation, detail)
        started = time.monotonic()
        with log_fields(request_id=activity.request_id,
                        generation=previous_generation) as fields:
            self._current.activity, self._current.fields = activity, fields
            try:
                yield activity
            except BaseException as exc:
                activity.fail(exc)
                raise
            finally:
                self._current.activity = self._current.fields = None
                activity.seconds = time.monotonic() - started
                if activity.generation is None:
                    activity.generation = previous_generation
                if activity.result is None:
                    activity.result = "applied" if activity.transaction and (
                        activity.changes or activity.generation != previous_generation) \
                        else "unchanged"
                fields["generation"] = activity.generation
                self._log(activity)
                with self._lock:  # made a dict when read (dataclasses.asdict is slow)
                    self._entries.append(activity)

    def transaction(self, succeeded, subsystem_seconds, generation=None):
        """Called by the engine's transaction in the activity's thread: what it applied."""
        activity = getattr(self._current, "activity", None)
        if activity is None:
            return
        activity.transaction = succeeded
        activity.subsystem_seconds = dict(subsystem_seconds)
        if succeeded and generation is not None:
            self._current.fields["generation"] = generation  # log lines from here on

    @staticmethod
    def _log(activity):
        """The one line an activity logs, e.g. ``push: applied in 0.412 s, generation 1 ->
        2, 7 changes (from orchestrator=orch-2 epoch=7)``: the detail (who pushed, the
        generation a rollback went to, the drift repaired) last, the error after it."""
        text = (f"{activity.origin}: {activity.result} in {activity.seconds:.3f} s, "
                f"generation {activity.previous_generation} -> {activity.generation}, "
                f"{activity.changes} changes"
                f"{f' ({activity.detail})' if activity.detail else ''}")
        if activity.error:
            LOG.warning("%s: %s", text, activity.error)
        else:
            LOG.info("%s", text)
