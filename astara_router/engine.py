"""The transaction engine: validate → apply subsystems in order → verify → persist.

One writer at a time (a lock); readers use ``engine.committed``, an immutable snapshot
swapped in by a single assignment, so GETs never wait for an apply. If any step fails,
every subsystem that ran is restored from the snapshot it took of the live state before it
changed anything, and the last good generation stays committed.

A subsystem is any object with ``name`` and four methods:
  ``capture(ctx) -> snapshot``         read the live state it owns (nothing is changed)
  ``apply(ctx, config, previous) -> n`` converge to ``config``; return how many changes
  ``verify(ctx, config)``               read back; raise ApplyError on a difference
  ``restore(ctx, snapshot)``            converge back to the snapshot
Subsystems and their order are listed in ``apply/__init__.py``.
"""
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from pyroute2 import IPRoute

from .apply import default_subsystems
from .errors import ApplyError
from .model import PayloadError, SystemConfig, parse_payload
from .naming import InterfaceNames, list_nics
from .store import Store, payload_hash

LOG = logging.getLogger(__name__)

REDACTED = "<redacted>"
SECRET_KEYS = {"psk", "password", "secret", "auth_key", "shared_secret"}


@dataclass(frozen=True)
class Committed:
    generation: int = 0
    payload: Optional[dict] = None
    config: Optional[SystemConfig] = None
    hash: Optional[str] = None
    committed_at: float = 0.0
    artifacts: dict = field(default_factory=dict)  # rendered texts, e.g. "firewall"

    def view(self):
        """The committed configuration in the pushed shape, secrets redacted."""
        return {"configuration": redact(self.payload or {}), "generation": self.generation,
                "hash": self.hash}


def redact(value):
    if isinstance(value, dict):
        return {k: (REDACTED if k in SECRET_KEYS and v else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class ApplyContext:
    """What one transaction shares between subsystems: a netlink socket and the NIC map."""

    def __init__(self, names: InterfaceNames):
        self._names = names
        self.ipr = IPRoute(strict_check=True)  # the kernel filters dumps (table, proto)
        self.artifacts = {}
        self.refresh_nics()

    def refresh_nics(self):
        self.nics = list_nics(self.ipr, with_addresses=False)  # subsystems dump what they need
        self.names = self._names.assign(self.nics)
        return self.nics

    def close(self):
        self.ipr.close()


@dataclass
class Outcome:
    committed: Committed
    changes: int


class Engine:
    def __init__(self, settings, subsystems=None):
        self.settings = settings
        self.enabled_services = tuple(settings.enabled_services)
        self.store = Store(settings.state_dir)
        self.names = InterfaceNames(os.path.join(settings.state_dir, "interfaces.json"))
        self.subsystems = (subsystems if subsystems is not None
                           else default_subsystems(settings))
        self._lock = threading.Lock()
        self.state = "booting"
        self.last_error = None
        self.committed = self._load()

    def _load(self):
        stored = self.store.load()
        if stored is None:
            return Committed()
        try:
            config = parse_payload(stored.payload, self.enabled_services)
        except PayloadError as exc:  # e.g. a service was disabled in the config file since
            LOG.error("the persisted configuration is no longer valid: %s", exc)
            self.last_error = str(exc)
            return Committed(stored.number, stored.payload, None, stored.hash,
                             stored.committed_at)
        return Committed(stored.number, stored.payload, config, stored.hash,
                         stored.committed_at)

    def parse(self, body):
        return parse_payload(body, self.enabled_services)

    # -- writers -------------------------------------------------------------------------
    def apply(self, body) -> Outcome:
        """Validate and apply a whole payload; raise PayloadError/ApplyError on failure with
        the previous generation left in place."""
        config = self.parse(body)  # before the lock: invalid bodies never wait or touch
        digest = payload_hash(body)
        with self._lock:
            previous = self.committed
            same = digest == previous.hash
            if not same:
                self.store.write_pending(body)
            try:
                artifacts, changes = self._transaction(
                    config, [previous.config] if previous.config else [])
                if same:
                    committed = Committed(previous.generation, previous.payload, config,
                                          digest, previous.committed_at, artifacts)
                else:
                    stored = self.store.commit(previous.generation + 1, body)
                    committed = Committed(stored.number, body, config, digest,
                                          stored.committed_at, artifacts)
            finally:
                self.store.clear_pending()
            self.committed = committed
            self.state, self.last_error = "ready", None
            return Outcome(committed, changes)

    def boot(self):
        """Re-apply the persisted generation before the API reports ready. An apply that was
        interrupted (crash, kill -9) left pending.json: its interfaces are cleaned too."""
        with self._lock:
            previous = []
            pending = self.store.load_pending()
            if pending is not None:
                try:
                    previous.append(self.parse(pending))
                except PayloadError:
                    pass
            committed = self.committed
            try:
                if committed.config is not None:
                    artifacts, _ = self._transaction(committed.config, previous)
                    self.committed = Committed(committed.generation, committed.payload,
                                               committed.config, committed.hash,
                                               committed.committed_at, artifacts)
                self.store.clear_pending()
                self.state = "ready" if self.last_error is None else "degraded"
            except Exception as exc:  # keep serving: the orchestrator will push again
                LOG.exception("boot re-apply failed")
                self.state, self.last_error = "degraded", str(exc)

    def _transaction(self, config, previous):
        ctx = ApplyContext(self.names)
        snapshots, changes = [], 0
        started = time.monotonic()
        try:
            for subsystem in self.subsystems:
                snapshots.append((subsystem, subsystem.capture(ctx)))
                changes += subsystem.apply(ctx, config, previous) or 0
            for subsystem in self.subsystems:
                subsystem.verify(ctx, config)
        except BaseException as exc:
            LOG.warning("apply failed, rolling back: %s", exc)
            self._rollback(ctx, snapshots)
            if not isinstance(exc, (ApplyError, PayloadError)) and isinstance(exc, Exception):
                raise ApplyError("", f"internal error in apply: {exc.__class__.__name__}: "
                                     f"{exc}", status=500) from exc
            raise
        finally:
            ctx.close()
        LOG.info("applied in %.3f s with %d changes", time.monotonic() - started, changes)
        return ctx.artifacts, changes

    def _rollback(self, ctx, snapshots):
        for subsystem, snapshot in reversed(snapshots):
            try:
                subsystem.restore(ctx, snapshot)
            except Exception:  # keep restoring the others; report the state as degraded
                LOG.exception("rollback of %s failed", subsystem.name)
                self.state = "degraded"
                self.last_error = f"rollback of {subsystem.name} failed"
