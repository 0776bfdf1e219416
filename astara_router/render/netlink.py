"""Pure rendering of the link/address/route part of a configuration.

On an HA router (``ha_resource``) keepalived owns the data plane: every address of a
non-management network, the floating IPs and the routes through those networks are marked
``keepalived``; the netlink subsystem leaves them alone and render/ha.py makes them
keepalived's virtual addresses and routes, present on the VRRP master only. The management
network stays each instance's own.
"""
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Optional

from .memo import per_object

DEFAULT = {4: ip_network("0.0.0.0/0"), 6: ip_network("::/0")}


@dataclass(frozen=True)
class LinkSpec:
    generic: str
    mtu: Optional[int]
    addresses: frozenset  # of IPv4Interface | IPv6Interface
    nodad: bool  # tenant/management v6 addresses are ours alone: skip DAD so they work at once
    path: str = field(default="", compare=False)
    keepalived: bool = False  # HA: the addresses are keepalived's (on the master only)


@dataclass(frozen=True)
class RouteSpec:
    destination: object
    gateway: object
    generic: Optional[str]  # None: let the kernel pick the device
    path: str = field(default="", compare=False)
    keepalived: bool = False  # HA: a virtual route of keepalived's (on the master only)

    @property
    def key(self):
        return (self.destination, self.gateway, self.generic)


@dataclass(frozen=True)
class NetlinkPlan:
    links: tuple
    routes: tuple

    def link(self, generic):
        return next((link for link in self.links if link.generic == generic), None)


@per_object  # once per config: netlink's plan, the HA plan and the status view all use it
def render_netlink(config):
    links = []
    for i, network in enumerate(config.networks):
        addresses = set(network.interface.addresses)
        if network.is_external:
            addresses |= {fip.host for fip, external in config.floating_ip_networks
                          if external is network}
        links.append(LinkSpec(network.interface.ifname,
                              network.interface.mtu or network.mtu,
                              frozenset(addresses), nodad=not network.is_external,
                              path=f"networks[{i}].interface",
                              keepalived=keepalived_owns(config, network)))
    return NetlinkPlan(tuple(links), _routes(config))


def keepalived_owns(config, network):
    """Whether keepalived holds ``network``'s addresses and the routes through it (HA
    router, any network but the management one); ``network`` None: the kernel picks the
    device, so on an HA router that route is keepalived's too."""
    return config.ha and (network is None or not network.is_management)


def _routes(config):
    routes, seen = [], set()

    def add(destination, gateway, network, path):
        if destination in seen:  # first wins: the kernel holds one route per prefix
            return
        seen.add(destination)
        routes.append(RouteSpec(destination, gateway,
                                network.interface.ifname if network else None, path,
                                keepalived=keepalived_owns(config, network)))

    for version in (4, 6):
        gateway, network, path = _default_gateway(config, version)
        if gateway is not None:
            add(DEFAULT[version], gateway, network, path)
    for i, network in enumerate(config.networks):
        for j, subnet in enumerate(network.subnets):
            for k, route in enumerate(subnet.host_routes):
                add(route.destination, route.nexthop, network,
                    f"networks[{i}].subnets[{j}].host_routes[{k}]")
    if config.router:
        for route in config.router.static_routes:
            add(route.destination, route.nexthop, config.network_for(route.nexthop),
                route.path)
    return tuple(routes)


def _default_gateway(config, version):
    """Router: ``default_v4_gateway`` first, then the first external subnet gateway of the
    family. Load balancer: the gateway of its VIP network, so replies reach remote clients
    (the original left LB appliances without a default route)."""
    router = config.router
    if router and version == 4 and router.default_v4_gateway is not None:
        gateway = router.default_v4_gateway
        network = config.network_for(gateway)
        if network is None and config.external_networks:
            network = config.external_networks[-1]
        return gateway, network, "default_v4_gateway"
    candidates = config.external_networks if router else config.networks_of("loadbalancer")
    for network in candidates:
        index = config.networks.index(network)
        for j, subnet in enumerate(network.subnets):
            if subnet.version == version and subnet.gateway_ip is not None:
                return subnet.gateway_ip, network, f"networks[{index}].subnets[{j}].gateway_ip"
    return None, None, None
