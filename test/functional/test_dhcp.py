"""DHCPv4, DHCPv6 and DNS from the real agent's dnsmasq, asked by real clients (busybox
udhcpc, ISC dhclient) in tenant VM namespaces.

Every client runs with a private script that only records what it was offered (it never
configures the VM nor touches resolv.conf), inside a namespace that has its own
/etc/netns/<ns>/resolv.conf; dhclient gets -lf/-pf/-df under the test's tmpdir.
"""
import copy
import json
import pathlib
import random
import socket
import struct
import sys
import time

import pytest

from astara_lab.appliance import REPO_ROOT, contract_payloads
from astara_netns import in_netns, pid_alive
from astara_lab.peers import dhclient, udhcpc
from astara_lab.topology import RouterTopology

pytestmark = pytest.mark.netns

VALID = contract_payloads("original-orchestrator")
BASIC = VALID["router-basic"]
DUAL = VALID["router-dual-stack"]


# -- the world -------------------------------------------------------------------------------

def router(lab, name, payload, max_vms=None):
    topology = RouterTopology(lab, name, payload, vm_addressing="none", max_vms=max_vms)
    topology.appliance.configure_management()
    topology.appliance.start()
    put(topology, payload)
    return topology


def put(topology, payload, status=200):
    response = topology.appliance.client().put_json("/v1/system/config", payload)
    assert response.status == status, response.text
    return response.json()


def state(topology, name=""):
    return pathlib.Path(topology.appliance.state_dir) / "dnsmasq" / name


def dnsmasq_pid(topology):
    pid = int(state(topology, "dnsmasq.pid").read_text().split()[0])
    cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:2] == [b"dnsmasq", f"--conf-file={state(topology, 'dnsmasq.conf')}".encode()]
    return pid


def log_since(topology, offset):
    with open(state(topology, "dnsmasq.log"), "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def log_size(topology):
    return state(topology, "dnsmasq.log").stat().st_size


def file_stamps(topology):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size)
            for p in state(topology).iterdir()}


def vm_with(topology, address):
    return topology.vm_for(address).ns


def stray_vm(lab, topology, role, ifname, mac):
    """A namespace on geN's bridge with a MAC of our choice."""
    ns = lab.netns(role)
    lab.plug(ns, "eth0", topology.bridges[int(ifname[2:])], mac=mac)
    return ns


def allocation_with(payload, address):
    for network in payload["networks"]:
        for allocation in network["allocations"]:
            if address in allocation["ip_addresses"]:
                return allocation
    raise KeyError(address)


# -- clients ---------------------------------------------------------------------------------

def wait_link_local_ready(ns, dev, timeout=15):
    """DHCPv6 runs between link-local addresses: wait until DAD has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ns.ip("-6", "addr", "show", "dev", dev)
        if "fe80::" in text and "tentative" not in text:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{dev} in {ns.name} has no usable link-local address")


def dns_query(ns, server, name, qtype=1):
    """(rcode, [addresses]) of one UDP DNS query sent from inside ``ns``."""
    ident = random.getrandbits(16)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + \
        struct.pack("!HH", qtype, 1)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with in_netns(ns.name):
        sock = socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2)
        for _ in range(3):
            sock.sendto(packet, (server, 53))
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            if data[:2] == packet[:2]:
                break
        else:
            raise TimeoutError(f"no DNS answer from {server} for {name}")
    rcode, answers = data[3] & 0x0F, struct.unpack("!H", data[6:8])[0]
    offset, found = 12 + len(qname) + 4, []
    for _ in range(answers):
        while data[offset] and data[offset] < 0xC0:  # labels, then a pointer or the root
            offset += data[offset] + 1
        offset += 2 if data[offset] >= 0xC0 else 1
        rtype, _, _, length = struct.unpack("!HHIH", data[offset:offset + 10])
        offset += 10
        rdata = data[offset:offset + length]
        offset += length
        if rtype in (1, 28):
            found.append(socket.inet_ntop(socket.AF_INET if rtype == 1 else socket.AF_INET6,
                                          rdata))
    return rcode, found


# -- router-basic ----------------------------------------------------------------------------

def test_vm_gets_its_reservation_gateway_routes_dns_servers_and_mtu(lab):
    t = router(lab, "router-basic", BASIC)
    pid = dnsmasq_pid(t)  # also: started with --conf-file=<state>/dnsmasq/dnsmasq.conf only

    offer = udhcpc(lab, vm_with(t, "10.1.0.8"))
    assert offer == {"ip": "10.1.0.8", "subnet": "255.255.255.0", "router": "10.1.0.1",
                     "dns": "8.8.8.8 8.8.4.4",
                     "staticroutes": "192.168.200.0/24 10.1.0.254 0.0.0.0/0 10.1.0.1",
                     "mtu": "1450", "hostname": "10-1-0-8"}

    lease = dhclient(lab, vm_with(t, "10.1.0.12"), 4)
    assert lease["new_ip_address"] == "10.1.0.12"
    assert lease["new_routers"] == "10.1.0.1"
    assert lease["new_domain_name_servers"] == "8.8.8.8 8.8.4.4"
    assert lease["new_rfc3442_classless_static_routes"] == "24 192 168 200 10 1 0 254 0 10 1 0 1"
    assert lease["new_interface_mtu"] == "1450"

    leases = state(t, "leases").read_text()
    assert "fa:16:3e:1d:cb:d6 10.1.0.8 " in leases and "fa:16:3e:10:9f:9b 10.1.0.12 " in leases
    assert dnsmasq_pid(t) == pid


def test_unknown_mac_gets_no_lease(lab):
    t = router(lab, "router-basic", BASIC, max_vms=0)
    offset = log_size(t)
    stranger = stray_vm(lab, t, "strngr", "ge2", "02:5a:00:00:00:01")
    assert udhcpc(lab, stranger, tries=2) is None
    # It was heard and refused, not lost on the way.
    assert "DHCPDISCOVER(eth2) 02:5a:00:00:00:01 no address available" in log_since(t, offset)


def test_dns_answers_allocation_names_and_nothing_else(lab):
    t = router(lab, "router-basic", BASIC)
    vm = t.vm_for("10.1.0.8")
    vm.configure_static()
    assert dns_query(vm.ns, "10.1.0.1", "10-1-0-12.local") == (0, ["10.1.0.12"])
    assert dns_query(vm.ns, "10.1.0.1", "10-1-0-12") == (0, ["10.1.0.12"])
    assert dns_query(vm.ns, "10.1.0.1", "nothere.local")[0] == 3  # NXDOMAIN: our zone
    assert dns_query(vm.ns, "10.1.0.1", "example.com")[0] == 5  # REFUSED: no upstream


def test_reservation_change_is_a_sighup_and_the_next_discover_gets_it(lab):
    t = router(lab, "router-basic", BASIC)
    vm = vm_with(t, "10.1.0.12")
    assert udhcpc(lab, vm)["ip"] == "10.1.0.12"
    pid, stamps, offset = dnsmasq_pid(t), file_stamps(t), log_size(t)

    moved = copy.deepcopy(BASIC)
    allocation = allocation_with(moved, "10.1.0.12")
    allocation["ip_addresses"] = {"10.1.0.13": True}
    allocation["hostname"] = "10-1-0-13.local"
    put(t, moved)

    assert dnsmasq_pid(t) == pid  # no restart...
    assert file_stamps(t)["dnsmasq.conf"] == stamps["dnsmasq.conf"]
    assert f"read {state(t, 'dhcp-hosts')}" in log_since(t, offset)  # ...a SIGHUP re-read
    assert "fa:16:3e:10:9f:9b,10.1.0.13,10-1-0-13" in state(t, "dhcp-hosts").read_text()
    offer = udhcpc(lab, vm)
    assert (offer["ip"], offer["hostname"]) == ("10.1.0.13", "10-1-0-13")


def test_identical_reapply_sends_no_signal_and_writes_no_file(lab):
    t = router(lab, "router-basic", BASIC)
    pid, stamps = dnsmasq_pid(t), file_stamps(t)
    put(t, BASIC)
    assert dnsmasq_pid(t) == pid
    assert file_stamps(t) == stamps  # also the log: a SIGHUP would have logged the re-read


def test_refused_config_leaves_the_old_dnsmasq_running(lab):
    t = router(lab, "router-basic", BASIC)
    pid, stamps = dnsmasq_pid(t), file_stamps(t)
    texts = {name: state(t, name).read_text() for name in ("dnsmasq.conf", "dhcp-hosts")}

    # A main-config change dnsmasq refuses: a stateful DHCPv6 subnet shorter than /64.
    short = copy.deepcopy(BASIC)
    short["networks"][2]["subnets"].append({
        "id": "0c6a7d4e-short", "cidr": "fd5a:1::/48", "gateway_ip": "fd5a:1::1",
        "dhcp_enabled": True, "dns_nameservers": [], "host_routes": [],
        "ipv6_address_mode": "dhcpv6-stateful", "ipv6_ra_mode": "dhcpv6-stateful"})
    error = put(t, short, status=422)
    assert error["errors"][0]["path"] == "networks[2].subnets[1].cidr"
    assert "prefix length must be at least 64" in error["errors"][0]["message"]

    # A reservation dnsmasq refuses: two MACs, one address.
    clash = copy.deepcopy(BASIC)
    allocation_with(clash, "10.1.0.12")["ip_addresses"] = {"10.1.0.8": True}
    error = put(t, clash, status=422)
    assert error["errors"][0]["path"].startswith("networks[2].allocations[")
    assert "duplicate dhcp-host IP address 10.1.0.8" in error["errors"][0]["message"]

    assert dnsmasq_pid(t) == pid
    assert file_stamps(t) == stamps  # no file written, no SIGHUP logged
    assert {name: state(t, name).read_text() for name in texts} == texts
    assert udhcpc(lab, vm_with(t, "10.1.0.12"))["ip"] == "10.1.0.12"


def test_dhcp_off_stops_dnsmasq_and_on_starts_it_with_the_leases_kept(lab):
    t = router(lab, "router-basic", BASIC)
    vm = vm_with(t, "10.1.0.8")
    assert udhcpc(lab, vm)["ip"] == "10.1.0.8"
    pid = dnsmasq_pid(t)

    off = copy.deepcopy(BASIC)
    off["networks"][2]["subnets"][0]["dhcp_enabled"] = False
    put(t, off)
    assert not pid_alive(pid)
    assert sorted(p.name for p in state(t).iterdir()) == ["dnsmasq.log", "leases"]
    assert udhcpc(lab, vm, tries=2) is None

    put(t, BASIC)
    assert dnsmasq_pid(t) != pid
    assert "fa:16:3e:1d:cb:d6 10.1.0.8 " in state(t, "leases").read_text()
    assert udhcpc(lab, vm)["ip"] == "10.1.0.8"


# -- router-dual-stack, router-many-fips -----------------------------------------------------

def test_dual_stack_dhcpv6_stateful_dhcpv4_and_a_network_without_dhcp(lab):
    t = router(lab, "router-dual-stack", DUAL)
    conf = state(t, "dnsmasq.conf").read_text()
    assert "interface=eth4" not in conf and "enable-ra" not in conf

    v6vm = vm_with(t, "fd4e:7a31:2c5b:2::1a5")
    wait_link_local_ready(v6vm, "eth0")
    wait_link_local_ready(t.appliance.ns, "eth3")
    lease = dhclient(lab, v6vm, 6)
    assert lease["new_ip6_address"] == "fd4e:7a31:2c5b:2::1a5"
    assert lease["new_dhcp6_name_servers"] == "2001:4860:4860::8844"

    t.vm_for("fd4e:7a31:2c5b:2::1a5").configure_static()  # DNS is answered over IPv6 too
    assert dns_query(v6vm, "fd4e:7a31:2c5b:2::1", "fd4e-7a31-2c5b-2--2c7.local", 28) == \
        (0, ["fd4e:7a31:2c5b:2::2c7"])

    offer = udhcpc(lab, vm_with(t, "10.20.0.11"))
    assert (offer["ip"], offer["router"], offer["dns"]) == ("10.20.0.11", "10.20.0.1",
                                                            "8.8.8.8")
    offset = log_size(t)
    assert udhcpc(lab, vm_with(t, "10.30.0.21"), tries=2) is None  # static-net: DHCP off
    assert "eth4" not in log_since(t, offset)  # not even heard


def test_dhcpv6_stateless_answers_information_requests_only(lab):
    stateless = copy.deepcopy(DUAL)
    subnet = stateless["networks"][3]["subnets"][0]
    subnet["ipv6_address_mode"] = subnet["ipv6_ra_mode"] = "dhcpv6-stateless"
    t = router(lab, "router-dual-stack", stateless, max_vms=0)
    assert "[fd4e:7a31:2c5b:2::" not in state(t, "dhcp-hosts").read_text()
    v6vm = stray_vm(lab, t, "v6vm", "ge3", allocation_with(DUAL, "fd4e:7a31:2c5b:2::1a5")[
        "mac_address"])
    wait_link_local_ready(v6vm, "eth0")
    wait_link_local_ready(t.appliance.ns, "eth3")
    info = dhclient(lab, v6vm, 6, "-S")  # Information-request (reason RENEW6): no address
    assert info["new_dhcp6_name_servers"] == "2001:4860:4860::8844"
    assert "new_ip6_address" not in info


def test_many_fips_reserves_forty_hosts(lab):
    payload = VALID["router-many-fips"]
    t = router(lab, "router-many-fips", payload, max_vms=0)
    assert len(state(t, "dhcp-hosts").read_text().splitlines()) == 40
    vm40 = allocation_with(payload, "10.40.4.19")
    offer = udhcpc(lab, stray_vm(lab, t, "vm40", "ge5", vm40["mac_address"]))
    assert (offer["ip"], offer["router"]) == ("10.40.4.19", "10.40.4.1")


# -- restore, driven on the subsystem itself --------------------------------------------------

RESTORE_SCENARIO = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from astara_router.apply.dhcp import DhcpSubsystem
from astara_router.engine import ApplyContext
from astara_router.model import parse_payload
from astara_router.naming import InterfaceNames
from astara_router.settings import Settings

state_dir, payloads = sys.argv[2], json.load(open(sys.argv[3]))
configs = {k: parse_payload(v, ("router",)) for k, v in payloads.items()}
dhcp = DhcpSubsystem(Settings(state_dir=state_dir))
ctx = ApplyContext.open(InterfaceNames(os.path.join(state_dir, "interfaces.json")))
names = ctx.kernel_names()
steps = []

def record(label):
    steps.append({"step": label, "pid": dhcp.daemon.pid(),
                  "conf": os.path.exists(dhcp.conf)})

def apply(name):  # the engine's phases, on the live state (no committed base)
    plan = dhcp.plan(configs[name], names)
    dhcp.check(plan, None)
    snapshot = dhcp.capture(ctx, plan, None)
    dhcp.verify(ctx, plan, None, dhcp.apply(ctx, plan, None, snapshot))
    record(name)
    return snapshot

def restore(snapshot, name):
    dhcp.restore(ctx, snapshot, None)
    dhcp.verify(ctx, dhcp.plan(configs[name], names), None, 1)
    record("restored")

apply("basic")
for other in ("hosts_only", "conf_change", "off"):
    restore(apply(other), "basic")
snapshot = apply("off")
restore(apply("basic"), "off")
apply("basic")
print(json.dumps(steps))
"""


def test_restore_brings_back_files_and_process_state(lab):
    """capture → apply → restore for each kind of change, on the subsystem alone (the
    agent is not started, so only this subsystem's dnsmasq runs in the namespace)."""
    t = RouterTopology(lab, "router-basic", BASIC, vm_addressing="none")
    app = t.appliance.ns
    app.ip("link", "set", "eth2", "up")
    app.ip("addr", "add", "10.1.0.1/24", "dev", "eth2")
    hosts_only = copy.deepcopy(BASIC)
    allocation_with(hosts_only, "10.1.0.12")["ip_addresses"] = {"10.1.0.13": True}
    conf_change = copy.deepcopy(hosts_only)
    conf_change["networks"][2]["subnets"][0]["dns_nameservers"] = ["10.1.0.53"]
    off = copy.deepcopy(BASIC)
    off["networks"][2]["subnets"][0]["dhcp_enabled"] = False
    work = lab.tmpdir("restore")
    (work / "payloads.json").write_text(json.dumps(
        {"basic": BASIC, "hosts_only": hosts_only, "conf_change": conf_change, "off": off}))

    result = app.run([sys.executable, "-c", RESTORE_SCENARIO, REPO_ROOT,
                      t.appliance.state_dir, work / "payloads.json"])
    steps = [(s["step"], s["pid"], s["conf"]) for s in json.loads(result.stdout)]
    first = steps[0][1]
    assert first is not None
    labels = [label for label, _, _ in steps]
    assert labels == ["basic", "hosts_only", "restored", "conf_change", "restored", "off",
                      "restored", "off", "basic", "restored", "basic"]
    by_step = dict(enumerate(steps))
    assert by_step[1][1] == first and by_step[2][1] == first  # SIGHUP there and back
    assert by_step[3][1] not in (None, first)  # restart for the conf change...
    restarted = by_step[4][1]
    assert restarted not in (None, by_step[3][1])  # ...and again to go back
    assert by_step[5][1:] == (None, False)  # off: stopped, files gone
    assert by_step[6][1] is not None and by_step[6][2]  # restored: running again
    assert by_step[7][1:] == (None, False)
    assert by_step[8][1] is not None
    assert by_step[9][1:] == (None, False)  # restored to "not running"
    # The restored reservation is served again.
    assert udhcpc(lab, vm_with(t, "10.1.0.12"))["ip"] == "10.1.0.12"


def test_router_wide_serves_dhcp_on_ge10_to_ge12_like_ge2(lab):
    """geN naming past 9 (eth10..eth12): each VM gets its reservation and its own gateway."""
    payload = contract_payloads("original-orchestrator")["router-wide"]
    t = router(lab, "router-wide", payload)
    for k in (1, 9, 10, 11):  # net-01 on ge2, net-09 on ge10, net-10 on ge11, net-11 on ge12
        offer = udhcpc(lab, vm_with(t, f"10.60.{k}.10"))
        assert offer is not None, f"no lease on net-{k:02d}"
        assert (offer["ip"], offer["router"]) == (f"10.60.{k}.10", f"10.60.{k}.1")


def test_a_network_id_cannot_inject_dnsmasq_options(lab):
    """Issue 12, finding 1: ``networks[].network_id`` reached a comment line of dnsmasq.conf
    unescaped, so ``\\ndhcp-script=<path>\\n#`` made the next lease run <path> as root."""
    t = router(lab, "router-basic", BASIC)
    pid, stamps = dnsmasq_pid(t), file_stamps(t)
    marker = lab.tmpdir("dhcp-script") / "ran"
    script = marker.parent / "pwn.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    for field in ("network_id", "name"):
        hostile = copy.deepcopy(BASIC)
        hostile["networks"][2][field] = f"x\ndhcp-script={script}\n#"
        error = put(t, hostile, status=422)
        assert error["errors"][0]["path"] == f"networks[2].{field}"
    assert dnsmasq_pid(t) == pid and file_stamps(t) == stamps
    assert "dhcp-script" not in state(t, "dnsmasq.conf").read_text()
    assert udhcpc(lab, vm_with(t, "10.1.0.12"))["ip"] == "10.1.0.12"
    assert not marker.exists()
