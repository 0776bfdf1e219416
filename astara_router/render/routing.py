"""BIRD 2 configuration: IPv6 router advertisements on tenant networks and BGP upstream.

Two pure steps: ``bird_plan(config, kernel_names)`` decides what BIRD must do (in model
terms), ``render_bird(plan, log_path)`` writes it as bird.conf text. Every rendered line
remembers the payload field it came from, so when ``bird -p`` rejects line N the apply can
name the field (``RenderedBird.path_for_line``).

Decisions (see also README, "Routing"):
* Router advertisements go out on every tenant (internal or isolated) network with an IPv6
  subnet. The subnet's mode (``render.ipv6.ipv6_mode``, shared with DHCPv6) sets the flags:
  SLAAC → prefix autonomous, no M/O; DHCPv6-stateful → M flag, prefix not autonomous;
  DHCPv6-stateless → O flag, prefix autonomous. Only the subnets' own prefixes are announced
  (anything else on the NIC is skipped), with the subnets' IPv6 DNS servers as RDNSS.
* BGP: one session per IPv6 subnet gateway of an external network (as the original). It
  exports exactly the IPv6 subnets of *internal* networks, and only while they are connected
  (direct routes). ULA prefixes are not filtered out (the original rejected fc00::/7): a
  tenant's fd.. subnet is what the upstream has to learn to route back to it. Isolated
  networks are not announced, as in the original (they are not meant to be reachable).
* Nothing is imported and BIRD has no kernel protocol: BIRD never touches the kernel's
  routing table. The default route is static (netlink subsystem); a BGP feed would add
  nothing but a way for the upstream to steer the appliance.
* The router id is stable: the lowest IPv4 address on an external network, else derived
  from the management address, else from the tenant id. Never random (the original's
  random id changed on every apply).
* Tenant VMs learn the appliance as their IPv6 default router (router lifetime 3 × max RA
  interval), also when it has no upstream IPv6: it still routes between tenant networks.
* No BGP and no RA ⇒ no plan: the applier stops BIRD.
* HA router: both instances run BIRD, but only the VRRP master holds the tenant addresses
  (render/ha.py). RAs are "triggered" by the connected route of the first tenant IPv6
  address: on the backup it is missing and BIRD's RAs say router lifetime 0, so hosts never
  route through the backup; on becoming master, BIRD announces itself at once.
"""
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ApplyError
from .interfaces import kernel_name
from .ipv6 import DHCPV6_STATEFUL, DHCPV6_STATELESS, ipv6_mode

# RA timing: Neutron's radvd defaults (min 30 s / max 100 s). Hosts solicit an RA when they
# boot or their link comes up and BIRD answers at once, so the period only bounds how long a
# change (new prefix, new flags) takes to reach hosts that did not ask. The router lifetime
# BIRD derives from it (3 × max = 300 s) also bounds how long hosts keep a dead router.
MIN_RA_INTERVAL = 30
MAX_RA_INTERVAL = 100
# A failed BGP connect is retried after this many seconds (BIRD's default is 120).
CONNECT_RETRY = 30
DIGEST_SYMBOL = "astara_config_digest"
LOG_SIZE_LIMIT = 1_000_000  # bytes; BIRD rotates bird.log to bird.log.old beyond that

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.:@-]+\Z")


@dataclass(frozen=True)
class RaPrefix:
    cidr: ipaddress.IPv6Network
    mode: str  # "slaac" | "dhcpv6-stateful" | "dhcpv6-stateless"
    path: str = field(default="", compare=False)

    @property
    def autonomous(self):
        return self.mode != DHCPV6_STATEFUL


@dataclass(frozen=True)
class RaInterface:
    generic: str
    kernel_name: str
    mtu: Optional[int]
    prefixes: tuple  # of RaPrefix
    dns_servers: tuple  # of IPv6Address
    path: str = field(default="", compare=False)

    @property
    def managed(self):  # M: addresses come from DHCPv6
        return any(p.mode == DHCPV6_STATEFUL for p in self.prefixes)

    @property
    def other_config(self):  # O: addresses by SLAAC, the rest (DNS...) from DHCPv6
        return any(p.mode == DHCPV6_STATELESS for p in self.prefixes)


@dataclass(frozen=True)
class BgpPeer:
    name: str  # BIRD protocol name: stable across applies, so reconfigure keeps the session
    neighbor: ipaddress.IPv6Address
    kernel_name: str
    path: str = field(default="", compare=False)


@dataclass(frozen=True)
class BirdPlan:
    router_id: ipaddress.IPv4Address
    router_id_source: str
    local_asn: int
    ra_interfaces: tuple  # of RaInterface
    exported_prefixes: tuple  # of IPv6Network (internal networks' IPv6 subnets)
    export_interfaces: tuple  # kernel names those prefixes live on
    peers: tuple  # of BgpPeer
    neighbor_asn: int = 0
    asn_path: str = field(default="", compare=False)
    ha_trigger: Optional[tuple] = None  # HA: (prefix, kernel name) present on the master only


def bird_plan(config, kernel_names):
    """What BIRD has to do for ``config``; ``kernel_names`` maps geN to kernel names.

    Returns None when BIRD is not needed (load balancer, or neither tenant IPv6 nor an
    external IPv6 gateway). Raises ApplyError for a network whose NIC does not exist.
    """
    if config.router is None:
        return None
    ra_interfaces, exported, export_ifaces = _tenant_side(config, kernel_names)
    peers = _upstream_peers(config, kernel_names)
    if not ra_interfaces and not peers:
        return None
    router_id, source = router_id_for(config)
    return BirdPlan(router_id=router_id, router_id_source=source,
                    local_asn=config.router.asn, neighbor_asn=config.router.neighbor_asn,
                    ra_interfaces=ra_interfaces, exported_prefixes=exported,
                    export_interfaces=export_ifaces, peers=peers, asn_path="asn",
                    ha_trigger=_ha_trigger(config, ra_interfaces))


def _ha_trigger(config, ra_interfaces):
    """HA: the first RA prefix holding a router address (keepalived's, master only)."""
    if not config.ha:
        return None
    addresses = {n.interface.ifname: n.interface.addresses for n in config.networks}
    for iface in ra_interfaces:
        for prefix in iface.prefixes:
            if any(a.ip in prefix.cidr for a in addresses.get(iface.generic, ())):
                return prefix.cidr, iface.kernel_name
    return None


def _kernel_name(kernel_names, network, path):
    generic = network.interface.ifname
    name = kernel_name(kernel_names, generic, path)
    if not _SAFE_NAME.match(name):
        raise ApplyError(f"{path}.interface.ifname",
                         f"kernel name {name!r} of {generic} cannot be used in bird.conf",
                         status=500)
    return name


def _tenant_side(config, kernel_names):
    """RA interfaces (tenant networks) and the prefixes BGP exports (internal networks).
    Duplicate network entries on one NIC (router-dual-stack-by-subnet) are merged."""
    by_name, order = {}, []
    exported, export_ifaces = [], []
    for i, network in enumerate(config.networks):
        if not network.is_tenant:
            continue
        path = f"networks[{i}]"
        v6 = [(j, s) for j, s in enumerate(network.subnets) if s.version == 6]
        if not v6:
            continue
        name = _kernel_name(kernel_names, network, path)
        if name not in by_name:
            by_name[name] = {"generic": network.interface.ifname, "path": path,
                             "mtu": network.interface.mtu or network.mtu,
                             "prefixes": {}, "dns": []}
            order.append(name)
        entry = by_name[name]
        for j, subnet in v6:
            spath = f"{path}.subnets[{j}]"
            entry["prefixes"].setdefault(subnet.cidr, RaPrefix(subnet.cidr, ipv6_mode(subnet),
                                                               spath))
            for server in subnet.dns_nameservers:
                if server.version == 6 and server not in entry["dns"]:
                    entry["dns"].append(server)
            if network.network_type == "internal" and subnet.cidr not in exported:
                exported.append(subnet.cidr)
                if name not in export_ifaces:
                    export_ifaces.append(name)
    interfaces = tuple(
        RaInterface(by_name[n]["generic"], n, by_name[n]["mtu"],
                    tuple(by_name[n]["prefixes"].values()), tuple(by_name[n]["dns"]),
                    by_name[n]["path"])
        for n in order)
    return interfaces, tuple(exported), tuple(export_ifaces)


def _upstream_peers(config, kernel_names):
    peers, seen = [], set()
    for i, network in enumerate(config.networks):
        if not network.is_external:
            continue
        for j, subnet in enumerate(network.subnets):
            gateway = subnet.gateway_ip
            if subnet.version != 6 or gateway is None or gateway in seen:
                continue
            seen.add(gateway)
            path = f"networks[{i}]"
            name = _kernel_name(kernel_names, network, path)
            peers.append(BgpPeer(f"upstream_{network.interface.ifname}_{gateway.packed.hex()}",
                                 gateway, name, f"{path}.subnets[{j}].gateway_ip"))
    return tuple(peers)


def router_id_for(config):
    """(router id, where it came from). Stable for a given payload and appliance."""
    externals = [n.interface.first(4) for n in config.external_networks]
    externals = [a for a in externals if a is not None]
    if externals:
        return min(externals), "external IPv4 address"
    management = config.management_address
    if management is not None:
        if management.version == 4:
            return management, "management IPv4 address"
        low = int(management) & 0xFFFFFFFF
        if low not in (0, 0xFFFFFFFF):
            return ipaddress.IPv4Address(low), "low 32 bits of the management address"
        return _hashed_id(management.packed), "hash of the management address"
    return _hashed_id(config.tenant_id.encode()), "hash of the tenant id"


def _hashed_id(data):
    value = int.from_bytes(hashlib.sha256(data).digest()[:4], "big")
    return ipaddress.IPv4Address(value if value not in (0, 0xFFFFFFFF) else 1)


# -- text -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenderedBird:
    text: str
    line_paths: tuple  # payload path of each line (1-based line N is line_paths[N - 1])
    protocols: tuple  # names of the protocols BIRD should show
    digest: int = 0  # value of DIGEST_SYMBOL in the text

    def path_for_line(self, number):
        if 1 <= number <= len(self.line_paths):
            return self.line_paths[number - 1]
        return ""


class _Lines:
    def __init__(self):
        self.lines, self.paths = [], []

    def add(self, text="", path="", indent=0):
        self.lines.append(("    " * indent + text) if text else "")
        self.paths.append(path)


def render_bird(plan, log_path=None):
    """bird.conf text for ``plan``. ``log_path``: BIRD's own log file (size-limited, one
    rotated copy); None logs to syslog."""
    out = _Lines()
    out.add("# bird.conf of the Astara appliance, rendered by astara_router.render.routing.")
    out.add("# Do not edit: every configuration push replaces it.")
    if log_path:
        if '"' in log_path:
            raise ValueError(f"log path {log_path!r} cannot be quoted for BIRD")
        out.add(f'log "{log_path}" {LOG_SIZE_LIMIT} "{log_path}.old" '
                "{ info, remote, warning, error, auth, fatal, bug };")
    else:
        out.add("log syslog { info, remote, warning, error, auth, fatal, bug };")
    out.add(f"# router id from the {plan.router_id_source}")
    out.add(f"router id {plan.router_id};")
    out.add()
    out.add("# Interface and address tracking, needed by every other protocol.")
    out.add("protocol device {")
    out.add("scan time 10;", indent=1)
    out.add("}")
    protocols = ["device"]
    if plan.ra_interfaces:
        out.add()
        _radv(out, plan)
        protocols += ["tenant_ra"] + (["ha_master"] if plan.ha_trigger else [])
    if plan.peers:
        out.add()
        _bgp(out, plan)
        protocols += [peer.name for peer in plan.peers]
        if plan.exported_prefixes:
            protocols.append("tenant_subnets")
    # A digest of the text, readable back with ``birdc eval``: proves which file the running
    # daemon loaded. It goes right after the header so line numbers below do not move.
    body = "\n".join(out.lines) + "\n"
    digest = int(hashlib.sha256(body.encode()).hexdigest()[:7], 16)
    out.lines.insert(2, f"define {DIGEST_SYMBOL} = {digest};")
    out.paths.insert(2, "")
    return RenderedBird("\n".join(out.lines) + "\n", tuple(out.paths), tuple(protocols),
                        digest)


def _switch(value):
    return "yes" if value else "no"


def _radv(out, plan):
    if plan.ha_trigger:
        prefix, name = plan.ha_trigger
        out.add("# HA: the master alone holds the tenant addresses, so this connected route;")
        out.add("# without it (backup) RAs carry router lifetime 0.")
        out.add("protocol direct ha_master {")
        out.add(f"ipv6 {{ import where net = {prefix}; }};", indent=1)
        out.add(f'interface "{name}";', indent=1)
        out.add("}")
    out.add("# Router advertisements on tenant networks: only the subnets' own prefixes.")
    out.add("protocol radv tenant_ra {")
    if plan.ha_trigger:
        out.add(f"ipv6 {{ export where net = {plan.ha_trigger[0]}; }};", indent=1)
        out.add(f"trigger {plan.ha_trigger[0]};", indent=1)
    for iface in plan.ra_interfaces:
        out.add(f'interface "{iface.kernel_name}" {{  # {iface.generic}', iface.path, 1)
        out.add(f"min ra interval {MIN_RA_INTERVAL};", iface.path, 2)
        out.add(f"max ra interval {MAX_RA_INTERVAL};", iface.path, 2)
        out.add(f"managed {_switch(iface.managed)};", iface.path, 2)
        out.add(f"other config {_switch(iface.other_config)};", iface.path, 2)
        if iface.mtu:
            out.add(f"link mtu {iface.mtu};", f"{iface.path}.interface.mtu", 2)
        for prefix in iface.prefixes:
            out.add(f"prefix {prefix.cidr} {{  # {prefix.mode}", prefix.path, 2)
            out.add(f"autonomous {_switch(prefix.autonomous)};", prefix.path, 3)
            out.add("};", prefix.path, 2)
        out.add("prefix ::/0 {", iface.path, 2)
        out.add("skip yes;", iface.path, 3)
        out.add("};", iface.path, 2)
        if iface.dns_servers:
            out.add("rdnss {", iface.path, 2)
            for server in iface.dns_servers:
                out.add(f"ns {server};", iface.path, 3)
            out.add("};", iface.path, 2)
        out.add("};", iface.path, 1)
    out.add("}")


def _bgp(out, plan):
    if plan.exported_prefixes:
        prefixes = ", ".join(str(p) for p in plan.exported_prefixes)
        names = ", ".join(f'"{n}"' for n in plan.export_interfaces)
        out.add("# The internal networks' IPv6 subnets, as long as they are connected.")
        out.add(f"define tenant_prefixes = [ {prefixes} ];")
        out.add("protocol direct tenant_subnets {")
        out.add("ipv6 {", indent=1)
        out.add("import where net ~ tenant_prefixes;", indent=2)
        out.add("};", indent=1)
        out.add(f"interface {names};", indent=1)
        out.add("}")
        export = "export where source = RTS_DEVICE && net ~ tenant_prefixes;"
    else:
        export = "export none;  # no internal IPv6 subnet to announce"
    for peer in plan.peers:
        out.add()
        out.add(f"# Upstream: the gateway of an external IPv6 subnet ({peer.path}).")
        out.add(f"protocol bgp {peer.name} {{", peer.path)
        out.add(f"local as {plan.local_asn};", plan.asn_path, 1)
        out.add(f"neighbor {peer.neighbor} as {plan.neighbor_asn};", peer.path, 1)
        out.add(f'interface "{peer.kernel_name}";', peer.path, 1)
        out.add("direct;", peer.path, 1)
        out.add(f"connect retry time {CONNECT_RETRY};", peer.path, 1)
        out.add("ipv6 {", peer.path, 1)
        out.add("import none;  # the default route is static; BIRD never feeds the kernel",
                peer.path, 2)
        out.add(export, peer.path, 2)
        out.add("};", peer.path, 1)
        out.add("}", peer.path)
