"""BIRD 2 on a real appliance: router advertisements reach tenant VMs, BGP reaches a peer
BIRD on the "internet" side and carries exactly the tenant IPv6 prefixes, re-applies do not
disturb it, a configuration BIRD rejects leaves the running one alone, and a rollback puts
the previous daemon state back."""
import copy
import dataclasses
import ipaddress
import os
import re

import pytest

from astara_lab.appliance import contract_payloads
from astara_netns import in_netns
from astara_lab.peers import PeerBird, bgp_session, birdc, eventually, learned_prefixes
from astara_lab.topology import RouterTopology
from astara_router.engine import ApplyContext
from astara_router.errors import ApplyError
from astara_router.model import parse_payload
from astara_router.naming import InterfaceNames
from astara_router.settings import Settings

pytestmark = pytest.mark.netns

VALID = contract_payloads("original-orchestrator")
DUAL = VALID["router-dual-stack"]
SLAAC_NET = ipaddress.ip_network("fd4e:7a31:2c5b:1::/64")  # ds-net (ge2)
STATEFUL_NET = ipaddress.ip_network("fd4e:7a31:2c5b:2::/64")  # v6only-net (ge3)
TENANT_PREFIXES = {str(SLAAC_NET), str(STATEFUL_NET)}
SERVICES = ("router", "loadbalancer")


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def dual_stack(lab):
    """router-dual-stack with VMs that configure nothing themselves, a BGP peer upstream,
    and the payload applied."""
    topology = RouterTopology(lab, "router-dual-stack", DUAL, vm_addressing="none")
    peer = PeerBird(lab, topology.inet, topology.external_address(6).ip)
    topology.appliance.configure_management()
    topology.appliance.start()
    response = topology.appliance.client().put_json("/v1/system/config", DUAL)
    assert response.status == 200, response.text
    return topology, peer


def appliance_socket(topology):
    return topology.appliance.state_dir / "bird" / "bird.ctl"


def appliance_conf(topology):
    return topology.appliance.state_dir / "bird" / "bird.conf"


def bird_pid(topology):
    return int((topology.appliance.state_dir / "bird" / "bird.pid").read_text())


def vm_on(topology, network):
    return next(vm for vm in topology.vms if any(a in network for a in vm.addresses(6)))


def rdisc6(vm):
    """One solicited RA as rdisc6 prints it (BIRD may hold a reply up to its min delay)."""
    def answer():
        result = vm.ns.run(["rdisc6", "-1", "-w", "4000", "eth0"], check=False)
        return result.returncode == 0 and "Prefix" in result.stdout and result.stdout

    return eventually(answer, 60, "an RA for rdisc6")


def rdisc6_field(text, name):
    match = re.search(rf"^\s*{re.escape(name)}\s*:\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


# -- router advertisements -----------------------------------------------------------------------

def test_slaac_vm_gets_its_address_and_default_route_from_the_ra(dual_stack):
    topology, _ = dual_stack
    vm = vm_on(topology, SLAAC_NET)
    vm.ns.sysctl("net.ipv6.conf.eth0.accept_ra", 1)
    vm.ns.sysctl("net.ipv6.conf.eth0.autoconf", 1)
    expected = str(vm.addresses(6)[0])  # Neutron's EUI-64 address is exactly SLAAC's result

    def slaac_address():
        rdisc6(vm)  # solicit, instead of waiting for the periodic RA
        for link in vm.ns.ip_json("-6", "addr", "show", "dev", "eth0"):
            for address in link.get("addr_info", ()):
                if address["local"] == expected and not address.get("tentative"):
                    return address
        return None

    address = eventually(slaac_address, 30, f"SLAAC address {expected} on the VM")
    assert address["prefixlen"] == 64 and address.get("dynamic")
    routes = vm.ns.ip_json("-6", "route", "show", "default")
    assert routes and routes[0]["gateway"].startswith("fe80:") and routes[0]["protocol"] == "ra"

    ra = rdisc6(vm)
    assert rdisc6_field(ra, "Stateful address conf.") == "No"
    assert rdisc6_field(ra, "Stateful other conf.") == "No"
    assert rdisc6_field(ra, "Prefix") == str(SLAAC_NET)
    assert rdisc6_field(ra, "Autonomous address conf.") == "Yes"
    assert rdisc6_field(ra, "Recursive DNS server") == "2001:4860:4860::8888"
    assert rdisc6_field(ra, "MTU") == "1450 bytes (valid)"


def test_dhcpv6_stateful_network_gets_the_managed_flag(dual_stack):
    topology, _ = dual_stack
    ra = rdisc6(vm_on(topology, STATEFUL_NET))
    assert rdisc6_field(ra, "Stateful address conf.") == "Yes"
    assert rdisc6_field(ra, "Prefix") == str(STATEFUL_NET)
    assert rdisc6_field(ra, "Autonomous address conf.") == "No"
    assert rdisc6_field(ra, "On-link") == "Yes"
    assert rdisc6_field(ra, "Recursive DNS server") == "2001:4860:4860::8844"
    # Only the subnet's prefix is announced (the ds-net RA carries only ds-net's).
    assert re.findall(r"^\s*Prefix\s*:\s*(\S+)", ra, re.MULTILINE) == [str(STATEFUL_NET)]


# -- BGP -----------------------------------------------------------------------------------------

def wait_until_the_peer_learned_the_tenant_prefixes(peer):
    def peer_learned_exactly_the_tenant_prefixes():
        learned = learned_prefixes(peer.socket, "appliance")
        assert learned == TENANT_PREFIXES
        return True

    eventually(peer_learned_exactly_the_tenant_prefixes, 20, "the peer's routes")


def test_bgp_peer_learns_exactly_the_tenant_prefixes_and_reapply_keeps_the_session(dual_stack):
    topology, peer = dual_stack
    socket = appliance_socket(topology)
    assert bird_pid(topology) in topology.appliance.ns.pids()  # inside the appliance netns

    eventually(lambda: bgp_session(peer.socket), 60, "BGP Established on the peer")
    name, since = eventually(lambda: bgp_session(socket), 10, "BGP Established on the appliance")
    assert "198.51.100.12" in birdc(socket, "show", "status")  # router id: external IPv4

    wait_until_the_peer_learned_the_tenant_prefixes(peer)
    assert learned_prefixes(socket, name) == set()  # nothing imported from the peer

    pid, mtime = bird_pid(topology), os.stat(appliance_conf(topology)).st_mtime_ns
    peer_since = bgp_session(peer.socket)[1]
    response = topology.appliance.client().put_json("/v1/system/config", DUAL)
    assert response.status == 200, response.text
    assert bird_pid(topology) == pid
    assert os.stat(appliance_conf(topology)).st_mtime_ns == mtime
    assert bgp_session(socket) == (name, since)
    assert bgp_session(peer.socket)[1] == peer_since
    assert learned_prefixes(peer.socket, "appliance") == TENANT_PREFIXES


def test_config_rejected_by_bird_leaves_the_running_one(dual_stack):
    topology, peer = dual_stack
    socket = appliance_socket(topology)
    session = eventually(lambda: bgp_session(socket), 60, "BGP Established")
    # The UPDATEs follow the session's establishment: the state compared at the end is
    # the one after the peer has the routes, not a race with their arrival.
    wait_until_the_peer_learned_the_tenant_prefixes(peer)
    pid, text = bird_pid(topology), appliance_conf(topology).read_text()
    files = sorted(os.listdir(appliance_conf(topology).parent))
    digest = birdc(socket, "eval", "astara_config_digest")

    # A second external IPv6 subnet whose gateway is "::": BIRD would refuse "neighbor ::",
    # and the model refuses it first (model/semantics.py: a gateway lies on its network).
    broken = copy.deepcopy(DUAL)
    external = next(n for n in broken["networks"] if n["network_type"] == "external")
    external["subnets"].append({"id": "bad-v6", "cidr": "2001:db8:c0de:2::/64",
                                "gateway_ip": "::", "dhcp_enabled": False,
                                "dns_nameservers": [], "host_routes": []})
    index = broken["networks"].index(external)
    response = topology.appliance.client().put_json("/v1/system/config", broken)
    assert response.status == 422, response.text
    error = response.json()
    assert "is not on the network" in error["message"]
    assert error["errors"][0]["path"] == f"networks[{index}].subnets[2].gateway_ip"

    # The same gateway on a model built past the parser reaches the routing subsystem's
    # check: the real `bird -p` refuses it, mapped to the field, beside the running BIRD.
    from astara_router.apply.routing import RoutingSubsystem
    external["subnets"][2]["gateway_ip"] = "2001:db8:c0de:2::1"
    config = parse_payload(broken, SERVICES)
    net = config.networks[index]
    bad = dataclasses.replace(net.subnets[2], gateway_ip=ipaddress.ip_address("::"))
    config = dataclasses.replace(config, networks=tuple(
        dataclasses.replace(n, subnets=n.subnets[:2] + (bad,)) if n is net else n
        for n in config.networks))
    state = topology.appliance.state_dir
    subsystem = RoutingSubsystem(Settings(state_dir=str(state)))
    with in_netns(topology.appliance.ns.name):
        names = ApplyContext.open(InterfaceNames(str(state / "interfaces.json"))).kernel_names()
        with pytest.raises(ApplyError) as refused:
            subsystem.check(subsystem.plan(config, names), None)
    assert refused.value.status == 422 and "bird -p rejected" in refused.value.message
    assert refused.value.path == f"networks[{index}].subnets[2].gateway_ip"

    assert bird_pid(topology) == pid
    assert appliance_conf(topology).read_text() == text
    assert not os.path.exists(f"{appliance_conf(topology)}.new")
    assert sorted(os.listdir(appliance_conf(topology).parent)) == files  # no candidate left
    assert birdc(socket, "eval", "astara_config_digest") == digest
    assert bgp_session(socket) == session
    assert learned_prefixes(peer.socket, "appliance") == TENANT_PREFIXES


# -- the subsystem's own rollback, with a real daemon --------------------------------------------

def without_network(payload, ifname):
    trimmed = copy.deepcopy(payload)
    trimmed["networks"] = [n for n in trimmed["networks"]
                           if n["interface"]["ifname"] != ifname]
    return trimmed


def without_ipv6(payload):
    trimmed = copy.deepcopy(payload)
    for network in trimmed["networks"]:
        network["subnets"] = [s for s in network["subnets"]
                              if ipaddress.ip_network(s["cidr"]).version == 4]
    return trimmed


def test_restore_brings_back_the_previous_daemon_state(lab):
    from astara_router.apply.routing import RoutingSubsystem

    topology = RouterTopology(lab, "router-dual-stack", DUAL)  # NICs only, no agent
    state = lab.tmpdir("routing-state")
    subsystem = RoutingSubsystem(Settings(state_dir=str(state)))
    configs = {name: parse_payload(body, SERVICES) for name, body in {
        "full": DUAL, "fewer": without_network(DUAL, "ge3"), "none": without_ipv6(DUAL)}.items()}
    conf = state / "bird" / "bird.conf"

    with in_netns(topology.appliance.ns.name):
        ctx = ApplyContext.open(InterfaceNames(str(state / "interfaces.json")))
        names = ctx.kernel_names()
        try:
            def converge(name):  # the engine's phases, from the live state
                plan = subsystem.plan(configs[name], names)
                subsystem.check(plan, None)
                snapshot = subsystem.capture(ctx, plan, None)
                changes = subsystem.apply(ctx, plan, None, snapshot)
                subsystem.verify(ctx, plan, None, changes)
                return snapshot, changes

            nothing, changes = converge("full")
            assert changes == 1
            pid, full_text = subsystem.daemon.pid(), conf.read_text()
            assert pid in topology.appliance.ns.pids()
            assert converge("full")[1] == 0

            # running → running with another config → back: reconfigured, never restarted
            full, changes = converge("fewer")
            assert changes == 1 and '"eth3"' not in conf.read_text()
            subsystem.restore(ctx, full, changes)
            assert conf.read_text() == full_text and subsystem.daemon.pid() == pid
            assert converge("full")[1] == 0  # verify: bird runs the full config again

            # running → stopped → back: started again with the old file
            full, changes = converge("none")
            assert changes == 2  # stopped + file removed
            assert subsystem.daemon.pid() is None and not conf.exists()
            subsystem.restore(ctx, full, changes)
            assert conf.read_text() == full_text and subsystem.daemon.pid() is not None
            assert converge("full")[1] == 0

            # back to where nothing ran
            subsystem.restore(ctx, nothing, 1)
            assert subsystem.daemon.pid() is None and not conf.exists()
            assert converge("none")[1] == 0
        finally:
            subsystem.daemon.stop()
