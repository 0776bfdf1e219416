"""Host name (files always, kernel host name only in the agent's own UTS namespace) and
gratuitous ARP / unsolicited NA for addresses that appear, seen from a neighbour."""
import copy
import ipaddress
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from astara_lab.appliance import (Appliance, contract_appliance, contract_payloads,
                                  controller_node, management_cidr, nic_macs)
from astara_netns import in_netns
from astara_lab.topology import RouterTopology

pytestmark = pytest.mark.netns

PAYLOADS = contract_payloads("original-orchestrator")
BASIC = PAYLOADS["router-basic"]
DUAL = PAYLOADS["router-dual-stack"]
BASIC_EXT_MAC = "fa:16:3e:59:11:a7"  # router-basic ge1
DUAL_EXT_MAC = "fa:16:3e:5c:f2:10"  # router-dual-stack ge1
NEW_FIP = "172.24.4.229"
MARKER = "198.18.0.99"  # announced by hand to know that everything before it arrived
GARP_PROGRAM = pathlib.Path(sys.executable).parent / "astara-gratuitous-arp"
ETH_P_ALL, PACKET_OUTGOING = 3, 4


def put(appliance, payload):
    response = appliance.client().put_json("/v1/system/config", payload)
    assert response.status == 200, response.text
    return response.json()


# -- host name --------------------------------------------------------------------------------

def host_files():
    return {path: pathlib.Path(path).read_bytes() for path in ("/etc/hostname", "/etc/hosts")
            if pathlib.Path(path).exists()}


def test_namespace_appliance_writes_its_files_and_leaves_the_host_alone(lab):
    host_name, host_etc = socket.gethostname(), host_files()
    appliance = contract_appliance(lab, "router-basic", BASIC)
    put(appliance, BASIC)
    etc = pathlib.Path(appliance.state_dir) / "etc"
    assert (etc / "hostname").read_text() == "ak-baef51913f354071ab020eae853d4ffe\n"
    assert (etc / "hosts").read_text().splitlines() == [
        "127.0.0.1  localhost", "::1  localhost ip6-localhost ip6-loopback",
        "fdca:3ba5:a17a:acda:f816:3eff:fe67:416c  ak-baef51913f354071ab020eae853d4ffe"]
    assert socket.gethostname() == host_name and host_files() == host_etc

    mtimes = {p.name: p.stat().st_mtime_ns for p in etc.iterdir()}
    assert put(appliance, BASIC)["changes"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in etc.iterdir()} == mtimes

    renamed = dict(BASIC, hostname="router-7.example")
    put(appliance, renamed)
    assert (etc / "hostname").read_text() == "router-7.example\n"
    assert (etc / "hosts").read_text().endswith("  router-7.example\n")
    assert socket.gethostname() == host_name and host_files() == host_etc


def test_agent_with_its_own_uts_namespace_sets_the_kernel_host_name(lab):
    host_name = socket.gethostname()
    mgmt = lab.bridge("b-mgmt")
    ctl = controller_node(lab, mgmt)
    appliance = Appliance(lab, "app", nic_macs("router-basic", BASIC), management_cidr(BASIC),
                          mgmt, controller=ctl)
    appliance.configure_management()
    appliance.start(wrapper=("unshare", "--uts"))

    def agent_hostname():
        return subprocess.run(["nsenter", "--target", str(appliance.proc.pid), "--uts",
                               "hostname"], capture_output=True, text=True,
                              check=True).stdout.strip()

    put(appliance, BASIC)
    assert agent_hostname() == "ak-baef51913f354071ab020eae853d4ffe"
    assert socket.gethostname() == host_name

    injected = dict(BASIC, hostname="evil\n10.0.0.1  bank.example")
    response = appliance.client().put_json("/v1/system/config", injected)
    assert response.status == 422 and "hostname" in response.text
    assert agent_hostname() == "ak-baef51913f354071ab020eae853d4ffe"
    assert "bank" not in (pathlib.Path(appliance.state_dir) / "etc" / "hosts").read_text()


# -- gratuitous ARP / unsolicited NA ------------------------------------------------------------

def ones_complement_sum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def mac_text(raw):
    return ":".join(f"{b:02x}" for b in raw)


def parse_announcement(frame):
    """A gratuitous ARP or a neighbour advertisement as a dict, else None."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0806:
        _, _, _, _, op, sha, spa, _, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
        if spa != tpa:
            return None  # an ordinary ARP request/reply
        return {"kind": "garp", "op": op, "mac": mac_text(sha),
                "address": str(ipaddress.IPv4Address(spa)), "dst": mac_text(frame[:6])}
    if ethertype == 0x86DD and frame[20] == 58 and frame[54] == 136:
        payload_length, hop_limit = struct.unpack("!H", frame[18:20])[0], frame[21]
        src, dst = frame[22:38], frame[38:54]
        message = frame[54:54 + payload_length]
        pseudo = src + dst + struct.pack("!I3xB", len(message), 58)
        flags, target = struct.unpack("!I16s", message[4:24])
        options = message[24:]
        tlla = mac_text(options[2:8]) if options[:2] == b"\x02\x01" else None
        return {"kind": "na", "target": str(ipaddress.IPv6Address(target)),
                "flags": flags, "hop_limit": hop_limit, "tlla": tlla,
                "dst_mac": mac_text(frame[:6]), "dst": str(ipaddress.IPv6Address(dst)),
                "checksum_ok": ones_complement_sum(pseudo + message) == 0xFFFF}
    return None


class Capture:
    """Every frame a namespace's interface receives, from a raw socket made before the
    action under test (so nothing is missed while a sniffer starts)."""

    def __init__(self, ns, ifname="eth0"):
        with in_netns(ns.name):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.settimeout(0.1)
        self.frames = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if address[2] != PACKET_OUTGOING:
                self.frames.append(frame)

    def announcements(self):
        return [a for a in map(parse_announcement, list(self.frames)) if a]

    def wait_for(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [a for a in self.announcements() if predicate(a)]
            if found:
                return found
            time.sleep(0.02)
        raise TimeoutError(f"no such announcement; saw {self.announcements()}")

    def clear(self):
        self.frames.clear()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def capture_of():
    captures = []

    def make(ns):
        captures.append(Capture(ns))
        return captures[-1]
    yield make
    for capture in captures:
        capture.close()


def neighbour_mac(ns, address):
    entries = ns.ip_json("neigh", "show", address, "dev", "eth0")
    return entries[0].get("lladdr") if entries else None


def wait_neighbour(ns, address, mac, timeout=10):
    deadline = time.monotonic() + timeout
    while neighbour_mac(ns, address) != mac and time.monotonic() < deadline:
        time.sleep(0.02)
    return neighbour_mac(ns, address)


def test_a_new_floating_ip_is_announced_and_a_reapply_announces_nothing(lab, capture_of):
    topology = RouterTopology(lab, "router-basic", BASIC, vm_addressing="none")
    appliance, inet = topology.appliance, topology.inet
    appliance.configure_management()
    appliance.start()
    capture = capture_of(inet)
    put(appliance, BASIC)
    # The first generation's announcements go out after its answer: let them all arrive
    # (the last one sent is the reply form of the highest external address).
    capture.wait_for(lambda a: a.get("address") == "172.24.4.228" and a["op"] == 2)
    capture.clear()
    inet.ip("neigh", "replace", NEW_FIP, "lladdr", "02:00:00:00:00:01", "dev", "eth0",
            "nud", "stale")
    more = copy.deepcopy(BASIC)
    more["floating_ips"].append({"fixed_ip": "10.1.0.12", "floating_ip": NEW_FIP})
    put(appliance, more)
    capture.wait_for(lambda a: a.get("address") == NEW_FIP and a["op"] == 2)
    garps = [a for a in capture.announcements() if a["kind"] == "garp"]
    # only what appeared, in both forms, from the external NIC, broadcast
    assert sorted((a["address"], a["op"]) for a in garps) == [(NEW_FIP, 1), (NEW_FIP, 2)]
    assert {(a["mac"], a["dst"]) for a in garps} == {(BASIC_EXT_MAC, "ff:ff:ff:ff:ff:ff")}
    assert wait_neighbour(inet, NEW_FIP, BASIC_EXT_MAC) == BASIC_EXT_MAC

    capture.clear()
    assert put(appliance, more)["changes"] == 0
    # The console script, by hand: once its frame arrived, anything the re-apply had sent
    # (synchronously, before answering) has arrived too.
    appliance.ns.run([GARP_PROGRAM, "eth1", MARKER])
    capture.wait_for(lambda a: a.get("address") == MARKER)
    assert [a for a in capture.announcements() if a.get("address") != MARKER] == []


def test_dual_stack_external_addresses_get_garp_and_unsolicited_na(lab, capture_of):
    topology = RouterTopology(lab, "router-dual-stack", DUAL, vm_addressing="none")
    appliance, inet = topology.appliance, topology.inet
    ext6 = str(topology.external_address(6).ip)
    capture = capture_of(inet)
    inet.ip("-6", "neigh", "replace", ext6, "lladdr", "02:00:00:00:00:01", "dev", "eth0",
            "nud", "stale")
    appliance.configure_management()
    appliance.start()
    put(appliance, DUAL)

    # sent once duplicate address detection of the external (non-nodad) address is over
    (na,) = capture.wait_for(lambda a: a["kind"] == "na" and a["target"] == ext6)
    assert na == {"kind": "na", "target": ext6, "flags": 0xA0000000,  # router + override
                  "hop_limit": 255, "tlla": DUAL_EXT_MAC, "dst_mac": "33:33:00:00:00:01",
                  "dst": "ff02::1", "checksum_ok": True}
    assert wait_neighbour(inet, ext6, DUAL_EXT_MAC) == DUAL_EXT_MAC
    garps = {(a["address"], a["mac"]) for a in capture.announcements() if a["kind"] == "garp"}
    assert garps == {("198.51.100.12", DUAL_EXT_MAC), ("198.51.100.50", DUAL_EXT_MAC)}
