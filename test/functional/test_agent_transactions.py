"""Transaction guarantees of the real agent: idempotence, rollback, crash safety, boot
re-apply and readers that never wait for the writer."""
import concurrent.futures
import copy
import os
import signal
import threading
import time

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab.monitors import NetlinkMonitor
from astara_lab.peers import eventually
from astara_netns import in_netns, pid_alive
from astara_router import settings as settings_mod
from astara_router.api import create_app
from astara_router.engine import Engine
from astara_router.errors import ApplyError
from astara_router.render.firewall import TABLE
from astara_router.watch import KernelWatch

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]


def with_many_fips(payload, count):
    """``payload`` plus ``count`` floating IPs from 198.18.0.0/16 (an extra range routed to
    the gateway): a slow apply, to act during."""
    heavy = copy.deepcopy(payload)
    heavy["floating_ips"] = heavy["floating_ips"] + [
        {"floating_ip": f"198.18.{i // 250}.{i % 250 + 1}", "fixed_ip": "10.1.0.12"}
        for i in range(count)]
    return heavy


def wait_for_dad(appliance, timeout=10):
    """Links brought up by the first apply get link-local addresses a moment later (DAD);
    let the kernel finish so its events are not mistaken for the agent's."""
    deadline = time.monotonic() + timeout
    while appliance.ns.ip("-6", "addr", "show", "tentative").strip():
        assert time.monotonic() < deadline, "DAD never finished"
        time.sleep(0.1)


def test_identical_put_makes_no_netlink_change(lab, appliance):
    wait_for_dad(appliance)
    before = appliance.dump()
    watcher = NetlinkMonitor(lab, appliance.ns)
    response = appliance.client().put_json("/v1/system/config", BASIC)
    events = watcher.stop()
    assert response.status == 200
    assert response.json()["changes"] == 0 and response.json()["generation"] == 1
    assert events == []
    assert appliance.dump() == before


def test_failed_late_step_rolls_back_everything(lab, appliance):
    before = appliance.dump()
    broken = copy.deepcopy(BASIC)
    broken["networks"][2]["interface"]["addresses"] = ["10.1.0.2/24"]  # applied first...
    broken["networks"][2]["interface"]["mtu"] = 1400
    broken["floating_ips"].append({"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"})
    broken["static_routes"] = [["198.19.50.0/24", "198.19.99.1"]]  # ...this fails later
    response = appliance.client().put_json("/v1/system/config", broken)
    assert response.status == 422, response.text
    assert "static_routes[0]" in response.json()["message"]
    assert "unreachable" in response.json()["message"].lower()
    assert appliance.dump() == before
    config = appliance.client().get("/v1/system/config").json()
    assert config["generation"] == 1 and config["configuration"] == BASIC
    again = appliance.client().put_json("/v1/system/config", BASIC)
    assert again.json()["changes"] == 0


def test_kill_during_apply_restores_last_committed_generation(lab, appliance):
    before = appliance.dump()
    heavy = with_many_fips(BASIC, 3000)
    watcher = NetlinkMonitor(lab, appliance.ns)
    client = appliance.client(timeout=5)
    sender = threading.Thread(target=lambda: _swallow(client.put_json,
                                                      "/v1/system/config", heavy))
    sender.start()
    watcher.wait_for(lambda lines: sum("198.18." in line for line in lines) >= 50)
    appliance.stop(signal.SIGKILL)
    sender.join(10)
    assert appliance.dump() != before  # the kill really landed mid-apply
    appliance.start()
    config = appliance.client().get("/v1/system/config").json()
    assert config["generation"] == 1 and config["configuration"] == BASIC
    assert appliance.dump() == before


def test_boot_reapplies_persisted_config(lab, appliance):
    before = appliance.dump()
    appliance.stop()
    for ifname in ("eth1", "eth2"):  # a reboot loses everything but the boot-time mgmt
        appliance.ns.ip("addr", "flush", "dev", ifname)
    assert appliance.dump() != before
    appliance.start()
    assert appliance.dump() == before
    assert appliance.client().get("/v1/system/config").json()["generation"] == 1


class HeldApply:
    """A subsystem (test double, passed through the engine's ``subsystems=``) whose apply
    holds the writer until the test releases it: reads are made while an apply is known to
    be in progress, not while one probably is."""

    name = "held"

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def plan(self, config, names):
        return config

    def check(self, plan, base):
        pass

    def capture(self, ctx, plan, base):
        return None

    def apply(self, ctx, plan, base, snapshot):
        self.entered.set()
        assert self.release.wait(60), "the test never released the apply"
        return 1

    def verify(self, ctx, plan, base, changes):
        pass

    def restore(self, ctx, snapshot, changes):
        pass


def test_reads_never_wait_for_an_apply(lab, tmp_path):
    ns = lab.netns("reads")  # the engine lists this namespace's NICs, not the host's
    held = HeldApply()
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    app = create_app(settings, engine=Engine(settings, subsystems=[held]))

    def put(body):
        with in_netns(ns.name):
            return app.test_client().put("/v1/system/config", json=body)

    held.release.set()
    assert put(BASIC).status_code == 200
    held.release.clear()
    held.entered.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        writer = pool.submit(put, with_many_fips(BASIC, 10))
        assert held.entered.wait(30)

        def get(path):
            return app.test_client().get(path)

        paths = ["/v1/system/config", "/v1/firewall/rules", "/v1/status/", "/v1/"] * 10
        results = list(pool.map(get, paths))
        assert not writer.done()  # every read was answered while the writer held the lock
        held.release.set()
        written = writer.result(30)
    assert all(r.status_code == 200 for r in results), [r.status_code for r in results]
    configs = [r.get_json() for r in results if r.request.path == "/v1/system/config"]
    assert len(configs) == 10 and all(c["generation"] == 1 for c in configs)
    assert written.status_code == 200 and written.get_json()["generation"] == 2
    assert app.test_client().get("/v1/system/config").get_json()["generation"] == 2


class CountingPlans(HeldApply):
    """A subsystem (test double) that counts how often the engine plans it."""

    def __init__(self, name, reads_floating_ips):
        super().__init__()
        self.release.set()
        self.name, self.reads_floating_ips, self.planned = name, reads_floating_ips, 0

    def plan(self, config, names):
        self.planned += 1
        return (config.hostname, len(config.floating_ips))


def test_a_plan_that_ignores_floating_ips_is_kept_when_only_they_change(lab, tmp_path):
    ns = lab.netns("plans")
    daemon, ruleset = CountingPlans("daemon", False), CountingPlans("ruleset", True)
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    engine = Engine(settings, subsystems=[daemon, ruleset])
    renamed = copy.deepcopy(BASIC)
    renamed["hostname"] = "renamed"
    with in_netns(ns.name):
        for body in (BASIC, with_many_fips(BASIC, 3), with_many_fips(BASIC, 5)):
            engine.apply(copy.deepcopy(body))
        assert (daemon.planned, ruleset.planned) == (1, 3)
        fips = len(BASIC["floating_ips"])
        assert engine.committed.plans["ruleset"] == (BASIC["hostname"], fips + 5)
        engine.apply(renamed)  # another change: planned again
    assert (daemon.planned, ruleset.planned) == (2, 4)
    assert engine.committed.plans["daemon"] == ("renamed", len(BASIC["floating_ips"]))


class SeeingNics(CountingPlans):
    """A subsystem (test double) that keeps the NIC list each transaction saw."""

    def __init__(self):
        super().__init__("nics", True)
        self.seen = []

    def apply(self, ctx, plan, base, snapshot):
        self.seen.append(ctx.nics)
        return 1


def test_a_push_that_changes_no_link_takes_the_nic_list_read_before(lab, tmp_path):
    ns = lab.netns("nics")
    ns.ip("link", "add", "nics-a", "type", "veth", "peer", "name", "nics-b")
    nics = SeeingNics()
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    engine = Engine(settings, subsystems=[nics])

    def push(body):  # the names of the jobs it leaves for after its answer, then run
        background = engine.apply(body, defer_background=True).background
        names = [job[0] for job in background.jobs]
        background.start()
        return names
    with in_netns(ns.name):
        assert "list-nics" in push(copy.deepcopy(BASIC))  # nothing listed yet
        first = eventually(lambda: engine._listed[1], 10, "the NIC list")
        assert {nic.kernel_name for nic in first} >= {"nics-a", "nics-b"}
        assert "list-nics" not in push(with_many_fips(BASIC, 3))  # no link changed
        assert nics.seen[-1] is first and engine._listed[1] is first  # not read again
        ns.ip("link", "set", "nics-a", "mtu", "1400")  # behind the agent's back
        assert "list-nics" in push(with_many_fips(BASIC, 5))
        assert nics.seen[-1] is not first
        assert [n.mtu for n in nics.seen[-1] if n.kernel_name == "nics-a"] == [1400]
        assert eventually(lambda: engine._listed[1] is not first, 10, "a new NIC list")


def settled_link_changes(watch, quiet=1.5, limit=15):
    """The link count once no link message came for `quiet` seconds: a veth's carrier
    and operstate reach the kernel's link watch, which announces them up to a second
    after the `ip link set up` that caused them."""
    last, since, deadline = watch.link_changes(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the links never settled"
        time.sleep(0.05)
        now = watch.link_changes()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_link_changes_counts_links_not_addresses(lab):
    ns = lab.netns("links")
    ns.ip("link", "add", "lc-a", "type", "veth", "peer", "name", "lc-b")
    with in_netns(ns.name):
        watch = KernelWatch(TABLE)
        assert watch.link_changes() is not None
        ns.ip("link", "set", "lc-a", "up")
        ns.ip("link", "set", "lc-b", "up")
        first = settled_link_changes(watch)
        assert first > 0 and watch.link_changes() == first
        ns.ip("addr", "add", "198.18.7.1/24", "dev", "lc-a")
        ns.ip("route", "add", "198.18.8.0/24", "via", "198.18.7.2")
        assert watch.link_changes() == first
        ns.ip("link", "set", "lc-b", "down")  # lc-a loses its carrier
        assert watch.link_changes() != first


class Announcing(CountingPlans):
    """A subsystem (test double) with work after the commit, like gratuitous ARP."""

    def __init__(self):
        super().__init__("announcing", True)
        self.announced = threading.Event()

    def after_commit(self, plan, base, nics):
        self.announced.set()


def test_work_after_the_commit_starts_once_the_answer_is_sent(lab, tmp_path):
    ns = lab.netns("after")
    announcing = Announcing()
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    app = create_app(settings, engine=Engine(settings, subsystems=[announcing]))
    with in_netns(ns.name):
        response = app.test_client().put("/v1/system/config", json=BASIC)
    assert response.status_code == 200
    assert not announcing.announced.wait(0.5)  # the answer is not sent (closed) yet
    response.close()
    assert announcing.announced.wait(10)


class Refusing(CountingPlans):
    """A subsystem (test double) whose plan or check refuses the push."""

    def __init__(self, name, refuse_plan=False, refuse_check=False):
        super().__init__(name, True)
        self.refuse_plan, self.refuse_check = refuse_plan, refuse_check

    def plan(self, config, names):
        if self.refuse_plan:
            raise ApplyError(self.name, "plan refused")
        return super().plan(config, names)

    def check(self, plan, base):
        if self.refuse_check:
            raise ApplyError(self.name, "check refused")


class BegunCheck(Refusing):
    """A subsystem (test double) whose check begins while the others are planned, like
    dnsmasq's: records whether it was waited for or stopped."""

    def __init__(self, name, **refusals):
        super().__init__(name, **refusals)
        self.outcome = None

    def start_check(self, plan, base):
        test = self

        class Begun:
            def wait(self):
                test.outcome = "waited"
                test.check(plan, base)

            def cancel(self):
                test.outcome = test.outcome or "cancelled"
        return Begun()


@pytest.mark.parametrize("first, begun, last, refused_by, outcome", [
    # the first refusal in the subsystems' order wins, and every plan comes before checks
    ({"refuse_plan": True}, {"refuse_plan": True}, {}, "first", None),
    ({"refuse_check": True}, {"refuse_check": True}, {}, "first", "cancelled"),
    ({}, {"refuse_plan": True}, {"refuse_plan": True}, "begun", None),
    ({"refuse_check": True}, {}, {"refuse_plan": True}, "last", "cancelled"),
    ({}, {"refuse_check": True}, {"refuse_check": True}, "begun", "waited"),
    ({}, {}, {"refuse_check": True}, "last", "waited"),
])
def test_a_check_begun_early_keeps_the_order_of_refusals(lab, tmp_path, first, begun, last,
                                                         refused_by, outcome):
    ns = lab.netns("begun")
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    early = BegunCheck("begun", **begun)
    engine = Engine(settings, subsystems=[Refusing("first", **first), early,
                                          Refusing("last", **last)])
    with in_netns(ns.name), pytest.raises(ApplyError) as refused:
        engine.apply(copy.deepcopy(BASIC))
    assert refused.value.path == refused_by
    assert early.outcome == outcome
    assert engine.committed.generation == 0


def _swallow(func, *args):
    try:
        func(*args)
    except OSError:
        pass


# -- drift: what changed behind the agent's back is repaired by the next identical push ------

def _kill_dnsmasq(appliance):
    pid = appliance.daemon_pid(DNSMASQ_PID)
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: not pid_alive(pid), 10, "dnsmasq gone", interval=0.01)
    return pid


DNSMASQ_PID = "dnsmasq/dnsmasq.pid"
TAMPERING = {
    "address": lambda a: a.ns.ip("addr", "del", "10.1.0.1/24", "dev", "eth2"),
    "route": lambda a: a.ns.ip("route", "del", "default", "proto", "211"),
    "nft element": lambda a: a.ns.run(["nft", "delete element inet astara fip_dnat "
                                       "{ 172.24.4.228 }"]),
    "dnsmasq killed": _kill_dnsmasq,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_an_identical_push_repairs_drift(lab, appliance, tamper):
    wait_for_dad(appliance)
    before, ruleset = appliance.dump(), appliance.ruleset()
    dnsmasq = appliance.daemon_pid(DNSMASQ_PID)
    assert appliance.client().put_json("/v1/system/config", BASIC).json()["changes"] == 0
    TAMPERING[tamper](appliance)
    assert (appliance.dump(), appliance.ruleset(), appliance.daemon_pid(DNSMASQ_PID)) != (
        before, ruleset, dnsmasq)
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200 and response.json()["changes"] > 0, response.text
    assert response.json()["generation"] == 1  # the same generation, repaired
    assert appliance.dump() == before
    assert appliance.ruleset() == ruleset
    assert appliance.daemon_pid(DNSMASQ_PID) is not None
    assert appliance.client().put_json("/v1/system/config", BASIC).json()["changes"] == 0


def test_rollback_takes_a_link_it_brought_up_down_again(lab):
    """A generation that first uses a NIC brings it up; when that generation fails later,
    the rollback puts the NIC back down, as it found it (not only its addresses)."""
    full = contract_payloads("original-orchestrator")["router-many-fips"]
    first = copy.deepcopy(full)  # ge5 (eth5) exists but is not used yet
    first["networks"] = [n for n in first["networks"] if n["interface"]["ifname"] != "ge5"]
    first["floating_ips"] = [f for f in first["floating_ips"]
                             if not f["fixed_ip"].startswith("10.40.4.")]
    appliance = contract_appliance(lab, "router-many-fips", full)  # every NIC
    response = appliance.client().put_json("/v1/system/config", first)
    assert response.status == 200, appliance.log()

    def eth5_up():
        return "UP" in appliance.ns.ip_json("link", "show", "eth5")[0]["flags"]

    assert not eth5_up()
    before = appliance.dump()
    broken = copy.deepcopy(full)  # uses ge5, then fails at the static route
    broken["static_routes"] = [["198.19.50.0/24", "198.19.99.1"]]
    response = appliance.client().put_json("/v1/system/config", broken)
    assert response.status == 422, response.text
    assert not eth5_up()
    assert appliance.dump() == before
