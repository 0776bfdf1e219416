"""Scheduler and health monitor: exactly one worker per resource, a bounded pool, events
coalesced while a resource is busy, timers that come back as polls, paused resources,
jittered per-resource polls and the orphan sweep."""
import threading
import time

from orchestrator_lite.config import ManagementSettings
from orchestrator_lite.coordination import SoleOwnership
from orchestrator_lite.events import (CREATE, DELETE, MANAGE, POLL, UPDATE, EventQueue,
                                      ResourceRef)
from orchestrator_lite.health import HealthMonitor, orphan_refs
from orchestrator_lite.store import Store
from orchestrator_lite.workers import Scheduler

from fake_driver import FakeDriver
from sim_appliances import wait_for


class Recorder:
    """An automaton stand-in: records the actions it ran and how many ran at once."""
    lock = threading.Lock()
    running = {}
    max_running = {}
    total_running = 0
    max_total = 0

    def __init__(self, ref, work_time=0.02, wait=None):
        self.ref = ref
        self.claim = None  # an Automaton's: what a fresh one after a delete is made with
        self.queue = EventQueue(str(ref))
        self.ran = []
        self.deleted = False
        self.force_push = False
        self.work_time = work_time
        self.wait = wait

    def send(self, action):
        self.queue.push(action)

    def has_work(self):
        return bool(self.queue)

    def status(self):
        return {"state": "x"}

    def run(self):
        cls = Recorder
        with cls.lock:
            cls.running[self.ref.key] = cls.running.get(self.ref.key, 0) + 1
            cls.max_running[self.ref.key] = max(cls.max_running.get(self.ref.key, 0),
                                                cls.running[self.ref.key])
            cls.total_running += 1
            cls.max_total = max(cls.max_total, cls.total_running)
        try:
            action = self.queue.pop()
            time.sleep(self.work_time)
            self.ran.append(action)
            if action == DELETE:
                self.deleted = True
            return self.wait if action != POLL else None
        finally:
            with cls.lock:
                cls.running[self.ref.key] -= 1
                cls.total_running -= 1


def make_store(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"), ManagementSettings().network_id)
    store.ensure_management_network(ManagementSettings())
    return store


def test_one_worker_per_resource_and_a_bounded_pool(tmp_path):
    Recorder.running, Recorder.max_running = {}, {}
    Recorder.total_running = Recorder.max_total = 0
    automata = {}

    def factory(ref, claim=None):
        automata[ref.key] = Recorder(ref)
        return automata[ref.key]

    scheduler = Scheduler(factory, make_store(tmp_path), threads=3)
    scheduler.start()
    refs = [ResourceRef("router", f"r{i}", "t") for i in range(8)]

    def blast(ref):
        for _ in range(30):
            scheduler.deliver(ref, UPDATE)
            scheduler.deliver(ref, POLL)

    threads = [threading.Thread(target=blast, args=(ref,)) for ref in refs for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(scheduler.idle)
    scheduler.stop()
    assert all(n == 1 for n in Recorder.max_running.values())
    assert Recorder.max_total <= 3
    for ref in refs:
        ran = automata[ref.key].ran
        assert ran and set(ran) == {UPDATE}  # polls dropped behind real work
        assert len(ran) < 90  # coalesced while busy


def test_timer_comes_back_as_a_poll(tmp_path):
    automata = {}

    def factory(ref, claim=None):
        automata[ref.key] = Recorder(ref, work_time=0, wait=0.05)
        return automata[ref.key]

    scheduler = Scheduler(factory, make_store(tmp_path), threads=1)
    scheduler.start()
    ref = ResourceRef("router", "r1", "t")
    scheduler.deliver(ref, CREATE)
    wait_for(lambda: automata[ref.key].ran == [CREATE, POLL])
    scheduler.stop()


def test_resources_in_flight_go_before_new_ones(tmp_path):
    """A create storm: the first resource's boot check (its timer poll) must not wait
    behind every other resource's create."""
    order = []

    class Logged(Recorder):
        def run(self):
            action = self.queue.pop()
            order.append((self.ref.id, action))
            time.sleep(0.01)
            return 0.0 if action == CREATE else None  # a create asks for a boot check

    scheduler = Scheduler(lambda ref, claim=None: Logged(ref), make_store(tmp_path), threads=1)
    refs = [ResourceRef("router", f"r{i}", "t") for i in range(20)]
    for ref in refs:  # queued before any worker runs, like a cold start
        scheduler.deliver(ref, CREATE)
    scheduler.start()
    wait_for(lambda: len(order) == 40)
    scheduler.stop()
    first_poll = order.index(("r0", POLL))
    assert first_poll < 5, order[:10]  # FIFO would put it after all 20 creates


def test_deleted_automaton_is_forgotten_and_recreated_for_new_work(tmp_path):
    created = []

    def factory(ref, claim=None):
        created.append(Recorder(ref, work_time=0.05))
        return created[-1]

    scheduler = Scheduler(factory, make_store(tmp_path), threads=1)
    scheduler.start()
    ref = ResourceRef("router", "r1", "t")
    scheduler.deliver(ref, DELETE)
    time.sleep(0.01)
    scheduler.deliver(ref, CREATE)  # arrives while the delete runs
    wait_for(lambda: len(created) == 2 and created[1].ran == [CREATE])
    wait_for(scheduler.idle)
    assert created[0].ran == [DELETE]
    scheduler.stop()


def test_paused_resources_only_take_manage(tmp_path):
    store = make_store(tmp_path)
    automata = {}

    def factory(ref, claim=None):
        automata[ref.key] = Recorder(ref, work_time=0)
        return automata[ref.key]

    scheduler = Scheduler(factory, store, threads=1)
    scheduler.start()
    ref = ResourceRef("router", "r1", "t9")
    store.debug_flags.set("tenant", "t9")
    assert not scheduler.deliver(ref, UPDATE)
    assert scheduler.deliver(ref, MANAGE)
    wait_for(lambda: automata[ref.key].ran == [MANAGE])
    scheduler.stop()


def test_health_polls_each_resource_on_a_jittered_schedule(tmp_path):
    store = make_store(tmp_path)
    for n in range(20):
        store.create("router", {"id": f"r{n}", "tenant_id": "t"})
    delivered = []

    class Sink:
        def deliver(self, ref, action):
            delivered.append((ref.id, action))
            return True

    health = HealthMonitor(Sink(), store, FakeDriver(), period=60, jitter=0.2)
    assert len(health.check(now=0)) == 20  # first sight: everything at once (adoption)
    dues = sorted(health._due.values())
    assert 48 <= dues[0] and dues[-1] <= 72 and dues[0] != dues[-1]  # spread, no herd
    assert health.check(now=40) == []
    assert len(health.check(now=80)) == 20
    health.poll_now()
    assert len(health.check(now=81)) == 20


def test_polls_sent_are_counted_per_resource_and_forgotten_with_it(tmp_path):
    store = make_store(tmp_path)
    for n in range(3):
        store.create("router", {"id": f"r{n}", "tenant_id": "t"})
    store.debug_flags.set("resource", "r1")

    class Sink:
        def deliver(self, ref, action):
            return ref.id != "r1"  # the scheduler drops a paused resource's polls

    health = HealthMonitor(Sink(), store, FakeDriver(), period=60, jitter=0)
    for now in (0, 60, 120):
        health.check(now=now)
    assert health.polls_sent == {("router", f"r{n}"): 3 for n in range(3)}  # paused or not
    assert health.polls_total == 9
    store.delete("router", "r0")
    health.check(now=121)
    assert health.polls_sent == {("router", "r1"): 3, ("router", "r2"): 3}
    assert health.polls_total == 9  # the /metrics counter never goes back


def test_orphan_sweep(tmp_path):
    store = make_store(tmp_path)
    store.create("router", {"id": "alive", "tenant_id": "t"})
    names = ["ak-router-alive_0", "ak-router-ghost_0", "ak-router-ghost_1",
             "ak-loadbalancer-lbx_0", "something-else"]
    assert sorted(r.id for r in orphan_refs(names, store.snapshot())) == ["ghost", "lbx"]
    driver = FakeDriver()
    driver.create("ak-router-ghost_0", [], "fd00::1/64")
    delivered = []

    class Sink:
        def deliver(self, ref, action):
            delivered.append((ref.kind, ref.id, action))
            return True

    HealthMonitor(Sink(), store, driver, period=60, jitter=0).check(now=0)
    assert ("router", "ghost", DELETE) in delivered


class Ownership:
    """What coordination tells the scheduler: which resources are ours (a set of ids)."""

    def __init__(self, ours):
        self.ours = set(ours)
        self.lost_refs = []
        self.scheduler = None

    def owns(self, ref):
        return ("claim", ref.id) if ref.id in self.ours else None

    def lost(self, ref):
        self.lost_refs.append(ref.id)
        self.ours.discard(ref.id)
        self.scheduler.forget(ref.key)


def test_only_owned_resources_get_work_with_their_claim(tmp_path):
    made = {}

    def factory(ref, claim=None):
        made[ref.id] = (Recorder(ref), claim)
        return made[ref.id][0]

    ownership = Ownership({"r1"})
    scheduler = Scheduler(factory, make_store(tmp_path), threads=2, ownership=ownership)
    scheduler.start()
    try:
        assert scheduler.deliver(ResourceRef("router", "r1", "t"), CREATE)
        assert not scheduler.deliver(ResourceRef("router", "r2", "t"), CREATE)  # not ours
        wait_for(lambda: made["r1"][0].ran == [CREATE])
        assert "r2" not in made and made["r1"][1] == ("claim", "r1")
    finally:
        scheduler.stop()


def test_forget_waits_for_the_step_in_progress(tmp_path):
    started, release = threading.Event(), threading.Event()

    class Slow(Recorder):
        def run(self):
            started.set()
            release.wait(5)
            return super().run()

    automata = {}

    def factory(ref, claim=None):
        automata[ref.id] = Slow(ref, work_time=0)
        return automata[ref.id]

    scheduler = Scheduler(factory, make_store(tmp_path), threads=1,
                          ownership=Ownership({"r1"}))
    scheduler.start()
    try:
        ref = ResourceRef("router", "r1", "t")
        scheduler.deliver(ref, CREATE)
        started.wait(5)
        forgotten = threading.Event()
        thread = threading.Thread(target=lambda: (scheduler.forget(ref.key), forgotten.set()))
        thread.start()
        time.sleep(0.2)
        assert not forgotten.is_set()  # the handover waits for the running step
        release.set()
        assert forgotten.wait(5)
        assert automata["r1"].ran == [CREATE] and not scheduler.busy_with(ref.key)
    finally:
        release.set()  # a failed check must not leave the step waiting out its 5 s
        scheduler.stop()


def test_a_fenced_step_hands_the_resource_over(tmp_path):
    from orchestrator_lite.store import Fenced

    class FencedRecorder(Recorder):
        def run(self):
            super().run()
            raise Fenced("router r1: owned by orch-b at epoch 7")

    ownership = Ownership({"r1"})
    scheduler = Scheduler(lambda ref, claim=None: FencedRecorder(ref), make_store(tmp_path),
                          threads=1, ownership=ownership)
    ownership.scheduler = scheduler
    scheduler.start()
    try:
        ref = ResourceRef("router", "r1", "t")
        scheduler.deliver(ref, CREATE)
        wait_for(lambda: ownership.lost_refs == ["r1"])
        wait_for(lambda: not scheduler.busy_with(ref.key))
        assert not scheduler.deliver(ref, UPDATE)  # not ours any more
    finally:
        scheduler.stop()


def test_alone_start_keeps_the_claims_events_took_before_it(tmp_path):
    """Neutron's resync delivers events before SoleOwnership.start: the claim an event took
    through owns() stays the store's, so the automaton holding it is not fenced by us."""
    store = make_store(tmp_path)
    store.create("router", {"id": "r1", "tenant_id": "t"})
    store.create("router", {"id": "r2", "tenant_id": "t"})
    ownership = SoleOwnership(store, "controller-1")
    early = ownership.owns(ResourceRef("router", "r1", "t"))
    ownership.start(scheduler=None)
    store.check_claim(early)  # Fenced if start claimed r1 again
    assert ownership.owns(ResourceRef("router", "r1", "t")) is early
    later = ownership.owns(ResourceRef("router", "r2", "t"))
    store.check_claim(later)
    assert (early.epoch, later.epoch) == (1, 1)
