"""The orchestrator assembled: store -> events -> scheduler/automata -> instance managers
-> driver + appliance clients; health monitor; webhook. Also the operator surface the
admin API exposes (list/show resources, commands), so api.py stays a thin HTTP layer.
Stopping never destroys appliances: a restarted orchestrator adopts them.
"""
import logging
import os
import time

from astara_router.store import payload_hash

from .builder import PayloadSettings
from .drivers import DriverSet, make_drivers
from .events import MANAGE, POLL, REBUILD, UPDATE
from .health import HealthMonitor
from .instances import InstanceManager, default_client_factory
from .state import Automaton
from .store import NotFound, Store, StoreError
from .webhook import Webhook
from .workers import Scheduler

LOG = logging.getLogger(__name__)
RESOURCE_COMMANDS = ("rebuild", "update", "debug", "manage", "poll")


class Orchestrator:
    def __init__(self, settings, driver=None, client_factory=None, clock=time.monotonic):
        self.settings = settings
        os.makedirs(settings.state_dir, exist_ok=True)
        self.cloud = self._connect(settings, driver)
        self.store = self._make_store(settings, self.cloud)
        self.store.ensure_management_network(settings.management)
        self.driver = DriverSet({driver.name: driver}, driver.name) if driver else \
            make_drivers(settings, self.cloud)
        self.store.placements.drivers = self.driver.names
        self.payload_settings = PayloadSettings.from_settings(settings)
        # An injected client factory (simulated appliances) chooses its own transport:
        # certificates are issued only for the orchestrator's own clients.
        self.certificates = None if client_factory else self._make_certificates(settings)
        self.client_factory = client_factory or default_client_factory(settings.appliance,
                                                                       self.certificates)
        self.webhook = Webhook(settings.webhook_url, settings.webhook_timeout) \
            if settings.webhook_url else None
        self.neutron_events = self.neutron_status = None
        self._clock = clock
        self.managers = {}
        self.scheduler = Scheduler(self._make_automaton, self.store, settings.threads, clock)
        self.health = HealthMonitor(self.scheduler, self.store, self.driver,
                                    settings.health.period, settings.health.jitter, clock)
        self.store.subscribe(self.scheduler.handle_all)
        self.started_at = time.time()

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
        local = Store(settings.database_path, settings.management.network_id)
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

    def _make_automaton(self, ref):
        manager = InstanceManager(ref, self.store, self.driver, self.payload_settings,
                                  self.client_factory, self.settings.management.network_id,
                                  clock=self._clock,
                                  hotplug_timeout=self.settings.health.hotplug_timeout,
                                  placement=self.store.placements.resolve,
                                  certificates=self.certificates)
        self.managers[ref.key] = manager
        return Automaton(ref, manager, self.settings.health, clock=self._clock,
                         on_transition=self._on_transition)

    def _on_transition(self, automaton, old, new):
        if self.webhook is not None:
            self.webhook.notify(automaton, old, new)
        if self.neutron_status is not None:
            self.neutron_status.transition(automaton, old, new)

    def start(self):
        self._start_openstack()
        self.scheduler.start()
        self.health.start()
        LOG.info("orchestrator started: %d resources, driver %s",
                 len(self.store.snapshot().resources()), self.driver.name)

    def stop(self):
        if self.neutron_events is not None:
            self.neutron_events.stop()
        self.health.stop()
        self.scheduler.stop()
        if self.neutron_status is not None:
            self.neutron_status.close()
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

    def _row(self, ref, snapshot, statuses):
        obj = snapshot.get(ref.kind, ref.id) or {}
        status = statuses.get(ref.key, {})
        manager = self.managers.get(ref.key)
        return {"id": ref.id, "kind": ref.kind, "tenant_id": ref.tenant_id,
                "name": obj.get("name", ""), "in_store": bool(obj),
                "state": status.get("state", "unknown"),
                "last_error": status.get("last_error"),
                "paused": self.store.debug_flags.paused_reason(ref),
                "instances": len(manager.status()) if manager else 0}

    def resources(self):
        snapshot = self.store.snapshot()
        statuses = self.scheduler.statuses()
        refs = {ref.key: ref for ref in snapshot.resources()}
        for key in statuses:
            automaton = self.scheduler.automaton(key)
            if automaton is not None:
                refs.setdefault(key, automaton.ref)
        return [self._row(ref, snapshot, statuses) for ref in refs.values()]

    def resource(self, resource_id):
        ref = self._ref(resource_id)
        snapshot = self.store.snapshot()
        statuses = self.scheduler.statuses()
        row = self._row(ref, snapshot, statuses)
        automaton = statuses.get(ref.key)
        manager = self.managers.get(ref.key)
        instances = manager.status() if manager else []
        for instance in instances:
            command = self.driver.shell_command(instance["id"])
            instance["shell"] = command
        desired = {}
        if manager is not None:
            desired = {name: payload_hash(p) for name, p in manager.desired_payloads().items()}
        for instance in instances:
            instance["driver"] = self.driver.driver_name_of(instance["id"])
        row.update(automaton=automaton, instances=instances, desired_hash=desired,
                   inputs_digest=manager.inputs_digest() if manager else None,
                   placement=self.store.placements.resolve(ref).as_dict())
        return row

    def command(self, resource_id, command, reason=""):
        if command not in RESOURCE_COMMANDS:
            raise StoreError(f"unknown command {command!r} ({', '.join(RESOURCE_COMMANDS)})")
        ref = self._ref(resource_id)
        if command == "debug":
            self.store.debug_flags.set("resource", ref.id, reason)
            return {"id": ref.id, "paused": self.store.debug_flags.paused_reason(ref)}
        if command == "manage":
            self.store.debug_flags.clear("resource", ref.id)
            delivered = self.scheduler.deliver(ref, MANAGE)
        elif command == "rebuild":
            delivered = self.scheduler.deliver(ref, REBUILD)
        elif command == "update":
            delivered = self.scheduler.deliver(ref, UPDATE, force=True)
        else:
            delivered = self.scheduler.deliver(ref, POLL)
        return {"id": ref.id, "command": command, "delivered": delivered,
                "paused": self.store.debug_flags.paused_reason(ref)}

    def tenant_command(self, tenant_id, command, reason=""):
        refs = [r for r in self.store.snapshot().resources() if r.tenant_id == tenant_id]
        if command == "debug":
            self.store.debug_flags.set("tenant", tenant_id, reason)
        elif command == "manage":
            self.store.debug_flags.clear("tenant", tenant_id)
            for ref in refs:
                self.scheduler.deliver(ref, MANAGE)
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
        self.health.poll_now()
        refs = self.scheduler.known_refs()
        delivered = [ref.id for ref in refs if self.scheduler.deliver(ref, POLL)]
        return {"polled": delivered}

    def debug_session(self, resource_id, actions=(POLL,), follow=False, timeout=120.0):
        """A Session (debugger.py) for one resource: iterate ``.stream()`` for its lines."""
        from .debugger import Session
        try:
            return Session(self, self._ref(resource_id), actions, follow, timeout)
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
        return info
