"""Desired state: the Neutron-shaped objects the orchestrator renders payloads from.

Objects (``kinds.KINDS``): networks, subnets, ports (tenant VMs, router interfaces and
gateways, load-balancer VIPs; each with MAC and fixed IPs), routers, floating IPs, load
balancers with listeners, pools and members, plus the orchestrator's own
``appliance_port``s (the MGT and data NICs of each appliance instance, like astara's
``ASTARA:MGT``/``ASTARA:VRRP`` ports).

``Store`` is the one entry point. A write goes::

  body --validation--> canonical objects --database--> committed --impact--> events
                          (against the                  (one SQL          (to subscribers)
                           current snapshot)             transaction)

Readers get an immutable ``snapshot.Snapshot`` (never mutate its dicts); every write builds
a new one (copy-on-write) and then tells subscribers which resources it affected: exactly
the routers/load balancers whose payload can change. ``debug_flags`` keeps the pause flags.

  kinds.py        object kinds, API collection names, Neutron device owners
  errors.py       StoreError / NotFound / Conflict, each with its HTTP status
  validation.py   body -> canonical object; delete cascades and refusals
  snapshot.py     the immutable read model and its lookups
  impact.py       which routers/load balancers a change affects
  debug_flags.py  pause flags per resource, tenant or globally
  placements.py   per-tenant/per-resource image and driver (BYONF)
  database.py     persistence: the only SQL
"""
import logging
import threading

from ..events import ROUTER
from . import validation
from .database import Database
from .debug_flags import DebugFlags
from .errors import Conflict, NotFound, StoreError
from .impact import affected
from .kinds import KINDS, ROUTER_GATEWAY_OWNER, ROUTER_INTERFACE_OWNERS
from .placements import Placements
from .snapshot import Snapshot

__all__ = ["Store", "StoreError", "NotFound", "Conflict", "notify"]

LOG = logging.getLogger(__name__)


def notify(subscribers, events):
    """``callback(events)`` for each subscriber when there are events; one that fails is
    logged and the others still hear (a subscriber must not undo a commit)."""
    if not events:
        return
    for callback in subscribers:
        try:
            callback(events)
        except Exception:  # noqa: BLE001
            LOG.exception("store subscriber failed")


class Store:
    """Thread-safe desired-state store over one database file."""

    def __init__(self, path, management_network_id):
        self._lock = threading.RLock()
        self._database = Database(path)
        self._subscribers = []
        objects = {kind: {} for kind in KINDS}
        for kind, obj in self._database.load_objects():
            if kind in objects:
                objects[kind][obj["id"]] = obj
        self._snapshot = Snapshot(objects, management_network_id)
        self.debug_flags = DebugFlags(self._database)
        self.placements = Placements(self._database)

    def close(self):
        with self._lock:
            self._database.close()

    def subscribe(self, callback):
        """``callback(events)`` after every write that affects resources."""
        self._subscribers.append(callback)

    def snapshot(self):
        return self._snapshot

    # -- writes --------------------------------------------------------------------------------
    def create(self, kind, body):
        with self._lock:
            obj = validation.new_object(self._snapshot, kind, body)
            return self._commit([(kind, None, obj)])[0]

    def update(self, kind, obj_id, changes):
        with self._lock:
            old, new = validation.changed_object(self._snapshot, kind, obj_id, changes)
            if new == old:
                return old
            return self._commit([(kind, old, new)])[0]

    def delete(self, kind, obj_id):
        validation.check_kind(kind)
        with self._lock:
            snap = self._snapshot
            obj = snap.require(kind, obj_id)
            self._commit(validation.delete_changes(snap, kind, obj))

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
            new = validation.normalize(interim, "port", body)
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

    def commit(self, changes):
        """Persist changes validated elsewhere (OpenStack mode validates against Neutron's
        objects plus ours: openstack/neutron.py)."""
        with self._lock:
            return self._commit(changes)

    def _commit(self, changes):
        """Persist ``changes`` atomically, publish the new snapshot, notify subscribers."""
        with self._lock:
            before = self._snapshot
            after = before.with_changes(changes)
            self._database.write(changes)
            self._snapshot = after
            events = affected(before, after, changes)
        notify(self._subscribers, events)
        return [new for _, _, new in changes]

    # -- appliance ports (orchestrator-internal: no events) -------------------------------------
    def create_appliance_port(self, body):
        with self._lock:
            port = validation.normalize(self._snapshot, "appliance_port", body)
            self._commit([("appliance_port", None, port)])
            return port

    def delete_appliance_ports(self, ports):
        with self._lock:
            snap = self._snapshot
            changes = [("appliance_port", p, None) for p in ports
                       if snap.get("appliance_port", p["id"])]
            if changes:
                self._commit(changes)
