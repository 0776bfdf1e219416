"""Load balancer model (``services.loadbalancer``), Neutron LBaaS v2 shapes."""
from dataclasses import dataclass
from typing import Optional


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


def _pool(problems, spec, path):
    members = tuple(
        Member(id=m.id, address=problems.ip(m.address, f"{path}.members[{i}].address"),
               protocol_port=m.protocol_port, weight=m.weight, admin_state_up=m.admin_state_up)
        for i, m in enumerate(spec.members))
    hm = spec.healthmonitor
    return Pool(id=spec.id, name=spec.name, protocol=spec.protocol,
                lb_algorithm=spec.lb_algorithm, admin_state_up=spec.admin_state_up,
                members=members,
                healthmonitor=hm and HealthMonitor(
                    type=hm.type, delay=hm.delay, timeout=hm.timeout,
                    max_retries=hm.max_retries, url_path=hm.url_path,
                    expected_codes=hm.expected_codes),
                session_persistence=spec.session_persistence and spec.session_persistence.type)


def build_loadbalancer(problems, spec, path):
    """The model of ``services.loadbalancer`` (``spec``: its schema.LoadBalancer)."""
    listeners = tuple(
        Listener(id=lst.id, name=lst.name, protocol=lst.protocol,
                 protocol_port=lst.protocol_port, admin_state_up=lst.admin_state_up,
                 default_pool=lst.default_pool and _pool(
                     problems, lst.default_pool, f"{path}.listeners[{i}].default_pool"))
        for i, lst in enumerate(spec.listeners))
    return LoadBalancer(id=spec.id, name=spec.name, tenant_id=spec.tenant_id,
                        admin_state_up=spec.admin_state_up, status=spec.status,
                        vip_address=problems.ip(spec.vip_address, f"{path}.vip_address"),
                        listeners=listeners)
