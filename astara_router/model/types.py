"""Immutable configuration model: what the orchestrator asked for, fully typed.

Addresses use the standard library's ``ipaddress`` types: they are immutable, hashable and
strict (``10.1.0.1/33`` and ``172.24.4.300`` are errors, not guesses). See README, "Decisions".
"""
import ipaddress
from dataclasses import dataclass, field, replace
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address
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
    ip_addresses: tuple  # of (IPAddress, dhcp_enabled: bool)
    hostname: str
    device_id: str

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
        # From the integer: given an address object, ipaddress formats and parses it again
        # twice (the interface's address, then its network): a third of the time for v4.
        interface = ipaddress.IPv4Interface if address.version == 4 else ipaddress.IPv6Interface
        return interface((int(address), address.max_prefixlen))

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
        """Sorted (version, address as an integer, index) of the floating IPs: which lie in a
        prefix is a binary search (the management-path check asks for several prefixes)."""
        return sorted((*fip.key, i) for i, fip in enumerate(self.floating_ips))


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

    @cached_property
    def floating_ip_networks(self):
        """((FloatingIP, its external network), ...), computed once per configuration."""
        return tuple((fip, self.external_interface_for(fip.floating_ip))
                     for fip in self.floating_ips)
