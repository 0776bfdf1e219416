"""Debug (pause) flags: ``astara-ctl router|tenant|global debug`` takes resources out of the
orchestrator's hands until ``manage``; the scheduler drops their events meanwhile.

A flag is ``(scope, key)``: ``("resource", id)``, ``("tenant", tenant id)`` or
``("global", "*")``, with a reason and the time it was set. Flags survive a restart
(stored through ``database``); readers get the current dict without a lock (copy-on-write).
"""
import threading
import time

from .errors import StoreError

DEBUG_SCOPES = ("resource", "tenant", "global")


class DebugFlags:
    def __init__(self, database):
        self._database = database
        self._lock = threading.Lock()
        self._flags = database.load_debug_flags()

    def set(self, scope, key, reason=""):
        if scope not in DEBUG_SCOPES:
            raise StoreError(f"scope must be one of {', '.join(DEBUG_SCOPES)}", "scope")
        with self._lock:
            since = time.time()
            self._database.set_debug_flag(scope, key, reason or "", since)
            flags = dict(self._flags)
            flags[(scope, key)] = {"reason": reason or "", "since": since}
            self._flags = flags

    def clear(self, scope, key):
        with self._lock:
            self._database.clear_debug_flag(scope, key)
            flags = dict(self._flags)
            flags.pop((scope, key), None)
            self._flags = flags

    def all(self):
        """``{(scope, key): {"reason", "since"}}``."""
        return dict(self._flags)

    def paused_reason(self, ref):
        """Why events for ``ref`` are ignored (debug mode), or None when managed."""
        flags = self._flags
        for scope, key in (("global", "*"), ("tenant", ref.tenant_id), ("resource", ref.id)):
            flag = flags.get((scope, key))
            if flag is not None:
                return f"{scope} debug" + (f": {flag['reason']}" if flag["reason"] else "")
        return None
