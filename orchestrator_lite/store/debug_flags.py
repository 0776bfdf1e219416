"""Debug (pause) flags: ``astara-ctl router|tenant|global debug`` takes resources out of the
orchestrator's hands until ``manage``; the scheduler drops their events meanwhile.

A flag is ``(scope, key)``: ``("resource", id)``, ``("tenant", tenant id)`` or
``("global", "*")``, with a reason and the time it was set. Flags live in the store (every
orchestrator of a cluster sees the same ones, and they survive a restart); readers get
the current dict without a lock (copy-on-write), replaced when this process or another
one changes them.
"""
import time

from .errors import StoreError

DEBUG_SCOPES = ("resource", "tenant", "global")


class DebugFlags:
    def __init__(self, store, flags):
        self._store = store
        self._flags = dict(flags)

    def set(self, scope, key, reason=""):
        if scope not in DEBUG_SCOPES:
            raise StoreError(f"scope must be one of {', '.join(DEBUG_SCOPES)}", "scope")
        self._store.write_debug_flag(scope, key, reason or "", time.time())

    def clear(self, scope, key):
        self._store.write_debug_flag(scope, key, None, None)

    def replace(self, flags):
        """The store's current flags (after a write or a catch-up)."""
        self._flags = dict(flags)

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
