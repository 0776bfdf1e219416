"""Health monitor: a poll per resource every ``period`` seconds, each resource on its own
jittered schedule (no thundering herd of polls every 60 s as in astara), plus a sweep for
orphan instances (named ``ak-<kind>-<id>_<n>`` for a resource no longer in the store).

Each orchestrator polls only the resources it owns (``coordination``); orphan instances
are deleted by the member the ring gives them to.

A poll makes the state machine check liveness *and* drift (the appliance's committed hash
against the desired payload's), so an appliance that came back unconfigured, or whose
config was changed behind our back, is configured again within one period.
"""
import collections
import logging
import re
import threading
import time

from .events import DELETE, POLL, RESOURCE_KINDS, ResourceRef
from .retry import jittered

LOG = logging.getLogger(__name__)
INSTANCE_NAME = re.compile(r"^ak-(?P<kind>[a-z]+)-(?P<id>.+)_(?P<n>\d+)$")


def server_group_name(kind, resource_id):
    """``ak-<kind>-<id>``: the resource's instance names without ``_<n>``, and the server
    group of its HA pair (the instance managers and the OpenStack driver must agree)."""
    return f"ak-{kind}-{resource_id}"


def orphan_refs(instance_names, snapshot):
    """Resources that have instances but are not in the store (any more)."""
    known = {ref.key for ref in snapshot.resources()}
    orphans = {}
    for name in instance_names:
        match = INSTANCE_NAME.match(name)
        if match and match["kind"] in RESOURCE_KINDS and \
                (match["kind"], match["id"]) not in known:
            orphans[(match["kind"], match["id"])] = ResourceRef(match["kind"], match["id"])
    return list(orphans.values())


class HealthMonitor:
    def __init__(self, scheduler, store, driver, period, jitter, clock=time.monotonic,
                 rng=None, tick=0.5, ownership=None):
        self.scheduler = scheduler
        self.ownership = ownership
        self.store = store
        self.driver = driver
        self.period = period
        self.jitter = jitter
        self._clock = clock
        self._rng = rng
        self._tick = tick
        self._due = {}  # resource key -> monotonic due time
        # resource key -> polls sent, paused or not; /v1/workers shows it, so beside the
        # polls a resource's state machine handled (resource show) the dropped ones show
        self.polls_sent = collections.Counter()
        self.polls_total = 0  # every poll sent, deleted resources' too
        self._next_sweep = 0.0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def poll_now(self):
        """Make every resource due (astara-ctl poll)."""
        self._due.clear()
        self._next_sweep = 0.0

    def check(self, now=None):
        """One pass: poll the resources that are due; sweep orphans once per period."""
        now = self._clock() if now is None else now
        snapshot = self.store.snapshot()
        refs = [ref for ref in snapshot.resources()
                if self.ownership is None or self.ownership.owns(ref)]
        present = {ref.key for ref in refs}
        for key in (self._due.keys() | self.polls_sent.keys()) - present:
            self._due.pop(key, None)
            self.polls_sent.pop(key, None)
        polled = []
        for ref in refs:
            due = self._due.get(ref.key)
            if due is None or due <= now:
                # First sight (startup, new resource): poll now, so running appliances are
                # adopted at once; afterwards every period, jittered.
                self._due[ref.key] = now + jittered(self.period, self.jitter, self._rng)
                self.polls_sent[ref.key] += 1
                self.polls_total += 1  # never forgotten: the /metrics counter
                if self.scheduler.deliver(ref, POLL):
                    polled.append(ref)
        if now >= self._next_sweep:
            self._next_sweep = now + self.period
            try:
                names = [i.name for i in self.driver.list("ak-")]
            except Exception:  # noqa: BLE001 - a driver hiccup must not stop health checks
                LOG.exception("cannot list instances for the orphan sweep")
                names = []
            for ref in orphan_refs(names, snapshot):
                LOG.info("orphan instances of %s: deleting them", ref)
                if self.ownership is not None:
                    self.ownership.orphan(ref)
                else:
                    self.scheduler.deliver(ref, DELETE)
        return polled

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001
                LOG.exception("health check pass failed")
            self._stop.wait(self._tick)
