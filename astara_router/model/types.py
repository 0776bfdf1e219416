"""Immutable configuration model: what the orchestrator asked for, fully typed.

Addresses use the standard library's ``ipaddress`` types: they are immutable, hashable and
strict (``10.1.0.1/33`` and ``172.24.4.300`` are errors, not guesses). See README, "Decisions".
"""
import ipaddress
from array import array
from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter
from typing import Optional, Union

from .checks import address_key

IPAddress = Union[IPv4Address, IPv6Address]

TENANT_TYPES = ("internal", "isolated")


@dataclass(frozen=True)
class Route:
    destination: object  # IPv4Network | IPv6Network
    nexthop: IPAddress
    path: str = field(default="", compare=False)  # where it came from, for error messages


@dataclass(frozen=True)
class Subnet:
    id: str
    cidr: object
    gateway_ip: Optional[IPAddress]
    dhcp_enabled: bool
    dns_nameservers: tuple
    host_routes: tuple  # of Route
    ipv6_ra_mode: Optional[str] = None
    ipv6_address_mode: Optional[str] = None

    @property
    def version(self):
        return self.cidr.version


@dataclass(frozen=True, slots=True)  # slots: thousands of them, no per-object dict
class Allocation:
    mac_address: str
    # The (IPAddress, dhcp_enabled: bool) pairs (a tuple), or, for nearly every VM, one
    # address that DHCP hands out, that address alone (never as a 1-tuple: the parser makes
    # every one, model/parse.py): a pair in a 1-tuple each held 0.56 MB at 5 000
    # allocations. ``ip_addresses`` gives the pairs either way.
    addresses: object
    hostname: str
    device_id: str

    @property
    def ip_addresses(self):
        """The (IPAddress, dhcp_enabled: bool) pairs, in the model's order."""
        found = self.addresses
        return found if type(found) is tuple else ((found, True),)

    @property
    def served_address(self):
        """The address when it is the only one and DHCP hands it out (nearly every VM),
        else None: read without building the pairs, as renderers of thousands do."""
        found = self.addresses
        return None if type(found) is tuple else found

    @property
    def dhcp_addresses(self):
        return tuple(ip for ip, enabled in self.ip_addresses if enabled)


@dataclass(frozen=True)
class Interface:
    ifname: str
    addresses: tuple  # of IPv4Interface | IPv6Interface
    mtu: Optional[int] = None
    description: str = ""

    @property
    def index(self):
        return int(self.ifname[2:])

    def first(self, version):
        candidates = sorted(a.ip for a in self.addresses if a.version == version)
        return candidates[0] if candidates else None


@dataclass(frozen=True)
class Network:
    network_id: str
    name: str
    network_type: str
    interface: Interface
    subnets: tuple
    allocations: tuple
    v4_conf_service: str = "static"
    v6_conf_service: str = "static"
    mtu: Optional[int] = None

    @property
    def is_tenant(self):
        return self.network_type in TENANT_TYPES

    @property
    def is_external(self):
        return self.network_type == "external"

    @property
    def is_management(self):
        return self.network_type == "management"


class _WholeAddress:
    """An IPv4/6Interface of one whole address (/32, /128) as one small object: the
    standard one builds a network object (with a closure of its own for a /32) and two
    dicts, ~500 bytes where this takes ~90 — one per floating IP in the plans (5 000:
    2 MB). Equal to, and hashed like, the standard interface of the same address (the
    kernel's addresses are those); the network is made only when asked for."""
    __slots__ = ()

    def __init__(self, number):  # the address's own integer (int(address)), not a copy
        self._ip = number
        if self._version == 6:
            self._scope_id = None

    @property
    def network(self):
        return self._network_class((self._ip, self._max_prefixlen))

    @property
    def netmask(self):
        return self.network.netmask

    def __hash__(self):  # the standard interface's: (address, prefix, network address)
        return hash((self._ip, self._max_prefixlen, self._ip))

    def __eq__(self, other):
        if isinstance(other, self._interface_class):
            return (self._ip == other._ip and other._prefixlen == self._max_prefixlen
                    and getattr(other, "_scope_id", None) is None)
        return super().__eq__(other)

    def __reduce__(self):  # copies and pickles are standard interfaces, equal to this one
        return ipaddress.ip_interface, (str(self),)

    def __repr__(self):
        return f"{self._interface_class.__name__}('{self}')"


class WholeIPv4Address(_WholeAddress, ipaddress.IPv4Interface):
    __slots__ = ()
    _prefixlen = 32
    _network_class, _interface_class = ipaddress.IPv4Network, ipaddress.IPv4Interface


class WholeIPv6Address(_WholeAddress, ipaddress.IPv6Interface):
    __slots__ = ()
    _prefixlen = 128
    _network_class, _interface_class = ipaddress.IPv6Network, ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class FloatingIP:
    floating_ip: IPAddress
    fixed_ip: IPAddress
    # Derived once per object; the parser hands out the same object for the same pair
    # again (model/parse.py), so a push of thousands of floating IPs formats only new ones.
    # Kept in slots, not in cached_property's per-object dict: 1 MB less at 5 000.
    _host: object = field(default=None, init=False, repr=False, compare=False)
    _texts: object = field(default=None, init=False, repr=False, compare=False)
    _key: object = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def with_texts(cls, floating_ip, fixed_ip, texts):
        """One whose ``texts`` are ``texts``, the addresses' canonical forms (the pushed
        strings: kept anyway, where formatting them again took 0.9 MB at 5 000)."""
        fip = cls(floating_ip, fixed_ip)
        object.__setattr__(fip, "_texts", texts)
        return fip

    @property
    def host(self):
        """The floating address as a host interface (/32 or /128) on the external NIC."""
        if self._host is None:
            object.__setattr__(self, "_host", self._interface())
        return self._host

    def _interface(self):
        address = self.floating_ip
        if address.version == 6 and address.scope_id:
            return ipaddress.ip_interface((address, address.max_prefixlen))
        whole = WholeIPv4Address if address.version == 4 else WholeIPv6Address
        return whole(int(address))

    @property
    def texts(self):
        if self._texts is None:
            object.__setattr__(self, "_texts", (str(self.floating_ip), str(self.fixed_ip)))
        return self._texts

    # The floating address's checks.address_key: sets and maps of thousands of floating
    # IPs hash it in C, where an address's own __hash__ is Python code.
    @property
    def key(self):
        if self._key is None:
            object.__setattr__(self, "_key", address_key(self.floating_ip))
        return self._key


# A FloatingIP's texts as it keeps them (None until formatted), read in C: the parser's
# memos take that tuple as their key (model/parse.py).
KEPT_TEXTS = attrgetter("_texts")


@dataclass(frozen=True)
class Label:
    name: str
    cidrs: tuple


@dataclass(frozen=True)
class Orchestrator:
    address: Optional[IPAddress]
    metadata_port: int = 9697
    host: str = ""


@dataclass(frozen=True)
class HAConfig:
    peers: tuple = ()
    priority: int = 50


@dataclass(frozen=True)
class RouterConfig:
    asn: int
    neighbor_asn: int
    default_v4_gateway: Optional[IPv4Address]
    static_routes: tuple  # of Route
    floating_ips: tuple
    labels: tuple  # of Label
    orchestrator: Orchestrator
    vpn: tuple  # of vpn.VpnService
    address_book: tuple = ()
    anchors: tuple = ()

    @cached_property
    def floating_ip_keys(self):
        """``(keys, indexes)``: the floating addresses' keys (``FloatingIP.key``) sorted,
        and the payload index of each: which lie in a prefix is a binary search (the
        management-path check asks for several prefixes). A list of the addresses' own
        integers and an array, not a tuple per floating IP (0.5 MB at 5 000)."""
        numbers = [fip.key for fip in self.floating_ips]
        order = sorted(range(len(numbers)), key=numbers.__getitem__)
        return [numbers[i] for i in order], array("I", order)


@dataclass(frozen=True)
class SystemConfig:
    """The whole desired state of one appliance."""

    tenant_id: str
    hostname: str
    networks: tuple
    ha: bool = False
    ha_config: HAConfig = HAConfig()
    router: Optional[RouterConfig] = None
    loadbalancer: object = None  # loadbalancer.LoadBalancer

    # -- derived views --------------------------------------------------------------------
    def networks_of(self, *types):
        return tuple(n for n in self.networks if n.network_type in types)

    @property
    def management_network(self):
        found = self.networks_of("management")
        return found[0] if found else None

    @property
    def management_address(self):
        network = self.management_network
        if network is None:
            return None
        return network.interface.first(4) or network.interface.first(6)

    # Cached: a push asks for them once per floating IP.
    @cached_property
    def external_networks(self):
        return self.networks_of("external")

    @cached_property
    def tenant_networks(self):
        return self.networks_of(*TENANT_TYPES)

    def network_for(self, address):
        """The network whose subnets contain ``address`` (first match in payload order)."""
        for network in self.networks:
            for subnet in network.subnets:
                if address in subnet.cidr:
                    return network
        return None

    @property
    def floating_ips(self):
        return self.router.floating_ips if self.router else ()

    def without_floating_ips(self):
        """This configuration with no floating IPs: equal for two configurations that
        differ by floating IPs alone (cheap to compare: unchanged networks are the same
        objects, model/parse.py)."""
        if self.router is None or not self.router.floating_ips:
            return self
        return replace(self, router=replace(self.router, floating_ips=()))

    def external_interface_for(self, address):
        """Where a floating address lives: the external network whose subnet holds it,
        else the first external network (Neutron may route extra ranges to the gateway)."""
        externals = self.external_networks
        if len(externals) == 1:
            return externals[0]
        for network in externals:
            if any(address in s.cidr for s in network.subnets):
                return network
        return externals[0] if externals else None

    @property
    def floating_ip_networks(self):
        """(FloatingIP, its external network) of each floating IP, in order (an iterator)."""
        return zip(self.floating_ips, self._floating_ip_externals)

    @cached_property
    def _floating_ip_externals(self):
        """The external network of each floating IP, computed once per configuration: a
        tuple of a few networks, not a pair per floating IP (0.3 MB at 5 000)."""
        externals = self.external_networks
        if len(externals) <= 1:
            return (externals[0] if externals else None,) * len(self.floating_ips)
        return tuple(self.external_interface_for(fip.floating_ip)
                     for fip in self.floating_ips)
