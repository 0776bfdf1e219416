"""The orchestrator assembled: store -> events -> scheduler/automata -> instance managers
-> driver + appliance clients; health monitor; webhook; ownership (alone, or its share of
a cluster: coordination.py). Also the operator surface the admin API exposes (list/show
resources, commands), so api.py stays a thin HTTP layer. Stopping never destroys
appliances: a restarted orchestrator (or another member of the cluster) adopts them.

In a cluster every member's API shows every resource: the owner records each resource's
state in the store, and commands go through the store to the owner, whichever member's
API received them.
"""
import logging
import os
import time

from astara_router.store import payload_hash

from .builder import PayloadSettings
from .coordination import make_ownership
from .drivers import DriverSet, make_drivers
from .drivers.base import DriverError
from .events import MANAGE, POLL, REBUILD, UPDATE, follow_ups
from .health import HealthMonitor
from .instances import InstanceManager, default_client_factory, instance_prefix
from .metrics import OrchestratorMetrics
from .rollout import Rollout
from .state import Automaton
from .store import Conflict, NotFound, Store, StoreError
from .webhook import Webhook
from .workers import Scheduler

LOG = logging.getLogger(__name__)
RESOURCE_COMMANDS = ("rebuild", "update", "debug", "manage", "poll")


class Orchestrator:
    def __init__(self, settings, driver=None, client_factory=None, clock=time.monotonic,
                 certificates=None):
        self.settings = settings
        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
        os.chmod(settings.state_dir, 0o700)  # the database and appliance records live here
        self.identity = settings.host
        self.cloud = self._connect(settings, driver)
        self.store = self._make_store(settings, self.cloud)
        self.store.ensure_management_network(settings.management)
        self.driver = DriverSet({driver.name: driver}, driver.name) if driver else \
            make_drivers(settings, self.cloud)
        self.store.placements.drivers = self.driver.names
        self.payload_settings = PayloadSettings.from_settings(settings)
        # An injected client factory (simulated appliances) chooses its own transport:
        # certificates are issued only for the orchestrator's own clients, or with an
        # injected CA (``certificates``: simulated appliances speaking mutual TLS).
        self.certificates = certificates if certificates is not None else \
            None if client_factory else self._make_certificates(settings)
        self.client_factory = client_factory or default_client_factory(
            settings.appliance, self.certificates, self.identity)
        self.ownership = make_ownership(self.store, settings)
        self.webhook = Webhook(settings.webhook_url, settings.webhook_timeout) \
            if settings.webhook_url else None
        self.neutron_events = self.neutron_status = None
        self._clock = clock
        self.metrics = OrchestratorMetrics()
        self.scheduler = Scheduler(self._make_automaton, self.store, settings.threads, clock,
                                   ownership=self.ownership, after_run=self._record_state)
        self.health = HealthMonitor(self.scheduler, self.store, self.driver,
                                    settings.health.period, settings.health.jitter, clock,
                                    ownership=self.ownership)
        self.store.subscribe(self._rebuild_requests)
        self.store.subscribe(self.scheduler.handle_all)
        self.metrics.observe(self)
        self.started_at = time.time()
        self.rollout = None  # the fleet upgrade under way or last run (rollout.py)

    @staticmethod
    def _connect(settings, driver):
        """One openstacksdk Connection, so one Keystone auth, for everything that talks to
        the cloud (Neutron desired state, status write-back, openstack driver); None when
        nothing does."""
        drivers = () if driver else (settings.compute_driver, *settings.compute_drivers)
        if not settings.neutron.desired_state and "openstack" not in drivers:
            return None
        from .openstack.cloud import connect
        return connect(settings.openstack)

    @staticmethod
    def _make_certificates(settings):
        """The appliance CA (mutual TLS), or None: plain HTTP, logged as such."""
        if not settings.tls.enabled:
            LOG.warning("[tls] enabled = false: appliance APIs are called over plain HTTP")
            return None
        from .pki import CertificateAuthority
        return CertificateAuthority(settings.pki_directory, settings.tls.lifetime_days,
                                    settings.tls.renew_before_days,
                                    common_name=f"astara orchestrator {settings.host}")

    @staticmethod
    def _make_store(settings, cloud):
        """The local store, or (``[neutron] desired_state``) Neutron's objects over it."""
        local = Store(settings.database_connection, settings.management.network_id)
        if not settings.neutron.desired_state:
            return local
        from .openstack.neutron import NeutronReader, NeutronStore
        return NeutronStore(local, NeutronReader(cloud),
                            settings.management.network_id, settings.neutron.resync_period,
                            settings.neutron.router_flavor_id)

    def _start_openstack(self):
        """Neutron mode: resync loop, notifications listener, status write-back."""
        neutron = self.settings.neutron
        if not neutron.desired_state:
            return
        from .openstack.events import L3RpcClient, NotificationListener
        from .openstack.status import StatusWriter
        self.store.start()
        if neutron.events_url:
            queue = neutron.queue or f"astara-orchestrator.{self.settings.host}"
            self.neutron_events = NotificationListener(
                neutron.events_url, self.store, queue, neutron.exchange, neutron.topic,
                neutron.queue_expires).start()
        if neutron.status:
            l3_rpc = L3RpcClient(neutron.events_url, neutron.exchange) \
                if neutron.events_url else None
            self.neutron_status = StatusWriter(self.cloud, self.store, l3_rpc)

    def _make_automaton(self, ref, claim=None):
        manager = InstanceManager(ref, self.store, self.driver, self.payload_settings,
                                  self.client_factory, self.settings.management.network_id,
                                  clock=self._clock,
                                  hotplug_timeout=self.settings.health.hotplug_timeout,
                                  boot_timeout=self.settings.health.boot_timeout,
                                  placement=self.store.placements.resolve,
                                  certificates=self.certificates,
                                  claim=claim,
                                  metrics=self.metrics)
        return Automaton(ref, manager, self.settings.health, clock=self._clock,
                         on_transition=self._on_transition, metrics=self.metrics)

    def _manager(self, key):
        """The instance manager of the resource's automaton; None when the scheduler has
        none (not ours, deleted, or forgotten after a handover)."""
        automaton = self.scheduler.automaton(key)
        return automaton.manager if automaton is not None else None

    def _record_state(self, automaton):
        """After each run: the owner's view of the resource, in the store (fenced), so
        every member's API can show it. Written only when it changed."""
        claim = automaton.claim
        if claim is None:
            return
        if automaton.deleted:
            ref = automaton.ref
            # Not made again, nor about to be: a fresh automaton for its follow-up
            # actions (Scheduler._finish) acts with this claim.
            if self.store.snapshot().get(ref.kind, ref.id) is None and \
                    not follow_ups(automaton.queue):
                self.ownership.ended(ref)
                self.store.forget(claim)
            return
        view = (claim.epoch, automaton.state, automaton.last_error)
        if getattr(automaton, "recorded", None) != view:
            self.store.record_state(claim, automaton.state, automaton.last_error)
            automaton.recorded = view

    def _on_transition(self, automaton, old, new):
        if self.webhook is not None:
            self.webhook.notify(automaton, old, new)
        if self.neutron_status is not None:
            self.neutron_status.transition(automaton, old, new)

    def start(self):
        self._start_openstack()
        self.scheduler.start()
        self.ownership.start(self.scheduler)
        self.store.watch(self.settings.db.watch_interval)
        self.health.start()
        LOG.info("orchestrator %s started: %d resources, driver %s, store %s, %s",
                 self.identity, len(self.store.snapshot().resources()), self.driver.name,
                 self.store.url, self.ownership.status()["mode"])

    def stop(self):
        if self.rollout is not None:
            self.rollout.stop()
        if self.neutron_events is not None:
            self.neutron_events.stop()
        self.health.stop()
        self.scheduler.stop()
        if self.neutron_status is not None:
            self.neutron_status.close()
        self.ownership.stop()
        if self.webhook is not None:
            self.webhook.close()
        self.driver.close()
        self.store.close()
        if self.cloud is not None:  # last: the resync thread has stopped with the store
            self.cloud.close()

    # -- operator surface ------------------------------------------------------------------------
    def _ref(self, resource_id):
        ref = self.store.snapshot().find_ref(resource_id)
        if ref is not None:
            return ref
        for key in self.scheduler.statuses():  # deleted from the store, still stopping
            automaton = self.scheduler.automaton(key)
            if key[1] == resource_id and automaton is not None:
                return automaton.ref
        raise NotFound(f"no router or load balancer {resource_id}")

    def _row(self, ref, snapshot, statuses, record):
        """A resource as this member sees it: its own automaton's status when it owns
        it, else what the owner recorded in the store (``record``: its row, or None)."""
        obj = snapshot.get(ref.kind, ref.id) or {}
        status = statuses.get(ref.key)
        record = record or {}
        manager = self._manager(ref.key) if status is not None else None
        if status is None:
            status = {"state": record.get("state") or "unknown",
                      "last_error": record.get("last_error")}
        return {"id": ref.id, "kind": ref.kind, "tenant_id": ref.tenant_id,
                "name": obj.get("name", ""), "in_store": bool(obj),
                "state": status.get("state", "unknown"),
                "last_error": status.get("last_error"),
                "owner": record.get("owner") or None, "epoch": record.get("epoch"),
                "local": manager is not None,
                "paused": self.store.debug_flags.paused_reason(ref),
                # Another member's resource: its instances are known to its owner only.
                "instances": len(manager.status()) if manager else
                (None if record.get("owner") not in (None, "", self.identity) else 0)}

    def resources(self):
        snapshot = self.store.snapshot()
        statuses = self.scheduler.statuses()
        stored = self.store.resource_rows()
        refs = {ref.key: ref for ref in snapshot.resources()}
        for key in statuses:
            automaton = self.scheduler.automaton(key)
            if automaton is not None:
                refs.setdefault(key, automaton.ref)
        return [self._row(ref, snapshot, statuses, stored.get(key))
                for key, ref in refs.items()]

    def resource(self, resource_id):
        ref = self._ref(resource_id)
        snapshot = self.store.snapshot()
        statuses = self.scheduler.statuses()
        row = self._row(ref, snapshot, statuses, self.store.resource_row(ref))
        automaton = statuses.get(ref.key)
        manager = self._manager(ref.key)
        instances = manager.status() if manager else []
        for instance in instances:
            instance["shell"] = self.driver.shell_command(instance["id"])
            instance["driver"] = self.driver.driver_name_of(instance["id"])
        desired = {}
        if manager is not None:
            desired = {name: payload_hash(p) for name, p in manager.desired_payloads().items()}
        row.update(automaton=automaton, instances=instances, desired_hash=desired,
                   inputs_digest=manager.inputs_digest() if manager else None,
                   placement=self.store.placements.resolve(ref).as_dict())
        return row

    def command(self, resource_id, command, reason="", image=None, instance=None):
        if command not in RESOURCE_COMMANDS:
            raise StoreError(f"unknown command {command!r} ({', '.join(RESOURCE_COMMANDS)})")
        if (image is not None or instance is not None) and command != "rebuild":
            raise StoreError(f"{command} takes no image or instance (rebuild does)", "image")
        if command == "rebuild":
            return self.rebuild(resource_id, image, instance)
        ref = self._ref(resource_id)
        if command == "debug":
            self.store.debug_flags.set("resource", ref.id, reason)
            return {"id": ref.id, "paused": self.store.debug_flags.paused_reason(ref)}
        # Through the store: the owner acts, whichever orchestrator received it.
        if command == "manage":
            self.store.write_debug_flag("resource", ref.id, None, None,
                                        command=(ref.kind, ref.id, MANAGE))
        else:
            action = {"update": UPDATE, "poll": POLL}[command]
            self.store.command(ref, action, force=command == "update")
        paused = self.store.debug_flags.paused_reason(ref)
        return {"id": ref.id, "command": command,
                "delivered": not paused or command == "manage",
                "owner": self.ownership.owner_of(ref), "paused": paused}

    def rebuild(self, resource_id, image=None, instance=None):
        """Replace the resource's appliances (``instance``: only that one, by name, e.g.
        one HA member), booting ``image`` (None: the image they run now). The image
        sticks: later boots of the resource use it too."""
        ref = self._ref(resource_id)
        if image is not None:
            if not isinstance(image, str):
                raise StoreError("image must be a string", "image")
            try:  # an image of the driver the resource boots on (its placement's)
                self.driver.image_id(image, self.store.placements.resolve(ref).driver or None)
            except DriverError as exc:
                raise StoreError(str(exc), "image") from None
        if instance is not None:
            names = {i.name for i in self.driver.list(instance_prefix(ref))}
            if instance not in names:
                raise StoreError(f"{ref} has no instance {instance!r} "
                                 f"({', '.join(sorted(names)) or 'none'})", "instance")
        # Through the store, like every command: the owner's _rebuild_requests hands the
        # image and instance to its instance manager before the rebuild reaches it.
        self.store.command(ref, REBUILD, image=image, instance=instance)
        paused = self.store.debug_flags.paused_reason(ref)
        return {"id": ref.id, "command": "rebuild", "delivered": not paused,
                "image": image, "instance": instance,
                "owner": self.ownership.owner_of(ref), "paused": paused}

    def _rebuild_requests(self, events):
        """A rebuild's image and instance (``rebuild --image``, the rolling upgrade), set
        on the owner's instance manager; subscribed before the scheduler, so it is set
        when the rebuild is delivered."""
        for event in events:
            if event.action != REBUILD or event.ref is None or \
                    (event.image is None and event.instance is None):
                continue
            if not self.scheduler.owns(event.ref):
                continue
            if self.scheduler.automaton(event.ref.key) is None:
                self.scheduler.deliver(event.ref, POLL)  # makes the automaton and manager
            manager = self._manager(event.ref.key)
            if manager is not None:
                manager.request_rebuild(event.image, event.instance)

    # -- fleet upgrades (rollout.py) -------------------------------------------------------------
    def start_upgrade(self, image, max_unavailable=1, tenant_id=None, resource_ids=None,
                      unit_timeout=None):
        if self.rollout is not None and self.rollout.running():
            raise StoreError("an upgrade is under way (astara-ctl upgrade status; "
                             "upgrade stop ends it)", status=409)
        self.rollout = Rollout(self, image, max_unavailable, tenant_id, resource_ids,
                               unit_timeout).start()
        return self.rollout.status()

    def upgrade_status(self):
        return self.rollout.status() if self.rollout is not None else None

    def stop_upgrade(self):
        if self.rollout is None:
            raise StoreError("no upgrade has been started", status=404)
        self.rollout.stop()
        return self.rollout.status()

    def tenant_command(self, tenant_id, command, reason=""):
        refs = [r for r in self.store.snapshot().resources() if r.tenant_id == tenant_id]
        if command == "debug":
            self.store.debug_flags.set("tenant", tenant_id, reason)
        elif command == "manage":
            self.store.debug_flags.clear("tenant", tenant_id)
            for ref in refs:
                self.store.command(ref, MANAGE)
        else:
            raise StoreError(f"unknown tenant command {command!r} (debug, manage)")
        return {"tenant_id": tenant_id, "command": command, "resources": [r.id for r in refs]}

    def global_command(self, command, reason=""):
        if command == "debug":
            self.store.debug_flags.set("global", "*", reason)
        elif command == "manage":
            self.store.debug_flags.clear("global", "*")
        else:
            raise StoreError(f"unknown global command {command!r} (debug, manage)")
        return {"global": command}

    def poll(self):
        """Poll every resource now (each by its owner, through the store)."""
        self.health.poll_now()
        self.store.broadcast(POLL)
        refs = self.scheduler.known_refs()
        return {"polled": [ref.id for ref in refs
                           if not self.store.debug_flags.paused_reason(ref)]}

    def debug_session(self, resource_id, actions=(POLL,), follow=False, timeout=120.0):
        """A Session (debugger.py) for one resource: iterate ``.stream()`` for its lines."""
        from .debugger import Session
        ref = self._ref(resource_id)
        if not self.scheduler.owns(ref):
            # Only the owner runs a resource's state machine; this member's session would
            # race it (and be fenced). Refused here, naming the member to ask instead.
            owner = self.ownership.owner_of(ref) or "nobody yet"
            raise Conflict(f"{ref.kind} {ref.id} is owned by orchestrator {owner}, not "
                           f"{self.identity}: run the debugger through its admin API",
                           "resource_id")
        try:
            return Session(self, ref, actions, follow, timeout)
        except ValueError as exc:
            raise StoreError(str(exc), "actions") from None

    def placements(self):
        return {"placements": self.store.placements.all(),
                "drivers": list(self.driver.names), "default_driver": self.driver.default}

    def set_placement(self, scope, key, driver="", image=""):
        self.store.placements.set(scope, key, driver or "", image or "")
        return self.placements()

    def clear_placement(self, scope, key):
        self.store.placements.clear(scope, key)
        return self.placements()

    def workers_debug(self):
        info = self.scheduler.debug_info()
        info["debug_flags"] = [{"scope": scope, "key": key, **flag}
                               for (scope, key), flag in self.store.debug_flags.all().items()]
        info["polls_sent"] = {f"{kind} {rid}": n
                              for (kind, rid), n in dict(self.health.polls_sent).items()}
        info["driver"] = self.driver.name
        info["started_at"] = self.started_at
        info["identity"] = self.identity
        info["store"] = {"url": self.store.url, "revision": self.store.revision}
        info["coordination"] = self.ownership.status()
        return info
