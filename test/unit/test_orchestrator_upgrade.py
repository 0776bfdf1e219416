"""Fleet upgrades against simulated appliances (sim_appliances.SimCloud):
``rebuild --image`` for one resource, the rolling upgrade's bound on appliances down at
once (HA members one at a time), and appliances of an old image (the original API, no
capabilities in the banner) kept working next to new ones."""
import threading

import pytest

from orchestrator_lite import state as st
from orchestrator_lite.api import create_app
from orchestrator_lite.rollout import in_sync
from orchestrator_lite.store import StoreError

from sim_appliances import (TOKEN, SimCloud, desired_hash, make_settings, simple_router,
                            started_orchestrators, state_of, wait_for)


class SlowBootCloud(SimCloud):
    """Appliances answer ``boot_delay`` s after create; records how many resources'
    appliances are missing or not yet configured at once (``max_down``) and whether both
    members of an HA pair ever were (``pair_down``)."""

    def __init__(self, boot_delay=0.3):
        super().__init__()
        self.boot_delay = boot_delay
        self.down = set()  # instance names deleted or booted and not configured since
        self.max_down = 0
        self.pair_down = False
        self.lock = threading.Lock()

    def _note(self):
        self.max_down = max(self.max_down, len(self.down))
        pairs = {}
        for name in self.down:
            pairs.setdefault(name.rsplit("_", 1)[0], set()).add(name)
        self.pair_down |= any(len(members) > 1 for members in pairs.values())

    def create(self, name, nics, management_cidr, **hints):
        instance = super().create(name, nics, management_cidr, **hints)
        appliance = self.appliances[name]
        appliance.alive = False
        threading.Timer(self.boot_delay, lambda: setattr(appliance, "alive", True)).start()
        commit = appliance.commit

        def commit_and_note(body):
            commit(body)
            with self.lock:
                self.down.discard(name)
        appliance.commit = commit_and_note
        with self.lock:
            self.down.add(name)
            self._note()
        return instance

    def delete(self, instance_id):
        instance = self.get(instance_id)
        super().delete(instance_id)
        if instance is not None:
            with self.lock:
                self.down.add(instance.name)
                self._note()


def images_of(cloud, resource_id):
    return sorted(i.details["image"] for i in cloud.list(f"ak-router-{resource_id}_"))


def routers(store, count):
    """simple_router's r1 plus r2.. with only a gateway."""
    simple_router(store)
    for n in range(2, count + 1):
        store.create("router", {"id": f"r{n}", "tenant_id": "t1"})
        store.set_router_gateway(f"r{n}", "ext")


def configured(o, *ids):
    return all(state_of(o, i) == st.CONFIGURED for i in ids)


def test_rebuild_onto_another_image_sticks(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"), what="configured")
    [old] = cloud.list("ak-router-r1_")
    assert old.details["image"] == ""
    o.command("r1", "rebuild", image="v2")
    wait_for(lambda: images_of(cloud, "r1") == ["v2"] and configured(o, "r1"),
             what="rebuilt onto v2")
    assert cloud.list("ak-router-r1_")[0].id != old.id
    # A dead appliance is rebuilt on the image it ran, not the default.
    cloud.appliances["ak-router-r1_0"].alive = False
    wait_for(lambda: [c[0] for c in cloud.calls].count("create") == 3, what="rebuilt")
    wait_for(lambda: configured(o, "r1"), what="configured again")
    assert images_of(cloud, "r1") == ["v2"]


def test_placements_and_rebuild_images_take_turns(orch, cloud):
    """A placement's image beats what the instances run (a plain rebuild moves onto it);
    an image a rebuild asks for beats the placement, and sticks when an appliance dies."""
    o = orch()
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"), what="configured")
    assert images_of(cloud, "r1") == [""]
    o.set_placement("tenant", "t1", image="byo")
    o.command("r1", "rebuild")
    wait_for(lambda: images_of(cloud, "r1") == ["byo"] and configured(o, "r1"),
             what="rebuilt onto the placement's image")
    o.command("r1", "rebuild", image="v2")
    wait_for(lambda: images_of(cloud, "r1") == ["v2"] and configured(o, "r1"),
             what="rebuilt onto v2")
    cloud.appliances["ak-router-r1_0"].alive = False
    wait_for(lambda: [c[0] for c in cloud.calls].count("create") == 4, what="rebuilt")
    wait_for(lambda: configured(o, "r1"), what="configured again")
    assert images_of(cloud, "r1") == ["v2"]


def test_rolling_upgrade_leaves_placed_resources_alone(orch, cloud):
    o = orch()
    o.set_placement("resource", "r2", image="byo")
    routers(o.store, 2)
    wait_for(lambda: configured(o, "r1", "r2"), what="both configured")
    assert images_of(cloud, "r2") == ["byo"]
    o.start_upgrade("v2")
    o.rollout.wait(20)
    status = o.upgrade_status()
    assert status["counts"] == {"done": 1, "skipped": 1}, status
    [placed] = [t for t in status["resources"] if t["id"] == "r2"]
    assert "own resource placement" in placed["message"] and "byo" in placed["message"]
    assert images_of(cloud, "r1") == ["v2"] and images_of(cloud, "r2") == ["byo"]


def test_rebuild_refuses_an_unknown_instance(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"))
    client = create_app(o, TOKEN).test_client()
    answer = client.post("/v1/resources/r1/rebuild", json={"instance": "ak-router-r1_7"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400 and answer.get_json()["field"] == "instance"
    answer = client.post("/v1/resources/r1/update", json={"image": "v2"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400 and answer.get_json()["field"] == "image"


@pytest.fixture
def slow_orch(tmp_path):
    """An orchestrator on a SlowBootCloud: ``start(boot_delay)`` -> (orchestrator, cloud)."""
    clouds = []
    try:
        with started_orchestrators() as orchestrator:
            def start(boot_delay=0.3):
                slow = SlowBootCloud(boot_delay)
                clouds.append(slow)
                return orchestrator(make_settings(tmp_path), driver=slow,
                                    client_factory=slow.client_factory), slow

            yield start
    finally:  # the clouds outlive their orchestrators, which stop first
        for slow in clouds:
            slow.shutdown()


@pytest.mark.parametrize("budget", [1, 2])
def test_rolling_upgrade_keeps_its_bound(slow_orch, budget):
    o, cloud = slow_orch()
    routers(o.store, 3)
    o.store.create("router", {"id": "ha1", "tenant_id": "t2", "ha": True})
    o.store.set_router_gateway("ha1", "ext")
    ids = ("r1", "r2", "r3", "ha1")
    wait_for(lambda: configured(o, *ids), timeout=20, what="all configured")
    with cloud.lock:
        cloud.down.clear()
        cloud.max_down, cloud.pair_down = 0, False
    status = o.start_upgrade("v2", max_unavailable=budget)
    assert status["state"] == "running" and status["max_unavailable"] == budget
    o.rollout.wait(60)
    status = o.upgrade_status()
    assert status["state"] == "finished", status
    assert status["counts"] == {"done": 4}, status
    for resource_id in ids:
        expected = ["v2", "v2"] if resource_id == "ha1" else ["v2"]
        assert images_of(cloud, resource_id) == expected
    assert configured(o, *ids)
    assert 1 <= cloud.max_down <= budget
    assert not cloud.pair_down, "both HA members were down at once"
    # Everything is on v2: a second run has nothing to do.
    o.start_upgrade("v2", max_unavailable=budget)
    o.rollout.wait(10)
    assert o.upgrade_status()["counts"] == {"skipped": 4}


def test_old_image_appliances_keep_working(orch, cloud):
    """An appliance of an old image speaks the original API: the orchestrator configures
    it and pushes changes without the committed-hash reads it does not offer; one of the
    new image is checked for drift as usual."""
    cloud.legacy_images = {"old"}
    o = orch()
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"))
    o.command("r1", "rebuild", image="old")
    wait_for(lambda: images_of(cloud, "r1") == ["old"] and configured(o, "r1"),
             what="rebuilt onto the old image")
    old = cloud.appliances["ak-router-r1_0"]
    assert old.legacy and old.hash in desired_hash(o, "r1").values()
    [shown] = o.resource("r1")["instances"]
    assert shown["api"] == {"api_version": "1.0", "capabilities": []}
    puts = old.puts
    o.store.create("floatingip", {"router_id": "r1", "floating_ip_address": "172.24.4.50",
                                  "fixed_ip_address": "10.1.0.10"})
    wait_for(lambda: old.puts == puts + 1 and configured(o, "r1"), what="change pushed")
    assert old.config_reads == 0
    assert old.status_reads == 0, "the status of an appliance that does not advertise it"

    o.start_upgrade("new")
    o.rollout.wait(20)
    assert o.upgrade_status()["counts"] == {"done": 1}
    new = cloud.appliances["ak-router-r1_0"]
    assert not new.legacy and new.hash in desired_hash(o, "r1").values()
    wait_for(lambda: new.config_reads > 0, what="drift checks on the new image")
    wait_for(lambda: new.status_reads > 0, what="status reads on the new image")
    [shown] = o.resource("r1")["instances"]
    assert shown["api"]["api_version"] == "1.1" and "config-hash" in \
        shown["api"]["capabilities"]


def test_upgrade_api_refuses_bad_requests(slow_orch):
    o, cloud = slow_orch(boot_delay=1.0)
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"), what="configured")
    client = create_app(o, TOKEN).test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body, field in (({"image": "v2", "max_unavailable": "2"}, "max_unavailable"),
                        ({"image": "v2", "max_unavailable": 0}, "max_unavailable"),
                        ({"image": "v2", "resources": ["nope"]}, "resources"),
                        ({"image": "v2", "resources": "r1"}, "resources"),
                        ({"image": 7}, "image"),
                        ({"image": "v2", "unit_timeout": -1}, "unit_timeout")):
        answer = client.post("/v1/upgrades", json=body, headers=auth)
        assert answer.status_code == 400, (body, answer.get_json())
        assert answer.get_json()["field"] == field, body
    # The rollout checks its inputs, whoever calls (not only the HTTP layer).
    for kwargs, field in (({"resource_ids": "r1"}, "resources"),
                          ({"unit_timeout": True}, "unit_timeout")):
        with pytest.raises(StoreError) as refused:
            o.start_upgrade("v2", **kwargs)
        assert refused.value.field == field
    assert client.get("/v1/upgrades", headers=auth).get_json() == {"upgrade": None}
    started = client.post("/v1/upgrades", json={"image": "v2"}, headers=auth)
    assert started.status_code == 202
    # The replacement takes a second to boot: a second upgrade meanwhile is refused.
    busy = client.post("/v1/upgrades", json={"image": "v3"}, headers=auth)
    assert busy.status_code == 409
    o.rollout.wait(20)
    status = client.get("/v1/upgrades", headers=auth).get_json()["upgrade"]
    assert status["state"] == "finished" and status["counts"] == {"done": 1}


def test_ha_member_booting_longer_than_the_grace_is_not_replaced_again(slow_orch):
    """A VM boots for minutes, far past dead_grace: a replaced HA member that has not
    answered yet is booting, not lost, so it is not destroyed and booted again."""
    o, slow = slow_orch(boot_delay=2.0)  # dead_grace is 0.6 s here
    simple_router(o.store, ha=True)
    wait_for(lambda: configured(o, "r1"), timeout=20, what="pair configured")
    creates = [c[0] for c in slow.calls].count("create")
    with slow.lock:
        slow.down.clear()
        slow.pair_down = False
    o.command("r1", "rebuild", image="v2", instance="ak-router-r1_1")
    wait_for(lambda: images_of(slow, "r1") == ["", "v2"] and in_sync(o.resource("r1")),
             timeout=20, what="member replaced, answering and configured")
    assert [c[0] for c in slow.calls].count("create") == creates + 1
    assert not slow.pair_down


def test_a_rebuild_after_the_resource_was_forgotten_reaches_its_new_manager(orch, cloud):
    """After the scheduler forgot a resource (here its claim was lost), ``show`` has no
    instance manager to read and a rebuild's image reaches the manager made for it."""
    o = orch(period=60.0)  # no health poll makes the automaton again behind the test's back
    simple_router(o.store)
    wait_for(lambda: configured(o, "r1"), what="configured")
    ref = o.scheduler.automaton(("router", "r1")).ref
    assert len(o.resource("r1")["instances"]) == 1
    o.ownership.lost(ref)  # what a fenced write does: the automaton and manager go
    assert o.scheduler.automaton(ref.key) is None
    shown = o.resource("r1")
    assert shown["local"] is False and shown["instances"] == []
    assert shown["desired_hash"] == {} and shown["inputs_digest"] is None
    o.command("r1", "rebuild", image="v2")
    wait_for(lambda: images_of(cloud, "r1") == ["v2"] and configured(o, "r1"),
             what="rebuilt onto v2")
