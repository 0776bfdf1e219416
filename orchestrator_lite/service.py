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
from .drivers import make_driver
from .drivers.base import DriverError
from .events import MANAGE, POLL, REBUILD, UPDATE
from .health import HealthMonitor
from .instances import InstanceManager, default_client_factory, instance_prefix
from .rollout import Rollout
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
        self.store = Store(settings.database_path, settings.management.network_id)
        self.store.ensure_management_network(settings.management)
        self.driver = driver or make_driver(settings)
        self.payload_settings = PayloadSettings.from_settings(settings)
        self.client_factory = client_factory or default_client_factory(settings.appliance)
        self.webhook = Webhook(settings.webhook_url, settings.webhook_timeout) \
            if settings.webhook_url else None
        self._clock = clock
        self.managers = {}
        self.scheduler = Scheduler(self._make_automaton, self.store, settings.threads, clock)
        self.health = HealthMonitor(self.scheduler, self.store, self.driver,
                                    settings.health.period, settings.health.jitter, clock)
        self.store.subscribe(self.scheduler.handle_all)
        self.started_at = time.time()
        self.rollout = None  # the fleet upgrade under way or last run (rollout.py)

    def _make_automaton(self, ref):
        manager = InstanceManager(ref, self.store, self.driver, self.payload_settings,
                                  self.client_factory, self.settings.management.network_id,
                                  clock=self._clock,
                                  hotplug_timeout=self.settings.health.hotplug_timeout,
                                  boot_timeout=self.settings.health.boot_timeout)
        self.managers[ref.key] = manager
        return Automaton(ref, manager, self.settings.health, clock=self._clock,
                         on_transition=self._on_transition)

    def _on_transition(self, automaton, old, new):
        if self.webhook is not None:
            self.webhook.notify(automaton, old, new)

    def start(self):
        self.scheduler.start()
        self.health.start()
        LOG.info("orchestrator started: %d resources, driver %s",
                 len(self.store.snapshot().resources()), self.driver.name)

    def stop(self):
        if self.rollout is not None:
            self.rollout.stop()
        self.health.stop()
        self.scheduler.stop()
        if self.webhook is not None:
            self.webhook.close()
        self.driver.close()
        self.store.close()

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
        row.update(automaton=automaton, instances=instances, desired_hash=desired,
                   inputs_digest=manager.inputs_digest() if manager else None)
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
        if command == "manage":
            self.store.debug_flags.clear("resource", ref.id)
            delivered = self.scheduler.deliver(ref, MANAGE)
        elif command == "update":
            delivered = self.scheduler.deliver(ref, UPDATE, force=True)
        else:
            delivered = self.scheduler.deliver(ref, POLL)
        return {"id": ref.id, "command": command, "delivered": delivered,
                "paused": self.store.debug_flags.paused_reason(ref)}

    def rebuild(self, resource_id, image=None, instance=None):
        """Replace the resource's appliances (``instance``: only that one, by name, e.g.
        one HA member), booting ``image`` (None: the image they run now). The image
        sticks: later boots of the resource use it too."""
        ref = self._ref(resource_id)
        if image is not None:
            if not isinstance(image, str):
                raise StoreError("image must be a string", "image")
            try:
                self.driver.image_id(image)
            except DriverError as exc:
                raise StoreError(str(exc), "image") from None
        if instance is not None:
            names = {i.name for i in self.driver.list(instance_prefix(ref))}
            if instance not in names:
                raise StoreError(f"{ref} has no instance {instance!r} "
                                 f"({', '.join(sorted(names)) or 'none'})", "instance")
        if ref.key not in self.managers:
            self.scheduler.deliver(ref, POLL)  # makes the automaton and its manager
        manager = self.managers.get(ref.key)
        if manager is not None:
            manager.request_rebuild(image, instance)
        delivered = self.scheduler.deliver(ref, REBUILD)
        return {"id": ref.id, "command": "rebuild", "delivered": delivered,
                "image": image, "instance": instance,
                "paused": self.store.debug_flags.paused_reason(ref)}

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

    def workers_debug(self):
        info = self.scheduler.debug_info()
        info["debug_flags"] = [{"scope": scope, "key": key, **flag}
                               for (scope, key), flag in self.store.debug_flags.all().items()]
        info["driver"] = self.driver.name
        info["started_at"] = self.started_at
        return info
