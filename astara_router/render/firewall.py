"""The appliance's nftables ruleset: filter and NAT, IPv4 and IPv6, in ONE table.

Why this shape
--------------
* One ``table inet astara`` holds everything the agent owns. nftables evaluates every
  table's base chains, so other tables (ours never touches them) keep working, and the whole
  firewall is replaced or patched by one ``nft -f`` transaction: all or nothing.
* Data lives in named sets and maps, rules only reference them. Floating IPs are two maps
  (``fip_dnat``: floating → fixed, ``fip_snat``: fixed → floating), labels, VPN tunnels
  (concatenated ``local . peer`` subnet pairs), tenant prefixes, BGP and HA peers are sets. The rules (the *skeleton*) depend only on the
  topology (interfaces and their addresses, metadata listeners, which features exist), so
  adding or removing a floating IP, a label CIDR or a VPN subnet pair is an element change
  (``add/delete element``) and no chain is rebuilt.
* Interfaces are matched by kernel name strings (``iifname``), so a ruleset can be checked
  with ``nft -c`` anywhere, also where those interfaces do not exist.

Chain layout (policies: filter chains drop, NAT chains accept)
--------------------------------------------------------------
``input`` (filter, policy drop) — what may talk to the appliance itself
    lo; management addresses only via the management interface (anti-spoofing); ICMP and
    ICMPv6 (ping, PMTU errors, neighbour discovery, RS/RA — before the conntrack verdict
    because ND packets have no valid conntrack state); established/related; invalid dropped;
    management: ssh 22 + the API port(s), HA: VRRP (IP protocol 112) and conntrackd (UDP 3780)
    from the HA peers; tenant networks (internal and isolated alike): DHCPv4 67, DHCPv6 547,
    DNS 53 udp/tcp, their metadata listener; external: BGP (TCP 179) from the external IPv6
    gateways, IKE/NAT-T (UDP 500/4500) and ESP/AH from the VPN peers; load-balancer network:
    the enabled listeners' ports.
``forward`` (filter, policy drop) — stateful routing
    TCP MSS clamped to the route MTU (tenant MTU 1450 vs external 1500); established/related;
    invalid dropped; new connections from tenant networks to the outside and to each other;
    from the outside only what was DNATed (``ct status dnat``: floating IPs), IPsec-protected
    traffic between the subnet pairs of the VPN tunnels (kernel IPsec: from the external
    interface with a policy match; kernel-libipsec: through its TUN device, both ways), ICMPv6 to the (routed, un-NATed) IPv6 tenant prefixes, and
    new IPv6 connections from sources in a provider label (see "Labels").
``dstnat`` (nat prerouting)
    169.254.169.254:80 from each tenant network → that network's metadata listener; floating
    IP → fixed IP for packets from the external AND the tenant networks (hairpin).
``srcnat`` (nat postrouting)
    traffic between the subnet pairs a VPN tunnel protects is never NATed (IPsec policies
    match the real addresses); every other tenant address still is; out of an external interface: a fixed IP with a floating IP
    leaves as its floating IP, any other tenant address as that external interface's first
    IPv4 address; hairpin (a tenant reached a floating IP, so the packet was DNATed back into
    a tenant network): the source becomes the sender's floating IP, or the router's external
    address, so the target's replies go back through the router where conntrack un-NATs them
    (with the real source, a same-subnet target would answer directly and the client would
    drop the reply).

IPv6 is routed, not NATed (IPv6 floating IPs, which the model allows, get their own maps and
the same 1:1 rules). Load balancers get input/forward only (no NAT, no routing).

Labels
------
Every provider label becomes ``set label_<name>`` (IPv4) and ``set label_<name>_v6``. The IPv6
sets are used: sources in a label may open new IPv6 connections to tenant prefixes (IPv6
tenant prefixes are routed and advertised, so "who may reach them" is the one policy a label
can usefully express). The IPv4 sets exist for reference only: IPv4 tenants are reachable
from outside exclusively through floating IPs.
"""
import bisect
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, replace
from operator import attrgetter

from ..errors import ApplyError
from ..model.change import common_ends
from ..model.checks import parse_ip
from ..model.vpn import active_connections
from .metadata import METADATA_ADDRESS, metadata_listeners
from .text import comment
from .vpn import LIBIPSEC_TUN

FAMILY = "inet"
TABLE = "astara"
TABLE_SPEC = f"{FAMILY} {TABLE}"

SSH_PORT = 22
VRRP_PROTOCOL = 112
CONNTRACKD_PORT = 3780
BGP_PORT = 179
IKE_PORTS = (500, 4500)
DNS_PORT = 53
DHCP_SERVER_PORTS = (67, 547)  # DHCPv4 and DHCPv6 server ports

# per IP version: nft payload keyword, address type, set-name suffix
FAMILIES = {4: ("ip", "ipv4_addr", ""), 6: ("ip6", "ipv6_addr", "_v6")}


# -- the ruleset model ------------------------------------------------------------------------

# How a NamedSet holds its elements: as their texts, or (a map) as pairs of texts, written
# "a : b" (PAIRS) or "b : a" (SWAPPED_PAIRS). The floating-IP maps hold each FloatingIP's own
# ``texts`` pair (floating, fixed), kept by the model anyway, in both directions: a map of
# 5 000 costs 5 000 references, where formatted elements were 0.84 MB of strings.
TEXTS, PAIRS, SWAPPED_PAIRS = "texts", "pairs", "swapped pairs"


@dataclass(frozen=True)
class NamedSet:
    """A named set (``type ipv4_addr``) or map (``type ipv4_addr : ipv4_addr``)."""
    name: str
    type: str
    elements: tuple = ()  # e.g. "10.1.0.0/24", or a map's ("172.24.4.228", "10.1.0.8")
    interval: bool = False
    comment: str = ""
    held_as: str = TEXTS

    @property
    def kind(self):
        return "map" if " : " in self.type else "set"

    def element_texts(self, elements=None, indent=""):
        """The texts of ``elements`` (by default all of them), as nft reads them."""
        elements = self.elements if elements is None else elements
        if self.held_as == PAIRS:
            return [f"{indent}{a} : {b}" for a, b in elements]
        if self.held_as == SWAPPED_PAIRS:
            return [f"{indent}{b} : {a}" for a, b in elements]
        return [f"{indent}{e}" for e in elements] if indent else list(elements)

    def lines(self, indent=""):
        """The set's lines, each after ``indent``; its elements are one multi-line item
        (formatted once, where a line each formatted them three times)."""
        out = [f"{indent}# {self.comment}"] if self.comment else []
        out.append(f"{indent}{self.kind} {self.name} {{")
        out.append(f"{indent}\ttype {self.type}")
        if self.interval:
            out.append(f"{indent}\tflags interval")
        if self.elements:
            out.append(f"{indent}\telements = {{")
            out.append(",\n".join(self.element_texts(indent=f"{indent}\t\t")))
            out.append(f"{indent}\t}}")
        out.append(f"{indent}}}")
        return out


@dataclass(frozen=True)
class Chain:
    name: str
    hook: str  # "type filter hook input priority filter; policy drop;"
    rules: tuple  # rule texts; lines starting with "#" are comments

    def lines(self, indent=""):
        body = [f"{indent}\t{self.hook}"] + [f"{indent}\t{rule}" for rule in self.rules]
        return [f"{indent}chain {self.name} {{", *body, f"{indent}}}"]


def element_changes(old, new):
    """``(gone, came)``: the elements of the tuple ``old`` that ``new`` lacks and those
    ``new`` adds, each in its tuple's order. A set's elements are unique, so an element
    of the common head or tail (compared in C, by identity first: a patched map shares its
    elements) is in neither, and only what lies between them is looked at: a floating IP
    added to a thousand is two lookups, not four sets of a thousand built a push."""
    head, tail = common_ends(old, new)
    old, new = old[head:len(old) - tail], new[head:len(new) - tail]
    old_elements, new_elements = set(old), set(new)
    return ([e for e in old if e not in new_elements],
            [e for e in new if e not in old_elements])


@dataclass(frozen=True)
class Ruleset:
    sets: tuple
    chains: tuple

    @property
    def skeleton(self):
        """Everything but set elements: equal skeletons differ only by element changes."""
        return (tuple(replace(s, elements=()) for s in self.sets), self.chains)

    def set(self, name):
        return next((s for s in self.sets if s.name == name), None)

    def text(self):
        """The table as ``nft -f`` input; this is what GET /v1/firewall/rules serves."""
        lines = []
        for item in (*self.sets, *self.chains):
            lines.extend(item.lines("\t"))
            lines.append("")
        body = "\n".join(lines).rstrip("\n")
        return (f"# managed by astara-router: every apply converges it back to this\n"
                f"table {TABLE_SPEC} {{\n{body}\n}}\n")

    def replace_script(self):
        """One transaction replacing the whole table (created first so the delete never
        fails). Packets see the old table until the commit, then the new one; conntrack
        entries (and their NAT bindings) are not touched."""
        return replace_script(self.text())

    def element_script(self, new):
        """One transaction turning this ruleset's set elements into ``new``'s; None when
        the skeletons differ (then only ``replace_script`` can get there)."""
        if self.skeleton != new.skeleton:
            return None
        deletes, adds = [], []
        for old_set, new_set in zip(self.sets, new.sets):
            gone, came = element_changes(old_set.elements, new_set.elements)
            if gone:
                deletes.append(f"delete element {TABLE_SPEC} {old_set.name} "
                               f"{{ {', '.join(old_set.element_texts(gone))} }}")
            if came:
                adds.append(f"add element {TABLE_SPEC} {new_set.name} "
                            f"{{ {', '.join(new_set.element_texts(came))} }}")
        # deletes first: an interval may be replaced by an overlapping one
        return "\n".join(deletes + adds) + "\n" if deletes or adds else ""

    def floating_ips(self):
        """{floating: fixed} of every floating-IP map, as nft prints the addresses (no
        parsing: an apply compares thousands of them)."""
        found = {}
        for version in (4, 6):
            fip_map = self.set(f"fip_dnat{FAMILIES[version][2]}")
            found.update(fip_map.elements if fip_map else ())  # (floating, fixed) pairs
        return found

    def moved_floating_ips(self, new):
        """The floating addresses whose mapping disappeared or moved to another fixed IP
        in ``new``: the DNAT elements ``new`` no longer has (a set difference of text
        pairs, where comparing {floating: fixed} maps parses thousands of addresses twice)."""
        moved = set()
        for version in (4, 6):
            name = f"fip_dnat{FAMILIES[version][2]}"
            old, now = self.set(name), new.set(name)
            if old is None:
                continue
            gone = (element_changes(old.elements, now.elements)[0] if now is not None
                    else old.elements)
            moved.update(ipaddress.ip_address(floating) for floating, _ in gone)
        return moved

    # persistence of the committed ruleset (JSON in the state directory)
    def to_json(self):
        return json.dumps({
            "sets": [[s.name, s.type, list(s.elements), s.interval, s.comment, s.held_as]
                     for s in self.sets],
            "chains": [[c.name, c.hook, list(c.rules)] for c in self.chains]})

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        return cls(tuple(NamedSet(n, t, tuple(e if h == TEXTS else map(tuple, e)), i, c, h)
                         for n, t, e, i, c, h in data["sets"]),
                   tuple(Chain(n, h, tuple(r)) for n, h, r in data["chains"]))


def replace_script(table_text):
    """``table_text`` (a ``table inet astara {...}`` block, e.g. a live listing) replacing the
    live table in one transaction; an empty text just removes the table."""
    return f"table {TABLE_SPEC} {{}}\ndelete table {TABLE_SPEC}\n{table_text}"


FIP_MAP_RE = re.compile(r"map fip_dnat(?:_v6)? \{[^}]*?elements = \{([^}]*)\}", re.S)


def floating_ips_in_listing(listing):
    """{floating: fixed} of a live ``nft list table`` text (what conntrack may hold NAT
    bindings for), as nft prints them; empty when there is no table."""
    found = {}
    for match in FIP_MAP_RE.finditer(listing or ""):
        for element in match.group(1).split(","):
            if " : " in element:
                floating, fixed = (part.strip() for part in element.split(" : "))
                found[floating] = fixed
    return found


# -- rendering ----------------------------------------------------------------------------------

def render_firewall(config, names, api_ports=(5000,), boot_management=None):
    """The ruleset for ``config``.

    ``names`` maps generic interface names to kernel names (``{"ge1": "eth1"}``);
    ``api_ports`` are the ports the agent's API listens on; ``boot_management`` is the kernel
    name of the interface astara-configure-management set up, used as the management
    interface when the payload has no management network.
    """
    ports = tuple(sorted(set(api_ports)))
    inputs = (config.without_floating_ips(), dict(names), ports, boot_management)
    last = _LAST_RENDERED[0]
    if last is not None and last[0] == inputs:
        ruleset = _with_floating_ips(last[1], config)
        if ruleset is not None:
            return ruleset
    ruleset = _Renderer(config, names, ports, boot_management).render()
    _LAST_RENDERED[0] = (inputs, ruleset)
    return ruleset


# The last ruleset rendered whole, with its inputs apart from the floating IPs: a push
# that changes floating IPs only (the usual one) renders the two maps alone.
_LAST_RENDERED = [None]
FIP_MAPS = frozenset(f"fip_{kind}{FAMILIES[v][2]}" for kind in ("dnat", "snat") for v in (4, 6))


def _with_floating_ips(ruleset, config):
    """``ruleset`` (rendered for ``config`` apart from its floating IPs) with ``config``'s
    floating-IP maps; None when the maps themselves come or go (the rules change then)."""
    if config.router is None:
        return ruleset  # no router, no maps: the inputs were the whole configuration
    maps = {named.name: named for _, dnat, snat in
            floating_ip_maps(config.floating_ips, bool(config.external_networks))
            for named in (dnat, snat)}
    if maps.keys() != {s.name for s in ruleset.sets if s.name in FIP_MAPS}:
        return None
    return Ruleset(tuple(maps.get(s.name, s) for s in ruleset.sets), ruleset.chains)


def floating_ip_maps(fips, external):
    """(version, DNAT map, SNAT map) of the floating IPs ``fips``. IPv4 maps exist whenever
    there is an ``external`` network, so the first floating IP is an element change too;
    IPv6 ones only when used."""
    by_version = {4: [], 6: []}
    for fip in fips:
        by_version[fip.floating_ip.version].append(fip)
    maps = []
    for version, fips in by_version.items():
        if not external or (version == 6 and not fips):
            continue
        suffix, typ = FAMILIES[version][2], FAMILIES[version][1]
        snat = {}
        for fip in fips:  # a fixed IP with several floating IPs leaves as the first
            snat.setdefault(int(fip.fixed_ip), fip.texts)  # the integer: one family here
        maps.append((version, NamedSet(
            f"fip_dnat{suffix}", f"{typ} : {typ}",
            tuple(map(_TEXTS, sorted(fips, key=_by_floating))),
            comment="floating IPs: floating -> fixed (DNAT)", held_as=PAIRS), NamedSet(
            f"fip_snat{suffix}", f"{typ} : {typ}",
            tuple([texts for _, texts in sorted(snat.items())]),
            comment="floating IPs: fixed -> floating (SNAT)", held_as=SWAPPED_PAIRS)))
    return maps


def with_floating_ip_change(ruleset, config, change):
    """``ruleset`` (rendered for the configuration before ``change``, model/change.py) with
    the IPv4 floating-IP maps patched: what ``render_firewall`` gives for ``config`` when
    only floating IPs changed, with a few binary searches instead of a thousand elements
    formatted and sorted. None when only a whole render can tell: IPv6 floating IPs (their
    maps come and go), a fixed IP that several floating IPs share (its SNAT element is the
    first in payload order, which a reordered push may change), no management network (the
    boot one would count) or no maps."""
    if config.management_network is None or any(
            fip.floating_ip.version != 4 for fip in (*change.removed, *change.added)):
        return None
    dnat, snat = ruleset.set("fip_dnat"), ruleset.set("fip_snat")
    if dnat is None or snat is None or len(snat.elements) != len(dnat.elements):
        return None  # fewer SNAT elements: a fixed IP is shared (payload order counts)
    dnat_elements, snat_elements = list(dnat.elements), list(snat.elements)
    # both maps hold each FloatingIP's (floating, fixed) texts: DNAT keyed by the first,
    # SNAT by the second
    for fip in change.removed:
        if not (_take(dnat_elements, fip.texts, int(fip.floating_ip), _first_key)
                and _take(snat_elements, fip.texts, int(fip.fixed_ip), _second_key)):
            return None
    for fip in change.added:
        if not (_put(dnat_elements, fip.texts, int(fip.floating_ip), _first_key)
                and _put(snat_elements, fip.texts, int(fip.fixed_ip), _second_key)):
            return None
    patched = {"fip_dnat": replace(dnat, elements=tuple(dnat_elements)),
               "fip_snat": replace(snat, elements=tuple(snat_elements))}
    return Ruleset(tuple(patched.get(s.name, s) for s in ruleset.sets), ruleset.chains)


def _pair_key(position):
    """The integer of an IPv4 pair's address at ``position``: the DNAT map is sorted by
    the first (floating), the SNAT map by the second (fixed)."""
    return lambda pair: int(parse_ip(pair[position]))


_first_key, _second_key = _pair_key(0), _pair_key(1)


def _take(elements, element, key, element_key):
    """Remove ``element`` (whose key address is the integer ``key``) from ``elements``,
    sorted by ``element_key``; False when it is not there."""
    i = bisect.bisect_left(elements, key, key=element_key)
    if i == len(elements) or elements[i] != element:
        return False
    del elements[i]
    return True


def _put(elements, element, key, element_key):
    """Insert ``element`` into ``elements``, sorted by ``element_key``; False when its key
    is there already (a shared fixed IP in the SNAT map)."""
    i = bisect.bisect_left(elements, key, key=element_key)
    if i < len(elements) and element_key(elements[i]) == key:
        return False
    elements.insert(i, element)
    return True


_TEXTS = attrgetter("texts")


def _by_floating(fip):
    return fip.key  # integer order: the same as sorting the addresses, faster


def _collapse(networks, version):
    wanted = [ipaddress.ip_network(n) for n in networks if n is not None and n.version == version]
    return tuple(str(n) for n in sorted(ipaddress.collapse_addresses(wanted)))


def _addresses(addresses, version):
    return tuple(str(a) for a in sorted({a for a in addresses if a.version == version}))


def _one_or_set(items, quote=True):
    texts = [f'"{i}"' if quote else str(i) for i in items]
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def label_set_name(name):
    """``label_<name>`` (its IPv6 twin adds ``_v6``): provider label names are free text, set
    names are identifiers. A name is used as it is only when it cannot collide: letters and
    digits in single-'_'-separated words, not ending in ``_v6`` (label ``x_v6`` would be
    label ``x``'s IPv6 set). Any other name is made safe and gets ``__`` and a digest, a
    form no name used as it is can take."""
    if re.fullmatch(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*", name) and len(name) <= 32 \
            and not name.endswith("_v6"):
        return f"label_{name}"
    safe = re.sub(r"[^A-Za-z0-9]+", "_", name)[:24]
    return f"label_{safe}__{hashlib.sha256(name.encode()).hexdigest()[:16]}"


class _Renderer:
    def __init__(self, config, names, api_ports, boot_management):
        self.config = config
        self.names = names
        self.api_ports = api_ports
        self.boot_management = boot_management
        self.sets = []

    # -- helpers --------------------------------------------------------------------------
    def kernel_name(self, network):
        generic = network.interface.ifname
        try:
            return self.names[generic]
        except KeyError:
            index = self.config.networks.index(network)
            raise ApplyError(
                f"networks[{index}].interface.ifname",
                f"{generic} does not exist on this appliance") from None

    def kernel_names(self, networks):
        found = []
        for network in networks:
            name = self.kernel_name(network)
            if name not in found:
                found.append(name)
        return found

    def add_set(self, name, version, elements, interval=True, comment="",
                concatenated=False):
        typ = FAMILIES[version][1]
        self.sets.append(NamedSet(name, f"{typ} . {typ}" if concatenated else typ,
                                  tuple(elements), interval, comment))
        return name

    def add_elements(self, name, typ, elements, comment=""):
        """A map whose element texts are given in order."""
        self.sets.append(NamedSet(name, typ, tuple(elements), False, comment))
        return name

    # -- the pieces -----------------------------------------------------------------------
    def management(self):
        """(kernel name, its addresses) of the management interface."""
        network = self.config.management_network
        if network is not None:
            return self.kernel_name(network), network.interface.addresses
        if self.boot_management:
            return self.boot_management, ()
        raise ApplyError(
            "networks", "no management network in the payload and no boot-time management "
                        "interface: refusing a firewall that would cut the API off")

    def input_common(self, mgmt_if, mgmt_addresses):
        rules = ['iifname "lo" accept']
        for version in (4, 6):
            kw = FAMILIES[version][0]
            addresses = _addresses((a.ip for a in mgmt_addresses), version)
            if addresses:
                rules.append("# the management address answers on the management network only")
                rules.append(f'iifname != "{mgmt_if}" {kw} daddr {_one_or_set(addresses, False)}'
                             f" drop")
        rules += [
            "# ping, PMTU errors, neighbour discovery, RS/RA (ND has no conntrack state)",
            "meta l4proto { icmp, ipv6-icmp } accept",
            "ct state vmap { established : accept, related : accept, invalid : drop }",
            "# management: ssh and the API",
            f'iifname "{mgmt_if}" tcp dport '
            f"{_one_or_set(sorted({SSH_PORT, *self.api_ports}), False)} accept",
        ]
        if self.config.ha:
            rules.append("# HA: VRRP and conntrackd state sync from the peers")
            for version in (4, 6):
                kw, _, suffix = FAMILIES[version]
                peers = _addresses(self.config.ha_config.peers, version)
                if not peers:
                    continue
                name = self.add_set(f"ha_peers{suffix}", version, peers, interval=False,
                                    comment="HA peers (ha_config.peers)")
                rules.append(f'iifname "{mgmt_if}" {kw} saddr @{name} meta l4proto '
                             f"{VRRP_PROTOCOL} accept")
                rules.append(f'iifname "{mgmt_if}" {kw} saddr @{name} udp dport '
                             f"{CONNTRACKD_PORT} accept")
        return rules

    def render(self):
        mgmt_if, mgmt_addresses = self.management()
        if self.config.router is None:
            return self.render_appliance(mgmt_if, mgmt_addresses)
        return self.render_router(mgmt_if, mgmt_addresses)

    def render_appliance(self, mgmt_if, mgmt_addresses):
        """Not a router (load balancer): protect the management interface, admit the
        listeners on the load-balancer network, route nothing."""
        rules = self.input_common(mgmt_if, mgmt_addresses) + self.loadbalancer_input()
        chains = (
            Chain("input", "type filter hook input priority filter; policy drop;",
                  tuple(rules)),
            Chain("forward", "type filter hook forward priority filter; policy drop;",
                  ("ct state vmap { established : accept, related : accept, "
                   "invalid : drop }",)),
        )
        return Ruleset(tuple(self.sets), chains)

    def loadbalancer_input(self):
        """The enabled listeners' ports on the load-balancer networks."""
        rules = []
        lb = self.config.loadbalancer
        lb_ifs = self.kernel_names(self.config.networks_of("loadbalancer"))
        if lb is not None and lb_ifs:
            for proto in ("tcp", "udp"):
                ports = sorted({li.protocol_port for li in lb.listeners if li.admin_state_up
                                and (li.protocol == "UDP") == (proto == "udp")})
                if ports:
                    rules.append("# load balancer listeners")
                    rules.append(f"iifname {_one_or_set(lb_ifs)} {proto} dport "
                                 f"{_one_or_set(ports, False)} accept")
        return rules

    def render_router(self, mgmt_if, mgmt_addresses):
        config = self.config
        self.tenants = config.tenant_networks
        self.externals = config.external_networks
        self.tenant_ifs = self.kernel_names(self.tenants)
        self.ext_ifs = self.kernel_names(self.externals)
        self.listeners = metadata_listeners(config)
        self.router_sets()
        chains = (
            Chain("input", "type filter hook input priority filter; policy drop;",
                  tuple(self.input_common(mgmt_if, mgmt_addresses) + self.router_input()
                        + self.loadbalancer_input())),
            Chain("forward", "type filter hook forward priority filter; policy drop;",
                  tuple(self.forward())),
            Chain("dstnat", "type nat hook prerouting priority dstnat; policy accept;",
                  tuple(self.dstnat())),
            Chain("srcnat", "type nat hook postrouting priority srcnat; policy accept;",
                  tuple(self.srcnat())),
        )
        return Ruleset(tuple(self.sets), chains)

    def router_sets(self):
        """Every set and map of a router; rules refer to them through these attributes."""
        router = self.config.router
        cidrs = [s.cidr for n in self.tenants for s in n.subnets]
        self.tenant_set = {v: self.add_set(f"tenants{FAMILIES[v][2]}", v, _collapse(cidrs, v),
                                           comment=f"tenant prefixes (IPv{v})")
                           for v in (4, 6)}
        self.fip_dnat, self.fip_snat = {}, {}
        for version, dnat, snat in floating_ip_maps(self.config.floating_ips,
                                                    bool(self.externals)):
            self.sets += [dnat, snat]
            self.fip_dnat[version], self.fip_snat[version] = dnat.name, snat.name
        # IPsec: the (local subnet . peer subnet) pairs the tunnels protect (never NATed,
        # admitted from the peers) and who may speak IKE/ESP
        connections = [c for _, c in active_connections(router)]
        self.vpn_tunnels, self.vpn_endpoints = {}, {}
        for version in (4, 6) if router.vpn else ():
            suffix = FAMILIES[version][2]
            pairs = dict.fromkeys(f"{mine} . {theirs}" for c in connections
                                  for mine in c.local_subnets if mine.version == version
                                  for theirs in c.peer_subnets if theirs.version == version)
            self.vpn_tunnels[version] = self.add_set(
                f"vpn_tunnels{suffix}", version, sorted(pairs), concatenated=True,
                comment=f"IPsec-protected (local . peer) subnets (IPv{version}): never NATed")
            self.vpn_endpoints[version] = self.add_set(
                f"vpn_endpoints{suffix}", version,
                _addresses((c.peer_address for c in connections), version), interval=False,
                comment=f"IPsec peer gateways (IPv{version})")
        bgp_peers = _addresses((s.gateway_ip for n in self.externals for s in n.subnets
                                if s.version == 6 and s.gateway_ip is not None), 6)
        self.bgp_set = (self.add_set("bgp_peers_v6", 6, bgp_peers, interval=False,
                                     comment="BGP neighbours: the external IPv6 gateways")
                        if bgp_peers else None)
        self.label_sets_v6 = []
        for label in router.labels:
            name = label_set_name(label.name)
            self.add_set(name, 4, _collapse(label.cidrs, 4),
                         comment=f"provider label {comment(label.name)}")
            self.label_sets_v6.append(self.add_set(f"{name}_v6", 6, _collapse(label.cidrs, 6)))

    def router_input(self):
        rules = []
        listeners = {listener.generic: listener for listener in self.listeners}
        for network in self.tenants:
            kif = self.kernel_name(network)
            rules.append(f"# tenant network {comment(network.name or network.network_id)}: "
                         f"DHCP, DNS, metadata")
            rules.append(f'iifname "{kif}" udp dport '
                         f"{_one_or_set((DNS_PORT, *DHCP_SERVER_PORTS), False)} accept")
            rules.append(f'iifname "{kif}" tcp dport {DNS_PORT} accept')
            listener = listeners.get(network.interface.ifname)
            if listener is not None:
                rules.append(f'iifname "{kif}" ip daddr {listener.address} tcp dport '
                             f"{listener.port} accept")
        if not self.ext_ifs:
            return rules
        ext = _one_or_set(self.ext_ifs)
        if self.bgp_set:
            rules.append("# BGP from the upstream IPv6 routers")
            rules.append(f"iifname {ext} ip6 saddr @{self.bgp_set} tcp dport {BGP_PORT} accept")
        for version, name in self.vpn_endpoints.items():
            kw = FAMILIES[version][0]
            rules.append(f"# IPsec (IPv{version}): IKE, NAT-T, ESP and AH from the peers")
            rules.append(f"iifname {ext} {kw} saddr @{name} udp dport "
                         f"{_one_or_set(IKE_PORTS, False)} accept")
            rules.append(f"iifname {ext} {kw} saddr @{name} meta l4proto {{ esp, ah }} accept")
        return rules

    def forward(self):
        rules = ["# TCP MSS follows the route MTU (tenant 1450 vs external 1500)",
                 "tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
                 "ct state vmap { established : accept, related : accept, invalid : drop }"]
        if not self.tenant_ifs:
            return rules
        ten = _one_or_set(self.tenant_ifs)
        rules.append("# new connections from tenant networks: outward and to each other")
        rules.append(f"iifname {ten} oifname {_one_or_set(self.tenant_ifs + self.ext_ifs)} "
                     f"accept")
        if not self.ext_ifs:
            return rules
        ext = _one_or_set(self.ext_ifs)
        rules.append("# from outside only through floating IPs (DNATed)")
        rules.append(f"iifname {ext} oifname {ten} ct status dnat accept")
        for version, name in self.vpn_tunnels.items():
            kw = FAMILIES[version][0]
            rules.append(f"# IPsec (IPv{version}): decrypted by the kernel (policy match) or "
                         f"by kernel-libipsec (its TUN)")
            rules.append(f"iifname {ext} {kw} daddr . {kw} saddr @{name} meta ipsec exists "
                         f"accept")
            rules.append(f'iifname "{LIBIPSEC_TUN}" {kw} daddr . {kw} saddr @{name} accept')
            rules.append(f'iifname {ten} oifname "{LIBIPSEC_TUN}" {kw} saddr . {kw} daddr '
                         f"@{name} accept")
        rules.append("# IPv6 tenant prefixes are routed: ICMPv6 and labelled sources only")
        rules.append(f"iifname {ext} oifname {ten} meta l4proto ipv6-icmp accept")
        for name in self.label_sets_v6:
            rules.append(f"iifname {ext} oifname {ten} ip6 saddr @{name} accept")
        return rules

    def dstnat(self):
        rules = []
        for listener in self.listeners:
            network = next(n for n in self.tenants if n.interface.ifname == listener.generic)
            rules.append(f'iifname "{self.kernel_name(network)}" ip daddr {METADATA_ADDRESS} '
                         f"tcp dport 80 dnat ip to {listener.address}:{listener.port}")
        if self.fip_dnat:
            rules.append("# floating IPs, from outside and from tenants (hairpin)")
            dnat_ifs = _one_or_set(self.ext_ifs + self.tenant_ifs)
            for version, name in self.fip_dnat.items():
                kw = FAMILIES[version][0]
                rules.append(f"iifname {dnat_ifs} dnat {kw} to {kw} daddr map @{name}")
        return rules

    def srcnat(self):
        rules = []
        for version, name in self.vpn_tunnels.items():
            kw = FAMILIES[version][0]
            rules.append(f"{kw} saddr . {kw} daddr @{name} accept")
        if not self.ext_ifs:
            return rules
        ext = _one_or_set(self.ext_ifs)
        for version, name in self.fip_snat.items():
            kw = FAMILIES[version][0]
            rules.append(f"oifname {ext} snat {kw} to {kw} saddr map @{name}")
        for network in self.externals:
            address = network.interface.first(4)
            if address is not None:
                rules.append(f'oifname "{self.kernel_name(network)}" ip saddr '
                             f"@{self.tenant_set[4]} snat ip to {address}")
        if self.fip_snat:
            rules.append("# hairpin: replies must come back through the router")
        for version, name in self.fip_snat.items():
            kw = FAMILIES[version][0]
            public = next((n.interface.first(version) for n in self.externals
                           if n.interface.first(version) is not None), None)
            match = f"ct status dnat {kw} saddr @{self.tenant_set[version]}"
            rules.append(f"{match} snat {kw} to {kw} saddr map @{name}")
            rules.append(f"{match} snat {kw} to {public}" if public is not None
                         else f"{match} masquerade")
        return rules
