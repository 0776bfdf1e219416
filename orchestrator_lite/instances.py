"""Instance manager: the mechanism under one resource's state machine (state.py decides,
this module does). It talks to the compute driver, the store (appliance ports) and each
instance's agent, and reports what it sees as an ``Observation``; it never chooses a
state, keeps no timers and never retries on its own beyond the client's HTTP back-off.

* Instances are named ``ak-<kind>-<resource id>_<n>`` (n = 0, 1 for HA) and found again
  with ``driver.list(prefix)``: adoption after an orchestrator restart is just a list.
* Each instance owns appliance ports in the store: one MGT port on the management network
  (its EUI-64 address is the management address) and one data port per network the
  resource needs (``Snapshot.data_networks``), in that NIC order.
* Config: NIC discovery (``GET /v1/system/interfaces``, MAC -> geN) must list exactly the
  instance's port MACs, else a replug (hot-plug) is needed; the payload is built per
  instance (own management address, own NIC map, HA peers/priority) and its hash is
  compared with the appliance's committed hash (drift detection) when the appliance
  advertises it (capabilities.py: an old image's appliance is trusted to hold what was last
  pushed to it).
* Images and drivers (``boot_hints``): a placement (store/placements.py) names the driver;
  boots use the image a rebuild or upgrade asked for (``image``), else the placement's,
  else the image the resource's instances on that driver already run, else the driver's
  default; so a replaced HA member or a rebuilt appliance stays on its image until an
  upgrade or a placement moves it.
* Fencing: with a ``claim`` (the resource's owner and epoch), every store write checks it
  in its transaction, every driver action that creates or destroys checks it first, and
  every push carries its epoch; ``store.Fenced`` means another orchestrator owns the
  resource now and ends the step.
"""
import collections
import dataclasses
import ipaddress
import logging
import math
import time

from astara_router.logs import log_fields, new_request_id
from astara_router.store import payload_hash

from . import builder
from .capabilities import CONFIG_HASH, STATUS, ApplianceApi
from .client import ApplianceClient, ApplianceError, ApplianceFenced, ApplianceRejected
from .drivers.base import ERROR as COMPUTE_ERROR
from .drivers.base import DriverError, Nic
from .events import ROUTER
from .health import server_group_name
from .store import Fenced
from .metrics import DISCARD

LOG = logging.getLogger(__name__)

CONFIGURED = "configured"
REPLUG = "replug"
REJECTED = "rejected"
FAILED = "failed"
GONE = "gone"
DOWN = "down"


class BootError(Exception):
    """An instance could not be created."""


class NeedsReplug(Exception):
    """The instance's NICs do not match the networks the resource needs."""


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one look at the resource's instances found."""
    exists: bool  # the resource is in the store
    required: int = 1  # instances wanted (2 for an HA router)
    instances: int = 0  # instances the driver has
    addressed: int = 0  # instances with a management address
    alive: int = 0  # instances answering the liveness probe
    in_sync: int = 0  # alive instances whose committed hash is the desired one
    needs_replug: bool = False
    dead_for: tuple = ()  # per silent instance: seconds since last alive (inf = broken)
    unhealthy: tuple = ()  # "<instance>: <reason>" of alive instances reporting degraded
    booting: int = 0  # silent instances never seen alive, younger than the boot timeout


@dataclasses.dataclass(frozen=True)
class ConfigureResult:
    outcome: str  # CONFIGURED, REPLUG, REJECTED, FAILED, GONE, DOWN
    message: str = ""


def instance_prefix(ref):
    return f"{server_group_name(ref.kind, ref.id)}_"


def interface_map(reported, ports):
    """``{network id: geN}``: the appliance's ``{mac: geN}`` joined with our ports' MACs."""
    return {p["network_id"]: reported[p["mac_address"]] for p in ports
            if p["mac_address"] in reported}


@dataclasses.dataclass
class _Runtime:
    """What we remember about one instance between observations."""
    instance: object
    client: object
    last_alive: float
    alive: bool = False
    seen_alive: bool = False
    reported: dict = None  # {mac: geN} from the last NIC discovery
    applied_hash: str = None
    api: ApplianceApi = None  # from the banner, once it answered


class InstanceManager:
    def __init__(self, ref, store, driver, payload_settings, client_factory,
                 management_network_id, clock=time.monotonic, sleep=time.sleep,
                 hotplug_timeout=10.0, boot_timeout=300.0, wall_clock=time.time,
                 placement=None, certificates=None, claim=None, metrics=DISCARD):
        self.ref = ref
        self.certificates = certificates  # pki.CertificateAuthority, or None: plain HTTP
        self.claim = claim
        self.metrics = metrics  # pushes, boots, hot-plug timeouts (metrics.py)
        self.store = store
        self.driver = driver
        self.payload_settings = payload_settings
        self.client_factory = client_factory
        self.management_network_id = management_network_id
        self.hotplug_timeout = hotplug_timeout
        self.boot_timeout = boot_timeout
        self._wall_clock = wall_clock
        self.placement = placement  # ref -> store.placements.Placement (image, driver)
        self._clock = clock
        self._sleep = sleep
        self._runtimes = {}  # instance id -> _Runtime
        self.prefix = instance_prefix(ref)
        self.image = None  # asked for by a rebuild/upgrade: the image the next boots use
        self._replace = None  # instance name a member rebuild replaces (HA: one at a time)

    # -- reading ---------------------------------------------------------------------------------
    def _resource(self, snapshot):
        return snapshot.get(self.ref.kind, self.ref.id)

    def required(self, snapshot):
        obj = self._resource(snapshot)
        return 2 if self.ref.kind == ROUTER and obj and obj.get("ha") else 1

    def exists(self):
        return self._resource(self.store.snapshot()) is not None

    def _refresh(self):
        """Re-list our instances from the driver (adopting any we did not know)."""
        now = self._clock()
        current = {i.id: i for i in self.driver.list(self.prefix)}
        for instance_id in list(self._runtimes):
            if instance_id not in current:
                del self._runtimes[instance_id]
        for instance_id, instance in current.items():
            runtime = self._runtimes.get(instance_id)
            if runtime is None:
                self._runtimes[instance_id] = _Runtime(
                    instance, self.client_factory(instance) if instance.management_address
                    else None, last_alive=now)
            else:
                runtime.instance = instance
                if runtime.client is None and instance.management_address:
                    runtime.client = self.client_factory(instance)
        return sorted(self._runtimes.values(), key=lambda r: r.instance.name)

    def observe(self, check_sync=True):
        snapshot = self.store.snapshot()
        runtimes = self._refresh()
        if self._resource(snapshot) is None:
            return Observation(exists=False, instances=len(runtimes))
        now = self._clock()
        alive = addressed = in_sync = booting = 0
        dead_for = []
        for runtime in runtimes:
            instance = runtime.instance
            broken = instance.status == COMPUTE_ERROR
            if instance.management_address:
                addressed += 1
            runtime.alive = bool(not broken and runtime.client and runtime.client.is_alive())
            if runtime.alive:
                runtime.last_alive = now
                runtime.seen_alive = True
                alive += 1
                if runtime.api is None:
                    runtime.api = self._appliance_api(runtime)
            else:
                dead_for.append(math.inf if broken else now - runtime.last_alive)
                age = self._wall_clock() - instance.created_at
                booting += not broken and not runtime.seen_alive and age < self.boot_timeout
        needs_replug = False
        unhealthy = []
        if check_sync:
            for runtime in runtimes:
                if not runtime.alive:
                    continue
                problem = self._appliance_problem(runtime)
                if problem is not None:  # not in sync: the next configure re-pushes it
                    unhealthy.append(f"{runtime.instance.name}: {problem}")
                    runtime.applied_hash = None
                    continue
                try:
                    desired = payload_hash(self._payload(snapshot, runtime, runtimes))
                    if runtime.api is None or not runtime.api.has(CONFIG_HASH):
                        in_sync += runtime.applied_hash == desired
                        continue
                    _, committed = runtime.client.committed(if_none_match=desired)
                except (NeedsReplug, builder.BuildError) as exc:
                    LOG.info("%s: %s needs a replug: %s", self.ref, runtime.instance.name, exc)
                    needs_replug = True
                    continue
                except ApplianceError as exc:
                    LOG.info("%s: cannot read %s's config: %s", self.ref,
                             runtime.instance.name, exc)
                    continue
                runtime.applied_hash = committed
                in_sync += committed == desired
                self._renew_certificate(runtime)
        return Observation(exists=True, required=self.required(snapshot),
                           instances=len(runtimes), addressed=addressed, alive=alive,
                           in_sync=in_sync, needs_replug=needs_replug,
                           dead_for=tuple(dead_for), unhealthy=tuple(unhealthy),
                           booting=booting)

    def close_clients(self):
        """Close the appliance clients' pooled connections (the end of an automaton run);
        their next calls connect again."""
        for runtime in list(self._runtimes.values()):
            if runtime.client is not None:
                runtime.client.close()

    def _appliance_api(self, runtime):
        """What the appliance advertises; None (ask again later) when the banner does not
        answer; the original API when it answers 4xx (no banner of ours)."""
        try:
            return ApplianceApi.from_banner(runtime.client.banner())
        except ApplianceRejected:
            return ApplianceApi()
        except ApplianceError as exc:
            LOG.info("%s: no banner from %s yet: %s", self.ref, runtime.instance.name, exc)
            return None

    def _renew_certificate(self, runtime):
        """Re-issue the instance's API certificate when it nears expiry (pki.py). A push
        that fails is tried again at the next observation; one whose certificate has
        already expired cannot reach the appliance, which then is rebuilt as dead."""
        name = runtime.instance.name
        if self.certificates is None or not self.certificates.due(name):
            return
        bundle = self.certificates.issue(name, record=False)
        try:
            runtime.client.renew_certificate(bundle)
        except ApplianceError as exc:
            LOG.warning("%s: renewing %s's certificate failed: %s", self.ref, name,
                        exc.message)
            return
        self.certificates.record(bundle)
        LOG.info("%s: %s has a new certificate (until %s)", self.ref, name,
                 time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(bundle.not_after)))

    def _appliance_problem(self, runtime):
        """Why the appliance says it is degraded (a daemon down, a failed repair), or None.
        Only asked of appliances that advertise their status (the original never says)."""
        if runtime.api is None or not runtime.api.has(STATUS):
            return None
        status = runtime.client.status()
        if status.get("state") != "degraded":
            return None
        return str(status.get("last_error") or "; ".join(map(str, status.get("reasons") or ()))
                   or "degraded")

    def inputs_digest(self):
        """Hash of the resource's desired inputs (None when it is gone): a change means
        the desired payload changed, whatever instance it is rendered for."""
        snapshot = self.store.snapshot()
        if self._resource(snapshot) is None:
            return None
        try:
            return payload_hash(builder.build(snapshot, self.ref, self.payload_settings,
                                              builder.placeholder_view(snapshot, self.ref)))
        except (builder.BuildError, KeyError) as exc:
            return f"unbuildable: {exc}"

    def desired_payloads(self):
        """``{instance name: payload}`` for every instance we can render (for show)."""
        snapshot = self.store.snapshot()
        runtimes = sorted(self._runtimes.values(), key=lambda r: r.instance.name)
        result = {}
        for runtime in runtimes:
            try:
                result[runtime.instance.name] = self._payload(snapshot, runtime, runtimes,
                                                              discover=False)
            except (NeedsReplug, builder.BuildError, ApplianceError):
                continue
        return result

    def status(self):
        return [{"name": r.instance.name, "id": r.instance.id, "status": r.instance.status,
                 "management_address": r.instance.management_address, "alive": r.alive,
                 "committed_hash": r.applied_hash, "created_at": r.instance.created_at,
                 "nics": [dataclasses.asdict(n) for n in r.instance.nics],
                 "image": r.instance.details.get("image", ""),
                 "api": r.api.as_dict() if r.api else None,
                 "details": dict(r.instance.details)}
                for r in sorted(self._runtimes.values(), key=lambda r: r.instance.name)]

    # -- payload ---------------------------------------------------------------------------------
    def _ports_of(self, snapshot, name):
        return [p for p in snapshot.appliance_ports(self.ref.id) if p["instance_name"] == name]

    def _payload(self, snapshot, runtime, runtimes, discover=True):
        instance = runtime.instance
        ports = self._ports_of(snapshot, instance.name)
        wanted = {self.management_network_id, *snapshot.data_networks(self.ref)}
        have = {p["network_id"] for p in ports}
        if have != wanted:
            raise NeedsReplug(f"ports on {sorted(have)}, networks needed {sorted(wanted)}")
        if runtime.reported is None and discover:
            runtime.reported = runtime.client.get_interfaces()
        if runtime.reported is None:
            raise NeedsReplug("NICs not discovered yet")
        macs = {p["mac_address"] for p in ports}
        if set(runtime.reported) != macs:
            reported, runtime.reported = set(runtime.reported), None
            raise NeedsReplug(f"appliance reports NICs {sorted(reported)}, its ports are "
                              f"{sorted(macs)}")
        ha_config = None
        if self.required(snapshot) > 1:
            peers = [(r.instance.name, r.instance.management_address, r.instance.created_at)
                     for r in runtimes if r.instance.management_address]
            ha_config = builder.ha_configs(peers).get(instance.name)
        view = builder.InstanceView(instance.management_address,
                                    interface_map(runtime.reported, ports), ha_config)
        return builder.build(snapshot, self.ref, self.payload_settings, view)

    # -- acting ----------------------------------------------------------------------------------
    def configure(self, force=False):
        """Push the desired payload to every alive instance that is not already at it."""
        snapshot = self.store.snapshot()
        if self._resource(snapshot) is None:
            return ConfigureResult(GONE)
        runtimes = sorted(self._runtimes.values(), key=lambda r: r.instance.name)
        alive = [r for r in runtimes if r.alive]
        if not alive:
            return ConfigureResult(DOWN, "no instance answers")
        failures = []
        for runtime in alive:
            try:
                payload = self._payload(snapshot, runtime, runtimes)
            except (NeedsReplug, builder.BuildError) as exc:
                return ConfigureResult(REPLUG, str(exc))
            except ApplianceError as exc:
                failures.append(f"{runtime.instance.name}: {exc.message}")
                continue
            digest = payload_hash(payload)
            if runtime.applied_hash == digest and not force:
                continue
            # One request id per push, sent as X-Request-Id: the agent logs it too.
            with log_fields(request_id=new_request_id(), resource=self.ref.id,
                            instance=runtime.instance.name):
                try:
                    self._push(runtime, payload)
                except ApplianceRejected as exc:
                    self.metrics.pushed("rejected")
                    LOG.warning("%s: %s refused the push: %s", self.ref,
                                runtime.instance.name, exc.message)
                    return ConfigureResult(REJECTED, f"{runtime.instance.name}: {exc.message}")
                except ApplianceError as exc:
                    self.metrics.pushed("failed")
                    LOG.warning("%s: push to %s failed: %s", self.ref, runtime.instance.name,
                                exc.message)
                    failures.append(f"{runtime.instance.name}: {exc.message}")
                    continue
                self.metrics.pushed("applied")
                runtime.applied_hash = digest
                LOG.info("%s: configured %s (%s)", self.ref, runtime.instance.name,
                         digest[:12])
        if failures:
            return ConfigureResult(FAILED, "; ".join(failures))
        return ConfigureResult(CONFIGURED)

    def _push(self, runtime, payload):
        claim = self.claim
        if claim is None:
            return runtime.client.put_config(payload)
        claim.check_lease()
        try:
            return runtime.client.put_config(payload, epoch=claim.epoch)
        except ApplianceFenced as exc:
            # The appliance accepted a higher epoch. If the store still says we own the
            # resource, that epoch came from an earlier store: move above it (through the
            # store, so a stale owner cannot) and push again. Otherwise we are fenced.
            LOG.warning("%s: %s refused epoch %d (it accepted %d from %s)", self.ref,
                        runtime.instance.name, claim.epoch, exc.accepted_epoch,
                        exc.accepted_from or "?")
            self.store.raise_epoch(claim, exc.accepted_epoch)
            try:
                return runtime.client.put_config(payload, epoch=claim.epoch)
            except ApplianceFenced as again:
                raise Fenced(f"{self.ref}: {runtime.instance.name} refused epoch "
                             f"{claim.epoch}: {again.message}") from None

    def _check_claim(self):
        """Before creating or destroying anything: are we still the owner?"""
        if self.claim is not None:
            self.store.check_claim(self.claim)

    def boot(self, only_missing=False):
        """Create the instances the resource needs. Unless ``only_missing`` (HA degraded:
        keep the alive member), existing instances are destroyed first, so a stale
        same-name instance can never block a boot."""
        snapshot = self.store.snapshot()
        if self._resource(snapshot) is None:
            raise BootError("the resource no longer exists")
        keep = set()
        runtimes = self._refresh()
        hints = self.boot_hints(snapshot, runtimes)
        for runtime in runtimes:
            if only_missing and runtime.alive:
                keep.add(runtime.instance.name)
            else:
                self._destroy(runtime.instance)
        names = [f"{self.prefix}{n}" for n in range(self.required(snapshot))]
        for name in names:
            if name in keep:
                continue
            ports = self._create_ports(name)
            mgt = next(p for p in ports if p["role"] == "mgt")
            mgmt_subnet = self.store.snapshot().get("subnet", mgt["fixed_ips"][0]["subnet_id"])
            cidr = f"{mgt['fixed_ips'][0]['ip_address']}/" \
                   f"{ipaddress.ip_network(mgmt_subnet['cidr']).prefixlen}"
            networks = {n["id"]: n for n in self.store.snapshot().all("network")}
            nics = [Nic(p["mac_address"], p["network_id"], p["role"],
                        networks[p["network_id"]]["mtu"]) for p in ports]
            self._check_claim()
            if self.certificates is not None:
                hints["tls"] = self.certificates.issue(name)
            try:
                instance = self.driver.create(name, nics, cidr, **hints)
            except DriverError as exc:
                self.metrics.booted("failed")
                self.store.delete_appliance_ports(ports, claim=self.claim)
                raise BootError(f"{name}: {exc}") from exc
            self.metrics.booted("created")
            LOG.info("%s: created %s (%s, management %s, image %s)", self.ref, name,
                     instance.id, instance.management_address, hints.get("image") or "default")
        self._refresh()

    def boot_hints(self, snapshot, runtimes):
        """Extra create() arguments, each only when set (so a plain driver is called
        plainly): the driver a placement names; the image a rebuild or upgrade asked for,
        else the placement's, else the one most of the resource's instances on that driver
        run (none: the driver's default); a server group for HA pairs."""
        hints = {}
        if self.required(snapshot) > 1:
            hints["server_group"] = server_group_name(self.ref.kind, self.ref.id)
        placement = self.placement(self.ref) if self.placement else None
        if placement is not None and placement.driver:
            hints["driver"] = placement.driver
        image = self.image
        if image is None and placement is not None and placement.image:
            image = placement.image
        if image is None:
            driver = hints.get("driver") or self.driver.name
            running = collections.Counter(
                r.instance.details.get("image") or None for r in runtimes
                if self.driver.driver_name_of(r.instance.id) == driver)
            image = running.most_common(1)[0][0] if running else None
        if image is not None:
            hints["image"] = image
        return hints

    def request_rebuild(self, image=None, member=None):
        """Ask the next rebuild to boot ``image`` (None: keep the current one) and, with
        ``member`` (an instance name), to replace only that instance."""
        if image is not None:
            self.image = image
        self._replace = member

    def take_member_to_replace(self):
        member, self._replace = self._replace, None
        return member

    def _create_ports(self, name):
        snapshot = self.store.snapshot()
        self.store.delete_appliance_ports(self._ports_of(snapshot, name), claim=self.claim)
        mgmt_subnets = snapshot.subnets_of(self.management_network_id)
        if not mgmt_subnets:
            raise BootError(f"management network {self.management_network_id} has no subnet")
        specs = [("mgt", self.management_network_id, [{"subnet_id": mgmt_subnets[0]["id"]}])]
        specs += [("data", nid, []) for nid in snapshot.data_networks(self.ref)]
        ports = []
        try:
            for role, network_id, fixed_ips in specs:
                ports.append(self.store.create_appliance_port({
                    "resource_kind": self.ref.kind, "resource_id": self.ref.id,
                    "instance_name": name, "role": role, "network_id": network_id,
                    "fixed_ips": fixed_ips}, claim=self.claim))
        except Fenced:
            raise
        except Exception as exc:
            self.store.delete_appliance_ports(ports, claim=self.claim)
            raise BootError(f"cannot create ports for {name}: {exc}") from exc
        return ports

    def _destroy(self, instance):
        self._check_claim()
        LOG.info("%s: destroying %s (%s)", self.ref, instance.name, instance.id)
        self.driver.delete(instance.id)
        if self.certificates is not None:
            self.certificates.forget(instance.name)
        self.store.delete_appliance_ports(self._ports_of(self.store.snapshot(), instance.name),
                                          claim=self.claim)
        self._runtimes.pop(instance.id, None)

    def replug(self):
        """Hot-plug/unplug data NICs until each instance has one per needed network; wait
        (bounded) until the appliance reports exactly its port MACs. False = restart."""
        snapshot = self.store.snapshot()
        wanted = snapshot.data_networks(self.ref)
        networks = {n["id"]: n for n in snapshot.all("network")}
        for runtime in self._refresh():
            instance = runtime.instance
            ports = self._ports_of(snapshot, instance.name)
            if not any(p["role"] == "mgt" for p in ports):
                LOG.warning("%s: %s has no MGT port", self.ref, instance.name)
                return False
            self._check_claim()
            try:
                for port in ports:
                    if port["role"] == "data" and port["network_id"] not in wanted:
                        self.driver.detach(instance.id, port["mac_address"])
                        self.store.delete_appliance_ports([port], claim=self.claim)
                have = {p["network_id"] for p in ports if p["role"] == "data"}
                for network_id in wanted:
                    if network_id in have:
                        continue
                    port = self.store.create_appliance_port({
                        "resource_kind": self.ref.kind, "resource_id": self.ref.id,
                        "instance_name": instance.name, "role": "data",
                        "network_id": network_id, "fixed_ips": []}, claim=self.claim)
                    self.driver.attach(instance.id, Nic(port["mac_address"], network_id,
                                                        "data", networks[network_id]["mtu"]))
            except Fenced:
                raise
            except (DriverError, Exception) as exc:  # noqa: BLE001 - any failure: restart
                LOG.warning("%s: replug of %s failed: %s", self.ref, instance.name, exc)
                return False
            runtime.reported = None
            if runtime.client is None or not self._wait_for_nics(runtime):
                return False
        return True

    def _wait_for_nics(self, runtime):
        macs = {p["mac_address"] for p in
                self._ports_of(self.store.snapshot(), runtime.instance.name)}
        deadline = self._clock() + self.hotplug_timeout
        while True:
            try:
                reported = runtime.client.get_interfaces()
                if set(reported) == macs:
                    runtime.reported = reported
                    return True
            except ApplianceError as exc:
                LOG.debug("%s: waiting for NICs: %s", self.ref, exc)
            if self._clock() >= deadline:
                self.metrics.timed_out("hotplug")
                LOG.warning("%s: %s did not report NICs %s within %.0fs", self.ref,
                            runtime.instance.name, sorted(macs), self.hotplug_timeout)
                return False
            self._sleep(0.5)

    def stop(self, timeout, only=None):
        """Destroy every instance of the resource (``only``: just the instance of that
        name, an HA member replaced on its own); True once none is left (bounded)."""
        deadline = self._clock() + timeout

        def left():
            return [i for i in self.driver.list(self.prefix) if only in (None, i.name)]

        while True:
            for instance in left():
                try:
                    self._destroy(instance)
                except DriverError as exc:
                    LOG.warning("%s: cannot delete %s: %s", self.ref, instance.name, exc)
            if not left():
                if only is None:
                    self.store.delete_appliance_ports(
                        self.store.snapshot().appliance_ports(self.ref.id), claim=self.claim)
                    self._runtimes.clear()
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(min(1.0, max(0.0, deadline - self._clock())))


def default_client_factory(appliance_settings, certificates=None, identity=""):
    """Clients over plain HTTP, or (``certificates``: the CA) mutual TLS verifying each
    instance's name; every request names this orchestrator (``identity``)."""
    def factory(instance):
        if certificates is None:
            return ApplianceClient.from_settings(instance.management_address,
                                                 appliance_settings, identity=identity)
        return ApplianceClient.from_settings(instance.management_address, appliance_settings,
                                             certificates.client_tls(), instance.name,
                                             identity=identity)
    return factory
