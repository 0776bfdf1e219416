"""IPsec site-to-site VPN model (``vpn.ipsec[]``), Neutron VPNaaS shapes.

Besides the payload's fields, each connection carries what it protects, resolved here once
for the VPN renderer and the firewall alike: ``local_subnets`` (its local endpoint group:
subnet ids resolved to the CIDRs of this router's subnets, or CIDRs; else the service's
legacy ``subnet_id``) and ``peer_subnets`` (its peer endpoint group's CIDRs plus the legacy
``peer_cidrs``). An unknown subnet id is an error naming the field (the original dropped it
silently), and so is a side with nothing to protect or an address family only one side has.
"""
from dataclasses import dataclass, field, replace
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
    psk: str = field(repr=False)
    dpd_action: str
    dpd_interval: int
    dpd_timeout: int
    peer_cidrs: tuple
    ikepolicy: IkePolicy
    ipsecpolicy: IpsecPolicy
    local_ep_group: Optional[EndpointGroup]
    peer_ep_group: Optional[EndpointGroup]
    local_subnets: tuple = ()  # networks this side protects (resolved)
    peer_subnets: tuple = ()  # networks behind the peer
    path: str = field(default="", compare=False)  # its JSON path, for error messages


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
    path: str = field(default="", compare=False)

    @property
    def active_connections(self):
        """The connections to carry out: both it and its service are administratively up."""
        return tuple(c for c in self.connections if c.admin_state_up) \
            if self.admin_state_up else ()

    def external_ip(self, version):
        return self.external_v4_ip if version == 4 else self.external_v6_ip


def active_connections(router):
    """(service, connection) of every connection a router carries out."""
    return tuple((service, connection) for service in (router.vpn if router else ())
                 for connection in service.active_connections)


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


def _unique(items):
    return tuple(dict.fromkeys(item for item in items if item is not None))


def _local_subnets(problems, group, subnet_id, subnets, path, service_path):
    """The CIDRs the local side protects (``subnets``: subnet id -> CIDR of this router)."""
    if group is None:
        if not subnet_id:
            problems.add(f"{path}.local_ep_group", "is required (the service has no "
                                                   "subnet_id either)")
            return ()
        if subnet_id not in subnets:
            problems.add(f"{service_path}.subnet_id",
                         f"{subnet_id!r} is not a subnet of this router")
            return ()
        return (subnets[subnet_id],)
    if group.type == "cidr":
        return _unique(group.endpoints)
    found = []
    for i, endpoint in enumerate(group.endpoints):
        if endpoint in subnets:
            found.append(subnets[endpoint])
        else:
            problems.add(f"{path}.local_ep_group.endpoints[{i}]",
                         f"{endpoint!r} is not a subnet of this router")
    return _unique(found)


def _connection(problems, spec, path, service, subnets):
    dpd = spec.dpd or schema.DeadPeerDetection()
    peer_group = _endpoint_group(problems, spec.peer_ep_group, f"{path}.peer_ep_group")
    local_group = _endpoint_group(problems, spec.local_ep_group, f"{path}.local_ep_group")
    peer_cidrs = tuple(problems.network(text, f"{path}.peer_cidrs[{i}]")
                       for i, text in enumerate(spec.peer_cidrs))
    if peer_group is not None and peer_group.type != "cidr":
        problems.add(f"{path}.peer_ep_group.type", "the peer endpoint group must be of type "
                                                   "cidr (the peer's subnets are not ours)")
        peer_group = None
    local = _local_subnets(problems, local_group, service.subnet_id, subnets, path,
                           service.path)
    peer = _unique((*(peer_group.endpoints if peer_group else ()), *peer_cidrs))
    if not peer:
        problems.add(f"{path}.peer_ep_group", "no peer CIDRs (neither peer_ep_group "
                                              "endpoints nor peer_cidrs)")
    elif local:
        for version in (4, 6):
            if any(n.version == version for n in local) != \
                    any(n.version == version for n in peer):
                problems.add(f"{path}.peer_ep_group",
                             f"IPv{version} subnets on one side only: "
                             f"local {', '.join(map(str, local))}, "
                             f"peer {', '.join(map(str, peer))}")
    return IpsecSiteConnection(
        id=spec.id, name=spec.name,
        peer_address=problems.ip(spec.peer_address, f"{path}.peer_address"),
        peer_id=spec.peer_id, admin_state_up=spec.admin_state_up, route_mode=spec.route_mode,
        mtu=spec.mtu, initiator=spec.initiator, auth_mode=spec.auth_mode, psk=spec.psk,
        dpd_action=dpd.action, dpd_interval=dpd.interval, dpd_timeout=dpd.timeout,
        peer_cidrs=peer_cidrs, ikepolicy=_ike(spec.ikepolicy),
        ipsecpolicy=_ipsec(spec.ipsecpolicy), local_ep_group=local_group,
        peer_ep_group=peer_group, local_subnets=local, peer_subnets=peer, path=path)


def build_vpn(problems, spec, path, networks=()):
    """The model of a router's ``vpn`` (``spec``: its schema.Vpn, or None; ``networks``: the
    router's networks, whose subnets local endpoint groups name)."""
    subnets = {s.id: s.cidr for n in networks for s in n.subnets if s.cidr is not None}
    services = []
    for i, svc in enumerate(spec.ipsec if spec is not None else ()):
        spath = f"{path}.ipsec[{i}]"
        if not svc.external_v4_ip and not svc.external_v6_ip:
            problems.add(spath, "needs external_v4_ip or external_v6_ip")
        service = VpnService(
            id=svc.id, name=svc.name, admin_state_up=svc.admin_state_up,
            external_v4_ip=(problems.ip(svc.external_v4_ip, f"{spath}.external_v4_ip")
                            if svc.external_v4_ip else None),
            external_v6_ip=(problems.ip(svc.external_v6_ip, f"{spath}.external_v6_ip")
                            if svc.external_v6_ip else None),
            router_id=svc.router_id, subnet_id=svc.subnet_id, connections=(), path=spath)
        connections = tuple(
            _connection(problems, c, f"{spath}.ipsec_connections[{j}]", service, subnets)
            for j, c in enumerate(svc.ipsec_connections))
        services.append(replace(service, connections=connections))
    return tuple(services)
