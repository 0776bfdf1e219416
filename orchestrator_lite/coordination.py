"""Which resources this orchestrator works on: all of them (alone), or its share of a
cluster (``[coordination] backend_url``, a tooz URL: ``redis://``, ``etcd3+http://``,
``zookeeper://``).

Alone (``SoleOwnership``): every resource is ours; we still claim each one in the store at
start (a new epoch), so pushes carry an epoch and a second orchestrator started on the same
store by mistake is fenced instead of fighting silently.

In a cluster (``ClusterOwnership``), every orchestrator joins one tooz group (its member
id is ``[DEFAULT] host``, which must be unique) and heartbeats it. A consistent hash ring
(``tooz.hashring.HashRing``, ``make_ring``) over the *live* members maps each resource to
one member.
Every ``heartbeat`` seconds each member:

1. heartbeats (membership and its locks) and reads the live members; a new member set
   rebuilds the ring (a member that missed its heartbeats for ``membership_timeout`` is
   gone; one that joins takes its share);
2. lets go of resources the ring gave to someone else: the scheduler forgets the
   resource *after* the step in progress ends, then the per-resource tooz lock is released
   — a handover always waits for the old owner to stop;
3. checks that it still holds the lock of every resource it works on (a backend restart
   loses them: it takes the lock again, and keeps working only if the store still names it
   owner at its epoch — nobody took over meanwhile);
4. takes the resources the ring gives it (not in a round in which it had to join the group
   again: after a backend restart everybody rejoins, and the first one back must not grab
   the others' resources before they took their locks back): the lock (non-blocking: while the old owner
   holds it, try again next round; a dead owner's lock expires after ``lock_timeout``),
   then the claim in the store (the epoch goes up: the fencing token), then a forced
   update: the first step *observes* — the running appliances are adopted (the drivers'
   ``list(prefix)``), never rebooted — and pushes the unchanged config with the new epoch,
   from which on the appliance refuses the old owner's pushes.

A lock alone does not stop a paused owner (SIGSTOP, a stalled VM) that wakes after its lock
expired: every store write for a resource is checked against the claim in its transaction
and every push carries the epoch, which the appliance checks. And the owner acts only while
its lease is fresh: a member that could not heartbeat for most of ``lock_timeout`` (or was
paused that long) stops acting until a round confirmed its locks again.

Only the owner acts on a resource: the scheduler asks ``owns(ref)`` before queueing any
event, so events (which reach every member through the store) are ignored elsewhere.
"""
import dataclasses
import logging
import threading
import time

from .events import DELETE, UPDATE
from .store import Fenced

LOG = logging.getLogger(__name__)
LEASE_MARGIN = 0.7  # act only within this fraction of the lock timeout after a heartbeat
# Points per member on the ring: tooz's default (32) left one of 3 members with 3 of 30
# routers; 256 spreads them within what chance gives for that many (10/7/13).
RING_PARTITIONS = 256


def make_ring(members):
    """The consistent hash ring over ``members`` (identities), as every member builds it."""
    from tooz.hashring import HashRing
    return HashRing(sorted(members), partitions=RING_PARTITIONS)


def ring_owner(ring, kind, obj_id):
    """The member ``ring`` gives resource ``kind``/``obj_id`` to."""
    return next(iter(ring.get_nodes(f"{kind}/{obj_id}".encode())), None)


class SoleOwnership:
    """Alone: every resource is ours."""
    clustered = False

    def __init__(self, store, identity):
        self.store = store
        self.identity = identity
        self._lock = threading.Lock()
        self._claims = {}
        self._scheduler = None

    def start(self, scheduler):
        self._scheduler = scheduler
        refs = self.store.snapshot().resources()
        with self._lock:
            # Events may have come first (Neutron's resync starts before us) and claimed
            # some through owns(): their automata hold that claim, and a second one would
            # fence them against ourselves (each then claims again: extra pushes).
            unclaimed = [ref for ref in refs if ref.key not in self._claims]
            self._claims.update(self.store.claim_many(unclaimed, self.identity))

    def stop(self):
        pass

    def owns(self, ref):
        with self._lock:
            claim = self._claims.get(ref.key)
            if claim is None:
                claim = self._claims[ref.key] = self.store.claim(ref, self.identity)
            return claim

    def lost(self, ref):
        LOG.error("%s: another orchestrator claimed it in this store; is a second one "
                  "running on %s without [coordination] backend_url?", ref, self.store.url)
        with self._lock:
            self._claims.pop(ref.key, None)
        if self._scheduler is not None:
            self._scheduler.forget(ref.key)

    def ended(self, ref):
        """``ref`` and its appliances are deleted: forget our claim."""
        with self._lock:
            self._claims.pop(ref.key, None)

    def orphan(self, ref):
        """Instances of a resource no longer in the store: delete them."""
        self._scheduler.deliver(ref, DELETE)

    def owner_of(self, ref):
        return self.identity

    def status(self):
        return {"mode": "alone", "identity": self.identity, "owned": len(self._claims)}


@dataclasses.dataclass
class _Held:
    ref: object
    lock: object
    claim: object


class ClusterOwnership:
    """Our share of the resources of a tooz group, by consistent hashing."""
    clustered = True

    def __init__(self, store, identity, settings, clock=time.monotonic):
        import tooz.coordination
        self.store = store
        self.identity = identity
        self.settings = settings
        self.group = settings.group.encode()
        self._clock = clock
        self._coordinator = tooz.coordination.get_coordinator(settings.backend_url,
                                                              identity.encode())
        self._lock = threading.RLock()
        self._held = {}  # key -> _Held
        self._locks = {}  # key -> tooz lock object (kept between attempts)
        self._orphans = {}  # key -> ref: instances without a resource, ring-assigned to us
        self._members = frozenset()
        self._ring = None
        self._last_ok = None  # monotonic time of the last fully successful round
        self._lease = 5.0
        self._scheduler = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = None
        self._errors = 0
        self._rejoined = False
        self.rounds = 0
        self.handovers = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, scheduler):
        self._scheduler = scheduler
        self._coordinator.start(start_heart=False)  # heartbeats are part of our round
        self.store.subscribe(self._on_events)
        self._thread = threading.Thread(target=self._loop, name="coordination", daemon=True)
        self._thread.start()

    def stop(self):
        """Clean stop: release every lock and claim and leave the group, so the others
        take over at their next round instead of waiting for timeouts. (The scheduler is
        stopped first: nothing runs any more.)"""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            for key in list(self._held):
                self._let_go(key, release=True, wait=5.0)
        try:
            self._coordinator.leave_group(self.group).get()
        except Exception as exc:  # noqa: BLE001 - leaving is best effort; it expires anyway
            LOG.info("leaving the group: %s", exc)
        try:
            self._coordinator.stop()
        except Exception as exc:  # noqa: BLE001
            LOG.info("stopping the coordinator: %s", exc)

    # -- the scheduler's questions ---------------------------------------------------------------
    def owns(self, ref):
        """Our claim on ``ref`` while we hold it and our lease is fresh; else None."""
        held = self._held.get(ref.key)
        if held is None or not self.lease_fresh():
            return None
        return held.claim

    def lease_fresh(self):
        return self._last_ok is not None and \
            self._clock() - self._last_ok < self._lease * LEASE_MARGIN

    def lost(self, ref):
        """A write or a push was fenced: someone else owns it now."""
        LOG.warning("%s: fenced, another orchestrator owns it now", ref)
        with self._lock:
            self._let_go(ref.key, release=True)
        self._wake.set()

    def ended(self, ref):
        """``ref`` and its appliances are deleted: a round lets go of it once its automaton
        is gone (``_let_go_of_others``)."""

    def orphan(self, ref):
        """Instances of a resource no longer in the store: the ring decides who deletes."""
        with self._lock:
            if self._ring_owner(ref) == self.identity:
                self._orphans[ref.key] = ref
        self._wake.set()

    def owner_of(self, ref):
        with self._lock:
            return self._ring_owner(ref)

    def status(self):
        with self._lock:
            return {"mode": "cluster", "identity": self.identity,
                    "backend": _without_password(self.settings.backend_url),
                    "members": sorted(self._members), "owned": len(self._held),
                    "lease_fresh": self.lease_fresh(), "rounds": self.rounds,
                    "handovers": self.handovers}

    # -- the round ---------------------------------------------------------------------------------
    def _on_events(self, events):
        # A resource created (or a command) somewhere: claim it without waiting a round.
        if any(e.ref is not None and e.ref.key not in self._held for e in events):
            self._wake.set()

    def _loop(self):
        while not self._stop.is_set():
            started = self._clock()
            try:
                self.round()
            except Exception:  # noqa: BLE001 - keep coordinating
                LOG.exception("coordination round failed")
            self._wake.wait(max(0.0, self.settings.heartbeat - (self._clock() - started)))
            self._wake.clear()

    def round(self):
        import tooz
        started = self._clock()
        try:
            self._lease = float(self._coordinator.heartbeat() or self._lease)
            members = self._live_members()
        except tooz.ToozError as exc:
            self._errors += 1
            if self._errors == 1 or self._errors % 30 == 0:
                LOG.warning("coordination backend unavailable (%s); acting on owned "
                            "resources only while the lease lasts", exc)
            return
        if self._errors:
            LOG.info("coordination backend reachable again")
            self._errors = 0
        self.rounds += 1
        with self._lock:
            if members != self._members:
                self._rebuild_ring(members)
            wanted = self._wanted()  # a snapshot scan and a ring lookup per resource
            self._let_go_of_others(wanted)
            self._check_locks()
            self._last_ok = started  # every lock we still hold was confirmed this round
            if self._rejoined:
                # The group was gone (backend restarted) or had dropped us: the others are
                # rejoining too and taking back their own locks. Claim nothing new before
                # the next round, or the first one back would grab everything.
                self._rejoined = False
                return
            self._claim_ours(wanted)

    def _live_members(self):
        import tooz.coordination as coordination
        try:
            members = self._coordinator.get_members(self.group).get()
        except coordination.GroupNotCreated:
            members = set()
            try:
                self._coordinator.create_group(self.group).get()
            except coordination.GroupAlreadyExist:
                pass
        if self.identity.encode() not in members:
            try:
                self._coordinator.join_group(self.group).get()
                LOG.info("joined group %s as %s", self.group.decode(), self.identity)
            except coordination.MemberAlreadyExist:
                pass
            members = set(members) | {self.identity.encode()}
            self._rejoined = self._ring is not None
        return frozenset(m.decode() for m in members)

    def _rebuild_ring(self, members):
        LOG.info("members: %s (were %s)", ", ".join(sorted(members)),
                 ", ".join(sorted(self._members)) or "none")
        self._members = members
        self._ring = make_ring(members)

    def _ring_owner(self, ref):
        return None if self._ring is None else ring_owner(self._ring, ref.kind, ref.id)

    def _wanted(self):
        refs = {ref.key: ref for ref in self.store.snapshot().resources()}
        for key, ref in list(self._orphans.items()):
            refs.setdefault(key, ref)
        return {key: ref for key, ref in refs.items()
                if self._ring_owner(ref) == self.identity}

    def _let_go_of_others(self, wanted):
        for key, held in list(self._held.items()):
            if key in wanted:
                continue
            if self._ring_owner(held.ref) != self.identity:
                LOG.info("%s: the ring moved it to %s; handing over", held.ref,
                         self._ring_owner(held.ref))
                self.handovers += 1
                self._let_go(key, release=True)
            elif not self._scheduler.busy_with(key):
                # Deleted (its automaton has finished): nothing left to own.
                self._orphans.pop(key, None)
                self._let_go(key, release=True)

    def _check_locks(self):
        for key, held in list(self._held.items()):
            if _still_held(held.lock):
                continue
            LOG.warning("%s: lost its lock (backend restarted?); taking it again",
                        held.ref)
            try:
                again = held.lock.acquire(blocking=False)
                if again:
                    self.store.check_claim(_unleased(held.claim))
                    continue
            except Fenced as exc:
                LOG.warning("%s: %s", held.ref, exc)
            except Exception as exc:  # noqa: BLE001 - treat as lost
                LOG.warning("%s: cannot take its lock again: %s", held.ref, exc)
            self._let_go(key, release=False)

    def _claim_ours(self, wanted):
        for key in [k for k in self._locks if k not in wanted and k not in self._held]:
            del self._locks[key]  # deleted, or the ring's elsewhere: no unbounded growth
        acquired = []
        for key, ref in wanted.items():
            if key in self._held:
                continue
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = self._coordinator.get_lock(
                    f"astara-{ref.kind}-{ref.id}".encode())
            if lock.acquire(blocking=False):
                acquired.append((ref, lock))
        if not acquired:
            return
        claims = self.store.claim_many([ref for ref, _ in acquired], self.identity,
                                       lease_ok=self.lease_fresh)
        for ref, lock in acquired:
            self._held[ref.key] = _Held(ref, lock, claims[ref.key])
            LOG.info("%s: now ours at epoch %d", ref, claims[ref.key].epoch)
        for ref, _ in acquired:
            # Adopt (observe first, never reboot) and push with the new epoch, so the
            # appliance refuses the previous owner from now on.
            self._scheduler.deliver(ref, UPDATE, force=True)

    def _let_go(self, key, release, wait=60.0):
        held = self._held.pop(key, None)
        if held is None:
            return
        self._scheduler.forget(key, timeout=wait)  # waits for the step in progress
        if not release:
            return
        try:
            self.store.release(held.claim)
        except Exception as exc:  # noqa: BLE001 - the next owner's claim supersedes it
            LOG.info("%s: release in the store: %s", held.ref, exc)
        try:
            held.lock.release()
        except Exception as exc:  # noqa: BLE001 - it expires anyway
            LOG.info("%s: releasing the lock: %s", held.ref, exc)


def _still_held(lock):
    import tooz
    try:
        return bool(lock.is_still_owner())
    except tooz.NotImplemented:
        return lock.acquired  # the driver's bookkeeping; its heartbeat refreshes the lease


def _unleased(claim):
    """The claim without the lease check (the round that checks it runs before the lease
    is confirmed)."""
    return dataclasses.replace(claim, lease_ok=None)


def _without_password(url):
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def make_ownership(store, settings):
    if settings.coordination.backend_url:
        return ClusterOwnership(store, settings.host, settings.coordination)
    return SoleOwnership(store, settings.host)
