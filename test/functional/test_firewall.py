"""Firewall and NAT of the real agent, with real traffic between namespaces.

Servers here are "peer reporters": sockets created inside a namespace and served by a thread
of the test process; every line a client sends is answered with the address the server
sees the client as. A connection that must be refused is a connect attempt to a port that
does have a listener behind the firewall: success would be the failure.
"""
import copy
import ipaddress
import threading
import time

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab.monitors import NftMonitor
from astara_netns import in_netns
from astara_lab.peers import Connection, PeerServer
from astara_lab.topology import PUBLIC_V4, PUBLIC_V6, RouterTopology, started_router
from astara_router.apply.firewall import FirewallSubsystem, live_listing
from astara_router.engine import ApplyContext
from astara_router.errors import ApplyError
from astara_router.model import parse_payload
from astara_router.naming import InterfaceNames
from astara_router.settings import Settings

pytestmark = pytest.mark.netns

PAYLOADS = contract_payloads("original-orchestrator")
SERVICES = ("router", "loadbalancer")
PORT = 7000
CLOSED_PORT = 8080  # has a listener on the appliance, but no rule admits it


# -- traffic helpers ----------------------------------------------------------------------------

@pytest.fixture
def net():
    """Opens servers and connections, closes them all at the end."""
    opened = []

    class Net:
        def serve(self, ns, port=PORT, bind="::"):
            server = PeerServer(ns, port, bind)
            opened.append(server)
            return server

        def connect(self, ns, host, port=PORT, timeout=5, source=None):
            conn = Connection(ns, host, port, timeout, source)
            opened.append(conn)
            return conn

        def seen_as(self, ns, host, port=PORT, source=None):
            conn = self.connect(ns, host, port, source=source)
            try:
                return conn.ask()
            finally:
                conn.close()

        def blocked(self, ns, host, port=PORT, timeout=2, source=None):
            """True when a connect attempt gets no connection (dropped or refused)."""
            try:
                self.connect(ns, host, port, timeout, source).close()
            except OSError:
                return True
            return False

    yield Net()
    for item in reversed(opened):
        item.close()


def wait_until(predicate, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def pings(ns, address, count=1):
    return ns.run(["ping", "-c", str(count), "-W", "1", str(address)], check=False).returncode == 0


def put(topology, payload):
    response = topology.appliance.client().put_json("/v1/system/config", payload)
    assert response.status == 200, response.text
    return response.json()


def handles(appliance):
    """The whole live ruleset with handles: any transaction touching our table changes it."""
    return appliance.ns.run(["nft", "-a", "list", "ruleset"]).stdout


def conntrack(appliance, *args):
    result = appliance.ns.run(["conntrack", "-L", "-f", "ipv4", *args], check=False)
    return [line for line in result.stdout.splitlines() if line.startswith(("tcp", "udp"))]


def router(lab, name, payload=None, max_vms=None, push=True):
    return started_router(lab, name, PAYLOADS[name], max_vms=max_vms, push=push,
                          payload=payload)


def route_tenants_via_router(topology, *cidrs):
    """The internet learns the tenant prefixes behind the router (as a routed upstream
    would), so unsolicited traffic to tenant addresses really reaches the router."""
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr)
        via = topology.external_address(network.version).ip
        topology.inet.ip(f"-{network.version}", "route", "replace", str(network), "via",
                         str(via))


# -- router-basic: SNAT, floating IP, hairpin, drops, INPUT ---------------------------------------

def test_router_basic_nat_filter_and_input(lab, net):
    t = router(lab, "router-basic")
    app, inet = t.appliance, t.inet
    web1, web2 = t.vm_for("10.1.0.8"), t.vm_for("10.1.0.12")  # web-1 has 172.24.4.228
    net.serve(inet)
    for vm in (web1, web2):
        net.serve(vm.ns)

    # outbound: SNAT to the external address, or to the VM's own floating IP
    assert net.seen_as(web2.ns, PUBLIC_V4) == "172.24.4.7"
    assert net.seen_as(web1.ns, PUBLIC_V4) == "172.24.4.228"
    # inbound through the floating IP: the VM sees the real client, the client talks to
    # the floating IP (its replies come from it: the connection works)
    conn = net.connect(inet, "172.24.4.228")
    assert conn.sock.getpeername()[0] == "172.24.4.228"
    assert conn.ask() == "172.24.4.1"
    # hairpin: web-2 reaches web-1 by its floating IP; web-1 sees the router's external
    # address (web-2 has no floating IP), and web-1 reaching itself sees its floating IP
    assert net.seen_as(web2.ns, "172.24.4.228") == "172.24.4.7"
    assert net.seen_as(web1.ns, "172.24.4.228") == "172.24.4.228"
    # no floating IP: unreachable from outside even with a route to the tenant subnet
    route_tenants_via_router(t, "10.1.0.0/24")
    assert net.blocked(inet, "10.1.0.12")
    assert net.seen_as(web2.ns, "10.1.0.8") == "10.1.0.12"  # east-west: no NAT

    # INPUT: a listener on every address of the appliance, admitted nowhere
    net.serve(app.ns, CLOSED_PORT)
    assert app.client().get("/v1/").status == 200  # the API on the management address
    assert net.blocked(t.ctl, app.mgmt.ip, CLOSED_PORT)
    assert net.blocked(web1.ns, "10.1.0.1", CLOSED_PORT)
    assert net.blocked(inet, "172.24.4.7", CLOSED_PORT)
    assert pings(web1.ns, "10.1.0.1") and pings(inet, "172.24.4.7")

    rules = app.client().get("/v1/firewall/rules").text
    assert "table inet astara" in rules and "172.24.4.228 : 10.1.0.8" in rules


def test_metadata_is_redirected_to_the_networks_listener(lab, net):
    t = router(lab, "router-basic")
    web1 = t.vm_for("10.1.0.8")
    busy = t.appliance.ns.run(["ss", "-Htln", "sport = :9602"]).stdout.strip()
    if not busy:  # the metadata proxy may not run here: stand in for it
        net.serve(t.appliance.ns, 9602, bind="10.1.0.1")
        assert net.seen_as(web1.ns, "169.254.169.254", 80) == "10.1.0.8"
    else:
        net.connect(web1.ns, "169.254.169.254", 80).close()


# -- idempotence and element-only changes ----------------------------------------------------------

def test_same_config_runs_no_nft_transaction_and_fips_are_element_changes(lab):
    payload = copy.deepcopy(PAYLOADS["router-basic"])
    t = router(lab, "router-basic", payload)
    app = t.appliance
    before = handles(app)
    monitor = NftMonitor(lab, app.ns)
    assert put(t, payload)["changes"] == 0
    assert monitor.stop() == []
    assert handles(app) == before

    # a new floating IP is one element per map, no chain or table is rebuilt
    payload["floating_ips"].append({"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"})
    monitor = NftMonitor(lab, app.ns, "nftmon2")
    put(t, payload)
    events = monitor.stop()
    assert events and all(e.startswith(("add element", "delete element")) for e in events), \
        events
    assert any("172.24.4.229 : 10.1.0.12" in e for e in events)
    after = handles(app)
    assert _table_handle(after) == _table_handle(before)
    assert _rules(after) == _rules(before)  # every rule kept its handle


def _table_handle(listing):
    return next(line.split("# handle")[1].strip() for line in listing.splitlines()
                if line.startswith("table inet astara "))


def _rules(listing):
    """Rule lines with their handles (set declarations excluded)."""
    return [line for line in listing.splitlines() if "# handle" in line
            and not line.strip().startswith(("set ", "map ", "elements"))]


# -- long-lived connections vs. re-applies ------------------------------------------------------

def many_fips_without_tier4():
    """router-many-fips without its last network (tier-4, ge5) and the floating IPs that
    point there: the appliance has the NIC, the first generation just does not use it."""
    payload = copy.deepcopy(PAYLOADS["router-many-fips"])
    payload["networks"] = [n for n in payload["networks"]
                           if n["interface"]["ifname"] != "ge5"]
    payload["floating_ips"] = [f for f in payload["floating_ips"]
                               if not f["fixed_ip"].startswith("10.40.4.")]
    return payload


def test_long_lived_connections_survive_reapplies_and_fip_removal_kills_only_its_own(lab, net):
    first = many_fips_without_tier4()
    t = router(lab, "router-many-fips", first, max_vms=12)
    app, inet = t.appliance, t.inet
    vm01, vm05 = t.vm_for("10.40.1.10"), t.vm_for("10.40.1.11")  # FIPs .101 and .105
    vm_nofip = t.vm_for("10.40.1.18")  # vm33: no floating IP
    for ns in (inet, vm01.ns, vm05.ns):
        net.serve(ns)
    inbound = net.connect(inet, "172.24.4.101")  # through a floating IP
    other = net.connect(inet, "172.24.4.105")  # through another one
    outbound = net.connect(vm_nofip.ns, PUBLIC_V4)  # SNAT to the router's address
    outbound_fip = net.connect(vm01.ns, PUBLIC_V4)  # SNAT to its floating IP
    expected = {inbound: "172.24.4.1", other: "172.24.4.1", outbound: "172.24.4.11",
                outbound_fip: "172.24.4.101"}

    def all_alive(*conns):
        for conn in conns or expected:
            assert conn.ask() == expected[conn]

    all_alive()
    put(t, first)  # the same config
    all_alive()
    second = copy.deepcopy(first)  # add one floating IP, remove another
    second["floating_ips"] = [f for f in second["floating_ips"]
                              if f["floating_ip"] != "172.24.4.102"]
    second["floating_ips"].append({"floating_ip": "172.24.4.200", "fixed_ip": "10.40.1.18"})
    put(t, second)
    all_alive()
    full = copy.deepcopy(PAYLOADS["router-many-fips"])  # add the network (a new skeleton)
    full["floating_ips"] = second["floating_ips"] + [
        f for f in full["floating_ips"] if f["fixed_ip"].startswith("10.40.4.")]
    before = handles(app)
    put(t, full)
    assert _table_handle(before) != _table_handle(handles(app))  # replaced as a whole
    all_alive()
    # the new network is NATed at once: vm04 (10.40.4.10, floating IP .104) on ge5
    vm04 = lab.netns("vm04")
    lab.plug(vm04, "eth0", t.bridges[5])
    vm04.ip("addr", "add", "10.40.4.10/24", "dev", "eth0", "nodad")
    vm04.ip("route", "add", "default", "via", "10.40.4.1")
    net.serve(vm04)
    assert net.seen_as(vm04, PUBLIC_V4) == "172.24.4.104"
    assert net.seen_as(inet, "172.24.4.104") == "172.24.4.1"

    # removing 172.24.4.101 deletes its conntrack entries (NATed to it and from it), and
    # only those
    assert conntrack(app, "--orig-dst", "172.24.4.101")
    assert conntrack(app, "--reply-dst", "172.24.4.101")
    without = copy.deepcopy(full)
    without["floating_ips"] = [f for f in full["floating_ips"]
                               if f["floating_ip"] != "172.24.4.101"]
    put(t, without)
    assert conntrack(app, "--orig-dst", "172.24.4.101") == []
    assert conntrack(app, "--reply-dst", "172.24.4.101") == []
    assert conntrack(app, "--orig-dst", "172.24.4.105")
    assert conntrack(app, "--reply-dst", "172.24.4.11")  # vm33's, SNAT to the router's
    all_alive(other, outbound)
    with pytest.raises(OSError):
        inbound.sock.settimeout(2)
        inbound.ask()  # its NAT binding is gone: the packets now hit the drop policy


# -- IPv6: routed, stateful ---------------------------------------------------------------------

def test_ipv6_tenants_are_routed_but_not_open(lab, net):
    t = router(lab, "router-dual-stack")
    inet = t.inet
    v6vm = t.vm_for("fd4e:7a31:2c5b:2::1a5")
    ds_vm = t.vm_for("10.20.0.11")  # has 198.51.100.50
    ext_v6 = t.external_address(6).ip
    wait_until(lambda: pings(inet, ext_v6), "the router's external IPv6 address works")
    route_tenants_via_router(t, "fd4e:7a31:2c5b:2::/64", "10.20.0.0/24")
    net.serve(inet)
    net.serve(v6vm.ns)
    net.serve(ds_vm.ns)
    wait_until(lambda: pings(v6vm.ns, PUBLIC_V6), "the v6 VM reaches the internet")
    # outward: routed, not NATed
    assert net.seen_as(v6vm.ns, PUBLIC_V6) == "fd4e:7a31:2c5b:2::1a5"
    # inward: ICMPv6 yes, a new TCP connection no
    assert pings(inet, "fd4e:7a31:2c5b:2::1a5")
    assert net.blocked(inet, "fd4e:7a31:2c5b:2::1a5")
    # IPv4 on the same router: floating IP in, SNAT out, the rest dropped
    assert net.seen_as(inet, "198.51.100.50") == "198.51.100.1"
    assert net.seen_as(ds_vm.ns, PUBLIC_V4) == "198.51.100.50"
    assert net.blocked(inet, "10.20.0.12")

    # a provider label opens the IPv6 tenant prefixes to its sources (and only to them)
    labelled = copy.deepcopy(PAYLOADS["router-dual-stack"])
    labelled["labels"]["ext"] += ["2001:db8:ffff::/64", f"{PUBLIC_V4}/32"]
    put(t, labelled)
    assert net.seen_as(inet, "fd4e:7a31:2c5b:2::1a5", source=PUBLIC_V6) == PUBLIC_V6
    assert net.blocked(inet, "fd4e:7a31:2c5b:2::1a5")  # from 2001:db8:c0de:1::1
    assert net.blocked(inet, "10.20.0.12", source=PUBLIC_V4)  # IPv4 labels open nothing


# -- more than ten NICs ---------------------------------------------------------------------------

def test_router_wide_nat_on_ge10_to_ge12(lab, net):
    t = router(lab, "router-wide")
    inet = t.inet
    net.serve(inet)
    for fixed, floating in (("10.60.9.10", "172.24.4.141"), ("10.60.11.10", "172.24.4.142"),
                            ("10.60.1.10", "172.24.4.140")):
        vm = t.vm_for(fixed)
        net.serve(vm.ns)
        assert net.seen_as(inet, floating) == "172.24.4.1"
        assert net.seen_as(vm.ns, PUBLIC_V4) == floating
    assert net.seen_as(t.vm_for("10.60.10.10").ns, PUBLIC_V4) == "172.24.4.14"  # ge11
    # tenant to tenant across the two-digit interfaces, and hairpin between them
    assert net.seen_as(t.vm_for("10.60.10.10").ns, "10.60.9.10") == "10.60.10.10"
    assert net.seen_as(t.vm_for("10.60.11.10").ns, "172.24.4.141") == "172.24.4.142"


# -- check failures and rollback, on the subsystem itself ------------------------------------------

class BrokenRenderFirewall(FirewallSubsystem):
    """Plans a ruleset the kernel rejects (a rule using a set that does not exist): the
    real nftables must refuse all of it."""

    def plan(self, config, names):
        ruleset = super().plan(config, names)
        chains = tuple(
            c if c.name != "input" else type(c)(c.name, c.hook, c.rules + (
                "ip saddr @no_such_set accept",)) for c in ruleset.chains)
        return type(ruleset)(ruleset.sets, chains)


def _context(appliance):
    """An ApplyContext (netlink socket, NIC map) inside the appliance's namespace."""
    with in_netns(appliance.ns.name):
        return ApplyContext.open(InterfaceNames(str(appliance.state_dir / "interfaces.json")))


def _in_appliance(appliance, func, *args):
    """Run ``func`` in a thread inside the appliance's namespace (nft and conntrack, its
    children, inherit it)."""
    result = {}

    def target():
        with in_netns(appliance.ns.name):
            try:
                result["value"] = func(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def test_rejected_ruleset_leaves_the_previous_one_and_restore_puts_it_back(lab, tmp_path):
    payload = PAYLOADS["router-basic"]
    t = RouterTopology(lab, "router-basic", payload, vm_addressing="none")
    app = t.appliance
    app.configure_management()  # no agent: the subsystem is driven directly
    settings = Settings(state_dir=str(app.state_dir))
    config = parse_payload(payload, SERVICES)
    ctx = _context(app)
    names = ctx.kernel_names()

    def apply(subsystem, config, base):
        plan = subsystem.plan(config, names)
        snapshot = _in_appliance(app, subsystem.capture, ctx, plan, base)
        return plan, snapshot, _in_appliance(app, subsystem.apply, ctx, plan, base, snapshot)

    good = FirewallSubsystem(settings)
    plan, snapshot_empty, changes = apply(good, config, None)
    assert snapshot_empty.listing is None and changes == 1
    committed, committed_listing = handles(app), _in_appliance(app, live_listing)

    with pytest.raises(ApplyError) as error:
        apply(BrokenRenderFirewall(settings), config, plan)
    assert "nftables refused" in str(error.value) and "no_such_set" in str(error.value)
    assert handles(app) == committed  # not one handle moved

    # a good change, then the engine's rollback path
    changed = parse_payload(dict(payload, floating_ips=payload["floating_ips"] + [
        {"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"}]), SERVICES)
    _, snapshot, changes = apply(good, changed, plan)
    assert changes == 1 and "172.24.4.229" in _in_appliance(app, live_listing)
    _in_appliance(app, good.restore, ctx, snapshot, changes)
    assert "172.24.4.229" not in _in_appliance(app, live_listing)
    assert _in_appliance(app, live_listing) == committed_listing  # the committed ruleset
    assert apply(good, config, plan)[2] == 0  # and the subsystem sees nothing to do

    # restoring the "none" snapshot removes the table
    _in_appliance(app, good.restore, ctx, snapshot_empty, 1)
    assert _in_appliance(app, live_listing) is None


def test_live_table_edited_by_hand_is_replaced(lab):
    t = router(lab, "router-basic")
    app = t.appliance
    rules = app.client().get("/v1/firewall/rules").text
    app.ns.run(["nft", "add", "rule", "inet", "astara", "input", "tcp", "dport", "8080",
                "accept"])
    assert put(t, PAYLOADS["router-basic"])["changes"] >= 1
    assert "8080" not in app.ns.run(["nft", "list", "table", "inet", "astara"]).stdout
    assert app.client().get("/v1/firewall/rules").text == rules


# -- load balancer --------------------------------------------------------------------------------

def test_load_balancer_admits_listeners_only(lab, net):
    payload = PAYLOADS["loadbalancer-multi"]
    app = contract_appliance(lab, "loadbalancer-multi", payload)
    response = app.client().put_json("/v1/system/config", payload)
    assert response.status == 200, response.text
    client_ns = lab.netns("client")
    lab.plug(client_ns, "eth0", "b-app-1")  # the load balancer's network (ge1)
    client_ns.ip("addr", "add", "10.80.0.99/24", "dev", "eth0", "nodad")
    net.serve(app.ns, CLOSED_PORT)
    wait_until(lambda: pings(client_ns, "10.80.0.30"), "the VIP answers")
    if app.ns.run(["ss", "-Htln", "sport = :5432"]).stdout.strip():
        net.connect(client_ns, "10.80.0.30", 5432).close()  # the real load balancer
    else:
        net.serve(app.ns, 5432, bind="10.80.0.30")
        assert net.seen_as(client_ns, "10.80.0.30", 5432) == "10.80.0.99"
    assert net.blocked(client_ns, "10.80.0.30", CLOSED_PORT)
    nat = app.ns.run(["nft", "list", "table", "inet", "astara"]).stdout
    assert "nat" not in nat and "tcp dport { 80, 5432 } accept" in nat


def test_nftables_transactions_stay_in_the_calling_threads_namespace(lab):
    """libnftables contexts are kept per network namespace: a table made from a thread in
    one namespace never appears in another (nor in the host's)."""
    from astara_router import nftables
    first, second = lab.netns("nfa"), lab.netns("nfb")

    def in_ns(ns, script):
        return _in_appliance(type("A", (), {"ns": ns})(), nftables.run, script)

    in_ns(first, "add table inet astara_test_a")
    in_ns(second, "add table inet astara_test_b")
    in_ns(first, "add table inet astara_test_a2")
    assert first.run(["nft", "list", "tables"]).stdout.split() == [
        "table", "inet", "astara_test_a", "table", "inet", "astara_test_a2"]
    assert second.run(["nft", "list", "tables"]).stdout.split() == [
        "table", "inet", "astara_test_b"]
    assert "astara_test_a" not in in_ns(second, "list tables")


def test_nftables_frees_a_context_after_a_large_transaction(lab):
    """A context keeps its cache of the ruleset after a command: one that loaded or listed
    thousands of elements is freed (its cache is megabytes of heap), a small one is kept;
    the next transaction opens a new context and sees the kernel's state."""
    from astara_router import nftables
    if nftables._LIBRARY is None:
        pytest.skip("libnftables is not loadable: the nft program runs each transaction")
    ns = lab.netns("nfc")
    elements = ", ".join(f"198.18.{i // 250}.{i % 250 + 1} : 198.19.{i // 250}.{i % 250 + 1}"
                         for i in range(5000))
    script = ("add table ip astara_test\n"
              "add map ip astara_test fips { type ipv4_addr : ipv4_addr; }\n"
              f"add element ip astara_test fips {{ {elements} }}")
    assert len(script) >= nftables.KEEP_CONTEXT_BELOW

    def in_ns(script):
        return _in_appliance(type("A", (), {"ns": ns})(), nftables.run, script)

    in_ns(script)
    assert nftables._LIBRARY.contexts == {}
    in_ns("add element ip astara_test fips { 198.18.100.1 : 198.19.100.1 }")
    assert len(nftables._LIBRARY.contexts) == 1
    listing = in_ns("list map ip astara_test fips")
    assert "198.18.100.1 : 198.19.100.1" in listing and "198.18.19.250 : 198.19.19.250" in listing
    assert nftables._LIBRARY.contexts == {}  # the listing was large too
