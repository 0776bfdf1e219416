"""Load balancer model (``services.loadbalancer``), Neutron LBaaS v2 shapes."""
from dataclasses import dataclass
from typing import Optional

from .reader import join

ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP")
PROTOCOLS = ("HTTP", "HTTPS", "TCP", "TERMINATED_HTTPS", "UDP")


@dataclass(frozen=True)
class Member:
    id: str
    address: object
    protocol_port: int
    weight: int
    admin_state_up: bool


@dataclass(frozen=True)
class HealthMonitor:
    type: str
    delay: int
    timeout: int
    max_retries: int
    url_path: str = "/"
    expected_codes: str = "200"


@dataclass(frozen=True)
class Pool:
    id: str
    name: str
    protocol: str
    lb_algorithm: str
    admin_state_up: bool
    members: tuple
    healthmonitor: Optional[HealthMonitor]
    session_persistence: Optional[str]


@dataclass(frozen=True)
class Listener:
    id: str
    name: str
    protocol: str
    protocol_port: int
    admin_state_up: bool
    default_pool: Optional[Pool]


@dataclass(frozen=True)
class LoadBalancer:
    id: str
    name: str
    tenant_id: str
    admin_state_up: bool
    status: str
    vip_address: object
    listeners: tuple


def _pool(r, obj, path):
    members = tuple(
        Member(id=r.str(m, "id", mp, required=False),
               address=r.ip(m, "address", mp),
               protocol_port=r.int(m, "protocol_port", mp, required=True, lo=1, hi=65535),
               weight=r.int(m, "weight", mp, default=1, lo=0, hi=256),
               admin_state_up=r.bool(m, "admin_state_up", mp, default=True))
        for mp, m in r.objects(obj, "members", path))
    hm = None
    if obj.get("healthmonitor"):
        h = r.object(obj, "healthmonitor", path)
        hp = join(path, "healthmonitor")
        hm = HealthMonitor(type=r.choice(h, "type", hp, ("HTTP", "HTTPS", "TCP", "PING"), "TCP"),
                           delay=r.int(h, "delay", hp, default=5, lo=1, hi=3600),
                           timeout=r.int(h, "timeout", hp, default=3, lo=1, hi=3600),
                           max_retries=r.int(h, "max_retries", hp, default=3, lo=1, hi=10),
                           url_path=r.str(h, "url_path", hp, required=False, default="/"),
                           expected_codes=r.str(h, "expected_codes", hp, required=False,
                                                default="200"))
    persistence = None
    if obj.get("session_persistence"):
        sp = r.object(obj, "session_persistence", path)
        persistence = r.choice(sp, "type", join(path, "session_persistence"),
                               ("SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"), "SOURCE_IP")
    return Pool(id=r.str(obj, "id", path, required=False),
                name=r.str(obj, "name", path, required=False),
                protocol=r.choice(obj, "protocol", path, PROTOCOLS, "TCP"),
                lb_algorithm=r.choice(obj, "lb_algorithm", path, ALGORITHMS, "ROUND_ROBIN"),
                admin_state_up=r.bool(obj, "admin_state_up", path, default=True),
                members=members, healthmonitor=hm, session_persistence=persistence)


def parse_loadbalancer(r, obj, path):
    listeners = []
    for lp, lst in r.objects(obj, "listeners", path, required=True):
        pool = None
        if lst.get("default_pool") is not None:
            pool = _pool(r, r.object(lst, "default_pool", lp), join(lp, "default_pool"))
        listeners.append(Listener(
            id=r.str(lst, "id", lp, required=False), name=r.str(lst, "name", lp, required=False),
            protocol=r.choice(lst, "protocol", lp, PROTOCOLS, "TCP"),
            protocol_port=r.int(lst, "protocol_port", lp, required=True, lo=1, hi=65535),
            admin_state_up=r.bool(lst, "admin_state_up", lp, default=True),
            default_pool=pool))
    return LoadBalancer(id=r.str(obj, "id", path, allow_empty=False),
                        name=r.str(obj, "name", path, required=False),
                        tenant_id=r.str(obj, "tenant_id", path, required=False),
                        admin_state_up=r.bool(obj, "admin_state_up", path, default=True),
                        status=r.str(obj, "status", path, required=False),
                        vip_address=r.ip(obj, "vip_address", path),
                        listeners=tuple(listeners))
