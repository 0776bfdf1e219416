"""Fleet upgrades: move the appliances onto another image, a bounded number at a time.

``astara-ctl upgrade start --image IMAGE [--max-unavailable N] [--tenant T] [--resource ID]``
(``--resource`` may repeat) starts one ``Rollout`` in the orchestrator (a thread; ``upgrade
status`` shows it, ``upgrade stop`` stops it: no new replacement starts, those under way
finish). IMAGE is what the compute driver boots (a label or path for the QEMU driver, a
recorded label for the netns driver; "" = the driver's default).

* **What moves**: every resource in the scope that has an instance whose ``image_id``
  differs from what IMAGE resolves to now (``driver.image_id``) — so rebuilding
  ``out/astara.qcow2`` and upgrading onto the default moves everything, and resources
  already there are left alone.
* **Units**: a single appliance is one unit (``rebuild --image``); an HA router is one unit
  per member, the backup (newest) first, then the other: its members are never replaced
  at the same time, so one always serves.
* **Bound**: at most ``max_unavailable`` units are under way at once: that many
  appliances are down at a time, at most.
* **Done / failed**: a unit is done when the resource is configured, in sync, with all its
  instances up and the replaced one(s) on the new image. It fails when the resource parks
  in error or the unit takes longer than ``unit_timeout``: the rollout then halts (no new
  unit starts; what runs keeps running) and says why. Starting it again resumes with what
  is not upgraded yet.
* **Placements**: a resource whose placement (store/placements.py) names an image or
  another driver than the default keeps its own image: the rollout skips it (``rebuild
  --image`` moves it, or a new placement with a rebuild).
* Only resources that are configured (or already down or in error: a rebuild cannot make
  them worse) are started; others (booting, replugging...) wait their turn.

The rollout lives in memory: an orchestrator restart ends it (the appliances replaced so
far stay on the new image; start it again for the rest). In a cluster it moves the
resources of the member that runs it (it follows their instances there) and skips the
others, naming their owner: start it on every member.
"""
import dataclasses
import logging
import threading
import time

from .drivers.base import DriverError
from .instances import instance_prefix
from .store import StoreError

LOG = logging.getLogger(__name__)

STARTABLE = ("configured", "down", "error")
PENDING, UPGRADING, DONE, FAILED, SKIPPED = "pending", "upgrading", "done", "failed", "skipped"


@dataclasses.dataclass
class Target:
    """One resource of the rollout and where it is."""
    kind: str
    id: str
    tenant_id: str
    status: str = PENDING
    members: list = dataclasses.field(default_factory=list)  # instance names still to go
    unit_started: float = None
    message: str = ""

    def as_dict(self):
        return {"kind": self.kind, "id": self.id, "tenant_id": self.tenant_id,
                "status": self.status, "members_left": list(self.members),
                "message": self.message}


class Rollout:
    def __init__(self, orchestrator, image, max_unavailable=1, tenant_id=None,
                 resource_ids=None, unit_timeout=None, tick=1.0, clock=time.monotonic):
        if not isinstance(max_unavailable, int) or isinstance(max_unavailable, bool) \
                or max_unavailable < 1:
            raise StoreError("max_unavailable must be a positive integer", "max_unavailable")
        if image is not None and not isinstance(image, str):
            raise StoreError("image must be a string", "image")
        if resource_ids is not None and not (isinstance(resource_ids, list) and
                                             all(isinstance(r, str) for r in resource_ids)):
            raise StoreError("resources must be a list of resource ids", "resources")
        if unit_timeout is not None and not (isinstance(unit_timeout, (int, float)) and
                                             not isinstance(unit_timeout, bool) and
                                             unit_timeout > 0):
            raise StoreError("unit_timeout must be a positive number of seconds",
                             "unit_timeout")
        self.orchestrator = orchestrator
        self.image = image or ""
        try:
            self.image_id = orchestrator.driver.image_id(self.image)
        except DriverError as exc:
            raise StoreError(str(exc), "image") from None
        self.max_unavailable = max_unavailable
        self.unit_timeout = unit_timeout or 2 * orchestrator.settings.health.boot_timeout + \
            orchestrator.settings.appliance.config_timeout
        self.tick = tick
        self._clock = clock
        self.started_at = time.time()
        self.finished_at = None
        self.state = "running"  # running, stopping, finished, halted, stopped
        self.reason = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        refs = orchestrator.store.snapshot().resources()
        if tenant_id:
            refs = [r for r in refs if r.tenant_id == tenant_id]
        if resource_ids:
            wanted = set(resource_ids)
            unknown = wanted - {r.id for r in refs}
            if unknown:
                raise StoreError(f"no router or load balancer {', '.join(sorted(unknown))}"
                                 + (f" of tenant {tenant_id}" if tenant_id else ""),
                                 "resources")
            refs = [r for r in refs if r.id in wanted]
        self.targets = {r.key: Target(r.kind, r.id, r.tenant_id)
                        for r in sorted(refs, key=lambda r: (r.tenant_id, r.kind, r.id))}
        self.refs = {r.key: r for r in refs}

    # -- control ---------------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        with self._lock:
            if self.state == "running":
                self.state = "stopping"
        self._stop.set()

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self):
        with self._lock:
            targets = [t.as_dict() for t in self.targets.values()]
        counts = {}
        for target in targets:
            counts[target["status"]] = counts.get(target["status"], 0) + 1
        return {"image": self.image, "image_id": self.image_id,
                "max_unavailable": self.max_unavailable, "state": self.state,
                "reason": self.reason, "started_at": self.started_at,
                "finished_at": self.finished_at, "counts": counts, "resources": targets}

    # -- the loop --------------------------------------------------------------------------------
    def _instances(self, ref):
        return self.orchestrator.driver.list(instance_prefix(ref))

    def _own_placement(self, ref):
        """Why the resource keeps its own image (its placement), or ""."""
        placement = self.orchestrator.store.placements.resolve(ref)
        default = self.orchestrator.driver.default
        if placement.image or placement.driver not in ("", default):
            return (f"own {placement.source} placement (driver "
                    f"{placement.driver or default}, image {placement.image or 'default'})")
        return ""

    def _plan(self, key):
        """Members still on another image (HA: newest first); [] = nothing to do."""
        stale = [i for i in self._instances(self.refs[key])
                 if i.details.get("image_id") != self.image_id]
        stale.sort(key=lambda i: i.created_at, reverse=True)
        return [i.name for i in stale]

    def _run(self):
        LOG.info("rollout onto image %r (%s): %d resources, at most %d at a time",
                 self.image or "default", self.image_id, len(self.targets),
                 self.max_unavailable)
        for key, target in self.targets.items():
            placed = self._own_placement(self.refs[key])
            if placed:
                target.status, target.message = SKIPPED, placed
            elif not self._plan(key):
                target.status, target.message = SKIPPED, "already on the image"
        try:
            while True:
                self._step()
                active = [t for t in self.targets.values() if t.status == UPGRADING]
                pending = [t for t in self.targets.values() if t.status == PENDING]
                if not active and (not pending or self.state != "running"):
                    break
                self._stop.wait(self.tick)
        except Exception as exc:  # noqa: BLE001 - report, never die silently
            LOG.exception("rollout failed")
            self.reason = f"internal error: {exc}"
            self.state = "halted"
        with self._lock:
            if self.state == "running":
                self.state = "finished"
            elif self.state == "stopping":
                self.state = "stopped"
            self.finished_at = time.time()
        LOG.info("rollout %s: %s", self.state, self.status()["counts"])

    def _step(self):
        now = self._clock()
        for key, target in self.targets.items():
            if target.status == UPGRADING:
                self._follow(key, target, now)
        if self.state != "running":
            return
        under_way = sum(t.status == UPGRADING for t in self.targets.values())
        for key, target in self.targets.items():
            if under_way >= self.max_unavailable:
                break
            if target.status == PENDING and self._start_unit(key, target, now):
                under_way += 1

    def _resource(self, target):
        try:
            return self.orchestrator.resource(target.id)
        except StoreError:
            return None

    def _start_unit(self, key, target, now):
        resource = self._resource(target)
        if resource is None:
            target.status, target.message = SKIPPED, "deleted"
            return False
        if resource.get("paused"):
            target.message = f"paused: {resource['paused']}"
            return False
        if not self.orchestrator.scheduler.owns(self.refs[key]):
            target.status = SKIPPED
            target.message = (f"owned by {self.orchestrator.ownership.owner_of(self.refs[key])}"
                              ": start the upgrade there too")
            return False
        if resource["state"] not in STARTABLE:
            target.message = f"waiting: {resource['state']}"
            return False
        members = self._plan(key)
        if not members:
            target.status, target.message = DONE, "on the image"
            return False
        ha = resource["instances"] and len(resource["instances"]) > 1
        member = members[0] if ha and resource["state"] == "configured" else None
        target.members = [member] if member else members
        target.status, target.unit_started = UPGRADING, now
        target.message = f"replacing {member}" if member else "rebuilding"
        self.orchestrator.rebuild(target.id, image=self.image, instance=member)
        LOG.info("rollout: %s %s %s", target.kind, target.id, target.message)
        return True

    def _follow(self, key, target, now):
        resource = self._resource(target)
        if resource is None:
            target.status, target.message = SKIPPED, "deleted"
            return
        if resource["state"] == "error":
            target.status = FAILED
            target.message = f"error: {resource.get('last_error')}"
            self._halt(f"{target.kind} {target.id} failed: {target.message}")
            return
        if now - target.unit_started > self.unit_timeout:
            target.status = FAILED
            target.message = f"not back within {self.unit_timeout:g}s " \
                             f"(state {resource['state']})"
            self._halt(f"{target.kind} {target.id}: {target.message}")
            return
        instances = {i.name: i for i in self._instances(self.refs[key])}
        replaced = all(name in instances and
                       instances[name].details.get("image_id") == self.image_id
                       for name in target.members)
        if not (replaced and in_sync(resource)):
            return
        left = self._plan(key)
        if left:  # HA: the other member next (it counts as a new unit of the budget)
            target.status, target.members = PENDING, []
            target.message = f"{len(left)} member(s) left"
        else:
            target.status, target.members, target.message = DONE, [], "on the image"

    def _halt(self, reason):
        with self._lock:
            if self.state in ("running", "stopping"):
                self.state = "halted"
                self.reason = reason
        LOG.warning("rollout halted: %s", reason)


def in_sync(resource):
    """Configured, and every instance's committed hash is the desired one."""
    instances = resource.get("instances") or []
    return resource.get("state") == "configured" and bool(instances) and all(
        i.get("alive") and i.get("committed_hash") and
        i["committed_hash"] == resource.get("desired_hash", {}).get(i["name"])
        for i in instances)
