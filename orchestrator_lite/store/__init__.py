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
the routers/load balancers whose payload can change. ``debug_flags`` keeps the pause flags,
``placements`` the per-tenant/per-resource image and driver (both written through the
change log, so every member sees them).

Several processes (the orchestrators of a cluster) may share one database. A write takes
the database's writer lock, first *catches up* with what the others committed (the change
log after this process's revision), validates against that, and commits its objects and
change-log rows in one transaction. A process also catches up in the background
(``watch``: LISTEN/NOTIFY on PostgreSQL, polling on SQLite), and publishes the events of
the others' writes and commands (``command``: rebuild/update/manage/poll reach the
resource's owner, whichever orchestrator's API received them) like its own.

Ownership: ``claim`` makes this orchestrator a resource's owner with a new, higher epoch;
writes done for a resource carry the ``Claim`` and are refused (``Fenced``) in their
transaction when the store says someone else owns it now.

  kinds.py        object kinds, API collection names, Neutron device owners
  errors.py       StoreError / NotFound / Conflict, each with its HTTP status
  validation.py   body -> canonical object; delete cascades and refusals
  snapshot.py     the immutable read model and its lookups
  impact.py       which routers/load balancers a change affects
  debug_flags.py  pause flags per resource, tenant or globally
  placements.py   per-tenant/per-resource image and driver (BYONF)
  claims.py       a resource's owner and epoch, carried by writes and pushes
  database.py     persistence: the only SQL (SQLAlchemy Core; Alembic migrations)
"""
import json
import logging
import threading

from ..events import RESOURCE_KINDS, ROUTER, Event, ResourceRef
from . import validation
from .claims import Claim
from .database import NOTIFY_CHANNEL, Database, SchemaError, describe
from .debug_flags import DebugFlags
from .errors import Conflict, Fenced, NotFound, StoreError
from .impact import affected
from .kinds import KINDS, ROUTER_GATEWAY_OWNER, ROUTER_INTERFACE_OWNERS
from .placements import Placements
from .snapshot import Snapshot

__all__ = ["Store", "StoreError", "NotFound", "Conflict", "Fenced", "Claim", "SchemaError",
           "notify"]

LOG = logging.getLogger(__name__)
DEBUG_KIND = "debug"  # change-log rows that say "the debug flags changed"
PLACEMENT_KIND = "placement"  # change-log rows that say "the placements changed"
BROADCAST = "*"  # change-log kind/id of a command for every resource (poll)


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
    """Thread-safe desired-state store over one database (shared by a cluster).

    ``upgrade``: run the schema migrations at start (default: on SQLite only; a shared
    PostgreSQL store is upgraded with ``astara-orchestrator db upgrade``, else the start
    fails naming the command)."""

    def __init__(self, connection, management_network_id, upgrade=None):
        self._lock = threading.RLock()
        self._database = Database(connection)
        self.url = describe(self._database.url)
        if upgrade is None:
            upgrade = self._database.sqlite
        if upgrade:
            self._database.upgrade()
        else:
            self._database.check_schema()
        self._subscribers = []
        self._management_network_id = management_network_id
        with self._database.reading() as conn:
            self._revision, _ = self._database.revision(conn)
            self._snapshot, self._seqs = self._load(conn)
            flags = self._database.load_debug_flags(conn)
            placements = self._database.load_placements(conn)
        self.debug_flags = DebugFlags(self, flags)
        self.placements = Placements(self, placements)
        # Scoped settings written through the change log: kind -> (their holder, the
        # Database's set/clear/load for them).
        self._settings = {
            DEBUG_KIND: (self.debug_flags, self._database.set_debug_flag,
                         self._database.clear_debug_flag, self._database.load_debug_flags),
            PLACEMENT_KIND: (self.placements, self._database.set_placement,
                             self._database.clear_placement, self._database.load_placements)}
        self.view = None  # () -> the snapshot resources are looked up in (NeutronStore's)
        self._stop = threading.Event()
        self._watcher = None

    def _load(self, conn):
        objects = {kind: {} for kind in KINDS}
        seqs = {}
        for kind, obj, seq in self._database.load_objects(conn):
            if kind in objects:
                objects[kind][obj["id"]] = obj
                seqs[(kind, obj["id"])] = seq
        return Snapshot(objects, self._management_network_id), seqs

    def close(self):
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        with self._lock:
            self._database.close()

    def subscribe(self, callback):
        """``callback(events)`` after every write (this process's or, once caught up,
        another's) that affects resources."""
        self._subscribers.append(callback)

    def snapshot(self):
        return self._snapshot

    @property
    def revision(self):
        return self._revision

    # -- writes --------------------------------------------------------------------------------
    def create(self, kind, body):
        def build(snap):
            return [(kind, None, validation.new_object(snap, kind, body))]
        return self._write(build)[0][2]

    def update(self, kind, obj_id, changes):
        def build(snap):
            old, new = validation.changed_object(snap, kind, obj_id, changes)
            return [] if new == old else [(kind, old, new)]
        written = self._write(build)
        return written[0][2] if written else self._snapshot.get(kind, obj_id)

    def delete(self, kind, obj_id):
        validation.check_kind(kind)

        def build(snap):
            return validation.delete_changes(snap, kind, snap.require(kind, obj_id))
        self._write(build)

    def add_router_interface(self, router_id, subnet_id=None, port_id=None, ip_address=None,
                             mac_address=None):
        """Neutron's ``router add subnet``/``add port``: a port on the subnet's network
        owned by the router, at the subnet's gateway address unless told otherwise."""
        def build(snap):
            snap.require(ROUTER, router_id, "router_id")
            if port_id:
                old, new = validation.changed_object(snap, "port", port_id, {
                    "device_id": router_id, "device_owner": ROUTER_INTERFACE_OWNERS[0]})
                return [("port", old, new)]
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
            return [("port", None, validation.new_object(snap, "port", body))]
        return self._write(build)[0][2]

    def set_router_gateway(self, router_id, network_id, fixed_ips=None, mac_address=None):
        """Set (or move) the router's gateway port to ``network_id``."""
        def build(snap):
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
            return ([("port", old, None)] if old else []) + [("port", None, new)]
        return self._write(build)[-1][2]

    def clear_router_gateway(self, router_id):
        def build(snap):
            snap.require(ROUTER, router_id)
            gateway = snap.gateway_port(router_id)
            if gateway is None:
                return []
            users = [f["id"] for f in snap.floatingips_of(router_id)]
            if users:
                raise Conflict(f"router {router_id} has floating IPs: {', '.join(users)}")
            return [("port", gateway, None)]
        self._write(build)

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

        def upsert(snap, kind, body):
            if snap.get(kind, body["id"]) is None:
                return [(kind, None, validation.new_object(snap, kind, body))]
            old, new = validation.changed_object(snap, kind, body["id"], body)
            return [] if new == old else [(kind, old, new)]

        def build(snap):
            changes = upsert(snap, "network", network)
            snap = snap.with_changes(changes)
            existing = snap.get("subnet", subnet["id"])
            if existing is not None and existing["cidr"] != str(settings.network):
                raise Conflict(f"management subnet {subnet['id']} has cidr "
                               f"{existing['cidr']}, the config says {settings.prefix}")
            return changes + upsert(snap, "subnet", subnet)
        self._write(build)

    # -- appliance ports (orchestrator-internal: no events; fenced by the resource's claim) --
    def create_appliance_port(self, body, claim=None):
        def build(snap):
            return [("appliance_port", None,
                     validation.normalize(snap, "appliance_port", body))]
        return self._write(build, claim=claim)[0][2]

    def delete_appliance_ports(self, ports, claim=None):
        def build(snap):
            return [("appliance_port", p, None) for p in ports
                    if snap.get("appliance_port", p["id"])]
        if ports:
            self._write(build, claim=claim)

    # -- commands and debug flags (through the change log, so every member sees them) -------
    def command(self, ref, action, force=False, image=None, instance=None):
        """Ask the owner of ``ref`` (whichever orchestrator it is) to act: a change-log row
        that becomes an event in every process; only the owner does something with it.
        A rebuild's ``image`` and ``instance`` travel in the row as JSON."""
        if image is not None or instance is not None:
            flag = json.dumps({"image": image, "instance": instance}, sort_keys=True)
        else:
            flag = "force" if force else ""
        self._write(None, commands=[(ref.kind, ref.id, action + (f":{flag}" if flag else ""))])

    def broadcast(self, action):
        """A command for every resource (``astara-ctl poll``)."""
        self._write(None, commands=[(BROADCAST, BROADCAST, action)])

    def write_debug_flag(self, scope, key, reason, since, command=None):
        """Set (``reason`` not None) or clear a pause flag; ``command``: a command row
        written in the same transaction (``manage`` clears and wakes at once)."""
        values = None if reason is None else (reason, since)
        self._write(None, setting=(DEBUG_KIND, scope, key, values),
                    commands=[command] if command else [])

    def write_placement(self, scope, key, driver, image, since):
        """Set (``since`` not None) or clear a placement."""
        values = None if since is None else (driver, image, since)
        self._write(None, setting=(PLACEMENT_KIND, scope, key, values))

    def commit(self, build, claim=None):
        """Write what ``build(snapshot)`` returns (``(kind, old, new)`` changes validated by
        the caller against that snapshot, the newest committed one: OpenStack mode validates
        against Neutron's objects plus ours, openstack/neutron.py); the new objects."""
        return [new for _, _, new in self._write(build, claim=claim)]

    # -- ownership ---------------------------------------------------------------------------
    def claim(self, ref, owner, at_least=0, lease_ok=None):
        """Make ``owner`` the owner of ``ref`` with a new epoch (higher than any before and
        than ``at_least``); returns the Claim."""
        with self._lock, self._database.writing() as conn:
            epoch = self._database.claim(conn, ref.kind, ref.id, owner, at_least)
        return Claim(ref.kind, ref.id, owner, epoch, lease_ok)

    def claim_many(self, refs, owner, lease_ok=None):
        """``claim`` for several resources in one transaction; ``{key: Claim}``."""
        claims = {}
        with self._lock, self._database.writing() as conn:
            for ref in refs:
                epoch = self._database.claim(conn, ref.kind, ref.id, owner)
                claims[ref.key] = Claim(ref.kind, ref.id, owner, epoch, lease_ok)
        return claims

    def raise_epoch(self, claim, at_least):
        """Move our own claim above ``at_least`` (an appliance remembers a higher epoch
        from an earlier store); Fenced if we are not the owner any more."""
        with self._lock, self._database.writing() as conn:
            self._check_claim(conn, claim)
            claim.epoch = self._database.claim(conn, claim.kind, claim.id, claim.owner,
                                               at_least)
        return claim

    def check_claim(self, claim):
        """Fenced unless the store still says ``claim`` (owner and epoch)."""
        claim.check_lease()
        with self._database.reading() as conn:
            self._check_claim(conn, claim)

    def _check_claim(self, conn, claim):
        claim.check_lease()
        owner, epoch = self._database.ownership(conn, claim.kind, claim.id)
        if (owner, epoch) != (claim.owner, claim.epoch):
            raise Fenced(f"{claim.kind} {claim.id}: owned by {owner or 'nobody'} at epoch "
                         f"{epoch}, not by {claim.owner} at epoch {claim.epoch}")

    def release(self, claim):
        with self._lock, self._database.writing() as conn:
            self._database.release(conn, claim.kind, claim.id, claim.owner, claim.epoch)

    def record_state(self, claim, state, last_error):
        """The owner's view of the resource, for every member's API; Fenced if not the
        owner at that epoch any more."""
        claim.check_lease()
        with self._database.engine.begin() as conn:
            written = self._database.record_state(conn, claim.kind, claim.id, claim.owner,
                                                  claim.epoch, state, last_error)
        if not written:
            raise Fenced(f"{claim.kind} {claim.id}: not owned by {claim.owner} at epoch "
                         f"{claim.epoch} any more")

    def resource_rows(self):
        """``{(kind, id): {"owner", "epoch", "state", "last_error", ...}}``."""
        with self._database.reading() as conn:
            return self._database.resource_rows(conn)

    def resource_row(self, ref):
        """``ref``'s row of ``resource_rows``, or None."""
        with self._database.reading() as conn:
            return self._database.resource_row(conn, ref.kind, ref.id)

    def forget(self, claim):
        """Delete the row of a resource whose appliances are deleted, if ``claim`` still
        holds it (the rows would otherwise grow with every resource ever made)."""
        with self._lock, self._database.writing() as conn:
            self._database.forget_resource(conn, claim.kind, claim.id, claim.owner,
                                           claim.epoch)

    # -- the write path ------------------------------------------------------------------------
    def _write(self, build, claim=None, commands=(), setting=None):
        """One transaction: catch up, check the claim, ``build(snapshot)`` the object
        changes, write them with their change-log rows; then publish the new snapshot and
        the events (also those of what the catch-up brought in). Returns the changes."""
        events = []
        try:
            with self._lock:
                with self._database.writing() as conn:
                    events += self._catch_up(conn)
                    if claim is not None:
                        self._check_claim(conn, claim)
                    before = self._snapshot
                    changes = build(before) if build is not None else []
                    seqs = self._database.write_objects(conn, changes)
                    entries = [(kind, (new or old)["id"], None) for kind, old, new in changes]
                    if setting is not None:
                        setting_kind, scope, key, values = setting
                        holder, set_row, clear_row, load = self._settings[setting_kind]
                        if values is None:
                            clear_row(conn, scope, key)
                        else:
                            set_row(conn, scope, key, *values)
                        entries.append((setting_kind, f"{scope}:{key}", None))
                        entries_now = load(conn)
                    entries += list(commands)
                    revision = self._database.log_changes(conn, entries)
                # committed
                after = before.with_changes(changes)
                self._remember_seqs(changes, seqs)
                self._snapshot = after
                if revision is not None:
                    self._revision = revision
                if setting is not None:
                    holder.replace(entries_now)
                events += affected(before, after, changes)
                events += self._command_events(commands, after)
        finally:
            notify(self._subscribers, events)
        return changes

    def _remember_seqs(self, changes, seqs):
        for kind, old, new in changes:
            if new is None:
                self._seqs.pop((kind, old["id"]), None)
        self._seqs.update(seqs)

    def _command_events(self, commands, snap):
        if self.view is not None:
            snap = self.view()  # resources that live elsewhere (Neutron's routers)
        events = []
        for kind, obj_id, command in commands:
            action, _, flag = command.partition(":")
            if kind == BROADCAST:
                events.append(Event(None, action))
            elif kind in RESOURCE_KINDS:
                ref = snap.ref(kind, obj_id) or ResourceRef(kind, obj_id)
                args = json.loads(flag) if flag.startswith("{") else {}
                events.append(Event(ref, action, "command", force=flag == "force",
                                    image=args.get("image"), instance=args.get("instance")))
        return events

    # -- catching up with the other processes ----------------------------------------------------
    def _catch_up(self, conn):
        """Bring the snapshot to the database's newest revision (caller holds the lock and
        a transaction); the events of what changed."""
        rows = self._database.changes_since(conn, self._revision)
        if not rows:
            return []
        _, oldest = self._database.revision(conn)
        before = self._snapshot
        if self._revision < oldest - 1:
            LOG.warning("store: revision %d is older than the change log (%d): reloading "
                        "everything", self._revision, oldest)
            after, seqs = self._load(conn)
            changes = difference(before, after)
            self._seqs = seqs
        else:
            keys = list(dict.fromkeys((kind, obj_id) for _, kind, obj_id, action in rows
                                      if action is None and kind in KINDS))
            loaded = self._database.objects_by_key(conn, keys)
            removed, inserted = [], []
            for kind, obj_id in keys:
                old = before.get(kind, obj_id)
                new, seq = loaded.get((kind, obj_id), (None, None))
                if old is not None and (new is None or seq != self._seqs.get((kind, obj_id))):
                    removed.append((kind, old, None))  # deleted, or deleted and re-created
                    old = None
                if new is not None and old is None:
                    inserted.append((seq, (kind, None, new)))
                elif new is not None and new != old:
                    removed.append((kind, old, new))
            changes = removed + [change for _, change in sorted(inserted, key=lambda i: i[0])]
            after = before.with_changes(changes)
            self._remember_seqs(changes, {(k, n["id"]): s for s, (k, _, n) in inserted})
        self._snapshot = after
        self._revision = rows[-1][0]
        for kind in {kind for _, kind, _, _ in rows if kind in self._settings}:
            holder, _, _, load = self._settings[kind]
            holder.replace(load(conn))
        commands = [(kind, obj_id, action) for _, kind, obj_id, action in rows if action]
        return affected(before, after, changes) + self._command_events(commands, after)

    def refresh(self):
        """Catch up with the other processes' writes now (cheap when nothing changed)."""
        with self._lock:
            with self._database.reading() as conn:
                newest, _ = self._database.revision(conn)
                if newest == self._revision:
                    return 0
                events = self._catch_up(conn)
        notify(self._subscribers, events)
        return len(events)

    def watch(self, interval=0.5):
        """Catch up in the background: woken by NOTIFY on PostgreSQL (and polled every
        ``interval`` as a safety net), polled every ``interval`` on SQLite."""
        target = self._poll_loop if self._database.sqlite else self._listen_loop
        self._watcher = threading.Thread(target=target, args=(interval,), name="store-watch",
                                         daemon=True)
        self._watcher.start()

    def _refresh_quietly(self):
        try:
            self.refresh()
        except Exception:  # noqa: BLE001 - a database hiccup: try again next time
            LOG.exception("store: catching up failed")

    def _poll_loop(self, interval):
        while not self._stop.wait(interval):
            self._refresh_quietly()

    def _listen_loop(self, interval):
        import psycopg
        conninfo = self._database.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._refresh_quietly()  # what happened before we listened
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=interval, stop_after=1):
                            pass
                        self._refresh_quietly()
            except psycopg.Error as exc:
                LOG.warning("store: LISTEN connection lost (%s); polling until it is back",
                            exc)
                if self._stop.wait(interval):
                    return
                self._refresh_quietly()


def difference(before, after, kinds=KINDS):
    """``(kind, old, new)`` changes that turn snapshot ``before`` into ``after`` (for the
    objects of ``kinds``)."""
    changes = []
    for kind in kinds:
        old_objects = {o["id"]: o for o in before.all(kind)}
        for obj in after.all(kind):
            old = old_objects.pop(obj["id"], None)
            if old != obj:
                changes.append((kind, old, obj))
        changes += [(kind, old, None) for old in old_objects.values()]
    return changes
