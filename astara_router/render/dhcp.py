"""dnsmasq for the tenant networks: DHCPv4, DHCPv6 and a small DNS (pure rendering).

One dnsmasq per appliance, three files split by how a change reaches the daemon:
  dnsmasq.conf  interfaces, ranges, options           a change restarts dnsmasq
  dhcp-hosts    one reservation per line             re-read on SIGHUP (--dhcp-hostsfile)
  dns-names     the allocations' names for DNS       re-read on SIGHUP (--addn-hosts)
so a VM coming or going (the common change) never restarts dnsmasq nor loses a lease.

Decisions (see README, "DHCP and DNS"):
* Only tenant (internal/isolated) subnets with ``dhcp_enabled`` are served, with static-only
  ranges: a MAC that is not in ``allocations`` gets nothing. A network without a served
  subnet gets no ``interface=`` line; no served subnet at all means no dnsmasq.
* IPv6 follows ``ipv6_mode`` (render/ipv6.py, shared with the RA renderer so the M/O flags
  and dnsmasq agree): SLAAC gets no DHCPv6; stateful gets a static range plus reservations;
  stateless gets a static range without addresses, which answers Information-requests
  (DNS servers) only. Router advertisements are BIRD's job: never ``enable-ra`` here.
* Option 121 carries the subnet's host routes plus the default route via the gateway,
  since RFC 3442 clients ignore option 3 when 121 is present.
* DNS servers handed out: the subnet's ``dns_nameservers``, else the router's own address
  on that subnet. dnsmasq answers DNS for the allocation names on the served interfaces;
  there is no upstream, so other names are REFUSED, and unknown names inside the
  allocations' own domains (``.local``) get NXDOMAIN.
* The router's own ports are in ``allocations`` too: their addresses are the appliance's,
  so they get a DNS name but never a DHCP reservation.
"""
import posixpath
from array import array
from dataclasses import dataclass
from ipaddress import ip_network

from ..model.checks import IPV6_ABOVE, address_key
from .interfaces import kernel_name
from .ipv6 import DHCPV6_STATEFUL, SLAAC, ipv6_mode
from .memo import per_object
from .text import allocation_texts, comment

CONF = "dnsmasq.conf"
HOSTS = "dhcp-hosts"
NAMES = "dns-names"
LEASES = "leases"
PIDFILE = "dnsmasq.pid"
LOG = "dnsmasq.log"

LEASE_TIME = "86400s"  # Neutron's default
LEASE_MAX = 65536  # fixed, so the number of VMs never changes the main config
DEFAULT_V4 = ip_network("0.0.0.0/0")
DHCPV4 = "dhcpv4"


@dataclass(frozen=True, slots=True)  # slots: one per allocation, no per-object dict
class Line:
    text: str
    path: str = ""  # the payload field it came from, to name it when dnsmasq refuses it


@dataclass(frozen=True, slots=True)
class AllocationLines:
    """One network's lines of a file, one per allocation or more, kept as one text: a
    ``Line`` with its own text and path each took ~220 bytes a line, this ~40 (5 000
    allocations: 15 000 lines of reservations and names, 2.5 MB). ``allocations`` holds each
    line's allocation index; its payload field is formatted only for a refusal."""
    text: str  # "<line>\n" per line
    network: int  # the network's index in the payload
    allocations: array  # per line, the index of the allocation it came from
    field: str = ""  # the allocation's field at fault, e.g. ".hostname"

    @classmethod
    def of(cls, lines, network, field=""):
        """From ``(text, allocation index)`` pairs."""
        return cls("".join(f"{text}\n" for text, _ in lines), network,
                   array("I", [k for _, k in lines]), field)

    def pairs(self):
        """``(text, allocation index)`` per line."""
        return zip(self.text.splitlines(), self.allocations)

    def lines(self, prefix=""):
        """``Line`` per line, ``prefix`` before each text."""
        where = f"networks[{self.network}].allocations"
        return [Line(f"{prefix}{text}", f"{where}[{k}]{self.field}")
                for text, k in self.pairs()]


@dataclass(frozen=True)
class ServedSubnet:
    tag: str
    subnet: object
    mode: str  # DHCPV4, DHCPV6_STATEFUL or DHCPV6_STATELESS
    path: str


@dataclass(frozen=True)
class DnsmasqFiles:
    directory: str
    conf_lines: tuple
    host_lines: tuple  # AllocationLines per network: the text right of "dhcp-host="
    name_lines: tuple  # AllocationLines per network: "<address> <name> [<short name>]"

    def path(self, name):
        return posixpath.join(self.directory, name)

    @property
    def conf(self):
        return lines_text(self.conf_lines)

    @property
    def hosts(self):
        return "".join(block.text for block in self.host_lines)

    @property
    def names(self):
        return "".join(block.text for block in self.name_lines)

    def contents(self):
        """``{path: text}`` of the files dnsmasq reads."""
        return {self.path(CONF): self.conf, self.path(HOSTS): self.hosts,
                self.path(NAMES): self.names}

    def check_lines(self):
        """The main config with the reservations and names inlined: ``dnsmasq --test``
        does not open the hosts files, so this is how their lines get checked too."""
        inlined = [line for block in self.host_lines for line in block.lines("dhcp-host=")]
        for block in self.name_lines:
            for line in block.lines():
                inlined.append(Line(_host_record(line.text), line.path))
        return self.conf_lines + tuple(inlined)

    def check_text(self):
        """``check_lines`` as the text of a file, without a ``Line`` (and its payload
        field) per reservation and name: those are made only when dnsmasq refuses one
        (1 000 allocations: 0.6 ms instead of 2.7, before ``dnsmasq --test`` can start)."""
        parts = [self.conf]
        parts += [f"dhcp-host={text}\n" for block in self.host_lines
                  for text in block.text.splitlines()]
        parts += [f"{_host_record(text)}\n" for block in self.name_lines
                  for text in block.text.splitlines()]
        return "".join(parts)


def _host_record(name_line):
    """A dns-names line (``<address> <name> [<short name>]``) as dnsmasq.conf says it."""
    address, *names = name_line.split()
    return f"host-record={','.join(names)},{address}"


def lines_text(lines):
    """Lines as the text of a file."""
    return "".join(f"{line.text}\n" for line in lines)


# -- what is served --------------------------------------------------------------------------

@per_object
def served_subnets(network, index):
    """The subnets of a tenant network that dnsmasq serves, with their DHCP mode."""
    served = []
    for j, subnet in enumerate(network.subnets):
        if not subnet.dhcp_enabled:
            continue
        mode = DHCPV4 if subnet.version == 4 else ipv6_mode(subnet)
        if mode == SLAAC:
            continue
        served.append(ServedSubnet(f"{network.interface.ifname}_{j}", subnet, mode,
                                   f"networks[{index}].subnets[{j}]"))
    return tuple(served)


def dhcp_networks(config):
    """``(index, network, served subnets)`` of every tenant network dnsmasq serves."""
    found = []
    for i, network in enumerate(config.networks):
        if network.is_tenant:
            served = served_subnets(network, i)
            if served:
                found.append((i, network, served))
    return tuple(found)


# -- rendering -------------------------------------------------------------------------------

def render_dnsmasq(config, interfaces, directory):
    """The dnsmasq files for ``config``, or None when no subnet needs DHCP.

    ``interfaces`` maps generic names (geN) to kernel names; ``directory`` is where the
    files, the lease file, the pid file and the log live.
    """
    networks = dhcp_networks(config)
    if not networks:
        return None
    names = _name_lines(config)
    conf = [
        Line("# dnsmasq for the tenant networks; written by astara_router, do not edit."),
        Line(f"# Reservations are in {HOSTS}, DNS names in {NAMES}: both re-read on SIGHUP."),
        # The state directory is private to root (payloads carry secrets), and dnsmasq
        # re-reads the hosts files after dropping privileges: it has to stay root.
        Line("user=root"),
        Line(f"pid-file={posixpath.join(directory, PIDFILE)}"),
        Line(f"dhcp-leasefile={posixpath.join(directory, LEASES)}"),
        Line(f"log-facility={posixpath.join(directory, LOG)}"),
        Line("no-resolv"),
        Line("no-hosts"),
        Line("no-poll"),
        Line("bind-dynamic"),  # follows address changes without a restart
        Line("except-interface=lo"),
        Line("dhcp-authoritative"),  # the only DHCP server on these networks
        Line(f"dhcp-lease-max={LEASE_MAX}"),
        Line(f"dhcp-hostsfile={posixpath.join(directory, HOSTS)}"),
        Line(f"addn-hosts={posixpath.join(directory, NAMES)}"),
    ]
    conf += [Line(f"local=/{domain}/") for domain in _domains(names)]
    hosts = []
    for index, network, served in networks:
        conf += _network_lines(network, index, served, interfaces)
        hosts.append(_host_lines(network, index))
    return DnsmasqFiles(directory, tuple(conf), tuple(block for block in hosts if block.text),
                        names)


def _network_lines(network, index, served, interfaces):
    generic = network.interface.ifname
    kernel = kernel_name(interfaces, generic, f"networks[{index}]")
    lines = [Line(f"# {generic} = {kernel}: network {comment(network.network_id)} "
                  f"({network.network_type})"),
             Line(f"interface={kernel}", f"networks[{index}].interface.ifname")]
    mtu = network.interface.mtu or network.mtu
    for item in served:
        if item.mode == DHCPV4:
            lines += _v4_lines(network, item, mtu, index)
        else:
            lines += _v6_lines(network, item)
    return lines


def _v4_lines(network, item, mtu, index):
    subnet, tag, path = item.subnet, item.tag, item.path
    lines = [Line(f"dhcp-range=set:{tag},{subnet.cidr.network_address},static,"
                  f"{subnet.cidr.netmask},{LEASE_TIME}", f"{path}.cidr")]
    # Without a gateway send an empty option 3: dnsmasq would offer itself otherwise.
    gateway = subnet.gateway_ip
    lines.append(Line(f"dhcp-option=tag:{tag},option:router" + (f",{gateway}" if gateway
                                                                else ""),
                      f"{path}.gateway_ip"))
    servers = [str(a) for a in subnet.dns_nameservers if a.version == 4]
    if not servers:
        servers = [str(_router_address(network, subnet) or "0.0.0.0")]  # 0.0.0.0: itself
    lines.append(Line(f"dhcp-option=tag:{tag},option:dns-server,{','.join(servers)}",
                      f"{path}.dns_nameservers"))
    routes = [(r.destination, r.nexthop) for r in subnet.host_routes
              if r.destination.version == 4]
    if routes:
        if gateway is not None and not any(dest == DEFAULT_V4 for dest, _ in routes):
            routes.append((DEFAULT_V4, gateway))
        pairs = ",".join(f"{dest},{hop}" for dest, hop in routes)
        lines.append(Line(f"dhcp-option=tag:{tag},option:classless-static-route,{pairs}",
                          f"{path}.host_routes"))
    if mtu:
        lines.append(Line(f"dhcp-option=tag:{tag},option:mtu,{mtu}",
                          f"networks[{index}].interface.mtu"))
    return lines


def _v6_lines(network, item):
    subnet, tag, path = item.subnet, item.tag, item.path
    # The prefix length is passed through: dnsmasq refuses DHCPv6 ranges shorter than
    # /64, and that refusal (naming this subnet) is the honest answer.
    lines = [Line(f"dhcp-range=set:{tag},{subnet.cidr.network_address},static,"
                  f"{subnet.cidr.prefixlen},{LEASE_TIME}", f"{path}.cidr")]
    servers = [a for a in subnet.dns_nameservers if a.version == 6]
    if not servers:
        servers = [_router_address(network, subnet) or "::"]  # [::]: itself
    lines.append(Line(f"dhcp-option=tag:{tag},option6:dns-server,"
                      + ",".join(f"[{a}]" for a in servers), f"{path}.dns_nameservers"))
    return lines


def _router_address(network, subnet):
    inside = sorted(a.ip for a in network.interface.addresses if a.ip in subnet.cidr)
    return inside[0] if inside else None


def _short_name(hostname):
    return hostname.split(".", 1)[0]


def _host_lines(network, index):
    return _allocation_lines(network, index)[0]


def _network_names(network, index):
    return _allocation_lines(network, index)[1]


@per_object
def _allocation_lines(network, index):
    """(reservations, names) of ``network``'s allocations (``_reservations``,
    ``_names``), their addresses formatted once for both, in MAC order."""
    allocations = network.allocations
    order = [k for _, k in sorted((allocations[k].mac_address, k)
                                  for k in range(len(allocations)))]
    texts = allocation_texts(network)
    return (_reservations(network, index, order, texts),
            _names(network, index, order, texts))


def _reservations(network, index, order, texts):
    """``<mac>,<v4>,[<v6>]...,<name>`` per allocation: at most one IPv4 address per served
    v4 subnet (dnsmasq allows one per dhcp-host, so a second subnet gets its own line),
    every address in the stateful v6 subnets, never the router's own addresses.
    Addresses are compared as ``address_key`` integers: ipaddress's hashing and ``in`` are
    Python code, and a full apply reserves thousands."""
    served = served_subnets(network, index)
    router = {address_key(a.ip) for a in network.interface.addresses}
    v4_spans = [_span(s.subnet.cidr) for s in served if s.mode == DHCPV4]
    v6_spans = [_span(s.subnet.cidr) for s in served if s.mode == DHCPV6_STATEFUL]
    allocations = network.allocations
    lines = []
    for k in order:
        allocation = allocations[k]
        ip = allocation.served_address
        if ip is not None:  # nearly every VM: one address, served; no lists to merge
            key = address_key(ip)
            if key in router:
                continue
            is_v4 = key < IPV6_ABOVE
            inside = sum(first <= key <= last for first, last in (v4_spans if is_v4 else v6_spans))
            if not inside:
                continue
            name = f",{_short_name(allocation.hostname)}" if allocation.hostname else ""
            text = texts[k][0] if is_v4 else f"[{texts[k][0]}]"
            # IPv4: one line per served subnet holding it; IPv6: one line
            lines += [(f"{allocation.mac_address},{text}{name}", k)] * (inside if is_v4 else 1)
            continue
        # (address_key, text) of the addresses to reserve; the spans of the two versions
        # never overlap (address_key puts IPv6 above every IPv4 address)
        wanted = [(key, text) for key, text in
                  ((address_key(ip), text) for (ip, enabled), text in
                   zip(allocation.ip_addresses, texts[k]) if enabled)
                  if key not in router]
        v4 = []  # by subnet
        for first, last in v4_spans:
            inside = [item for item in wanted if first <= item[0] <= last]
            if inside:
                v4.append(min(inside))
        v6 = sorted(item for item in wanted
                    if any(first <= item[0] <= last for first, last in v6_spans))
        if not v4 and not v6:
            continue  # nothing to reserve: no "<mac>,,<name>" lines
        name = f",{_short_name(allocation.hostname)}" if allocation.hostname else ""
        mac = allocation.mac_address
        lines.append(("".join([mac, *(f",{text}" for _, text in v4[:1]),
                               *(f",[{text}]" for _, text in v6), name]), k))
        lines += [(f"{mac},{text}{name}", k) for _, text in v4[1:]]
    return AllocationLines.of(lines, index)


def _span(cidr):
    """(first, last) address of ``cidr`` as ``address_key``s."""
    return address_key(cidr.network_address), address_key(cidr.broadcast_address)


def _name_lines(config):
    """DNS names of every address of every allocation on the tenant networks (DHCP or
    not: a static VM has a name too), as ``<address> <hostname> [<short name>]``."""
    blocks, seen = [], set()
    for i, network in enumerate(config.networks):
        if network.is_tenant:
            block = _network_names(network, i)
            texts = block.text.splitlines()
            if seen.isdisjoint(texts) and len(set(texts)) == len(texts):
                seen.update(texts)  # the usual case: the network's own block as it is
            else:
                kept = []
                for text, k in block.pairs():
                    if text not in seen:
                        seen.add(text)
                        kept.append((text, k))
                block = AllocationLines.of(kept, i, block.field)
            if block.text:
                blocks.append(block)
    return tuple(blocks)


def _names(network, index, order, texts):
    """``<address> <hostname> [<short name>]`` per address of each named allocation."""
    lines = []
    allocations = network.allocations
    for k in order:
        hostname = allocations[k].hostname
        if not hostname:
            continue
        short = _short_name(hostname)
        names = f" {hostname}" if short == hostname else f" {hostname} {short}"
        lines += [(text + names, k) for text in texts[k]]
    return AllocationLines.of(lines, index, ".hostname")


def _domains(name_lines):
    domains = set()
    for text in (text for block in name_lines for text in block.text.splitlines()):
        hostname = text.split()[1]
        if "." in hostname:
            domains.add(hostname.split(".", 1)[1])
    return sorted(domains)
