"""An HA router pair: the two contract bodies (router-ha-primary/-secondary) pushed to two
real agents on shared segments, with real keepalived and conntrackd.

The primary (priority 100) holds the router's addresses, floating IP and routes; the
secondary holds none. Crashing the primary (every process SIGKILLed, links cut) moves them
to the secondary, and a TCP connection opened through the floating IP before the crash
keeps working after it. Restoring the primary follows the configured preemption; removing a
floating IP from both payloads removes it from whichever instance is master.
"""
import copy
import ipaddress
import socket
import time

import pytest

from astara_lab.appliance import contract_payloads, management_cidr
from astara_lab.failover import HaPair, crash, ha_bodies, ha_daemons, holder
from astara_lab.peers import Connection, PeerServer, eventually
from astara_lab.topology import RouterTopology
from astara_netns import in_netns
from astara_router.render.firewall import TABLE
from astara_router.watch import Expected, KernelWatch

pytestmark = pytest.mark.netns

VALID = contract_payloads("original-orchestrator")
PRIMARY, SECONDARY = VALID["router-ha-primary"], VALID["router-ha-secondary"]
ROUTER = ipaddress.ip_address("172.24.4.9")
FIP = ipaddress.ip_address("172.24.4.231")
ADVERT = 0.5  # seconds: a failover in about 2 s (the default, 1 s, is benchmarked)
PORT = 7000


class Pair(HaPair):
    """The contract pair with a TCP server in the VM behind the floating IP."""

    def __init__(self, lab, preempt=True, **kwargs):
        super().__init__(lab, advert_interval=ADVERT, preempt=preempt, **kwargs)
        self.server = PeerServer(self.vm.ns, PORT, bind="0.0.0.0")

    def connect(self):
        return Connection(self.topology.inet, FIP, PORT)


def test_primary_owns_then_crash_moves_addresses_and_flows_survive(lab):
    pair = Pair(lab)
    for appliance in pair.appliances:
        # No loose pickup: a packet of a connection the kernel does not know is invalid
        # (and dropped), so the flow can only survive through conntrackd's committed entry.
        appliance.ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", 0)
    pair.push()
    assert pair.master() is pair.primary
    assert ha_daemons(pair.primary.ns) == ha_daemons(pair.secondary.ns) == {
        "keepalived", "conntrackd"}
    routes = pair.primary.ns.ip_json("-4", "route", "show", "default")
    assert [(r["gateway"], r.get("protocol")) for r in routes] == [("172.24.4.1",
                                                                   "keepalived")]
    assert not pair.secondary.ns.ip_json("-4", "route", "show", "default")
    # keepalived adding the addresses was no drift: an identical push changes nothing
    assert pair.push() == [0, 0]
    # The agent restarting (its boot re-apply) leaves keepalived and the master alone.
    keepalived = pair.primary.daemon_pid("ha/keepalived.pid")
    assert keepalived is not None
    pair.primary.stop()
    pair.primary.start(extra_args=("--config-file", str(pair.config)))
    assert pair.primary.daemon_pid("ha/keepalived.pid") == keepalived  # the same, alive
    assert (pair.primary.state_dir / "ha" / "vrrp.state").read_text() == "MASTER\n"
    assert pair.master() is pair.primary

    flow = pair.connect()
    assert flow.ask() == "172.24.4.1"  # the internet's address: DNAT, no SNAT
    ends = crash(pair.primary.ns, pair.fabric)

    pair.takes_over(pair.secondary)
    assert flow.ask() == "172.24.4.1"  # the same TCP connection, through the new master
    assert tracked(pair.secondary, FIP, PORT)  # the entry conntrackd committed
    assert pair.secondary.client().put_json("/v1/system/config", SECONDARY).json()[
        "changes"] == 0
    fresh = pair.connect()
    assert fresh.ask() == "172.24.4.1"
    fresh.close()

    # Back with preemption (the default): the primary takes the addresses back, and the
    # flow (synced to it while it was backup) survives that move too.
    pair.restore(pair.primary, ends)
    eventually(lambda: pair.master() is pair.primary, 30, "the primary is master again")
    assert flow.ask() == "172.24.4.1"
    flow.close()

    # A floating IP removed from both payloads leaves the master.
    pair.push(*(without_fip(body) for body in (PRIMARY, SECONDARY)))
    eventually(lambda: holder([pair.primary.ns, pair.secondary.ns], FIP) is None and
               holder([pair.primary.ns], ROUTER) is not None, 10, "the floating IP gone")


def test_without_preemption_the_backup_stays_master(lab):
    pair = Pair(lab, preempt=False)
    pair.push()
    assert pair.master() is pair.primary
    ends = crash(pair.primary.ns, pair.fabric)
    pair.takes_over(pair.secondary)
    pair.restore(pair.primary, ends)
    state = pair.primary.state_dir / "ha" / "vrrp.state"
    eventually(lambda: state.read_text().strip() == "BACKUP", 30, "the primary is backup")
    time.sleep(10 * ADVERT)  # many adverts later the higher priority still has not taken over
    assert pair.master() is pair.secondary

    # A floating IP removed from both payloads leaves the master, whichever it is.
    pair.push(*(without_fip(body) for body in (PRIMARY, SECONDARY)))
    eventually(lambda: holder([pair.primary.ns, pair.secondary.ns], FIP) is None and
               holder([pair.secondary.ns], ROUTER) is not None, 10, "the floating IP gone")
    assert pair.master() is pair.secondary  # still, now without the floating IP


def test_becoming_ha_and_back_and_a_failed_conntrackd_rolls_back(lab):
    """A router becomes HA and stops being HA: the addresses pass between netlink and
    keepalived. conntrackd has no checker: its load is verified against the running
    daemon; with its sync port taken it cannot start, and the whole apply is undone."""
    topology = RouterTopology(lab, "router-ha-primary", PRIMARY)
    appliance = topology.appliance
    appliance.configure_management()
    appliance.start()
    plain = copy.deepcopy(PRIMARY)
    plain["ha_resource"] = False
    client = appliance.client()
    assert client.put_json("/v1/system/config", plain).status == 200
    before = appliance.dump()

    mgmt = ipaddress.ip_interface(management_cidr(PRIMARY)).ip
    with in_netns(appliance.ns.name):
        squatter = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    squatter.bind((str(mgmt), 3780))
    try:
        response = client.put_json("/v1/system/config", PRIMARY)
        assert response.status == 500, response.text
        # the detail goes to the agent's log, never to the client (hardening: no leaks)
        assert "conntrackd" in appliance.log() and "already in use" in appliance.log()
        assert appliance.dump() == before
        assert client.get("/v1/system/config").json()["generation"] == 1
        assert ha_daemons(appliance.ns) == set()
    finally:
        squatter.close()
    assert client.put_json("/v1/system/config", PRIMARY).status == 200
    assert ha_daemons(appliance.ns) == {"keepalived", "conntrackd"}
    routes = eventually(lambda: appliance.ns.ip_json("-4", "route", "show", "default"), 20,
                        "alone, the instance becomes master and keepalived adds the route")
    assert routes[0]["protocol"] == "keepalived"
    assert {link["ifname"]: link["addresses"] for link in appliance.dump()["links"]} == \
        {link["ifname"]: link["addresses"] for link in before["links"]}

    response = client.put_json("/v1/system/config", plain)  # not HA any more
    assert response.status == 200, response.text
    assert ha_daemons(appliance.ns) == set()
    assert appliance.dump() == before  # netlink's again (protocol 211 routes)
    assert not (appliance.state_dir / "ha" / "keepalived.conf").exists()
    assert client.put_json("/v1/system/config", plain).json()["changes"] == 0


def tracked(appliance, address, port):
    """The appliance's kernel tracks a TCP connection to ``address``:``port``."""
    listing = appliance.ns.run(["conntrack", "-L", "-p", "tcp", "--orig-dst", str(address),
                                "--dport", str(port)], check=False).stdout
    return "ESTABLISHED" in listing


def without_fip(body):
    body = copy.deepcopy(body)
    body["floating_ips"] = []
    return body


def test_only_the_master_advertises_itself_as_an_ipv6_router(lab):
    """Both instances run BIRD; the backup's RAs carry router lifetime 0."""
    body = VALID["router-dual-stack"]
    pair = Pair(lab, names=("router-dual-stack", "derived"), bodies=ha_bodies(body))
    pair.push()
    router = ipaddress.ip_address("10.20.0.1")
    eventually(lambda: holder([pair.primary.ns, pair.secondary.ns], router) is not None,
               30, "a master")
    lifetimes = {}  # BIRD rate-limits its answers: collect them over several solicitations
    eventually(lambda: len(router_lifetimes(pair.vm.ns, lifetimes)) >= 2, 30,
               "RAs from both instances")
    master = holder([pair.primary.ns, pair.secondary.ns], router)
    by_node = {node: lifetimes.get(link_local(node.ns, "eth2"))
               for node in (pair.primary, pair.secondary)}
    assert by_node[pair.primary if master is pair.primary.ns else pair.secondary] > 0
    assert by_node[pair.secondary if master is pair.primary.ns else pair.primary] == 0


def router_lifetimes(ns, found):
    """``found`` updated with {router link-local: router lifetime} of the RAs answering
    one solicitation."""
    output = ns.run(["rdisc6", "-m", "-n", "-w", "1500", "-r", "1", "eth0"],
                    check=False).stdout
    current = None
    for line in output.splitlines():
        if "Router lifetime" in line:
            current = int(line.split(":")[1].split()[0])
        if line.startswith(" from "):
            found[ipaddress.ip_address(line.split()[1].split("%")[0])] = current
    return found


def link_local(ns, ifname):
    return next(ipaddress.ip_address(a["local"]) for link in ns.ip_json("addr", "show", ifname)
                for a in link["addr_info"] if a["local"].startswith("fe80:"))


def test_keepalived_addresses_coming_and_going_are_not_drift(lab):
    """The kernel watch ignores the addresses the committed plan leaves to keepalived;
    any other address change on the same link still is drift."""
    ns = lab.netns("app")
    peer = lab.netns("peer")
    lab.plug(ns, "eth1", lab.bridge("b-data"))
    lab.plug(peer, "eth0", "b-data")
    index = ns.ip_json("link", "show", "eth1")[0]["ifindex"]
    virtual = ipaddress.ip_interface("172.24.4.9/24")
    expected = Expected(links={index: (None, True)}, indexes=frozenset({1, index}),
                        ignored=frozenset({(index, virtual)}))
    with in_netns(ns.name):
        watch = KernelWatch(TABLE)
        watch.renew(expected)
    try:
        ns.ip("addr", "add", str(virtual), "dev", "eth1")  # becoming master
        ns.ip("addr", "del", str(virtual), "dev", "eth1")  # becoming backup
        assert watch.poll() == (False, False)
        ns.ip("addr", "add", "172.24.4.10/24", "dev", "eth1")  # someone else's
        assert watch.poll()[0] is True
    finally:
        watch.close()


def test_an_instance_without_a_peer_runs_keepalived_alone(lab):
    """peers empty (an orchestrator between losing one instance and making the next):
    keepalived alone (multicast), no conntrackd; alone, it becomes master."""
    topology = RouterTopology(lab, "router-ha-primary", PRIMARY)
    appliance = topology.appliance
    appliance.configure_management()
    appliance.start()
    alone = copy.deepcopy(PRIMARY)
    alone["ha_config"] = {"peers": [], "priority": 100}
    response = appliance.client().put_json("/v1/system/config", alone)
    assert response.status == 200, response.text
    assert ha_daemons(appliance.ns) == {"keepalived"}
    eventually(lambda: holder([appliance.ns], FIP) is not None, 20, "master, alone")
