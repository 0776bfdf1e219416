"""Payload builder (pure): store snapshot + one appliance instance -> the exact body the
original astara orchestrator sent in ``PUT /v1/system/config`` (reference §1.5–1.6).

Router: ``asn``, ``neighbor_asn``, ``default_v4_gateway``, ``networks`` (management, then
external if the router has a gateway, then one entry per internal network in router-port
order), ``labels``, ``floating_ips``, ``tenant_id``, ``hostname`` ("ak-" + tenant),
``orchestrator``, ``ha_resource``, ``vpn`` (the router's IPsec site connections, see
``vpn_entry``; {} without), and ``ha_config`` for HA routers.
Load balancer: ``hostname`` ("ak-loadbalancer-" + tenant), ``tenant_id``, ``networks``
(the VIP network first, management second) and ``services.loadbalancer``.

Network entries carry *all* subnets of the network; ``dhcp_enabled`` is ``enable_dhcp``
unless ``ipv6_ra_mode`` is slaac; ``allocations`` (internal networks only) list every port
with fixed IPs on the network, the router's own interface port included, each with the
raw ``enable_dhcp`` of its IP's subnet and ``hostname`` = the string-sorted first IP with
'.'/':' turned into '-' plus ``.local``.

Deliberate difference: two router ports on one network become one entry (addresses merged)
on one NIC, where the original sent two entries with the same ifname (contract README,
router-dual-stack-by-subnet).
"""
import dataclasses
import ipaddress
import json
import logging
import re
from typing import Mapping, Optional

from .events import LOADBALANCER, ROUTER

LOG = logging.getLogger(__name__)
APPLIANCE_PORT_NAME = re.compile(r"^ASTARA:(VRRP|LB):")


class BuildError(Exception):
    """The desired state cannot be rendered for this instance (e.g. no NIC on a network)."""


@dataclasses.dataclass(frozen=True)
class PayloadSettings:
    """The deployment-wide parts of every payload."""
    management_network_id: str
    orchestrator_address: str
    metadata_port: int = 9697
    host: str = ""
    asn: int = 64512
    neighbor_asn: int = 64512
    labels: Mapping = dataclasses.field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings):
        return cls(management_network_id=settings.management.network_id,
                   orchestrator_address=settings.management.orchestrator_address,
                   metadata_port=settings.management.metadata_port, host=settings.host,
                   asn=settings.router.asn, neighbor_asn=settings.router.neighbor_asn,
                   labels=load_labels(settings.router.provider_rules_path))


@dataclasses.dataclass(frozen=True)
class InstanceView:
    """What the payload needs to know about one appliance instance."""
    management_address: str  # no prefix length
    interfaces: Mapping  # network id -> geN, from the appliance's NIC list
    ha_config: Optional[dict] = None


def load_labels(path):
    """``labels`` of a provider rules JSON file (astara's provider_rules.json); {} if unset
    or unreadable (logged, as the original did silently)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            return dict(json.load(handle).get("labels", {}))
    except (OSError, ValueError, AttributeError) as exc:
        LOG.warning("provider rules %s unreadable, labels will be empty: %s", path, exc)
        return {}


def ha_configs(instances):
    """``{name: ha_config}`` for ``instances`` = [(name, management address, created_at)]:
    the oldest instance gets priority 100, the others 50; peers are the others' addresses."""
    if not instances:
        return {}
    oldest = min(instances, key=lambda i: (i[2], i[0]))[0]
    return {name: {"peers": [addr for other, addr, _ in instances if other != name],
                   "priority": 100 if name == oldest else 50}
            for name, _, _ in instances}


def build(snapshot, ref, settings, instance):
    if ref.kind == ROUTER:
        return build_router(snapshot, ref.id, settings, instance)
    if ref.kind == LOADBALANCER:
        return build_loadbalancer(snapshot, ref.id, settings, instance)
    raise BuildError(f"no payload for kind {ref.kind!r}")


def placeholder_view(snapshot, ref):
    """An InstanceView with a synthetic management address and NIC names: building with it
    gives a digest of the resource's desired inputs, independent of any live instance."""
    mgmt = snapshot.management_network_id
    subnets = snapshot.subnets_of(mgmt)
    address = str(ipaddress.ip_network(subnets[0]["cidr"]).network_address) if subnets \
        else "::"
    interfaces = {mgmt: "ge0"}
    for i, network_id in enumerate(snapshot.data_networks(ref), start=1):
        interfaces[network_id] = f"ge{i}"
    obj = snapshot.get(ref.kind, ref.id) or {}
    return InstanceView(address, interfaces,
                        {"peers": [], "priority": 100} if obj.get("ha") else None)


# -- pieces -------------------------------------------------------------------------------------

def subnet_entry(subnet):
    return {"id": subnet["id"], "cidr": subnet["cidr"],
            "dhcp_enabled": bool(subnet["enable_dhcp"]) and subnet.get("ipv6_ra_mode") != "slaac",
            "dns_nameservers": list(subnet["dns_nameservers"]),
            "host_routes": [dict(r) for r in subnet["host_routes"]],
            "gateway_ip": subnet["gateway_ip"] or ""}


def allocation_entries(snapshot, network_id):
    subnets = {s["id"]: s for s in snapshot.subnets_of(network_id)}
    entries = []
    for port in snapshot.ports_on(network_id):
        if APPLIANCE_PORT_NAME.match(port["name"]) or not port["fixed_ips"]:
            continue
        ips = {i["ip_address"]: bool(subnets[i["subnet_id"]]["enable_dhcp"])
               for i in port["fixed_ips"]}
        first = sorted(ips)[0]
        entries.append({"ip_addresses": ips, "device_id": port["device_id"],
                        "hostname": re.sub(r"[.:]", "-", first) + ".local",
                        "mac_address": port["mac_address"]})
    return entries


def _addresses(snapshot, network_id, fixed_ips):
    prefixes = {s["id"]: ipaddress.ip_network(s["cidr"]).prefixlen
                for s in snapshot.subnets_of(network_id)}
    return [f"{i['ip_address']}/{prefixes[i['subnet_id']]}" for i in fixed_ips]


def network_entry(snapshot, network_id, network_type, ifname, addresses, allocations=()):
    network = snapshot.require("network", network_id)
    interface = {"ifname": ifname, "addresses": list(addresses)}
    if network["mtu"]:
        interface["mtu"] = network["mtu"]
    return {"interface": interface, "network_id": network_id, "mtu": network["mtu"],
            "v4_conf_service": "static", "v6_conf_service": "static",
            "network_type": network_type,
            "subnets": [subnet_entry(s) for s in snapshot.subnets_of(network_id)],
            "allocations": list(allocations)}


def management_entry(snapshot, settings, instance):
    network_id = settings.management_network_id
    address = ipaddress.ip_address(instance.management_address)
    subnet = next((s for s in snapshot.subnets_of(network_id)
                   if address in ipaddress.ip_network(s["cidr"])), None)
    if subnet is None:
        raise BuildError(f"management address {address} is in no subnet of the management "
                         f"network {network_id}")
    prefix = ipaddress.ip_network(subnet["cidr"]).prefixlen
    return network_entry(snapshot, network_id, "management", _ifname(instance, network_id),
                         [f"{address}/{prefix}"])


def _ifname(instance, network_id):
    try:
        return instance.interfaces[network_id]
    except KeyError:
        raise BuildError(f"the appliance has no NIC on network {network_id}") from None


def default_v4_gateway(external):
    if external is None:
        return ""
    addresses = [ipaddress.ip_interface(a).ip for a in external["interface"]["addresses"]]
    for subnet in external["subnets"]:
        cidr = ipaddress.ip_network(subnet["cidr"])
        if cidr.version == 4 and any(a in cidr for a in addresses):
            return subnet["gateway_ip"]
    return ""


# -- router -------------------------------------------------------------------------------------

def build_router(snapshot, router_id, settings, instance):
    router = snapshot.require(ROUTER, router_id)
    networks = [management_entry(snapshot, settings, instance)]
    external = None
    gateway = snapshot.gateway_port(router_id)
    if gateway is not None:
        nid = gateway["network_id"]
        external = network_entry(snapshot, nid, "external", _ifname(instance, nid),
                                 _addresses(snapshot, nid, gateway["fixed_ips"]))
        networks.append(external)
    internal = {}
    for port in snapshot.interface_ports(router_id):
        nid = port["network_id"]
        addresses = _addresses(snapshot, nid, port["fixed_ips"])
        if nid in internal:  # a second router port on this network: same NIC
            internal[nid]["interface"]["addresses"].extend(
                a for a in addresses if a not in internal[nid]["interface"]["addresses"])
            continue
        internal[nid] = network_entry(snapshot, nid, "internal", _ifname(instance, nid),
                                      addresses, allocation_entries(snapshot, nid))
        networks.append(internal[nid])
    payload = {
        "asn": settings.asn,
        "neighbor_asn": settings.neighbor_asn,
        "default_v4_gateway": default_v4_gateway(external),
        "networks": networks,
        "labels": {k: list(v) for k, v in settings.labels.items()},
        "floating_ips": [{"floating_ip": f["floating_ip_address"],
                          "fixed_ip": f["fixed_ip_address"]}
                         for f in snapshot.floatingips_of(router_id)],
        "tenant_id": router["tenant_id"],
        "hostname": "ak-" + router["tenant_id"],
        "orchestrator": {"address": settings.orchestrator_address,
                         "metadata_port": settings.metadata_port, "host": settings.host},
        "ha_resource": bool(router["ha"]),
        "vpn": vpn_entry(snapshot, router, gateway),
    }
    if router["ha"] and instance.ha_config is not None:
        payload["ha_config"] = dict(instance.ha_config)
    return payload


def vpn_entry(snapshot, router, gateway):
    """``vpn`` as Neutron VPNaaS with endpoint groups shows it: one VPN service for the
    router (its external addresses from the gateway port) with every IPsec site connection
    of the router; ``{}`` without connections."""
    connections = snapshot.vpn_connections_of(router["id"])
    if not connections:
        return {}
    external = {4: None, 6: None}
    for fixed in (gateway or {}).get("fixed_ips", ()):
        address = ipaddress.ip_address(fixed["ip_address"])
        external[address.version] = external[address.version] or str(address)
    service_id = f"vpn-{router['id']}"

    def connection_entry(c):
        tenant = c["tenant_id"]
        return {
            "id": c["id"], "name": c["name"], "tenant_id": tenant, "status": "ACTIVE",
            "admin_state_up": c["admin_state_up"], "vpnservice_id": service_id,
            "peer_address": c["peer_address"], "peer_id": c["peer_id"], "psk": c["psk"],
            "auth_mode": "psk", "route_mode": "static", "initiator": c["initiator"],
            "mtu": c["mtu"], "dpd": dict(c["dpd"]), "peer_cidrs": [],
            "ikepolicy": dict(c["ikepolicy"], id=f"ike-{c['id']}", name="",
                              tenant_id=tenant),
            "ipsecpolicy": dict(c["ipsecpolicy"], id=f"ipsec-{c['id']}", name="",
                                tenant_id=tenant),
            "local_ep_group": {"id": f"local-{c['id']}", "name": "", "tenant_id": tenant,
                               "type": "subnet", "endpoints": list(c["local_subnet_ids"])},
            "peer_ep_group": {"id": f"peer-{c['id']}", "name": "", "tenant_id": tenant,
                              "type": "cidr", "endpoints": list(c["peer_cidrs"])}}

    return {"ipsec": [{"id": service_id, "name": router["name"], "status": "ACTIVE",
                       "admin_state_up": True, "external_v4_ip": external[4],
                       "external_v6_ip": external[6], "router_id": router["id"],
                       "subnet_id": None,
                       "ipsec_connections": [connection_entry(c) for c in connections]}]}


# -- load balancer ------------------------------------------------------------------------------

def raw_port(port):
    """The port as Neutron's API would show it (``extra`` holds the attributes we only
    carry through, e.g. binding:*, security_groups)."""
    raw = dict(port.get("extra", {}))
    raw.update({key: port[key] for key in ("id", "name", "network_id", "mac_address",
                                           "device_id", "device_owner", "tenant_id",
                                           "admin_state_up", "status")})
    raw["fixed_ips"] = [dict(i) for i in port["fixed_ips"]]
    return raw


def build_loadbalancer(snapshot, lb_id, settings, instance):
    lb = snapshot.require(LOADBALANCER, lb_id)
    vip = snapshot.require("port", lb["vip_port_id"])
    nid = vip["network_id"]
    networks = [network_entry(snapshot, nid, "loadbalancer", _ifname(instance, nid),
                              _addresses(snapshot, nid, vip["fixed_ips"])),
                management_entry(snapshot, settings, instance)]
    pools = {p["id"]: p for p in snapshot.pools_of(lb_id)}

    def pool_entry(pool):
        return {"id": pool["id"], "tenant_id": pool["tenant_id"], "name": pool["name"],
                "admin_state_up": pool["admin_state_up"], "lb_algorithm": pool["lb_algorithm"],
                "protocol": pool["protocol"], "healthmonitor": None,
                "session_persistence": None,
                "members": [{"id": m["id"], "tenant_id": m["tenant_id"],
                             "admin_state_up": m["admin_state_up"], "address": m["address"],
                             "protocol_port": m["protocol_port"], "weight": m["weight"],
                             "subnet": None}
                            for m in snapshot.members_of(pool["id"])]}

    listeners = [{"id": li["id"], "tenant_id": li["tenant_id"], "name": li["name"],
                  "admin_state_up": li["admin_state_up"], "protocol": li["protocol"],
                  "protocol_port": li["protocol_port"],
                  "default_pool": pool_entry(pools[li["default_pool_id"]])
                  if li["default_pool_id"] in pools else None}
                 for li in snapshot.listeners_of(lb_id)]
    service = {"id": lb["id"], "tenant_id": lb["tenant_id"], "name": lb["name"],
               "admin_state_up": lb["admin_state_up"], "status": lb["provisioning_status"],
               "listeners": listeners, "vip_address": lb["vip_address"],
               "vip_port": raw_port(vip)}
    return {"hostname": "ak-loadbalancer-" + lb["tenant_id"], "tenant_id": lb["tenant_id"],
            "networks": networks, "services": {"loadbalancer": service}}
