"""IPsec site-to-site VPN model (``vpn.ipsec[]``), Neutron VPNaaS shapes."""
from dataclasses import dataclass
from typing import Optional

from . import schema


@dataclass(frozen=True)
class Lifetime:
    units: str
    value: int


@dataclass(frozen=True)
class IkePolicy:
    id: str
    name: str
    ike_version: str
    auth_algorithm: str
    encryption_algorithm: str
    pfs: str
    phase1_negotiation_mode: str
    lifetime: Lifetime


@dataclass(frozen=True)
class IpsecPolicy:
    id: str
    name: str
    transform_protocol: str
    auth_algorithm: str
    encryption_algorithm: str
    encapsulation_mode: str
    pfs: str
    lifetime: Lifetime


@dataclass(frozen=True)
class EndpointGroup:
    id: str
    name: str
    type: str
    endpoints: tuple  # subnet ids (type subnet) or networks (type cidr)


@dataclass(frozen=True)
class IpsecSiteConnection:
    id: str
    name: str
    peer_address: object
    peer_id: str
    admin_state_up: bool
    route_mode: str
    mtu: int
    initiator: str
    auth_mode: str
    psk: str
    dpd_action: str
    dpd_interval: int
    dpd_timeout: int
    peer_cidrs: tuple
    ikepolicy: IkePolicy
    ipsecpolicy: IpsecPolicy
    local_ep_group: Optional[EndpointGroup]
    peer_ep_group: Optional[EndpointGroup]


@dataclass(frozen=True)
class VpnService:
    id: str
    name: str
    admin_state_up: bool
    external_v4_ip: object
    external_v6_ip: object
    router_id: str
    subnet_id: Optional[str]
    connections: tuple


def _lifetime(spec):
    life = spec.lifetime or schema.Lifetime()
    return Lifetime(life.units, life.value)


def _ike(spec):
    return IkePolicy(id=spec.id, name=spec.name, ike_version=spec.ike_version,
                     auth_algorithm=spec.auth_algorithm,
                     encryption_algorithm=spec.encryption_algorithm, pfs=spec.pfs,
                     phase1_negotiation_mode=spec.phase1_negotiation_mode,
                     lifetime=_lifetime(spec))


def _ipsec(spec):
    return IpsecPolicy(id=spec.id, name=spec.name, transform_protocol=spec.transform_protocol,
                       auth_algorithm=spec.auth_algorithm,
                       encryption_algorithm=spec.encryption_algorithm,
                       encapsulation_mode=spec.encapsulation_mode, pfs=spec.pfs,
                       lifetime=_lifetime(spec))


def _endpoint_group(problems, spec, path):
    if spec is None:
        return None
    endpoints = spec.endpoints
    if spec.type == "cidr":
        endpoints = [problems.network(text, f"{path}.endpoints[{i}]")
                     for i, text in enumerate(endpoints)]
    return EndpointGroup(spec.id, spec.name, spec.type, tuple(endpoints))


def _connection(problems, spec, path):
    dpd = spec.dpd or schema.DeadPeerDetection()
    return IpsecSiteConnection(
        id=spec.id, name=spec.name,
        peer_address=problems.ip(spec.peer_address, f"{path}.peer_address"),
        peer_id=spec.peer_id, admin_state_up=spec.admin_state_up, route_mode=spec.route_mode,
        mtu=spec.mtu, initiator=spec.initiator, auth_mode=spec.auth_mode, psk=spec.psk,
        dpd_action=dpd.action, dpd_interval=dpd.interval, dpd_timeout=dpd.timeout,
        peer_cidrs=tuple(problems.network(text, f"{path}.peer_cidrs[{i}]")
                         for i, text in enumerate(spec.peer_cidrs)),
        ikepolicy=_ike(spec.ikepolicy), ipsecpolicy=_ipsec(spec.ipsecpolicy),
        local_ep_group=_endpoint_group(problems, spec.local_ep_group, f"{path}.local_ep_group"),
        peer_ep_group=_endpoint_group(problems, spec.peer_ep_group, f"{path}.peer_ep_group"))


def build_vpn(problems, spec, path):
    """The model of a router's ``vpn`` (``spec``: its schema.Vpn, or None)."""
    services = []
    for i, svc in enumerate(spec.ipsec if spec is not None else ()):
        spath = f"{path}.ipsec[{i}]"
        if not svc.external_v4_ip and not svc.external_v6_ip:
            problems.add(spath, "needs external_v4_ip or external_v6_ip")
        services.append(VpnService(
            id=svc.id, name=svc.name, admin_state_up=svc.admin_state_up,
            external_v4_ip=(problems.ip(svc.external_v4_ip, f"{spath}.external_v4_ip")
                            if svc.external_v4_ip else None),
            external_v6_ip=(problems.ip(svc.external_v6_ip, f"{spath}.external_v6_ip")
                            if svc.external_v6_ip else None),
            router_id=svc.router_id, subnet_id=svc.subnet_id,
            connections=tuple(_connection(problems, c, f"{spath}.ipsec_connections[{j}]")
                              for j, c in enumerate(svc.ipsec_connections))))
    return tuple(services)
