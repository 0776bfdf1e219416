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

from astara_lab.appliance import Appliance, contract_payloads, management_cidr, nic_macs
from astara_lab.failover import addresses, crash, ha_daemons, holder, reconnect
from astara_lab.peers import Connection, PeerServer, eventually
from astara_lab.topology import RouterTopology
from astara_netns import in_netns
from astara_router.render.firewall import TABLE
from astara_router.watch import Expected, KernelWatch

pytestmark = pytest.mark.netns

VALID = contract_payloads("original-orchestrator")
PRIMARY, SECONDARY = VALID["router-ha-primary"], VALID["router-ha-secondary"]
ROUTER = ipaddress.ip_address("172.24.4.9")
INTERNAL = ipaddress.ip_address("10.2.0.1")
FIP = ipaddress.ip_address("172.24.4.231")
VIRTUAL = (ROUTER, INTERNAL, FIP)
ADVERT = 0.2  # seconds: elections in about a second (the default, 1 s, is benchmarked)
PORT = 7000


def ha_config(lab, preempt=True):
    path = lab.tmpdir("ha-settings") / f"astara-{'preempt' if preempt else 'nopreempt'}.ini"
    path.write_text(f"[ha]\nadvert_interval = {ADVERT}\npreempt = {str(preempt).lower()}\n")
    return path


def ha_bodies(body):
    """An HA pair of ``body`` (a router payload): the second instance gets the next
    management address; each names the other as its peer."""
    primary, secondary = copy.deepcopy(body), copy.deepcopy(body)
    first = ipaddress.ip_interface(management_cidr(body))
    second = ipaddress.ip_interface(f"{first.ip + 1}/{first.network.prefixlen}")
    management = next(n for n in secondary["networks"] if n["network_type"] == "management")
    management["interface"]["addresses"] = [str(second)]
    for payload, peer, priority in ((primary, second, 100), (secondary, first, 50)):
        payload.update(ha_resource=True, ha_config={"peers": [str(peer.ip)],
                                                    "priority": priority})
    return primary, secondary


class Pair:
    """The HA topology: RouterTopology around the primary, the secondary on the same
    bridges, a TCP server in the VM behind the floating IP."""

    def __init__(self, lab, preempt=True, names=("router-ha-primary", "router-ha-secondary"),
                 bodies=(PRIMARY, SECONDARY)):
        self.lab = lab
        self.bodies = bodies
        self.topology = RouterTopology(lab, names[0], bodies[0])
        self.primary = self.topology.appliance
        self.secondary = Appliance(lab, "sec", nic_macs(names[1], bodies[1]),
                                   management_cidr(bodies[1]), "b-mgmt",
                                   bridges=self.topology.bridges,
                                   controller=self.topology.ctl)
        self.fabric = lab.fabric()
        self.config = ha_config(lab, preempt)
        for appliance in (self.primary, self.secondary):
            appliance.configure_management()
            appliance.start(extra_args=("--config-file", str(self.config)))
        self.vm = self.topology.vms[0]
        self.server = PeerServer(self.vm.ns, PORT, bind="0.0.0.0")

    def push(self, primary=None, secondary=None):
        """PUT each instance its body; their change counts."""
        changes = []
        for appliance, payload in ((self.primary, primary or self.bodies[0]),
                                   (self.secondary, secondary or self.bodies[1])):
            response = appliance.client().put_json("/v1/system/config", payload)
            assert response.status == 200, response.text
            changes.append(response.json()["changes"])
        return changes

    def master(self, timeout=30):
        """The appliance holding every virtual address (and the other none of them)."""
        def settled():
            owners = {holder([self.primary.ns, self.secondary.ns], a) for a in VIRTUAL}
            return owners.pop() if len(owners) == 1 and None not in owners else None
        ns = eventually(settled, timeout, "one appliance holds every virtual address")
        return self.primary if ns is self.primary.ns else self.secondary

    def takes_over(self, appliance, timeout=30):
        """``appliance`` holds every virtual address (the crashed one may still hold
        them too: nothing cleaned up after it, but its links are cut)."""
        eventually(lambda: set(VIRTUAL) <= addresses(appliance.ns), timeout,
                   f"{appliance.ns.role} holds every virtual address")

    def connect(self):
        return Connection(self.topology.inet, FIP, PORT)

    def restore(self, appliance, ends):
        """The crashed appliance comes back: management link, agent (its boot re-apply
        clears the addresses the killed keepalived left, restarts both daemons), then the
        data links."""
        appliance.proc.wait(5)  # reap the killed agent (a zombie looks alive to gunicorn)
        reconnect(self.fabric, ends[:1])
        appliance.start(extra_args=("--config-file", str(self.config)))
        reconnect(self.fabric, ends[1:])


def test_primary_owns_then_crash_moves_addresses_and_flows_survive(lab):
    pair = Pair(lab)
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

    flow = pair.connect()
    assert flow.ask() == "172.24.4.1"  # the internet's address: DNAT, no SNAT
    ends = crash(pair.primary.ns, pair.fabric)

    pair.takes_over(pair.secondary)
    assert flow.ask() == "172.24.4.1"  # the same TCP connection, through the new master
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
    assert pair.master is not None


def test_conntrackd_that_cannot_start_rolls_the_apply_back(lab):
    """conntrackd has no checker: its load is verified against the running daemon. With
    its sync port taken it cannot start, and the whole apply is undone."""
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
        message = response.json()["message"]
        assert "conntrackd exited at once" in message and "already in use" in message
        assert appliance.dump() == before
        assert client.get("/v1/system/config").json()["generation"] == 1
        assert ha_daemons(appliance.ns) == set()
    finally:
        squatter.close()
    assert client.put_json("/v1/system/config", PRIMARY).status == 200
    assert ha_daemons(appliance.ns) == {"keepalived", "conntrackd"}


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
    lifetimes = eventually(lambda: router_lifetimes(pair.vm.ns, 2), 30,
                           "RAs from both instances")
    master = holder([pair.primary.ns, pair.secondary.ns], router)
    by_node = {node: lifetimes.get(link_local(node.ns, "eth2"))
               for node in (pair.primary, pair.secondary)}
    assert by_node[pair.primary if master is pair.primary.ns else pair.secondary] > 0
    assert by_node[pair.secondary if master is pair.primary.ns else pair.primary] == 0


def router_lifetimes(ns, count):
    """{router link-local: router lifetime} of the RAs answering one solicitation."""
    output = ns.run(["rdisc6", "-m", "-n", "-w", "1500", "-r", "1", "eth0"],
                    check=False).stdout
    found, current = {}, None
    for line in output.splitlines():
        if "Router lifetime" in line:
            current = int(line.split(":")[1].split()[0])
        if line.startswith(" from "):
            found[ipaddress.ip_address(line.split()[1].split("%")[0])] = current
    return found if len(found) >= count else None


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
