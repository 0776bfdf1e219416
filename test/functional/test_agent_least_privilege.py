"""The real agent as the image runs it: the unprivileged ``astara-agent`` user holding
exactly the capabilities of the image unit's AmbientCapabilities= (README, "Least
privilege"), started with ``setpriv`` in a namespace (astara_lab/unprivileged.py).

It applies the contract payloads and serves their dataplane; every process it runs — the
gunicorn master and worker, dnsmasq, BIRD, nginx, charon — runs as that user with no
capability outside the set; and each capability of the set is needed (router-basic fails
without it), so the set can neither grow nor shrink unnoticed.
"""
import http.client
import json

import pytest

from astara_lab.appliance import (contract_appliance, contract_payloads, expected_addresses,
                                  kernel_names)
from astara_lab.peers import MetadataUpstream, eventually, udhcpc
from astara_lab.topology import started_router
from astara_lab.unprivileged import AGENT_USER, agent_account, agent_wrapper, unit_capabilities
from astara_netns import in_netns, netns_pids
from astara_router.privileges import capability_mask


pytestmark = pytest.mark.netns

PAYLOADS = contract_payloads("original-orchestrator")
BASIC = PAYLOADS["router-basic"]
WEB1 = "e4b010e5-c133-4cdc-85b2-0f3e6e1b95e9"  # the instance owning 10.1.0.8
LISTENER = ("10.1.0.1", 9602)  # the metadata proxy on ge2's router address


@pytest.fixture(scope="module")
def account():
    try:
        return agent_account()
    except KeyError:
        pytest.fail(f"no {AGENT_USER} user on this host: run scripts/install-deps")


def status_of(pid):
    """``{field: value}`` of /proc/<pid>/status (Uid: the real uid; Cap*: bit masks)."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return {"comm": fields["Name"][0], "ppid": int(fields["PPid"][0]),
            "uid": int(fields["Uid"][0]),
            "euid": int(fields["Uid"][1]),
            **{key: int(fields[key][0], 16) for key in ("CapEff", "CapPrm", "CapBnd",
                                                         "CapAmb", "CapInh")}}


def processes(appliance):
    """The status of every process in the appliance's namespace, by pid."""
    found = {}
    for pid in netns_pids(appliance.ns.name):
        try:
            found[pid] = status_of(pid)
        except (OSError, KeyError):
            pass  # exited meanwhile
    return found


def unprivileged(lab, capabilities=None):
    """The start wrapper that runs the agent as the image does (management configured
    before, as root: cloud-init's bootcmd)."""
    return lambda appliance: agent_wrapper(lab, appliance.state_dir, capabilities)


def unprivileged_appliance(lab, name, capabilities=None):
    """The contract appliance for ``name``, its agent unprivileged, ``name`` pushed: the
    appliance and the answer."""
    appliance = contract_appliance(lab, name, PAYLOADS[name],
                                   wrapper=unprivileged(lab, capabilities))
    return appliance, put(appliance, PAYLOADS[name])


def put(appliance, payload):
    return appliance.client().put_json("/v1/system/config", payload)


def assert_runs_unprivileged(appliance, uid, daemons):
    """The agent's master (the engine) holds exactly the unit's capabilities and its
    worker (which parses what the network sends) none but the bounding set; ``daemons``
    (names as /proc/<pid>/comm shows them) run as the agent's user with no capability
    outside that set; nothing in the namespace runs as root."""
    allowed = capability_mask(unit_capabilities())
    seen = processes(appliance)
    master = appliance.proc.pid
    agent = {pid: s for pid, s in seen.items() if master in (pid, s["ppid"])
             and s["comm"].startswith(("python", "gunicorn", "astara"))}
    assert master in agent and len(agent) >= 2, (master, seen)  # master and its worker
    for pid, status in agent.items():
        assert (status["uid"], status["euid"]) == (uid, uid), (pid, status)
        held = allowed if pid == master else 0  # the worker gave them up (post_fork)
        for key in ("CapEff", "CapPrm", "CapAmb"):
            assert status[key] == held, (pid, key, hex(status[key]), hex(held))
        assert status["CapBnd"] == allowed, (pid, hex(status["CapBnd"]), hex(allowed))
    running = {status["comm"] for status in seen.values()}
    assert set(daemons) <= running, (daemons, running)
    for pid, status in seen.items():
        assert status["uid"] == status["euid"] == uid, (pid, status)
        assert status["CapEff"] & ~allowed == 0 and status["CapPrm"] & ~allowed == 0, \
            (pid, status)


def assert_addresses(appliance, payload):
    names = kernel_names(appliance)

    def dataplane():
        links = {link["ifname"]: link for link in appliance.dump()["links"]}
        for ifname, addresses in expected_addresses(payload).items():
            assert set(links[names[ifname]]["addresses"]) == addresses, ifname
        return True
    return dataplane


def test_router_basic_as_the_unprivileged_user(lab, account):
    uid, _ = account
    topology = started_router(lab, "router-basic", BASIC, wrapper=unprivileged(lab),
                              vm_addressing="none")  # pushed: 200
    upstream = MetadataUpstream(topology.ctl)
    upstream.start()
    try:
        appliance = topology.appliance
        assert_addresses(appliance, BASIC)()
        assert "chain" in appliance.ruleset()
        # the namespace's sysctls it writes: a router forwards, and a removed primary
        # address promotes its secondaries (on every link: "all")
        for key in ("ipv4/ip_forward", "ipv4/conf/all/promote_secondaries"):
            assert appliance.ns.run(["cat", f"/proc/sys/net/{key}"]).stdout.strip() == "1", key
        # dnsmasq answers DHCP (ports 67 and raw sockets: NET_BIND_SERVICE, NET_RAW)
        vm = topology.vm_for("10.1.0.8")
        offer = udhcpc(lab, vm.ns)
        assert offer and offer["ip"] == "10.1.0.8" and offer["router"] == "10.1.0.1", offer
        # the metadata proxy (a thread of the worker) reaches the orchestrator
        vm.configure_static()
        conn = http.client.HTTPConnection(*LISTENER, timeout=10)
        with in_netns(vm.ns.name):
            conn.connect()
        conn.request("GET", "/latest/meta-data/")
        answer = conn.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read())["instance"] == WEB1
        conn.close()
        assert_runs_unprivileged(appliance, uid, {"dnsmasq"})
    finally:
        upstream.stop()


@pytest.mark.parametrize("name, daemons", [
    ("router-dual-stack", {"dnsmasq", "bird"}),
    ("loadbalancer-http", {"nginx"}),
    ("router-vpn", {"charon"}),
])
def test_services_as_the_unprivileged_user(lab, account, name, daemons):
    uid, _ = account
    appliance, response = unprivileged_appliance(lab, name)
    assert response.status == 200, response.text
    assert_addresses(appliance, PAYLOADS[name])()
    assert_runs_unprivileged(appliance, uid, daemons)
    if name == "router-vpn":
        vpn = appliance.client().get("/v1/status/").json()
        assert vpn["state"] == "ready", vpn


def test_ha_router_becomes_master_as_the_unprivileged_user(lab, account):
    """keepalived and conntrackd run as the agent's user and VRRP moves the addresses;
    keepalived's state change reaches the agent through notify.fifo and the agent runs
    notify.sh (keepalived could not: its setgroups() needs CAP_SETGID)."""
    uid, _ = account
    appliance, response = unprivileged_appliance(lab, "router-ha-primary")
    assert response.status == 200, response.text
    eventually(assert_addresses(appliance, PAYLOADS["router-ha-primary"]), 20,
               "the VRRP master's addresses")
    assert_runs_unprivileged(appliance, uid, {"keepalived", "conntrackd", "dnsmasq"})
    state = appliance.state_dir / "ha" / "vrrp.state"
    eventually(lambda: state.exists() and state.read_text() == "MASTER\n", 20,
               "notify.sh run for keepalived's MASTER")
    assert "Couldn't setgroups" not in (appliance.state_dir / "ha" /
                                        "keepalived.log").read_text()


@pytest.mark.parametrize("missing", sorted(unit_capabilities()))
def test_each_capability_of_the_set_is_needed(lab, account, missing):
    """Without any one of them router-basic is refused (and nothing is committed)."""
    granted = [name for name in unit_capabilities() if name != missing]
    assert len(granted) == len(unit_capabilities()) - 1, "the unit grants " + missing
    appliance, response = unprivileged_appliance(lab, "router-basic", granted)
    assert response.status >= 400, response.text
    assert appliance.client().get("/v1/system/config").json().get("generation", 0) == 0
