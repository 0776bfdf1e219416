"""Desired state: the Neutron-shaped objects the orchestrator renders payloads from.

Objects (``KINDS``): networks, subnets, ports (tenant VMs, router interfaces and gateways,
load-balancer VIPs; each with MAC and fixed IPs), routers, floating IPs, load balancers with
listeners, pools and members, plus the orchestrator's own ``appliance_port``s (the MGT and
data NICs of each appliance instance, like astara's ``ASTARA:MGT``/``ASTARA:VRRP`` ports).

Storage: SQLite (stdlib, WAL), one row per object holding its JSON document, in creation
order (``seq``), which is Neutron's list order and therefore the order of ``allocations``
and ``floating_ips`` in the payload. Validation and referential integrity live here, in
Python, so every writer (admin API, astara-ctl, tests) gets the same checks.

Readers get an immutable ``Snapshot`` (never mutate its dicts); every write builds a new one
(copy-on-write) inside one SQLite transaction, then tells subscribers which resources it
affected (``affected``): exactly the routers/load balancers whose payload can change,
never "the tenant's first router".
"""
import functools
import ipaddress
import json
import logging
import re
import sqlite3
import threading
import time
import uuid

from . import ipam
from .events import (CREATE, DELETE, LOADBALANCER, ROUTER, UPDATE, Event, ResourceRef)

LOG = logging.getLogger(__name__)

KINDS = ("network", "subnet", "port", "router", "floatingip", "loadbalancer", "listener",
         "pool", "member", "appliance_port")
PLURALS = {("floatingips" if k == "floatingip" else k + "s"): k for k in KINDS}
USER_KINDS = tuple(k for k in KINDS if k != "appliance_port")

ROUTER_INTERFACE_OWNERS = ("network:router_interface", "network:ha_router_replicated_interface",
                           "network:router_interface_distributed")
ROUTER_GATEWAY_OWNER = "network:router_gateway"
LB_VIP_OWNER = "neutron:LOADBALANCERV2"
IPV6_MODES = (None, "slaac", "dhcpv6-stateful", "dhcpv6-stateless")
LB_ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP")
LB_PROTOCOLS = ("HTTP", "HTTPS", "TCP", "UDP", "TERMINATED_HTTPS", "PROXY")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
DEBUG_SCOPES = ("resource", "tenant", "global")

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (kind, id)
);
CREATE TABLE IF NOT EXISTS debug (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
"""


class StoreError(Exception):
    """A refused write; ``status`` is the HTTP answer, ``field`` the offending key."""
    status = 400

    def __init__(self, message, field=None, status=None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    def to_dict(self):
        body = {"error": type(self).__name__, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


# -- snapshot ---------------------------------------------------------------------------------

class Snapshot:
    """All objects at one instant, with the lookups the builder and events need."""

    def __init__(self, objects, management_network_id):
        self._objects = objects  # kind -> {id: obj}, creation order
        self.management_network_id = management_network_id

    def get(self, kind, obj_id):
        return self._objects[kind].get(obj_id)

    def require(self, kind, obj_id, field=None):
        obj = self.get(kind, obj_id)
        if obj is None:
            raise NotFound(f"{kind} {obj_id} does not exist", field=field,
                           status=404 if field is None else 400)
        return obj

    def all(self, kind):
        return list(self._objects[kind].values())

    def with_changes(self, changes):
        objects = dict(self._objects)
        for kind, old, new in changes:
            table = objects[kind] = dict(objects[kind])
            if new is None:
                table.pop(old["id"], None)
            else:
                table[new["id"]] = new
        return Snapshot(objects, self.management_network_id)

    # -- indexes (built once per snapshot, on first use) --------------------------------------
    @functools.cached_property
    def _by(self):
        index = {"subnets": {}, "ports": {}, "router_ports": {}, "fips": {}, "aports": {},
                 "listeners": {}, "pools": {}, "members": {}}
        for subnet in self.all("subnet"):
            index["subnets"].setdefault(subnet["network_id"], []).append(subnet)
        for port in self.all("port"):
            index["ports"].setdefault(port["network_id"], []).append(port)
            if port["device_owner"] in ROUTER_INTERFACE_OWNERS + (ROUTER_GATEWAY_OWNER,):
                index["router_ports"].setdefault(port["device_id"], []).append(port)
        for fip in self.all("floatingip"):
            index["fips"].setdefault(fip["router_id"], []).append(fip)
        for aport in self.all("appliance_port"):
            index["aports"].setdefault(aport["resource_id"], []).append(aport)
        for listener in self.all("listener"):
            index["listeners"].setdefault(listener["loadbalancer_id"], []).append(listener)
        for pool in self.all("pool"):
            index["pools"].setdefault(pool["loadbalancer_id"], []).append(pool)
        for member in self.all("member"):
            index["members"].setdefault(member["pool_id"], []).append(member)
        return index

    def subnets_of(self, network_id):
        return self._by["subnets"].get(network_id, [])

    def ports_on(self, network_id):
        return self._by["ports"].get(network_id, [])

    def router_ports(self, router_id):
        return self._by["router_ports"].get(router_id, [])

    def gateway_port(self, router_id):
        return next((p for p in self.router_ports(router_id)
                     if p["device_owner"] == ROUTER_GATEWAY_OWNER), None)

    def interface_ports(self, router_id):
        return [p for p in self.router_ports(router_id)
                if p["device_owner"] in ROUTER_INTERFACE_OWNERS]

    def floatingips_of(self, router_id):
        return self._by["fips"].get(router_id, [])

    def appliance_ports(self, resource_id):
        return self._by["aports"].get(resource_id, [])

    def listeners_of(self, lb_id):
        return self._by["listeners"].get(lb_id, [])

    def pools_of(self, lb_id):
        return self._by["pools"].get(lb_id, [])

    def members_of(self, pool_id):
        return self._by["members"].get(pool_id, [])

    def routers_on_network(self, network_id, interfaces_only=False):
        owners = ROUTER_INTERFACE_OWNERS if interfaces_only else \
            ROUTER_INTERFACE_OWNERS + (ROUTER_GATEWAY_OWNER,)
        return {p["device_id"] for p in self.ports_on(network_id)
                if p["device_owner"] in owners and p["device_id"] in self._objects["router"]}

    def loadbalancers_on_network(self, network_id):
        ports = {p["id"] for p in self.ports_on(network_id)}
        return {lb["id"] for lb in self.all("loadbalancer") if lb["vip_port_id"] in ports}

    # -- resources (things with appliances) ----------------------------------------------------
    def resources(self):
        return [ResourceRef(ROUTER, r["id"], r["tenant_id"]) for r in self.all("router")] + \
            [ResourceRef(LOADBALANCER, lb["id"], lb["tenant_id"])
             for lb in self.all("loadbalancer")]

    def ref(self, kind, obj_id):
        obj = self.get(kind, obj_id) if kind in (ROUTER, LOADBALANCER) else None
        return ResourceRef(kind, obj_id, obj["tenant_id"]) if obj else None

    def find_ref(self, obj_id):
        """The router or load balancer with this id (kind unknown to the caller)."""
        return self.ref(ROUTER, obj_id) or self.ref(LOADBALANCER, obj_id)

    def data_networks(self, ref):
        """Network ids an appliance of ``ref`` needs a data NIC on, in NIC order: router =
        gateway network first, then each interface network once (astara's order); load
        balancer = the VIP network."""
        if ref.kind == ROUTER:
            networks = []
            gateway = self.gateway_port(ref.id)
            if gateway:
                networks.append(gateway["network_id"])
            for port in self.interface_ports(ref.id):
                if port["network_id"] not in networks:
                    networks.append(port["network_id"])
            return networks
        lb = self.get(LOADBALANCER, ref.id)
        vip = self.get("port", lb["vip_port_id"]) if lb else None
        return [vip["network_id"]] if vip else []


# -- what a change affects --------------------------------------------------------------------

def affected(before, after, changes):
    """Events for exactly the routers/load balancers whose payload a change can alter.

    router/loadbalancer itself: create/update/delete. listener/pool/member: its LB.
    floating IP: its router (old and new). port: routers with an *interface* on its network
    (allocations list every port there), the router owning it, the LB whose VIP it is.
    subnet/network: every router and LB attached to the network; the management network:
    every resource. Both snapshots are consulted so a detach still reaches the old router.
    """
    result = {}  # ResourceRef.key -> Event, insertion ordered

    def touch(kind, obj_id, action=UPDATE, reason=""):
        snap = after if after.get(kind, obj_id) else before
        ref = snap.ref(kind, obj_id)
        if ref is None:
            return
        previous = result.get(ref.key)
        if previous is not None:
            if previous.action in (CREATE, DELETE) or action == UPDATE:
                return
        result[ref.key] = Event(ref, action, reason)

    for kind, old, new in changes:
        obj = new or old
        what = f"{kind} {obj['id']} " + ("created" if old is None else
                                         "deleted" if new is None else "updated")
        if kind in (ROUTER, LOADBALANCER):
            touch(kind, obj["id"], CREATE if old is None else DELETE if new is None else UPDATE,
                  what)
        elif kind in ("listener", "pool"):
            for o in filter(None, (old, new)):
                touch(LOADBALANCER, o["loadbalancer_id"], reason=what)
        elif kind == "member":
            for o in filter(None, (old, new)):
                for snap in (before, after):
                    pool = snap.get("pool", o["pool_id"])
                    if pool:
                        touch(LOADBALANCER, pool["loadbalancer_id"], reason=what)
        elif kind == "floatingip":
            for o in filter(None, (old, new)):
                touch(ROUTER, o["router_id"], reason=what)
        elif kind in ("network", "subnet", "port"):
            network_ids = {o["id"] if kind == "network" else o["network_id"]
                           for o in filter(None, (old, new))}
            if before.management_network_id in network_ids:
                for snap in (before, after):
                    for ref in snap.resources():
                        touch(ref.kind, ref.id, reason=what)
                continue
            for snap in (before, after):
                for network_id in network_ids:
                    for router_id in snap.routers_on_network(
                            network_id, interfaces_only=(kind == "port")):
                        touch(ROUTER, router_id, reason=what)
                    if kind != "port":
                        for lb_id in snap.loadbalancers_on_network(network_id):
                            touch(LOADBALANCER, lb_id, reason=what)
            if kind == "port":
                for o in filter(None, (old, new)):
                    if o["device_owner"] in ROUTER_INTERFACE_OWNERS + (ROUTER_GATEWAY_OWNER,):
                        touch(ROUTER, o["device_id"], reason=what)
                    for snap in (before, after):
                        for lb in snap.all("loadbalancer"):
                            if lb["vip_port_id"] == o["id"]:
                                touch(LOADBALANCER, lb["id"], reason=what)
    return list(result.values())


# -- field helpers ----------------------------------------------------------------------------

def _str(body, key, default=""):
    value = body.get(key, default)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise StoreError(f"{key} must be a string", key)
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


def _unknown_keys(body, known, kind):
    extra = sorted(set(body) - set(known))
    if extra:
        raise StoreError(f"unknown {kind} field(s): {', '.join(extra)}", extra[0])


IMMUTABLE = {"subnet": ("network_id", "cidr"), "port": ("network_id",),
             "listener": ("loadbalancer_id",), "pool": ("loadbalancer_id",),
             "member": ("pool_id",)}


# -- per-kind normalisation (body + snapshot + old object -> canonical object) ----------------

def _network(snap, body, old):
    _unknown_keys(body, ("id", "tenant_id", "name", "mtu", "external"), "network")
    return {"id": _new_id(body), "tenant_id": _str(body, "tenant_id"),
            "name": _str(body, "name"), "mtu": _int(body, "mtu", 1500, 68, 65535, True),
            "external": _bool(body, "external", False)}


def _subnet(snap, body, old):
    _unknown_keys(body, ("id", "network_id", "tenant_id", "name", "cidr", "gateway_ip",
                         "enable_dhcp", "ipv6_ra_mode", "ipv6_address_mode",
                         "dns_nameservers", "host_routes"), "subnet")
    network = snap.require("network", _str(body, "network_id"), "network_id")
    try:
        cidr = ipaddress.ip_network(_str(body, "cidr"))
    except ValueError as exc:
        raise StoreError(f"cidr: {exc}", "cidr") from None
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
        clean_routes.append({"destination": str(destination),
                             "nexthop": str(_ip(route["nexthop"], "host_routes"))})
    subnet = {"id": _new_id(body), "network_id": network["id"],
              "tenant_id": _str(body, "tenant_id", network["tenant_id"]),
              "name": _str(body, "name"), "cidr": str(cidr), "ip_version": cidr.version,
              "gateway_ip": str(gateway) if gateway not in (None, "") else None,
              "enable_dhcp": _bool(body, "enable_dhcp", True),
              "ipv6_ra_mode": ra_mode, "ipv6_address_mode": address_mode,
              "dns_nameservers": [str(_ip(d, "dns_nameservers")) for d in dns],
              "host_routes": clean_routes}
    return subnet


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
    _unknown_keys(body, ("id", "network_id", "tenant_id", "name", "mac_address", "fixed_ips",
                         "device_id", "device_owner", "admin_state_up", "status", "extra"),
                  "port")
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
    if port["device_owner"] in ROUTER_INTERFACE_OWNERS + (ROUTER_GATEWAY_OWNER,):
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
    _unknown_keys(body, ("id", "tenant_id", "name", "ha", "admin_state_up"), "router")
    return {"id": _new_id(body), "tenant_id": _str(body, "tenant_id"),
            "name": _str(body, "name"), "ha": _bool(body, "ha", False),
            "admin_state_up": _bool(body, "admin_state_up", True)}


def _floatingip(snap, body, old):
    _unknown_keys(body, ("id", "tenant_id", "router_id", "floating_network_id",
                         "floating_ip_address", "fixed_ip_address", "port_id"), "floatingip")
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
    _unknown_keys(body, ("id", "tenant_id", "name", "vip_port_id", "vip_address",
                         "provisioning_status", "admin_state_up"), "loadbalancer")
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
    _unknown_keys(body, ("id", "loadbalancer_id", "tenant_id", "name", "protocol",
                         "protocol_port", "admin_state_up", "default_pool_id"), "listener")
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
    _unknown_keys(body, ("id", "loadbalancer_id", "tenant_id", "name", "protocol",
                         "lb_algorithm", "admin_state_up", "listener_id"), "pool")
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
    _unknown_keys(body, ("id", "pool_id", "tenant_id", "address", "protocol_port", "weight",
                         "admin_state_up", "subnet_id"), "member")
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


NORMALIZERS = {"network": _network, "subnet": _subnet, "port": _port, "router": _router,
               "floatingip": _floatingip, "loadbalancer": _loadbalancer,
               "listener": _listener, "pool": _pool, "member": _member,
               "appliance_port": _appliance_port}


# -- deletion rules -----------------------------------------------------------------------------

def _delete_changes(snap, kind, obj):
    """The changes a delete implies (cascades), or Conflict if something depends on it."""
    changes = [(kind, obj, None)]

    def refuse(what):
        raise Conflict(f"{kind} {obj['id']} is in use by {what}")

    if kind == "network":
        if obj["id"] == snap.management_network_id:
            refuse("the orchestrator (it is the management network)")
        users = [f"subnet {s['id']}" for s in snap.subnets_of(obj["id"])] + \
            [f"port {p['id']}" for p in snap.ports_on(obj["id"])] + \
            [f"appliance port {a['id']}" for a in snap.all("appliance_port")
             if a["network_id"] == obj["id"]]
        if users:
            refuse(", ".join(users[:5]))
    elif kind == "subnet":
        users = [f"port {p['id']}" for p in snap.ports_on(obj["network_id"])
                 if any(i["subnet_id"] == obj["id"] for i in p["fixed_ips"])]
        if users:
            refuse(", ".join(users[:5]))
    elif kind == "port":
        users = [f"load balancer {lb['id']}" for lb in snap.all(LOADBALANCER)
                 if lb["vip_port_id"] == obj["id"]] + \
            [f"floating IP {f['id']}" for f in snap.all("floatingip")
             if f["port_id"] == obj["id"]]
        if users:
            refuse(", ".join(users))
    elif kind == ROUTER:
        users = [f"interface port {p['id']}" for p in snap.interface_ports(obj["id"])] + \
            [f"floating IP {f['id']}" for f in snap.floatingips_of(obj["id"])]
        if users:
            refuse(", ".join(users[:5]))
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


# -- the store ----------------------------------------------------------------------------------

class Store:
    """Thread-safe desired-state store over one SQLite file."""

    def __init__(self, path, management_network_id):
        self.path = path
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._subscribers = []
        objects = {kind: {} for kind in KINDS}
        for kind, body in self._conn.execute("SELECT kind, body FROM objects ORDER BY seq"):
            if kind in objects:
                obj = json.loads(body)
                objects[kind][obj["id"]] = obj
        self._snapshot = Snapshot(objects, management_network_id)
        self._debug = {(scope, key): {"reason": reason, "since": since}
                       for scope, key, reason, since
                       in self._conn.execute("SELECT scope, key, reason, since FROM debug")}

    def close(self):
        with self._lock:
            self._conn.close()

    def subscribe(self, callback):
        """``callback(events)`` after every write that affects resources."""
        self._subscribers.append(callback)

    def snapshot(self):
        return self._snapshot

    # -- writes --------------------------------------------------------------------------------
    def create(self, kind, body):
        self._check_kind(kind)
        if not isinstance(body, dict):
            raise StoreError(f"a {kind} must be a JSON object")
        with self._lock:
            snap = self._snapshot
            if body.get("id") and snap.get(kind, body["id"]):
                raise Conflict(f"{kind} {body['id']} already exists", "id")
            obj = NORMALIZERS[kind](snap, body, None)
            return self._commit([(kind, None, obj)])[0]

    def update(self, kind, obj_id, changes):
        self._check_kind(kind)
        if not isinstance(changes, dict):
            raise StoreError(f"changes to a {kind} must be a JSON object")
        if changes.get("id", obj_id) != obj_id:
            raise StoreError("id cannot be changed", "id")
        with self._lock:
            snap = self._snapshot
            old = snap.require(kind, obj_id)
            for key in IMMUTABLE.get(kind, ()):
                if key in changes and changes[key] != old[key]:
                    raise StoreError(f"{key} cannot be changed", key)
            body = dict(old, **changes)
            if kind == "subnet":
                body.pop("ip_version", None)
            if kind == "floatingip" and "port_id" in changes and \
                    "fixed_ip_address" not in changes:
                body.pop("fixed_ip_address", None)
            new = NORMALIZERS[kind](snap, body, old)
            if new == old:
                return old
            return self._commit([(kind, old, new)])[0]

    def delete(self, kind, obj_id):
        self._check_kind(kind)
        with self._lock:
            snap = self._snapshot
            obj = snap.require(kind, obj_id)
            self._commit(_delete_changes(snap, kind, obj))

    def add_router_interface(self, router_id, subnet_id=None, port_id=None, ip_address=None,
                             mac_address=None):
        """Neutron's ``router add subnet``/``add port``: a port on the subnet's network
        owned by the router, at the subnet's gateway address unless told otherwise."""
        with self._lock:
            snap = self._snapshot
            snap.require(ROUTER, router_id, "router_id")
            if port_id:
                return self.update("port", port_id, {
                    "device_id": router_id, "device_owner": ROUTER_INTERFACE_OWNERS[0]})
            subnet = snap.require("subnet", subnet_id or "", "subnet_id")
            address = ip_address or subnet["gateway_ip"]
            fixed = {"subnet_id": subnet["id"]}
            if address:
                fixed["ip_address"] = address
            body = {"network_id": subnet["network_id"], "fixed_ips": [fixed],
                    "device_id": router_id, "device_owner": ROUTER_INTERFACE_OWNERS[0],
                    "tenant_id": snap.get(ROUTER, router_id)["tenant_id"]}
            if mac_address:
                body["mac_address"] = mac_address
            return self.create("port", body)

    def set_router_gateway(self, router_id, network_id, fixed_ips=None, mac_address=None):
        """Set (or move) the router's gateway port to ``network_id``."""
        with self._lock:
            snap = self._snapshot
            router = snap.require(ROUTER, router_id, "router_id")
            old = snap.gateway_port(router_id)
            body = {"network_id": network_id, "device_id": router_id,
                    "device_owner": ROUTER_GATEWAY_OWNER, "tenant_id": router["tenant_id"]}
            if fixed_ips is not None:
                body["fixed_ips"] = fixed_ips
            if mac_address:
                body["mac_address"] = mac_address
            interim = snap.with_changes([("port", old, None)]) if old else snap
            snap.require("network", network_id, "network_id")
            new = NORMALIZERS["port"](interim, body, None)
            changes = ([("port", old, None)] if old else []) + [("port", None, new)]
            return self._commit(changes)[-1]

    def clear_router_gateway(self, router_id):
        with self._lock:
            snap = self._snapshot
            snap.require(ROUTER, router_id)
            gateway = snap.gateway_port(router_id)
            if gateway is None:
                return
            users = [f["id"] for f in snap.floatingips_of(router_id)]
            if users:
                raise Conflict(f"router {router_id} has floating IPs: {', '.join(users)}")
            self._commit([("port", gateway, None)])

    def ensure_management_network(self, settings):
        """Create or correct the management network + subnet from the [management] config
        (the config is the truth for them)."""
        network = {"id": settings.network_id, "name": "mgt", "mtu": settings.mtu,
                   "external": False, "tenant_id": ""}
        subnet = {"id": settings.subnet_id, "network_id": settings.network_id,
                  "name": "mgt", "cidr": settings.prefix, "gateway_ip": settings.gateway,
                  "enable_dhcp": True, "ipv6_address_mode": "slaac", "ipv6_ra_mode": None}
        if settings.network.version == 4:
            subnet["ipv6_address_mode"] = None
        with self._lock:
            snap = self._snapshot
            if snap.get("network", network["id"]) is None:
                self.create("network", network)
            else:
                self.update("network", network["id"], network)
            existing = snap.get("subnet", subnet["id"])
            if existing is None:
                self.create("subnet", subnet)
            elif existing["cidr"] != str(settings.network):
                raise Conflict(f"management subnet {subnet['id']} has cidr "
                               f"{existing['cidr']}, the config says {settings.prefix}")
            else:
                self.update("subnet", subnet["id"], subnet)

    def _check_kind(self, kind):
        if kind not in KINDS:
            raise NotFound(f"unknown kind {kind!r}")

    def _commit(self, changes):
        """Persist ``changes`` atomically, publish the new snapshot, notify subscribers."""
        with self._lock:
            before = self._snapshot
            after = before.with_changes(changes)
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                for kind, old, new in changes:
                    if new is None:
                        conn.execute("DELETE FROM objects WHERE kind=? AND id=?",
                                     (kind, old["id"]))
                    elif old is None:
                        conn.execute("INSERT INTO objects (kind, id, body) VALUES (?, ?, ?)",
                                     (kind, new["id"], json.dumps(new, sort_keys=True)))
                    else:
                        conn.execute("UPDATE objects SET body=? WHERE kind=? AND id=?",
                                     (json.dumps(new, sort_keys=True), kind, new["id"]))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._snapshot = after
            events = affected(before, after, changes)
        for callback in self._subscribers:
            if events:
                try:
                    callback(events)
                except Exception:  # noqa: BLE001 - a subscriber must not undo a commit
                    LOG.exception("store subscriber failed")
        return [new for _, _, new in changes]

    # -- appliance ports (orchestrator-internal: no events) -------------------------------------
    def create_appliance_port(self, body):
        with self._lock:
            port = _appliance_port(self._snapshot, body, None)
            self._commit([("appliance_port", None, port)])
            return port

    def delete_appliance_ports(self, ports):
        with self._lock:
            snap = self._snapshot
            changes = [("appliance_port", p, None) for p in ports
                       if snap.get("appliance_port", p["id"])]
            if changes:
                self._commit(changes)

    # -- debug (pause) flags -------------------------------------------------------------------
    def set_debug(self, scope, key, reason=""):
        if scope not in DEBUG_SCOPES:
            raise StoreError(f"scope must be one of {', '.join(DEBUG_SCOPES)}", "scope")
        with self._lock:
            since = time.time()
            self._conn.execute("INSERT OR REPLACE INTO debug (scope, key, reason, since) "
                               "VALUES (?, ?, ?, ?)", (scope, key, reason or "", since))
            debug = dict(self._debug)
            debug[(scope, key)] = {"reason": reason or "", "since": since}
            self._debug = debug

    def clear_debug(self, scope, key):
        with self._lock:
            self._conn.execute("DELETE FROM debug WHERE scope=? AND key=?", (scope, key))
            debug = dict(self._debug)
            debug.pop((scope, key), None)
            self._debug = debug

    def debug_flags(self):
        return dict(self._debug)

    def paused_reason(self, ref):
        """Why events for ``ref`` are ignored (debug mode), or None when managed."""
        flags = self._debug
        for scope, key in (("global", "*"), ("tenant", ref.tenant_id), ("resource", ref.id)):
            flag = flags.get((scope, key))
            if flag is not None:
                return f"{scope} debug" + (f": {flag['reason']}" if flag["reason"] else "")
        return None
