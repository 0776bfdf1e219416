"""Three orchestrators share the routers: a real PostgreSQL store and a real coordination
backend (redis-server; etcd too), all started by the test in the lab's controller
namespace (own data directories, loopback there), stopped after.

Appliances are stand-ins (test/bench/standin_agent.py: the agent API the orchestrator
uses, the real epoch fence and push log line), started by the same netns driver: 30 real
agents are too heavy for a 2-core machine next to three orchestrators. The fence itself is
tested on the real agent in test_agent_fencing.py.

Checked, with generous hang guards (no durations: those are in ``make bench``):
* every router has exactly one owner, which alone works on it;
* kill -9 of a member: its routers move to the others, who adopt the running appliances
  (same namespaces, same agent PIDs: nothing rebooted);
* a member that joins takes over its share;
* after redis-server restarts (every key lost), every router has an owner (lock held,
  one member working on it) again within 3 coordination rounds;
* a SIGSTOPped owner that wakes after losing its lease has no push accepted;
* throughout, every appliance's push log shows one owner per interval: epochs only go up,
  and one epoch belongs to one orchestrator.
"""
import http.client
import signal

import pytest

from astara_lab.appliance import controller_node
from astara_lab.cluster import (Cluster, populate, push_log, push_violations, router_id,
                                router_of, tenant_network_id)
from astara_lab.orchestrator import AdminApiError, OrchestratorError
from astara_lab.peers import eventually
from astara_lab.services import cluster_unavailable
from astara_netns import Lab
from orchestrator_lite.coordination import make_ring, ring_owner

pytestmark = pytest.mark.netns

HEALTH = {"period": 3, "jitter": 0.2, "dead_grace": 20, "boot_timeout": 60,
          "boot_check_interval": 0.5, "max_boot_attempts": 5, "boot_backoff_base": 1,
          "boot_backoff_cap": 5, "error_cooldown": 5, "delete_timeout": 20}
ROUTERS = {"redis": 30, "etcd": 12}
HANG_GUARD = 240  # seconds: only against a hang, never a measured bound


@pytest.fixture(scope="module", params=["redis", "etcd"])
def cluster(request):
    reason = cluster_unavailable(request.param)  # namespaces: the netns marker's skip
    if reason:
        pytest.skip(reason)
    lab = Lab()
    cluster = None
    try:
        fabric = lab.fabric()
        lab.bridge("b-mgmt")
        ctl = controller_node(lab, "b-mgmt")
        cluster = Cluster(lab.prefix, fabric.name, ctl, lab.tmpdir("cluster"),
                          backend=request.param, sections={"health": HEALTH}, standin=True,
                          timeout=6, heartbeat=1.0)
        cluster.start_servers()
        cluster.upgrade_store()
        cluster.start()
        cluster.routers = [router_id(i) for i in range(ROUTERS[request.param])]
        populate(cluster.any_api, len(cluster.routers))
        wait_settled(cluster, "the routers configured")
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        lab.close()


# -- observations -------------------------------------------------------------------------------

def settled(cluster, live=None):
    """Every router configured, owned (store) by the live member the ring names, which
    alone works on it; returns {router: (owner, epoch)} or None."""
    indexes = live or cluster.running()
    live = {cluster.identity(i) for i in indexes}
    stored, local = cluster.ownership(indexes)
    ring = make_ring(live)
    result = {}
    for rid in cluster.routers:
        owner, epoch, state = stored.get(rid, (None, None, None))
        if owner != ring_owner(ring, "router", rid) or state != "configured" or \
                local.get(rid) != [owner]:
            return None
        result[rid] = (owner, epoch)
    return result


def wait_for(cluster, predicate, what, timeout=HANG_GUARD):
    """``eventually``, through members restarting (an API that does not answer is not
    there yet); a timeout shows every member's log tail."""
    def check():
        try:
            return predicate()
        except (OSError, http.client.HTTPException, AdminApiError, OrchestratorError) as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    try:
        return eventually(check, timeout, what, interval=0.5)
    except AssertionError as exc:
        tails = "\n".join(f"--- {name}\n{m.tail(2500)}" for name, m in cluster.members.items())
        raise AssertionError(f"{exc}\n{tails}") from None


def wait_settled(cluster, what):
    return wait_for(cluster, lambda: settled(cluster), what)


def accepted_epochs(cluster):
    """{instance name: [(orchestrator, epoch)] accepted}."""
    return {name: [(who, epoch) for who, epoch, ok in push_log(log) if ok]
            for name, (_, _, log) in cluster.instances().items()}


def assert_one_owner_per_interval(cluster):
    problems = {name: push_violations(push_log(log))
                for name, (_, _, log) in cluster.instances().items()}
    problems = {name: p for name, p in problems.items() if p}
    assert not problems, problems


def pushed_with(cluster, ownership):
    """True when every appliance accepted a push at its router's current epoch (the
    new owner announced itself, so the former one is fenced)."""
    accepted = accepted_epochs(cluster)
    for name, pushes in accepted.items():
        owner, epoch = ownership[router_of(name)]
        if (owner, epoch) not in pushes:
            return False
    return True


def owned_by(ownership, member):
    """{router: epoch} of the routers ``member`` owns in ``ownership`` (there are some)."""
    owned = {rid: epoch for rid, (owner, epoch) in ownership.items() if owner == member}
    assert owned, f"{member} owns no router: {ownership}"
    return owned


def taken_over(cluster, moved, live=None):
    """The settled ownership once every router of ``moved`` ({router: its epoch before})
    is owned at a higher epoch and every appliance accepted its owner's push; else None."""
    now = settled(cluster, live)
    if now and all(now[rid][1] > epoch for rid, epoch in moved.items()) and \
            pushed_with(cluster, now):
        return now
    return None


# -- tests --------------------------------------------------------------------------------------

def test_each_router_has_one_owner_and_every_member_a_share(cluster):
    ownership = settled(cluster)
    owners = {owner for owner, _ in ownership.values()}
    assert owners == {"orch-1", "orch-2", "orch-3"}, ownership
    for rid in cluster.routers[:3]:
        resource = cluster.resource(rid)  # from its owner: instances and hashes
        [instance] = resource["instances"]
        assert instance["committed_hash"] == resource["desired_hash"][instance["name"]]
    assert len(cluster.instances()) == len(cluster.routers)
    assert_one_owner_per_interval(cluster)


def test_the_debugger_runs_only_on_the_owner(cluster):
    ownership = settled(cluster)
    rid = cluster.routers[0]
    owner = ownership[rid][0]
    other = next(i for i in cluster.running() if cluster.identity(i) != owner)
    with pytest.raises(AdminApiError) as refused:
        cluster.api(other, "POST", f"/v1/resources/{rid}/debug-session",
                    {"actions": ["poll"], "timeout": 5})
    assert refused.value.status == 409 and f"owned by orchestrator {owner}" in \
        refused.value.message
    # Refused before anything happened: not paused, still worked by its owner only.
    assert cluster.any_api("GET", f"/v1/resources/{rid}")["resource"]["paused"] is None
    assert settled(cluster)[rid] == ownership[rid]


def test_killed_member_routers_are_adopted_by_the_others(cluster):
    before = settled(cluster)
    instances = cluster.instances()
    victim = "orch-2"
    moved = owned_by(before, victim)
    cluster.kill(cluster.index(victim))
    after = wait_for(cluster, lambda: taken_over(cluster, moved),
                     f"{victim}'s routers taken over")
    assert {after[rid][0] for rid in moved} <= {"orch-1", "orch-3"}
    assert all(after[rid] == before[rid] for rid in before if rid not in moved)
    assert cluster.instances() == instances  # adopted: same namespaces, same agents
    assert_one_owner_per_interval(cluster)


def test_a_joining_member_takes_over_its_share(cluster):
    instances = cluster.instances()
    cluster.start(2)

    def share_taken():
        now = settled(cluster)
        if now and any(owner == "orch-2" for owner, _ in now.values()) and \
                pushed_with(cluster, now):
            return now
        return None

    wait_for(cluster, share_taken, "orch-2 working on its share")
    assert cluster.instances() == instances
    assert_one_owner_per_interval(cluster)


def joined(cluster, index):
    """How often the member joined the tooz group (its log)."""
    return cluster.member(index).tail(10 ** 7).count("joined group")


def redis_locks(cluster):
    result = cluster.ctl.run(["redis-cli", "-p", str(cluster.coordination.port), "--scan",
                              "--pattern", "*astara-router-*_lock"])
    return {line for line in result.stdout.split() if line}


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)  # etcd keeps its keys on disk
def test_every_router_has_an_owner_again_within_3_rounds_after_redis_restarts(cluster):
    settled(cluster)
    instances = cluster.instances()
    joins = {i: joined(cluster, i) for i in cluster.running()}
    cluster.coordination.stop()
    cluster.coordination.start()
    # Counted from the moment redis answers again (a round may complete while these are
    # read; none can while it is down: a round that cannot heartbeat does not count).
    rounds = {i: cluster.workers(i)["coordination"]["rounds"] for i in cluster.running()}

    def owned_again():
        if len(redis_locks(cluster)) != len(cluster.routers):
            return None
        return settled(cluster)

    wait_for(cluster, owned_again, "every router owned again")
    done = {i: cluster.workers(i)["coordination"]["rounds"] for i in cluster.running()}
    assert all(done[i] - rounds[i] <= 3 for i in rounds), (rounds, done)
    # The restart did wipe the group: every member had to join it again.
    assert all(joined(cluster, i) > joins[i] for i in joins), joins
    assert cluster.instances() == instances
    assert_one_owner_per_interval(cluster)


def test_a_paused_owner_that_wakes_after_losing_its_lease_is_fenced(cluster):
    before = settled(cluster)
    instances = cluster.instances()
    victim = "orch-3"
    moved = owned_by(before, victim)
    cluster.signal(cluster.index(victim), signal.SIGSTOP)
    live = [i for i in cluster.running() if i != cluster.index(victim)]
    try:
        after = wait_for(cluster, lambda: taken_over(cluster, moved, live),
                         f"{victim}'s routers taken over")
        # Work for the paused member's former routers while it sleeps: a new VM port
        # changes their payload (allocations).
        for n, rid in enumerate(sorted(moved)[:3]):
            i = cluster.routers.index(rid)
            cluster.any_api("POST", "/v1/ports", {
                "network_id": tenant_network_id(i), "device_id": f"vm-{n}",
                "device_owner": "compute:nova"})
    finally:
        cluster.signal(cluster.index(victim), signal.SIGCONT)
    rounds = cluster.workers(cluster.index(victim))["coordination"]["rounds"]
    wait_for(cluster, lambda: cluster.workers(cluster.index(victim))["coordination"]["rounds"]
             >= rounds + 3, f"{victim} awake and coordinating")
    final = wait_settled(cluster, "the cluster settled again")
    assert_one_owner_per_interval(cluster)
    # Once the new owner's push was accepted, the victim's only accepted pushes are those
    # of its return (the ring gives it its routers back): each from a claim the store made
    # after the takeover, so above the takeover epoch and no higher than the one it holds now.
    for name, pushes in accepted_epochs(cluster).items():
        rid = router_of(name)
        if rid not in moved:
            continue
        since = pushes[pushes.index(after[rid]):]
        returned = [epoch for who, epoch in since if who == victim]
        assert all(after[rid][1] < epoch <= final[rid][1] for epoch in returned) and \
            (not returned or final[rid][0] == victim), (name, after[rid], final[rid], pushes)
    assert cluster.instances() == instances
