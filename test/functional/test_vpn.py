"""IPsec with the real agent and a real charon (kernel-libipsec here: this kernel has no
ESP). Two appliances with mirrored payloads — site A is router-vpn.json pointed at site B,
site B is derived from it — on one external segment with an "internet" host:

    vma 10.8.0.8 ── appa ──┐                ┌── appb ── vmb 192.168.240.8, 192.168.241.8
                           └── ext bridge ──┘
                                   │
                                 inet (198.51.100.1, the public host 198.51.100.200)
"""
import copy
import ipaddress
import json
import os
import socket
import stat
import sys
import textwrap

import pytest

from astara_lab.appliance import (REPO_ROOT, Appliance, contract_appliance,
                                  contract_payloads, controller_node, management_cidr,
                                  nic_macs)
from astara_lab.peers import Connection, PeerServer, eventually
from astara_lab.topology import PUBLIC_V4
from astara_netns import pid_alive
from astara_router.model import parse_payload
from astara_router.render.vpn import AEAD, DH_GROUPS, ENCRYPTION, INTEGRITY

pytestmark = pytest.mark.netns

VPN = contract_payloads()["router-vpn"]
PSK = VPN["vpn"]["ipsec"][0]["ipsec_connections"][0]["psk"]
A_EXTERNAL, B_EXTERNAL = "198.51.100.17", "198.51.100.18"
B_EXTERNAL_V6 = "2001:db8:c0de:1:f816:3eff:fe54:b0b"
VM_A, VM_B, VM_B2 = "10.8.0.8", "192.168.240.8", "192.168.241.8"
VM_A_FLOATING = next(f["floating_ip"] for f in VPN["floating_ips"] if f["fixed_ip"] == VM_A)
DEAD_PEER = "198.51.100.99"  # nobody answers there


def connection_of(payload, index=0):
    return payload["vpn"]["ipsec"][0]["ipsec_connections"][index]


def site_a_payload(ike_version="v1"):
    """router-vpn.json with its peer at site B (and ``ike_version``)."""
    payload = copy.deepcopy(VPN)
    connection = connection_of(payload)
    connection["peer_address"] = connection["peer_id"] = B_EXTERNAL
    connection["ikepolicy"]["ike_version"] = ike_version
    return payload


def site_b_payload(a):
    """The mirror of ``a``: its own management/external addresses, one tenant network with
    the two subnets A's peer endpoint group names, A's subnet as the peer; it waits for A
    to initiate."""
    b = copy.deepcopy(a)
    b["hostname"] = "ak-site-b"
    b["floating_ips"] = []
    management, external, internal = b["networks"]
    management["interface"]["addresses"] = ["fdca:3ba5:a17a:acda:f816:3eff:fe98:28e7/64"]
    external["interface"]["addresses"] = [f"{B_EXTERNAL}/24", f"{B_EXTERNAL_V6}/64"]
    internal["interface"]["addresses"] = ["192.168.240.1/24", "192.168.241.1/24"]
    template = internal["subnets"][0]
    internal["subnets"] = [dict(template, id=f"site-b-{n}", cidr=f"192.168.{n}.0/24",
                                gateway_ip=f"192.168.{n}.1", host_routes=[])
                           for n in (240, 241)]
    internal["allocations"] = []
    service = b["vpn"]["ipsec"][0]
    service.update(external_v4_ip=B_EXTERNAL, external_v6_ip=B_EXTERNAL_V6)
    connection = connection_of(b)
    connection["peer_address"] = connection["peer_id"] = A_EXTERNAL
    connection["initiator"] = "response-only"  # A initiates: one IKE_SA, no duplicates
    connection["local_ep_group"]["endpoints"] = ["site-b-240", "site-b-241"]
    connection["peer_ep_group"]["endpoints"] = ["10.8.0.0/24"]
    return b


def with_dead_peer(payload):
    """``payload`` plus a response-only connection to a peer that never answers: charon
    keeps running when the first connection goes."""
    extra = copy.deepcopy(connection_of(payload))
    extra.update(id="dead-peer", peer_address=DEAD_PEER, peer_id=DEAD_PEER,
                 initiator="response-only", psk="another-secret")
    extra["peer_ep_group"]["endpoints"] = ["192.168.250.0/24"]
    payload = copy.deepcopy(payload)
    payload["vpn"]["ipsec"][0]["ipsec_connections"].append(extra)
    return payload


class Site:
    """An appliance with its tenant VM on its own tenant bridge; ge1 on the shared ext."""

    def __init__(self, lab, tag, payload, macs, mgmt_bridge, ext_bridge, ctl, vm_addresses):
        tenant = lab.bridge(f"b-{tag}-int")
        self.appliance = Appliance(lab, f"app{tag}", macs, management_cidr(payload),
                                   mgmt_bridge, bridges={1: ext_bridge, 2: tenant},
                                   controller=ctl)
        self.vm = lab.netns(f"vm{tag}")
        lab.plug(self.vm, "eth0", tenant)
        internal = payload["networks"][2]
        for address in vm_addresses:
            subnet = next(s for s in internal["subnets"]
                          if ipaddress.ip_address(address) in ipaddress.ip_network(s["cidr"]))
            prefix = ipaddress.ip_network(subnet["cidr"]).prefixlen
            self.vm.ip("addr", "add", f"{address}/{prefix}", "dev", "eth0")
        gateway = internal["subnets"][0]["gateway_ip"]
        self.vm.ip("route", "add", "default", "via", gateway)

    @property
    def vici_socket(self):
        return str(self.appliance.state_dir / "vpn" / "run" / "charon.vici")

    def vici(self, method, *args):
        """Ask this appliance's charon (its socket is a file: reachable from here)."""
        import vici
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(self.vici_socket)
            result = getattr(vici.Session(sock), method)(*args)
            return list(result) if method.startswith("list_") else result

    def children(self):
        """{child name: its installed SAs} (both ends may have initiated: duplicates)."""
        found = {}
        for item in self.vici("list_sas"):
            for sa in item.values():
                for child in sa.get("child-sas", {}).values():
                    if child["state"] == b"INSTALLED":
                        found.setdefault(child["name"].decode(), []).append(child)
        return found

    def charon_log(self):
        return (self.appliance.state_dir / "vpn" / "charon.log").read_text()

    def charon_pid(self):
        return self.appliance.recorded_pid("vpn/run/charon.pid")


@pytest.fixture(params=["v1", "v2", "v2-both-initiate"])
def sites(lab, request):
    a_payload = site_a_payload(request.param[:2])
    b_payload = site_b_payload(a_payload)
    if request.param.endswith("both-initiate"):  # Neutron's default on both ends
        connection_of(b_payload)["initiator"] = "bi-directional"
    mgmt, ext = lab.bridge("b-mgmt"), lab.bridge("b-ext")
    ctl = controller_node(lab, mgmt)
    inet = lab.netns("inet", forwarding=True)
    lab.plug(inet, "eth0", ext)
    inet.ip("addr", "add", "198.51.100.1/24", "dev", "eth0")
    inet.ip("addr", "add", f"{PUBLIC_V4}/32", "dev", "lo")
    a = Site(lab, "a", a_payload, nic_macs("router-vpn", a_payload), mgmt, ext, ctl, [VM_A])
    b = Site(lab, "b", b_payload, ["02:a5:0b:00:00:00", "02:a5:0b:00:00:01",
                                   "02:a5:0b:00:00:02"], mgmt, ext, ctl, [VM_B, VM_B2])
    for site, payload in ((a, a_payload), (b, b_payload)):
        site.payload = payload
        site.appliance.configure_management()
        site.appliance.start()
    servers = [PeerServer(inet), PeerServer(a.vm), PeerServer(b.vm)]
    yield a, b, inet
    for server in servers:
        server.close()


def reached_as(ns, host, timeout=3):
    """The source address ``host``'s PeerServer saw for a connection from ``ns``."""
    connection = Connection(ns, host, timeout=timeout)
    try:
        return connection.ask()
    finally:
        connection.close()


def quietly(check):
    """``check`` for eventually(): not there yet while it raises OSError (no socket yet,
    connection refused or timed out)."""
    def attempt():
        try:
            return check()
        except OSError:
            return False
    return attempt


def unreachable(ns, host):
    try:
        reached_as(ns, host, timeout=2)
    except OSError:
        return True
    return False


def test_mirrored_appliances_carry_tenant_traffic_through_the_tunnel(sites):
    a, b, inet = sites
    for site in (b, a):  # the responder first: A's first IKE message gets an answer
        response = site.appliance.client().put_json("/v1/system/config", site.payload)
        assert response.status == 200, response.text
    name = connection_of(a.payload)["id"]
    ikev1 = connection_of(a.payload)["ikepolicy"]["ike_version"] == "v1"
    # IKEv1: one CHILD_SA per subnet pair; IKEv2: one for all
    wanted = {f"{name}-1", f"{name}-2"} if ikev1 else {name}
    eventually(quietly(lambda: set(a.children()) == wanted == set(b.children())), 60,
               "both CHILD_SAs installed on both sides")

    # through the tunnel, with the real addresses (no SNAT); the internet still via SNAT
    eventually(quietly(lambda: reached_as(a.vm, VM_B) == VM_A), 20, "vma reaches vmb")
    assert reached_as(a.vm, VM_B2) == VM_A
    assert reached_as(b.vm, VM_A) == VM_B
    assert reached_as(a.vm, PUBLIC_V4) == VM_A_FLOATING  # 1:1 NAT, as router-vpn.json says
    assert reached_as(b.vm, PUBLIC_V4) == B_EXTERNAL
    # the tunnel really carried it: ESP counters moved, and inet has no route to the
    # tenant subnets (without the tunnel nothing could arrive)
    assert all(sum(int(sa["bytes-in"]) for sa in sas) > 0 for sas in a.children().values())
    assert "192.168.240" not in inet.ip("route", "show")

    # an identical push changes nothing and keeps the SAs
    def sa_ids():
        return {child: sorted(sa["uniqueid"] for sa in sas)
                for child, sas in a.children().items()}

    before = sa_ids()
    again = a.appliance.client().put_json("/v1/system/config", a.payload)
    assert again.status == 200 and again.json()["changes"] == 0
    assert sa_ids() == before

    # the PSK: written 0600 and hex-encoded, never returned by a GET nor logged
    for site in (a, b):
        swanctl = site.appliance.state_dir / "vpn" / "swanctl.conf"
        assert stat.S_IMODE(os.stat(swanctl).st_mode) == 0o600
        assert PSK not in swanctl.read_text() and PSK.encode().hex() in swanctl.read_text()
        config = site.appliance.client().get("/v1/system/config")
        assert PSK not in config.text and "<redacted>" in config.text
        charon_log = (site.appliance.state_dir / "vpn" / "charon.log").read_text()
        assert PSK not in site.appliance.log() and PSK not in charon_log
        assert "established" in charon_log.lower()  # the log is there and written

    # removing the connection unloads it and tears its SAs down; charon stays for the other
    pid = a.charon_pid()
    response = a.appliance.client().put_json("/v1/system/config", with_dead_peer(a.payload))
    assert response.status == 200, response.text
    remaining = with_dead_peer(a.payload)
    del remaining["vpn"]["ipsec"][0]["ipsec_connections"][0]
    response = a.appliance.client().put_json("/v1/system/config", remaining)
    assert response.status == 200, response.text
    assert a.charon_pid() == pid  # a load, not a restart
    assert [list(c) for c in a.vici("list_conns")] == [["dead-peer"]]
    assert a.vici("list_sas") == [] and a.children() == {}, a.charon_log()[-3000:]
    if connection_of(b.payload)["initiator"] == "response-only":  # one IKE_SA: its DELETE
        eventually(quietly(lambda: b.children() == {}), 20, "site B saw the delete")
    assert unreachable(a.vm, VM_B)
    assert reached_as(a.vm, PUBLIC_V4) == VM_A_FLOATING

    # no connection left: charon stops, its TUN and files go
    response = a.appliance.client().put_json("/v1/system/config", dict(remaining, vpn={}))
    assert response.status == 200, response.text
    assert a.charon_pid() is None and not pid_alive(pid)
    assert "ipsec0" not in a.appliance.ns.link_names()
    assert not (a.appliance.state_dir / "vpn" / "swanctl.conf").exists()


@pytest.mark.parametrize("sites", ["v2-both-initiate"], indirect=True)
def test_a_push_lets_the_peers_negotiation_in_progress_finish(sites, lab):
    """Until the peer's IKE_AUTH names a connection, the responder's IKE_SA has none
    (charon lists it as "(unnamed)"): a push that loads the connections again must let
    it finish, not take it for an SA of a removed connection. Here only B initiates, and
    its IKE_AUTH is held back on the external bridge while A is pushed."""
    a, b, _ = sites
    connection_of(a.payload)["initiator"] = "response-only"
    fabric = lab.fabric()
    fabric.run(["nft", "-f", "-"], input=textwrap.dedent(f"""\
        table bridge hold-ike-auth {{
            chain forward {{
                type filter hook forward priority 0;
                ip saddr {B_EXTERNAL} udp dport 4500 drop
            }}
        }}
        """))
    for site in (a, b):
        response = site.appliance.client().put_json("/v1/system/config", site.payload)
        assert response.status == 200, response.text

    def half_open():
        return [sa["uniqueid"] for item in a.vici("list_sas") for sa in item.values()
                if sa["state"] == b"CONNECTING"]

    eventually(quietly(half_open), 20, "B's IKE_SA_INIT answered, its IKE_AUTH held")
    negotiating = half_open()
    response = a.appliance.client().put_json("/v1/system/config", with_dead_peer(a.payload))
    assert response.status == 200 and response.json()["changes"] > 0, response.text
    assert half_open() == negotiating, a.charon_log()[-3000:]

    # B retransmits its IKE_AUTH: it completes the IKE_SA A kept
    fabric.run(["nft", "delete", "table", "bridge", "hold-ike-auth"])
    name = connection_of(a.payload)["id"]
    eventually(quietly(lambda: set(a.children()) == {name} == set(b.children())), 30,
               "the CHILD_SA installed on both sides")
    eventually(quietly(lambda: reached_as(a.vm, VM_B) == VM_A), 20, "vma reaches vmb")


def test_contract_vpn_body_loads_its_connection(lab):
    """router-vpn.json as the orchestrator sent it: 200, the connection with both subnet
    pairs in charon, the pairs exempt from SNAT."""
    appliance = contract_appliance(lab, "router-vpn", VPN)
    response = appliance.client().put_json("/v1/system/config", VPN)
    assert response.status == 200, response.text
    assert PSK not in response.text
    site = Site.__new__(Site)
    site.appliance = appliance
    conns = site.vici("list_conns")
    name = connection_of(VPN)["id"]
    children = conns[0][name]["children"]
    assert {child: (spec["local-ts"], spec["remote-ts"]) for child, spec in children.items()} \
        == {f"{name}-1": ([b"10.8.0.0/24"], [b"192.168.240.0/24"]),
            f"{name}-2": ([b"10.8.0.0/24"], [b"192.168.241.0/24"])}
    assert conns[0][name]["remote_addrs"] == [b"203.0.113.10"]
    assert site.vici("get_shared")["keys"] == [f"ike-{name}".encode()]
    rules = appliance.client().get("/v1/firewall/rules").text
    assert "10.8.0.0/24 . 192.168.240.0/24" in rules
    assert "ip saddr . ip daddr @vpn_tunnels accept" in rules
    # every algorithm the renderer may ask for is one this charon provides
    algorithms = site.vici("get_algorithms")
    provided = {name.decode() if isinstance(name, bytes) else name
                for group in algorithms.values() for name in group}
    missing = [keyword for keyword in (*ENCRYPTION.values(), *AEAD.values(),
                                       *INTEGRITY.values(), *DH_GROUPS.values())
               if algorithm_name(keyword) not in provided]
    assert not missing, (missing, sorted(provided))


def algorithm_name(keyword):
    """The name charon lists (get-algorithms) for a proposal keyword."""
    fixed = {"3des": "3DES_CBC", "sha1": "HMAC_SHA1_96", "sha256": "HMAC_SHA2_256_128",
             "sha384": "HMAC_SHA2_384_192", "sha512": "HMAC_SHA2_512_256",
             "aesxcbc": "AES_XCBC_96", "curve25519": "CURVE_25519",
             "modp1024s160": "MODP_1024_160", "modp2048s224": "MODP_2048_224",
             "modp2048s256": "MODP_2048_256"}
    if keyword in fixed:
        return fixed[keyword]
    for prefix, name in (("modp", "MODP_"), ("ecp", "ECP_")):
        if keyword.startswith(prefix):
            return name + keyword[len(prefix):]
    for mode in ("gcm", "ccm"):
        if mode in keyword:
            return f"AES_{mode.upper()}_{keyword.split(mode)[1]}"
    return "AES_CTR" if keyword.endswith("ctr") else "AES_CBC"


@pytest.mark.parametrize("changes,path", [
    ({"dpd": {"action": "restart-by-peer", "interval": 30, "timeout": 120}}, "dpd.action"),
    ({"ipsecpolicy": {"transform_protocol": "ah"}}, "ipsecpolicy.transform_protocol"),
])
def test_refused_vpn_changes_nothing(lab, changes, path):
    appliance = contract_appliance(lab, "router-vpn", VPN)
    basic = copy.deepcopy(VPN)
    basic["vpn"] = {}
    assert appliance.client().put_json("/v1/system/config", basic).status == 200
    before = appliance.dump()
    refused = copy.deepcopy(VPN)
    connection_of(refused).update(changes)
    response = appliance.client().put_json("/v1/system/config", refused)
    assert response.status == 422, response.text
    assert f"ipsec_connections[0].{path}" in response.json()["message"]
    assert appliance.dump() == before
    assert not (appliance.state_dir / "vpn" / "run" / "charon.pid").exists()


ROLLBACK = textwrap.dedent("""
    import json, sys
    from astara_router import settings as settings_mod
    from astara_router.apply.vpn import VpnSubsystem, loaded_state
    from astara_router.engine import Engine
    from astara_router.errors import ApplyError

    class FailsAfterVpn:
        '''A later subsystem that refuses the second generation (test double).'''
        name = "fails"
        def plan(self, config, names): return config.hostname
        def check(self, plan, base): pass
        def capture(self, ctx, plan, base): return None
        def apply(self, ctx, plan, base, snapshot):
            if plan == "ak-second":
                raise ApplyError("", "refused by the test double", status=500)
            return 0
        def verify(self, ctx, plan, base, changes): pass
        def restore(self, ctx, snapshot, changes): pass

    state_dir, first, second = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    settings = settings_mod.load(state_dir=state_dir, enabled_services="router")
    vpn = VpnSubsystem(settings)
    engine = Engine(settings, subsystems=[vpn, FailsAfterVpn()])
    engine.apply(first)
    swanctl = open(vpn.swanctl).read()
    pid = vpn.charon.pid()
    try:
        engine.apply(second)
        outcome = "applied"
    except ApplyError as exc:
        outcome = str(exc)
    with vpn.charon.session() as session:
        conns, keys = loaded_state(session)
    print(json.dumps({"outcome": outcome, "conns": sorted(conns), "keys": keys,
                      "swanctl_restored": open(vpn.swanctl).read() == swanctl,
                      "same_charon": vpn.charon.pid() == pid}))
    vpn.charon.stop()
""")


def test_failed_later_step_restores_the_loaded_connections(lab, tmp_path):
    """The VPN step loaded new connections, a later step failed: the old connections (and
    only them) are loaded again, in the same charon."""
    ns = lab.netns("rollbk")
    first = copy.deepcopy(VPN)
    second = with_dead_peer(VPN)
    second["hostname"] = "ak-second"
    connection_of(second)["ikepolicy"]["pfs"] = "group14"  # changed too
    result = ns.run(["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-c", ROLLBACK,
                     str(tmp_path / "state"), json.dumps(first), json.dumps(second)])
    report = json.loads(result.stdout.splitlines()[-1])
    name = connection_of(VPN)["id"]
    assert report == {"outcome": "refused by the test double", "conns": [name],
                      "keys": [f"ike-{name}"], "swanctl_restored": True,
                      "same_charon": True}
    assert parse_payload(second)  # the second generation itself was valid


def test_kernel_backend_setting_selects_the_kernel_path(lab, tmp_path):
    """``[vpn] ipsec_backend = kernel`` renders the kernel path even here (the image's
    choice); charon then runs without kernel-libipsec, so no TUN device appears."""
    config = tmp_path / "agent.ini"
    config.write_text("[vpn]\nipsec_backend = kernel\n")
    mgmt = lab.bridge("b-mgmt")
    ctl = controller_node(lab, mgmt)
    appliance = Appliance(lab, "app", nic_macs("router-vpn", VPN), management_cidr(VPN),
                          mgmt, controller=ctl)
    appliance.configure_management()
    appliance.start(extra_args=("--config-file", str(config)))
    response = appliance.client().put_json("/v1/system/config", VPN)
    assert response.status == 200, response.text
    strongswan = (appliance.state_dir / "vpn" / "strongswan.conf").read_text()
    assert "kernel-libipsec" not in strongswan and "kernel-netlink!" in strongswan
    assert "ipsec0" not in appliance.ns.link_names()
