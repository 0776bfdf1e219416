"""Desired state from Neutron (``[neutron] desired_state = true``).

Neutron's own objects — networks, subnets, ports, routers, floating IPs, exactly as its API
(and its notifications) show them — become the store's canonical objects, so the payload
builder, the impact analysis and the instance managers run unchanged and the payloads are
the original orchestrator's (the contract files are what these objects must produce).

``NeutronStore`` has the ``Store`` surface the orchestrator uses. Neutron's objects are a
cache: read whole at start and every ``resync_period`` (the fallback for lost
notifications), single objects replaced from notifications in between (events.py). Each
change goes through ``store.impact.affected``, so an event reaches exactly the routers
whose payload it can change, by id (never "the tenant's first router").

Kept in the local store: the appliance ports (the orchestrator's bookkeeping of its NICs'
MACs; the Neutron ports the OpenStack driver creates carry the same MACs), the pause
flags, the image/driver placements, and the load balancers with their listeners, pools
and members (Neutron LBaaS is gone; see README "Load balancers in OpenStack mode"), which
refer to Neutron's VIP ports and networks by id. Those go through the local store's write
path (its transaction, change log and claims), validated inside that transaction against
Neutron's objects plus the newest committed local ones.

Several orchestrators: each reads Neutron itself and listens on its own queue, so every
member has the same Neutron objects and sees every notification (ownership filters, as for
every event); Neutron's objects are not copied into the shared store — Neutron is their
store. Ownership, commands and everything else of the cluster are the local store's
(``DELEGATED``).
"""
import logging
import threading

from ..store import difference, notify, validation
from ..store.errors import StoreError
from ..store.impact import affected
from ..store.kinds import KINDS
from ..store.snapshot import Snapshot
from .cloud import neutron_get, neutron_list

LOG = logging.getLogger(__name__)

NEUTRON_KINDS = ("network", "subnet", "port", "router", "floatingip")
LOCAL_KINDS = tuple(k for k in KINDS if k not in NEUTRON_KINDS)
COLLECTIONS = {"network": "networks", "subnet": "subnets", "port": "ports",
               "router": "routers", "floatingip": "floatingips"}
# The local store's surface that does not touch Neutron's objects (ownership, commands,
# catching up).
DELEGATED = frozenset({"url", "command", "broadcast", "claim", "claim_many", "raise_epoch",
                       "check_claim", "release", "record_state", "resource_rows",
                       "resource_row", "forget", "refresh", "watch", "write_debug_flag",
                       "write_placement"})
PORT_KEYS = ("id", "network_id", "tenant_id", "name", "mac_address", "fixed_ips",
             "device_id", "device_owner", "admin_state_up", "status")


def _project(raw):
    return raw.get("tenant_id") or raw.get("project_id") or ""


def canonical(kind, raw):
    """The store object for a raw Neutron object, or None when it does not take part in
    any payload (a floating IP that is not associated)."""
    if kind == "network":
        return {"id": raw["id"], "tenant_id": _project(raw), "name": raw.get("name") or "",
                "mtu": raw.get("mtu"), "external": bool(raw.get("router:external"))}
    if kind == "subnet":
        return {"id": raw["id"], "network_id": raw["network_id"], "tenant_id": _project(raw),
                "name": raw.get("name") or "", "cidr": raw["cidr"],
                "ip_version": raw.get("ip_version") or (6 if ":" in raw["cidr"] else 4),
                "gateway_ip": raw.get("gateway_ip") or None,
                "enable_dhcp": bool(raw.get("enable_dhcp")),
                "ipv6_ra_mode": raw.get("ipv6_ra_mode"),
                "ipv6_address_mode": raw.get("ipv6_address_mode"),
                "dns_nameservers": list(raw.get("dns_nameservers") or []),
                "host_routes": [dict(r) for r in raw.get("host_routes") or []]}
    if kind == "port":
        port = {"id": raw["id"], "network_id": raw["network_id"], "tenant_id": _project(raw),
                "name": raw.get("name") or "", "mac_address": raw["mac_address"],
                "fixed_ips": [{"subnet_id": i["subnet_id"], "ip_address": i["ip_address"]}
                              for i in raw.get("fixed_ips") or []],
                "device_id": raw.get("device_id") or "",
                "device_owner": raw.get("device_owner") or "",
                "admin_state_up": bool(raw.get("admin_state_up", True)),
                "status": raw.get("status") or ""}
        # Everything else rides along (a load balancer's payload shows the raw VIP port).
        port["extra"] = {k: v for k, v in raw.items() if k not in PORT_KEYS}
        return port
    if kind == "router":
        return {"id": raw["id"], "tenant_id": _project(raw), "name": raw.get("name") or "",
                "ha": bool(raw.get("ha")),
                "admin_state_up": bool(raw.get("admin_state_up", True))}
    if kind == "floatingip":
        if not raw.get("router_id") or not raw.get("fixed_ip_address"):
            return None
        return {"id": raw["id"], "tenant_id": _project(raw), "router_id": raw["router_id"],
                "floating_network_id": raw.get("floating_network_id") or "",
                "floating_ip_address": raw["floating_ip_address"],
                "fixed_ip_address": raw["fixed_ip_address"],
                "port_id": raw.get("port_id") or ""}
    raise ValueError(f"not a Neutron kind: {kind}")


class NeutronReader:
    """Raw Neutron objects through an openstacksdk connection."""

    def __init__(self, conn):
        self.conn = conn

    def list(self, kind):
        return neutron_list(self.conn, COLLECTIONS[kind])

    def get(self, kind, obj_id):
        return neutron_get(self.conn, COLLECTIONS[kind], obj_id)


class NeutronStore:
    """The Store surface over Neutron's objects plus the local store's own kinds."""

    def __init__(self, local, reader, management_network_id, resync_period=300.0,
                 router_flavor_id=""):
        self.local = local
        self.router_flavor_id = router_flavor_id  # only routers of this flavor are ours
        self.debug_flags = local.debug_flags
        self.placements = local.placements
        self.reader = reader
        self.management_network_id = management_network_id
        self.resync_period = resync_period
        # Neutron's kinds only (canonical, Neutron's order); replaced, never mutated
        self._neutron = Snapshot({kind: {} for kind in NEUTRON_KINDS}, management_network_id)
        self._cached = (None, None, None)  # (local snapshot, Neutron snapshot, combined)
        self._lock = threading.RLock()
        self._subscribers = []
        self._stop = threading.Event()
        self._thread = None
        local.subscribe(self.publish)
        local.view = self.snapshot  # commands name Neutron's routers too

    def __getattr__(self, name):
        if name in DELEGATED:
            return getattr(self.local, name)
        raise AttributeError(name)

    # -- reading ---------------------------------------------------------------------------
    def snapshot(self):
        return self._combined(self.local.snapshot())

    def _combined(self, local):
        """Neutron's objects plus ``local`` (a local store snapshot)'s own kinds."""
        neutron = self._neutron
        cached_local, cached_neutron, combined = self._cached
        if cached_local is local and cached_neutron is neutron:
            return combined
        combined = neutron.merged(local, LOCAL_KINDS)
        self._cached = (local, neutron, combined)
        return combined

    def _write_local(self, build, claim=None):
        """``build(combined snapshot)`` inside the local store's write transaction; only
        the local kinds of what it returns are written."""
        return self.local.commit(
            lambda local: [c for c in build(self._combined(local)) if c[0] in LOCAL_KINDS],
            claim=claim)

    # -- Neutron -> cache ------------------------------------------------------------------
    def load(self):
        """Read every Neutron kind whole; publish what changed. Returns the events."""
        fresh = {}
        for kind in NEUTRON_KINDS:
            objects = {}
            for raw in self.reader.list(kind):
                obj = self._canonical(kind, raw)
                if obj is not None:
                    objects[obj["id"]] = obj
            fresh[kind] = objects
        with self._lock:
            changes = difference(self._neutron, Snapshot(fresh, self.management_network_id),
                                 NEUTRON_KINDS)
            return self._apply(changes, replace=fresh)

    def _canonical(self, kind, raw):
        if kind == "router" and self.router_flavor_id and \
                raw.get("flavor_id") != self.router_flavor_id:
            return None  # another provider's router (Neutron's L3 agent has it)
        return canonical(kind, raw)

    def upsert(self, kind, raw, publish=True):
        """A created or updated object (a notification's payload). Returns the events;
        ``publish=False`` leaves telling the subscribers to the caller (batching)."""
        obj = self._canonical(kind, raw)
        with self._lock:
            old = self._neutron.get(kind, raw["id"])
            if obj == old:
                return []
            return self._apply([(kind, old, obj)], publish=publish)  # obj None: not ours

    def remove(self, kind, obj_id, publish=True):
        with self._lock:
            old = self._neutron.get(kind, obj_id)
            return self._apply([(kind, old, None)], publish=publish) if old else []

    def refresh(self, kind, obj_id, publish=True):
        """Re-read one object (a notification that does not carry it whole)."""
        raw = self.reader.get(kind, obj_id)
        if raw is None:
            return self.remove(kind, obj_id, publish)
        return self.upsert(kind, raw, publish)

    def publish(self, events):
        notify(self._subscribers, events)

    def _apply(self, changes, replace=None, publish=True):
        changes = [c for c in changes if c[1] is not None or c[2] is not None]
        if not changes:
            return []
        before = self.snapshot()
        with self._lock:
            self._neutron = self._neutron.with_changes(changes) if replace is None else \
                Snapshot(replace, self.management_network_id)
        events = affected(before, self.snapshot(), changes)
        if publish:
            self.publish(events)
        return events

    # -- resync ----------------------------------------------------------------------------
    def start(self):
        """First read now (so the health monitor sees every router at once), then the
        resync loop; a Neutron that does not answer yet is retried by the loop."""
        delay = self._resync_once()
        self._thread = threading.Thread(target=self._resync_loop, args=(delay,),
                                        name="neutron-resync", daemon=True)
        self._thread.start()

    def _resync_once(self):
        try:
            self.load()
            return self.resync_period
        except Exception as exc:  # noqa: BLE001 - Neutron away: try again soon
            LOG.warning("reading the desired state from Neutron failed: %s", exc)
            return min(self.resync_period, 10.0)

    def _resync_loop(self, delay):
        while not self._stop.wait(delay):
            delay = self._resync_once()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.local.close()

    # -- the Store surface -----------------------------------------------------------------
    def subscribe(self, callback):
        self._subscribers.append(callback)

    @staticmethod
    def _from_neutron(kind):
        if kind in NEUTRON_KINDS:
            raise StoreError(f"{COLLECTIONS[kind]} come from Neutron ([neutron] "
                             "desired_state = true): change them there", status=405)

    def create(self, kind, body):
        validation.check_kind(kind)
        self._from_neutron(kind)
        return self._write_local(
            lambda snap: [(kind, None, validation.new_object(snap, kind, body))])[0]

    def update(self, kind, obj_id, changes):
        validation.check_kind(kind)
        self._from_neutron(kind)
        unchanged = []

        def build(snap):
            old, new = validation.changed_object(snap, kind, obj_id, changes)
            if new == old:
                unchanged.append(old)
                return []
            return [(kind, old, new)]
        written = self._write_local(build)
        return written[0] if written else unchanged[0]

    def delete(self, kind, obj_id):
        validation.check_kind(kind)
        self._from_neutron(kind)
        self._write_local(
            lambda snap: validation.delete_changes(snap, kind, snap.require(kind, obj_id)))

    def add_router_interface(self, router_id, **_):
        self._from_neutron("router")

    def set_router_gateway(self, router_id, *args, **kwargs):
        self._from_neutron("router")

    def clear_router_gateway(self, router_id):
        self._from_neutron("router")

    def ensure_management_network(self, settings):
        """Nothing to make: the management network is Neutron's ([management] network_id
        and subnet_id must name it)."""

    def create_appliance_port(self, body, claim=None):
        """Validated against Neutron's ports too (a MAC Neutron has is taken)."""
        return self._write_local(
            lambda snap: [("appliance_port", None,
                           validation.normalize(snap, "appliance_port", body))], claim=claim)[0]

    def delete_appliance_ports(self, ports, claim=None):
        self.local.delete_appliance_ports(ports, claim=claim)
