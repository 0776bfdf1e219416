"""Validation and referential integrity: a request body -> the canonical object, or a
``StoreError`` (400/404/409) naming the offending field.

Every writer (admin API, astara-ctl, the orchestrator itself) goes through here, so all get
the same checks. Per kind, a normaliser turns ``(snapshot, body, old object)`` into the
stored object: it rejects unknown keys, checks types, ranges and references against the
snapshot, and fills defaults (ids, MACs, fixed IPs from ``ipam``). ``delete_changes``
says what a delete implies (cascades) or refuses it while something depends on the object.
"""
import ipaddress
import re
import uuid

from astara_router.model import schema

from .. import ipam
from ..events import LOADBALANCER, ROUTER
from .errors import Conflict, NotFound, StoreError
from .kinds import KINDS, LB_VIP_OWNER, ROUTER_GATEWAY_OWNER, ROUTER_PORT_OWNERS

IPV6_MODES = (None, "slaac", "dhcpv6-stateful", "dhcpv6-stateless")
LB_ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP")
LB_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "UDP", "TERMINATED_HTTPS", "PROXY")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
CONNECTION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


# -- entry points -----------------------------------------------------------------------------

def check_kind(kind):
    if kind not in KINDS:
        raise NotFound(f"unknown kind {kind!r}")


def normalize(snap, kind, body, old=None):
    """The canonical ``kind`` object for ``body`` (``old``: the object it replaces)."""
    return NORMALIZERS[kind](snap, body, old)


def new_object(snap, kind, body):
    """The object a create of ``body`` makes."""
    check_kind(kind)
    if not isinstance(body, dict):
        raise StoreError(f"a {kind} must be a JSON object")
    if body.get("id") and snap.get(kind, body["id"]):
        raise Conflict(f"{kind} {body['id']} already exists", "id")
    return normalize(snap, kind, body)


def changed_object(snap, kind, obj_id, changes):
    """``(old, new)``: object ``obj_id`` before and after ``changes`` (a partial body)."""
    check_kind(kind)
    if not isinstance(changes, dict):
        raise StoreError(f"changes to a {kind} must be a JSON object")
    if changes.get("id", obj_id) != obj_id:
        raise StoreError("id cannot be changed", "id")
    old = snap.require(kind, obj_id)
    for key in IMMUTABLE.get(kind, ()):
        if key in changes and changes[key] != old[key]:
            raise StoreError(f"{key} cannot be changed", key)
    body = dict(old, **changes)
    # Derived fields are recomputed, not carried over from the old object.
    if kind == "subnet":
        body.pop("ip_version", None)
    if kind == "floatingip" and "port_id" in changes and "fixed_ip_address" not in changes:
        body.pop("fixed_ip_address", None)
    return old, normalize(snap, kind, body, old)


# -- field helpers ----------------------------------------------------------------------------

def _str(body, key, default=""):
    value = body.get(key, default)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise StoreError(f"{key} must be a string", key)
    # The appliance's grammar (one schema): what the orchestrator stores, the agent accepts.
    if key.endswith("_id"):
        if not schema.conforms(value, schema.IdentifierOrEmpty):
            raise StoreError(f"{key} must be {schema.ID_RULE}", key)
    elif not schema.conforms(value, schema.Text):
        raise StoreError(f"{key} must be {schema.TEXT_RULE}", key)
    return value


def _required_str(body, key):
    value = _str(body, key)
    if not value:
        raise StoreError(f"{key} is required", key)
    return value


def _bool(body, key, default):
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise StoreError(f"{key} must be true or false", key)
    return value


def _int(body, key, default, lo, hi, nullable=False):
    value = body.get(key, default)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise StoreError(f"{key} must be an integer in [{lo}, {hi}]", key)
    return value


def _ip(value, key):
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise StoreError(f"{key}: {value!r} is not an IP address", key) from None


def _choice(body, key, default, choices):
    value = body.get(key, default)
    if value not in choices:
        allowed = ", ".join("null" if c is None else c for c in choices)
        raise StoreError(f"{key} must be one of {allowed}", key)
    return value


def _new_id(body):
    obj_id = body.get("id") or str(uuid.uuid4())
    if not isinstance(obj_id, str) or not ID_RE.match(obj_id):
        raise StoreError(f"id {obj_id!r} must be 1-128 characters [A-Za-z0-9_.:-]", "id")
    return obj_id


# The fields each kind's body may carry (anything else is refused, naming it).
FIELDS = {
    "network": ("id", "tenant_id", "name", "mtu", "external"),
    "subnet": ("id", "network_id", "tenant_id", "name", "cidr", "gateway_ip", "enable_dhcp",
               "ipv6_ra_mode", "ipv6_address_mode", "dns_nameservers", "host_routes"),
    "port": ("id", "network_id", "tenant_id", "name", "mac_address", "fixed_ips", "device_id",
             "device_owner", "admin_state_up", "status", "extra"),
    "router": ("id", "tenant_id", "name", "ha", "admin_state_up"),
    "floatingip": ("id", "tenant_id", "router_id", "floating_network_id",
                   "floating_ip_address", "fixed_ip_address", "port_id"),
    "loadbalancer": ("id", "tenant_id", "name", "vip_port_id", "vip_address",
                     "provisioning_status", "admin_state_up"),
    "listener": ("id", "loadbalancer_id", "tenant_id", "name", "protocol", "protocol_port",
                 "admin_state_up", "default_pool_id"),
    "pool": ("id", "loadbalancer_id", "tenant_id", "name", "protocol", "lb_algorithm",
             "admin_state_up", "listener_id"),
    "member": ("id", "pool_id", "tenant_id", "address", "protocol_port", "weight",
               "admin_state_up", "subnet_id"),
    "ipsec_site_connection": ("id", "tenant_id", "router_id", "name", "peer_address",
                              "peer_id", "psk", "initiator", "admin_state_up", "mtu",
                              "local_subnet_ids", "peer_cidrs", "ikepolicy", "ipsecpolicy",
                              "dpd"),
}


def _unknown_keys(body, kind):
    extra = sorted(set(body) - set(FIELDS[kind]))
    if extra:
        raise StoreError(f"unknown {kind} field(s): {', '.join(extra)}", extra[0])


IMMUTABLE = {"subnet": ("network_id", "cidr"), "port": ("network_id",),
             "listener": ("loadbalancer_id",), "pool": ("loadbalancer_id",),
             "member": ("pool_id",)}


# -- per-kind normalisation (body + snapshot + old object -> canonical object) ----------------

def _network(snap, body, old):
    _unknown_keys(body, "network")
    return {"id": _new_id(body), "tenant_id": _str(body, "tenant_id"),
            "name": _str(body, "name"), "mtu": _int(body, "mtu", 1500, 68, 65535, True),
            "external": _bool(body, "external", False)}


def _subnet(snap, body, old):
    _unknown_keys(body, "subnet")
    network = snap.require("network", _str(body, "network_id"), "network_id")
    try:
        cidr = ipaddress.ip_network(_str(body, "cidr"))
    except ValueError as exc:
        raise StoreError(f"cidr: {exc}", "cidr") from None
    if cidr.prefixlen == 0 or cidr.is_loopback or cidr.is_multicast or cidr.is_unspecified:
        raise StoreError(f"cidr: {cidr} cannot be a subnet (the whole address space, "
                         f"loopback or multicast)", "cidr")
    gateway = body.get("gateway_ip", str(cidr.network_address + 1))
    if gateway not in (None, ""):
        gateway = _ip(gateway, "gateway_ip")
        if gateway not in cidr:
            raise StoreError(f"gateway_ip {gateway} is not in {cidr}", "gateway_ip")
    ra_mode = _choice(body, "ipv6_ra_mode", None, IPV6_MODES)
    address_mode = _choice(body, "ipv6_address_mode", None, IPV6_MODES)
    if cidr.version == 4 and (ra_mode or address_mode):
        raise StoreError("IPv6 modes on an IPv4 subnet", "ipv6_address_mode")
    dns = body.get("dns_nameservers", [])
    if not isinstance(dns, list):
        raise StoreError("dns_nameservers must be a list", "dns_nameservers")
    routes = body.get("host_routes", [])
    if not isinstance(routes, list):
        raise StoreError("host_routes must be a list", "host_routes")
    clean_routes = []
    for route in routes:
        if not isinstance(route, dict) or set(route) != {"destination", "nexthop"}:
            raise StoreError("host_routes entries are {destination, nexthop}", "host_routes")
        try:
            destination = ipaddress.ip_network(route["destination"])
        except ValueError as exc:
            raise StoreError(f"host_routes: {exc}", "host_routes") from None
        nexthop = _ip(route["nexthop"], "host_routes")
        if destination.version != cidr.version or nexthop.version != cidr.version:
            raise StoreError(f"host_routes: {destination} via {nexthop} is not in the "
                             f"address family of {cidr}", "host_routes")
        clean_routes.append({"destination": str(destination), "nexthop": str(nexthop)})
        if network["id"] != snap.management_network_id:
            _keep_management_path(snap, destination)
    subnet = {"id": _new_id(body), "network_id": network["id"],
              "tenant_id": _str(body, "tenant_id", network["tenant_id"]),
              "name": _str(body, "name"), "cidr": str(cidr), "ip_version": cidr.version,
              "gateway_ip": str(gateway) if gateway not in (None, "") else None,
              "enable_dhcp": _bool(body, "enable_dhcp", True),
              "ipv6_ra_mode": ra_mode, "ipv6_address_mode": address_mode,
              "dns_nameservers": [str(_ip(d, "dns_nameservers")) for d in dns],
              "host_routes": clean_routes}
    return subnet


def _keep_management_path(snap, destination):
    """The appliance installs subnet host routes on itself: one that would win the route
    lookup for (part of) the management network — where the orchestrator speaks from —
    would cut the orchestrator off; the agent refuses such a payload too."""
    for subnet in snap.subnets_of(snap.management_network_id):
        management = ipaddress.ip_network(subnet["cidr"])
        if destination.version == management.version and \
                destination.subnet_of(management):
            raise StoreError(f"host_routes: {destination} would take the management "
                             f"network {management} (the orchestrator's path to the "
                             "appliance) away from the management interface",
                             "host_routes")


def _macs_in_use(snap, except_kind=None, except_id=None):
    return {o["mac_address"] for kind in ("port", "appliance_port") for o in snap.all(kind)
            if not (kind == except_kind and o["id"] == except_id)}


def _fixed_ips(snap, network_id, mac, requested, port_id, field="fixed_ips"):
    """Resolve ``requested`` ([{subnet_id?, ip_address?}] or None = one per subnet)."""
    subnets = {s["id"]: s for s in snap.subnets_of(network_id)}
    used = {}
    for kind in ("port", "appliance_port"):
        for other in snap.all(kind):
            if other["id"] == port_id and kind == "port":
                continue
            for item in other.get("fixed_ips", []):
                used.setdefault(item["subnet_id"], set()).add(
                    ipaddress.ip_address(item["ip_address"]))
    if requested is None:
        requested = [{"subnet_id": sid} for sid in subnets]
    if not isinstance(requested, list):
        raise StoreError(f"{field} must be a list", field)
    result = []
    for item in requested:
        if not isinstance(item, dict) or not set(item) <= {"subnet_id", "ip_address"}:
            raise StoreError(f"{field} entries are {{subnet_id, ip_address}}", field)
        address = _ip(item["ip_address"], field) if item.get("ip_address") else None
        subnet_id = item.get("subnet_id")
        if subnet_id is None:
            if address is None:
                raise StoreError(f"{field}: subnet_id or ip_address is required", field)
            subnet_id = next((sid for sid, s in subnets.items()
                              if address in ipaddress.ip_network(s["cidr"])), None)
            if subnet_id is None:
                raise StoreError(f"{field}: {address} is in no subnet of network "
                                 f"{network_id}", field)
        subnet = subnets.get(subnet_id)
        if subnet is None:
            raise StoreError(f"{field}: subnet {subnet_id} is not on network {network_id}",
                             field)
        taken = used.setdefault(subnet_id, set())
        if address is None:
            try:
                address = ipam.allocate(subnet, mac, taken)
            except ValueError as exc:
                raise Conflict(f"{field}: {exc}", field) from None
        elif address not in ipaddress.ip_network(subnet["cidr"]):
            raise StoreError(f"{field}: {address} is not in subnet {subnet_id} "
                             f"({subnet['cidr']})", field)
        elif address in taken:
            raise Conflict(f"{field}: {address} is already in use on subnet {subnet_id}",
                           field)
        taken.add(address)
        result.append({"subnet_id": subnet_id, "ip_address": str(address)})
    return result


def _mac(snap, body, kind, obj_id):
    in_use = _macs_in_use(snap, kind, obj_id)
    if body.get("mac_address"):
        try:
            mac = ipam.normalize_mac(body["mac_address"])
        except ValueError as exc:
            raise StoreError(str(exc), "mac_address") from None
        if mac in in_use:
            raise Conflict(f"MAC {mac} is already in use", "mac_address")
        return mac
    return ipam.new_mac(in_use)


def _port(snap, body, old):
    _unknown_keys(body, "port")
    network = snap.require("network", _str(body, "network_id"), "network_id")
    port_id = _new_id(body)
    mac = _mac(snap, body, "port", port_id)
    requested = body.get("fixed_ips")
    extra = body.get("extra", {})
    if not isinstance(extra, dict):
        raise StoreError("extra must be an object", "extra")
    port = {"id": port_id, "network_id": network["id"],
            "tenant_id": _str(body, "tenant_id", network["tenant_id"]),
            "name": _str(body, "name"), "mac_address": mac,
            "fixed_ips": _fixed_ips(snap, network["id"], mac, requested, port_id),
            "device_id": _str(body, "device_id"), "device_owner": _str(body, "device_owner"),
            "admin_state_up": _bool(body, "admin_state_up", True),
            "status": _str(body, "status", "ACTIVE"), "extra": extra}
    if port["device_owner"] in ROUTER_PORT_OWNERS:
        snap.require(ROUTER, port["device_id"], "device_id")
        if port["device_owner"] == ROUTER_GATEWAY_OWNER:
            if not network["external"]:
                raise StoreError(f"network {network['id']} is not external", "network_id")
            other = snap.gateway_port(port["device_id"])
            if other is not None and other["id"] != port_id:
                raise Conflict(f"router {port['device_id']} already has gateway port "
                               f"{other['id']}", "device_id")
    return port


def _router(snap, body, old):
    _unknown_keys(body, "router")
    # The appliance refuses a payload without tenant_id: refuse the router here instead.
    return {"id": _new_id(body), "tenant_id": _required_str(body, "tenant_id"),
            "name": _str(body, "name"), "ha": _bool(body, "ha", False),
            "admin_state_up": _bool(body, "admin_state_up", True)}


def _floatingip(snap, body, old):
    _unknown_keys(body, "floatingip")
    fip_id = _new_id(body)
    port = snap.require("port", body["port_id"], "port_id") if body.get("port_id") else None
    router_id = body.get("router_id")
    if not router_id and port is not None:
        candidates = snap.routers_on_network(port["network_id"], interfaces_only=True)
        if len(candidates) != 1:
            raise StoreError("router_id is required (the port's network has "
                             f"{len(candidates)} routers)", "router_id")
        router_id = candidates.pop()
    router = snap.require(ROUTER, router_id or "", "router_id")
    fixed = body.get("fixed_ip_address")
    if not fixed and port is not None:
        fixed = next((i["ip_address"] for i in port["fixed_ips"]
                      if ipaddress.ip_address(i["ip_address"]).version == 4), None)
    if not fixed:
        raise StoreError("fixed_ip_address (or a port_id with an IPv4 address) is required",
                         "fixed_ip_address")
    fixed = _ip(fixed, "fixed_ip_address")
    network_id = body.get("floating_network_id")
    if not network_id:
        gateway = snap.gateway_port(router["id"])
        network_id = gateway["network_id"] if gateway else None
    floating = body.get("floating_ip_address")
    taken = {ipaddress.ip_address(f["floating_ip_address"]) for f in snap.all("floatingip")
             if f["id"] != fip_id}
    if floating:
        floating = _ip(floating, "floating_ip_address")
    else:
        if not network_id:
            raise StoreError("floating_ip_address is required (router has no gateway)",
                             "floating_ip_address")
        taken |= {ipaddress.ip_address(i["ip_address"]) for p in snap.ports_on(network_id)
                  for i in p["fixed_ips"]}
        subnet = next((s for s in snap.subnets_of(network_id) if s["ip_version"] == 4), None)
        if subnet is None:
            raise StoreError(f"network {network_id} has no IPv4 subnet", "floating_network_id")
        try:
            floating = ipam.allocate(subnet, "02:00:00:00:00:00", taken)
        except ValueError as exc:
            raise Conflict(str(exc), "floating_ip_address") from None
    if floating.version != fixed.version:
        raise StoreError(f"floating {floating} and fixed {fixed} are not the same family",
                         "fixed_ip_address")
    if floating in taken:
        raise Conflict(f"floating IP {floating} is already in use", "floating_ip_address")
    return {"id": fip_id, "tenant_id": _str(body, "tenant_id", router["tenant_id"]),
            "router_id": router["id"], "floating_network_id": network_id or "",
            "floating_ip_address": str(floating), "fixed_ip_address": str(fixed),
            "port_id": port["id"] if port else ""}


def _loadbalancer(snap, body, old):
    _unknown_keys(body, "loadbalancer")
    port = snap.require("port", _str(body, "vip_port_id"), "vip_port_id")
    if not port["fixed_ips"]:
        raise StoreError(f"VIP port {port['id']} has no fixed IP", "vip_port_id")
    vip = body.get("vip_address") or port["fixed_ips"][0]["ip_address"]
    if str(_ip(vip, "vip_address")) not in {i["ip_address"] for i in port["fixed_ips"]}:
        raise StoreError(f"vip_address {vip} is not an address of port {port['id']}",
                         "vip_address")
    for lb in snap.all(LOADBALANCER):
        if lb["vip_port_id"] == port["id"] and lb["id"] != body.get("id"):
            raise Conflict(f"port {port['id']} is the VIP of {lb['id']}", "vip_port_id")
    return {"id": _new_id(body), "tenant_id": _str(body, "tenant_id", port["tenant_id"]),
            "name": _str(body, "name"), "vip_port_id": port["id"], "vip_address": str(vip),
            "provisioning_status": _str(body, "provisioning_status", "ACTIVE"),
            "admin_state_up": _bool(body, "admin_state_up", True)}


def _listener(snap, body, old):
    _unknown_keys(body, "listener")
    lb = snap.require(LOADBALANCER, _str(body, "loadbalancer_id"), "loadbalancer_id")
    pool_id = body.get("default_pool_id") or None
    if pool_id:
        pool = snap.require("pool", pool_id, "default_pool_id")
        if pool["loadbalancer_id"] != lb["id"]:
            raise StoreError(f"pool {pool_id} belongs to another load balancer",
                             "default_pool_id")
    listener = {"id": _new_id(body), "loadbalancer_id": lb["id"],
                "tenant_id": _str(body, "tenant_id", lb["tenant_id"]),
                "name": _str(body, "name"),
                "protocol": _choice(body, "protocol", "HTTP", LB_PROTOCOLS),
                "protocol_port": _int(body, "protocol_port", 80, 1, 65535),
                "admin_state_up": _bool(body, "admin_state_up", True),
                "default_pool_id": pool_id}
    return listener


def _pool(snap, body, old):
    _unknown_keys(body, "pool")
    lb_id = body.get("loadbalancer_id")
    if not lb_id and body.get("listener_id"):
        lb_id = snap.require("listener", body["listener_id"], "listener_id")["loadbalancer_id"]
    lb = snap.require(LOADBALANCER, lb_id or "", "loadbalancer_id")
    pool = {"id": _new_id(body), "loadbalancer_id": lb["id"],
            "tenant_id": _str(body, "tenant_id", lb["tenant_id"]), "name": _str(body, "name"),
            "protocol": _choice(body, "protocol", "HTTP", LB_PROTOCOLS),
            "lb_algorithm": _choice(body, "lb_algorithm", "ROUND_ROBIN", LB_ALGORITHMS),
            "admin_state_up": _bool(body, "admin_state_up", True)}
    return pool


def _member(snap, body, old):
    _unknown_keys(body, "member")
    pool = snap.require("pool", _str(body, "pool_id"), "pool_id")
    if body.get("subnet_id"):
        snap.require("subnet", body["subnet_id"], "subnet_id")
    member = {"id": _new_id(body), "pool_id": pool["id"],
              "tenant_id": _str(body, "tenant_id", pool["tenant_id"]),
              "address": str(_ip(body.get("address"), "address")),
              "protocol_port": _int(body, "protocol_port", 80, 1, 65535),
              "weight": _int(body, "weight", 1, 0, 256),
              "admin_state_up": _bool(body, "admin_state_up", True),
              "subnet_id": body.get("subnet_id") or None}
    return member


def _appliance_port(snap, body, old):
    port_id = _new_id(body)
    network = snap.require("network", _str(body, "network_id"), "network_id")
    mac = _mac(snap, body, "appliance_port", port_id)
    return {"id": port_id, "resource_kind": _str(body, "resource_kind"),
            "resource_id": _str(body, "resource_id"),
            "instance_name": _str(body, "instance_name"),
            "role": _choice(body, "role", "data", ("mgt", "data")),
            "network_id": network["id"], "mac_address": mac,
            "fixed_ips": _fixed_ips(snap, network["id"], mac, body.get("fixed_ips", []),
                                    port_id)}


IKE_POLICY = {"ike_version": "v1", "auth_algorithm": "sha1", "encryption_algorithm": "aes-128",
              "pfs": "group5", "phase1_negotiation_mode": "main",
              "lifetime": {"units": "seconds", "value": 3600}}
IPSEC_POLICY = {"transform_protocol": "esp", "auth_algorithm": "sha1",
                "encryption_algorithm": "aes-128", "encapsulation_mode": "tunnel",
                "pfs": "group5", "lifetime": {"units": "seconds", "value": 3600}}
DPD = {"action": "hold", "interval": 30, "timeout": 120}


def _policy(body, key, defaults):
    """A Neutron policy object: its known keys with Neutron's defaults. The values are the
    appliance's to judge (it refuses, naming the field, what strongSwan cannot do)."""
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise StoreError(f"{key} must be an object", key)
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise StoreError(f"{key}: unknown key(s) {', '.join(unknown)}", key)
    return {**defaults, **value}


def _ipsec_site_connection(snap, body, old):
    """Neutron VPNaaS in one object: the connection with its policies inline, the local
    side as subnet ids of the router (an endpoint group of type subnet), the peer side as
    CIDRs."""
    _unknown_keys(body, "ipsec_site_connection")
    router = snap.require(ROUTER, _str(body, "router_id"), "router_id")
    attached = {i["subnet_id"] for p in snap.interface_ports(router["id"])
                for i in p["fixed_ips"]}
    local = body.get("local_subnet_ids") or []
    if not isinstance(local, list) or not local:
        raise StoreError("local_subnet_ids must be a non-empty list", "local_subnet_ids")
    for subnet_id in local:
        snap.require("subnet", subnet_id, "local_subnet_ids")
        if subnet_id not in attached:
            raise StoreError(f"subnet {subnet_id} is not attached to router {router['id']}",
                             "local_subnet_ids")
    peers = body.get("peer_cidrs") or []
    if not isinstance(peers, list) or not peers:
        raise StoreError("peer_cidrs must be a non-empty list", "peer_cidrs")
    try:
        peers = [str(ipaddress.ip_network(c)) for c in peers]
    except (TypeError, ValueError) as exc:
        raise StoreError(f"peer_cidrs: {exc}", "peer_cidrs") from None
    peer = str(_ip(body.get("peer_address"), "peer_address"))
    psk = _str(body, "psk")
    if not psk:
        raise StoreError("psk is required", "psk")
    conn_id = _new_id(body)
    if not CONNECTION_ID_RE.match(conn_id):  # it names the appliance's swanctl connection
        raise StoreError(f"id {conn_id!r} must be 1-64 characters [A-Za-z0-9_-]", "id")
    return {"id": conn_id, "tenant_id": _str(body, "tenant_id", router["tenant_id"]),
            "router_id": router["id"], "name": _str(body, "name"), "peer_address": peer,
            "peer_id": _str(body, "peer_id") or peer, "psk": psk,
            "initiator": _choice(body, "initiator", "bi-directional",
                                 ("bi-directional", "response-only")),
            "admin_state_up": _bool(body, "admin_state_up", True),
            "mtu": _int(body, "mtu", 1500, 68, 65535), "local_subnet_ids": list(local),
            "peer_cidrs": peers, "ikepolicy": _policy(body, "ikepolicy", IKE_POLICY),
            "ipsecpolicy": _policy(body, "ipsecpolicy", IPSEC_POLICY),
            "dpd": _policy(body, "dpd", DPD)}


NORMALIZERS = {"network": _network, "subnet": _subnet, "port": _port, "router": _router,
               "floatingip": _floatingip, "loadbalancer": _loadbalancer,
               "listener": _listener, "pool": _pool, "member": _member,
               "appliance_port": _appliance_port,
               "ipsec_site_connection": _ipsec_site_connection}


# -- deletion rules -----------------------------------------------------------------------------

def delete_changes(snap, kind, obj):
    """The changes a delete implies (cascades), or Conflict if something depends on it."""
    changes = [(kind, obj, None)]
    users = []  # what still depends on it: refused, naming the first five
    if kind == "network":
        if obj["id"] == snap.management_network_id:
            users = ["the orchestrator (it is the management network)"]
        users += [f"subnet {s['id']}" for s in snap.subnets_of(obj["id"])] + \
            [f"port {p['id']}" for p in snap.ports_on(obj["id"])] + \
            [f"appliance port {a['id']}" for a in snap.all("appliance_port")
             if a["network_id"] == obj["id"]]
    elif kind == "subnet":
        users = [f"port {p['id']}" for p in snap.ports_on(obj["network_id"])
                 if any(i["subnet_id"] == obj["id"] for i in p["fixed_ips"])] + \
            [f"IPsec site connection {c['id']}" for c in snap.all("ipsec_site_connection")
             if obj["id"] in c["local_subnet_ids"]]
    elif kind == "port":
        users = [f"load balancer {lb['id']}" for lb in snap.all(LOADBALANCER)
                 if lb["vip_port_id"] == obj["id"]] + \
            [f"floating IP {f['id']}" for f in snap.all("floatingip")
             if f["port_id"] == obj["id"]]
    elif kind == ROUTER:
        users = [f"interface port {p['id']}" for p in snap.interface_ports(obj["id"])] + \
            [f"floating IP {f['id']}" for f in snap.floatingips_of(obj["id"])] + \
            [f"IPsec site connection {c['id']}" for c in snap.vpn_connections_of(obj["id"])]
    if users:
        raise Conflict(f"{kind} {obj['id']} is in use by {', '.join(users[:5])}")
    if kind == ROUTER:
        gateway = snap.gateway_port(obj["id"])
        if gateway:
            changes.insert(0, ("port", gateway, None))
    elif kind == LOADBALANCER:
        for pool in snap.pools_of(obj["id"]):
            changes[:0] = [("member", m, None) for m in snap.members_of(pool["id"])]
            changes.insert(0, ("pool", pool, None))
        changes[:0] = [("listener", li, None) for li in snap.listeners_of(obj["id"])]
        vip = snap.get("port", obj["vip_port_id"])
        if vip and vip["device_owner"] == LB_VIP_OWNER and vip["device_id"] == obj["id"]:
            changes.append(("port", vip, None))
    elif kind == "pool":
        changes[:0] = [("member", m, None) for m in snap.members_of(obj["id"])]
        changes[:0] = [("listener", li, dict(li, default_pool_id=None))
                       for li in snap.listeners_of(obj["loadbalancer_id"])
                       if li["default_pool_id"] == obj["id"]]
    return changes
