"""IPsec site-to-site VPN model (``vpn.ipsec[]``), Neutron VPNaaS shapes."""
from dataclasses import dataclass
from typing import Optional

from .reader import join


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


def _lifetime(r, obj, path):
    life = r.object(obj, "lifetime", path, required=False)
    lpath = join(path, "lifetime")
    return Lifetime(r.choice(life, "units", lpath, ("seconds", "kilobytes"), "seconds"),
                    r.int(life, "value", lpath, default=3600, lo=60, hi=86400 * 7))


def _ike(r, obj, path):
    return IkePolicy(
        id=r.str(obj, "id", path, required=False), name=r.str(obj, "name", path, required=False),
        ike_version=r.choice(obj, "ike_version", path, ("v1", "v2"), "v1"),
        auth_algorithm=r.str(obj, "auth_algorithm", path, required=False, default="sha1"),
        encryption_algorithm=r.str(obj, "encryption_algorithm", path, required=False,
                                   default="aes-128"),
        pfs=r.str(obj, "pfs", path, required=False, default="group5"),
        phase1_negotiation_mode=r.choice(obj, "phase1_negotiation_mode", path,
                                         ("main", "aggressive"), "main"),
        lifetime=_lifetime(r, obj, path))


def _ipsec(r, obj, path):
    return IpsecPolicy(
        id=r.str(obj, "id", path, required=False), name=r.str(obj, "name", path, required=False),
        transform_protocol=r.choice(obj, "transform_protocol", path, ("esp", "ah", "ah-esp"),
                                    "esp"),
        auth_algorithm=r.str(obj, "auth_algorithm", path, required=False, default="sha1"),
        encryption_algorithm=r.str(obj, "encryption_algorithm", path, required=False,
                                   default="aes-128"),
        encapsulation_mode=r.choice(obj, "encapsulation_mode", path, ("tunnel", "transport"),
                                    "tunnel"),
        pfs=r.str(obj, "pfs", path, required=False, default="group5"),
        lifetime=_lifetime(r, obj, path))


def _endpoint_group(r, obj, key, path):
    if obj.get(key) is None:
        return None
    group = r.object(obj, key, path)
    gpath = join(path, key)
    kind = r.choice(group, "type", gpath, ("subnet", "cidr"), "cidr")
    endpoints = []
    for i, ep in enumerate(r.list(group, "endpoints", gpath)):
        epath = join(join(gpath, "endpoints"), i)
        if kind == "cidr":
            endpoints.append(r.network_value(ep, epath))
        elif isinstance(ep, str) and ep:
            endpoints.append(ep)
        else:
            r.error(epath, f"must be a subnet id, not {ep!r}")
    return EndpointGroup(r.str(group, "id", gpath, required=False),
                         r.str(group, "name", gpath, required=False), kind, tuple(endpoints))


def _connection(r, obj, path):
    dpd = r.object(obj, "dpd", path, required=False)
    dpath = join(path, "dpd")
    return IpsecSiteConnection(
        id=r.str(obj, "id", path), name=r.str(obj, "name", path, required=False),
        peer_address=r.ip(obj, "peer_address", path),
        peer_id=r.str(obj, "peer_id", path, required=False),
        admin_state_up=r.bool(obj, "admin_state_up", path, default=True),
        route_mode=r.str(obj, "route_mode", path, required=False, default="static"),
        mtu=r.int(obj, "mtu", path, default=1500, lo=68, hi=65535),
        initiator=r.choice(obj, "initiator", path, ("bi-directional", "response-only"),
                           "bi-directional"),
        auth_mode=r.choice(obj, "auth_mode", path, ("psk",), "psk"),
        psk=r.str(obj, "psk", path, allow_empty=False),
        dpd_action=r.choice(dpd, "action", dpath,
                            ("hold", "clear", "restart", "disabled", "restart-by-peer"), "hold"),
        dpd_interval=r.int(dpd, "interval", dpath, default=30, lo=1, hi=3600),
        dpd_timeout=r.int(dpd, "timeout", dpath, default=120, lo=1, hi=36000),
        peer_cidrs=tuple(r.network_value(c, join(join(path, "peer_cidrs"), i))
                         for i, c in enumerate(r.list(obj, "peer_cidrs", path))),
        ikepolicy=_ike(r, r.object(obj, "ikepolicy", path), join(path, "ikepolicy")),
        ipsecpolicy=_ipsec(r, r.object(obj, "ipsecpolicy", path), join(path, "ipsecpolicy")),
        local_ep_group=_endpoint_group(r, obj, "local_ep_group", path),
        peer_ep_group=_endpoint_group(r, obj, "peer_ep_group", path))


def parse_vpn(r, body, parent=""):
    vpn = r.object(body, "vpn", parent, required=False)
    services = []
    for spath, svc in r.objects(vpn, "ipsec", join(parent, "vpn")):
        v4 = r.ip(svc, "external_v4_ip", spath, required=False, version=4, allow_empty=True)
        v6 = r.ip(svc, "external_v6_ip", spath, required=False, version=6, allow_empty=True)
        if v4 is None and v6 is None and not any(
                e.path.startswith(spath + ".external_v") for e in r.errors):
            r.error(spath, "needs external_v4_ip or external_v6_ip")
        services.append(VpnService(
            id=r.str(svc, "id", spath), name=r.str(svc, "name", spath, required=False),
            admin_state_up=r.bool(svc, "admin_state_up", spath, default=True),
            external_v4_ip=v4, external_v6_ip=v6,
            router_id=r.str(svc, "router_id", spath, required=False),
            subnet_id=r.str(svc, "subnet_id", spath, required=False, default=None),
            connections=tuple(_connection(r, c, cpath)
                              for cpath, c in r.objects(svc, "ipsec_connections", spath))))
    return tuple(services)
