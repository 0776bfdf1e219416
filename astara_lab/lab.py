"""``astara-lab up|status|down``: a small cloud on one machine, entirely in namespaces.

``up`` builds a fabric namespace with one bridge per network, the "internet" (web server,
BGP peer), tenant VMs, the controller node with the metadata upstream, and starts the
orchestrator there (``--driver netns``: every appliance is a namespace running the agent;
``--driver qemu``: the router demo-router is a VM of ``out/astara.qcow2``, built first when
missing or stale, with the controller as its NTP server, the other appliances stay
namespaces); declares the cloud through the orchestrator's admin API (networks, subnets,
VM ports, a router with its gateway and interfaces, a floating IP, a load balancer in front
of two VMs' web servers); waits while the orchestrator boots and configures the router and
load-balancer appliances; lets the VMs take DHCP leases; then runs a self-check and prints
what works and how to explore. ``status`` re-runs the self-check and lists the
orchestrator's resources; ``down`` removes everything (also after a half-failed ``up``).

The state file (``/run/astara-lab/lab.json``, ``$ASTARA_LAB_STATE`` overrides) records
the lab's prefix, namespaces, scratch root and the orchestrator's PID, so ``status`` and
``down`` find everything. The functions below are the in-process API the end-to-end tests
and the benchmark use: ``up()``, ``self_check()``, ``status()``, ``down()``,
``restart_orchestrator()``.

``up --orchestrators N`` (N > 1) runs N orchestrators (``orch-1``...) in the controller
namespace against a real PostgreSQL store and a real redis-server started there by the
lab (``astara_lab/cluster.py``); ``status`` shows which orchestrator owns each resource and
``down`` stops the servers too.
"""
import argparse
import atexit
import concurrent.futures
import contextlib
import dataclasses
import io
import ipaddress
import json
import os
import pathlib
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

from . import cloud as clouds
from . import failover
from . import image as images
from .appliance import API_PORT, tls_client_context, tls_get
from .cloud import ORCHESTRATOR_ADDRESS, PUBLIC_V4, PUBLIC_V6, WEB_PORT
from .cluster import Cluster, from_owner
from .leftovers import find_leftovers, remove_leftovers
from astara_netns import Lab, Netns, NetnsHTTPClient, list_netns, run
from .orchestrator import (AdminApi, AdminApiError, OrchestratorProcess, errors_as,
                           log_tail)
from .peers import PeerBird, eventually, learned_prefixes, udhcpc
from .scrape import samples
from orchestrator_lite.rollout import in_sync

DEFAULT_STATE = "/run/astara-lab/lab.json"
CLOUDS = {"default": clouds.DEFAULT_CLOUD}
CONFIGURE_TIMEOUT = 180  # boot + configure of the router; the orchestrator retries inside
VM_CONFIGURE_TIMEOUT = 1200  # a VM under TCG emulation on a busy 2-CPU machine


class LabError(Exception):
    pass


class AlreadyUp(LabError):
    pass


def state_path(path=None):
    return pathlib.Path(path or os.environ.get("ASTARA_LAB_STATE") or DEFAULT_STATE)


def load_state(path=None):
    try:
        return json.loads(state_path(path).read_text())
    except (OSError, ValueError):
        return None


def save_state(state, path=None):
    path = state_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.chmod(0o600)  # holds the admin API token
    tmp.replace(path)


def lab_exists(state):
    prefix = state.get("prefix", "")
    return any(name.startswith(prefix + "-") for name in list_netns())


# -- progress ---------------------------------------------------------------------------------

class Progress:
    """Elapsed time and the current step; ``detail()`` shows what a wait is waiting for
    (rewritten in place on a terminal, printed when it changes otherwise). ``marks``
    keeps (seconds, step) for benchmarks."""

    def __init__(self, out=None, live=None):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.started = time.monotonic()
        self.marks = []
        self._step = ""
        self._detail = None
        self._open = False

    def elapsed(self):
        return time.monotonic() - self.started

    def _line(self, text):
        return f"  [{self.elapsed():5.1f}s] {text}"

    def step(self, text):
        self.finish()
        self.marks.append((self.elapsed(), text))
        self._step, self._detail = text, None
        if self.live:
            self.out.write(self._line(text)[:shutil.get_terminal_size().columns - 1])
            self._open = True
        else:
            self.out.write(self._line(text) + "\n")
        self.out.flush()

    def detail(self, text):
        if self.live:  # one line, never wrapped, or "\r" could not rewrite it
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[K" + self._line(f"{self._step}: {text}")[:width])
            self._open = True
        elif text != self._detail:
            self.out.write(f"           {text}\n")
        self._detail = text
        self.out.flush()

    def finish(self):
        if self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False


class QuietProgress(Progress):
    def __init__(self):
        super().__init__(out=io.StringIO(), live=False)


# -- the orchestrator process -------------------------------------------------------------------

def orchestrator(state):
    """The lab's orchestrator, by the PID and config in the state (``up`` may have been
    another process)."""
    return OrchestratorProcess.from_state(state)


def start_orchestrator(state):
    """Start the lab's orchestrator in ``ctl``, wait for its admin API, record its PID."""
    process = orchestrator(state)
    try:
        with errors_as(LabError):
            process.start()
    finally:
        state["orchestrator"]["pid"] = process.pid
    return process.pid


def restart_orchestrator(state, path=None):
    """Stop and start the orchestrator (it adopts the running appliances)."""
    orchestrator(state).stop()
    start_orchestrator(state)
    save_state(state, path)
    return state["orchestrator"]["pid"]


def admin_api(state):
    api = AdminApi(state["namespaces"]["ctl"], state["orchestrator"]["token"])
    members = (state.get("cluster") or {}).get("members")
    return ClusterAdminApi(api, state, members) if members else api


class ClusterAdminApi:
    """The admin API of a lab cluster: any member answers; a resource's details
    (instances, hashes) come from its owner."""

    def __init__(self, api, state, members):
        self._api = api
        self._apis = {m["identity"]: AdminApi(state["namespaces"]["ctl"],
                                              state["orchestrator"]["token"], m["port"])
                      for m in members}

    def call(self, method, path, body=None):
        return self._api.call(method, path, body)

    def resources(self):
        return self._api.resources()

    def resource(self, resource_id):
        return from_owner(self._api.resource(resource_id), self._apis)

    def members(self):
        return list(self._apis.values())


# -- up -----------------------------------------------------------------------------------------

def up(path=None, health=None, progress=None, cloud_name="default", orchestrators=1,
       driver="netns"):
    """Build the lab; returns its state (also saved to the state file). On failure the
    half-built lab is left for inspection: ``down()`` removes it. ``orchestrators`` > 1:
    a cluster on PostgreSQL and redis-server. ``driver``: how the orchestrator boots the
    router (cloud.DRIVERS; a cluster lab runs the netns driver)."""
    if driver not in clouds.DRIVERS:
        raise LabError(f"unknown driver {driver!r} ({', '.join(clouds.DRIVERS)})")
    if orchestrators > 1 and driver != "netns":
        raise LabError("a cluster lab (--orchestrators N) runs the netns driver only")
    path = state_path(path)
    existing = load_state(path)
    if existing and lab_exists(existing):
        raise AlreadyUp(f"a lab is already up ({existing['prefix']}, state in {path}); "
                        "`astara-lab status` checks it, `astara-lab down` removes it")
    progress = progress or Progress()
    cloud = CLOUDS[cloud_name]
    lab = Lab()
    state = {"prefix": lab.prefix, "created": time.time(), "phase": "building",
             "cloud": cloud_name, "driver": driver, "namespaces": {"vms": {}},
             "tmp_root": None, "orchestrator": {}, "peer_bird": {}, "timings": {}}
    save_state(state, path)  # from now on `down` finds whatever gets made
    try:
        if driver == "qemu":
            ensure_image(state, progress)
        _build(lab, state, cloud, health, progress, path, orchestrators)
    finally:
        atexit.unregister(lab.close)  # the lab outlives this process; `down` removes it
        progress.finish()
    return state


def ensure_image(state, progress):
    """The appliance image, built first when out/ has none built from the current inputs
    (3–8 minutes: the build's last line is shown meanwhile)."""
    files = images.outputs()
    progress.step(f"image: {files['qcow2']} ({images.status()})")
    try:
        built, seconds = images.ensure(
            progress=lambda line: progress.detail(line.split(" | ", 1)[-1][:100]))
    except images.ImageError as exc:
        raise LabError(str(exc)) from None
    if built:
        state["timings"]["image_build"] = seconds
    progress.detail(f"{'built in %.0fs' % seconds if built else 'current, reused'}, "
                    f"{files['qcow2'].stat().st_size / 2**20:.0f} MiB")


def _build(lab, state, cloud, health, progress, path, orchestrators=1):
    names = state["namespaces"]
    progress.step("fabric: bridges for the management, external and tenant networks")
    fabric = clouds.build_fabric(lab, cloud)
    logs = lab.tmpdir("logs")
    state["tmp_root"] = str(logs.parent)
    names["fabric"] = fabric.name
    ctl = clouds.build_controller(lab)
    names["ctl"] = ctl.name
    save_state(state, path)

    progress.step("internet: upstream gateway, web server, BGP peer (BIRD 2)")
    inet = clouds.build_internet(lab, cloud)
    names["inet"] = inet.name
    clouds.web_server(lab, inet, PUBLIC_V4, "internet", logs / "inet-web.log")
    clouds.web_server(lab, inet, PUBLIC_V6, "internet", logs / "inet-web6.log")
    peer = PeerBird(lab, inet, cloud.gateway_address(6), kernel_export=True,
                    directory=lab.tmpdir("peer-bird"))
    state["peer_bird"] = {"socket": str(peer.socket), "log": str(peer.directory / "bird.log")}
    save_state(state, path)

    progress.step(f"tenant VMs: {', '.join(vm.role for vm in cloud.vms)} "
                  "(no address yet, web server on port 80)")
    for vm in cloud.vms:
        ns = clouds.build_vm(lab, cloud, vm)
        names["vms"][vm.role] = ns.name
        clouds.web_server(lab, ns, "0.0.0.0", vm.role, logs / f"{vm.role}-web.log")
    save_state(state, path)

    progress.step(f"metadata upstream on [{ORCHESTRATOR_ADDRESS}]:{clouds.METADATA_PORT} "
                  "(controller namespace)")
    clouds.metadata_upstream(lab, ctl, logs / "metadata-upstream.log")
    driver = state["driver"]
    ssh_key = None
    if driver != "netns":
        progress.step(f"NTP server on [{ORCHESTRATOR_ADDRESS}]:123 and an ssh key for the "
                      "appliances")
        clouds.ntp_server(lab, ctl, logs / "ntp.log")
        ssh_key = lab.tmpdir("keys") / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{lab.prefix}-operator",
             "-f", ssh_key])
        state["ssh_key"] = str(ssh_key)

    token = secrets.token_hex(16)
    if orchestrators > 1:
        start_cluster(lab, state, cloud, fabric, ctl, token, health, orchestrators, progress,
                      path)
    else:
        progress.step(f"orchestrator: astara-orchestrator --netns {ctl.name}")
        directory = lab.tmpdir("orchestrator")
        config = directory / "orchestrator.ini"
        config.touch(mode=0o600)  # holds the admin API token
        config.write_text(clouds.orchestrator_config(
            lab.prefix, fabric.name, directory, cloud, token, health, driver=driver,
            image=str(images.outputs()["qcow2"]), ssh_key=ssh_key))
        state["orchestrator"] = {"config": str(config), "token": token,
                                 "dir": str(directory),
                                 "log": str(directory / "orchestrator.log"), "pid": None}
        save_state(state, path)
        try:
            start_orchestrator(state)
        finally:
            save_state(state, path)
    api = admin_api(state)

    calls = clouds.placement_calls(cloud, driver) + clouds.desired_state(cloud)
    progress.step(f"desired state: {len(calls)} admin API calls "
                  "(placements, networks, subnets, ports, routers, floating IP, IPsec "
                  "site connections, load balancer)")
    for call in calls:
        progress.detail(call.what)
        try:
            api.call(call.method, call.path, call.body)
        except AdminApiError as exc:
            raise LabError(f"{call.what}: the orchestrator refused it: {exc}") from None

    vms = clouds.vm_resources(cloud, driver)
    # The appliances boot in parallel and each wait ends once its resource is configured:
    # namespaces first, VMs (minutes) last, so each boot-to-configured time is its own.
    for resource in sorted((*cloud.routers, *cloud.loadbalancers), key=lambda r: r.id in vms):
        vm = resource.id in vms
        what = "a VM of the image" if vm else "an appliance namespace"
        progress.step(f"orchestrator boots {resource.id} as {what} and configures it")
        shown = wait_configured(api, resource.id, progress, state["orchestrator"]["log"],
                                VM_CONFIGURE_TIMEOUT if vm else CONFIGURE_TIMEOUT)
        created = min(i["created_at"] for i in shown["instances"])
        state["timings"][f"{resource.id}_boot_to_configured"] = time.time() - created

    progress.step("VMs: DHCP leases (udhcpc), router solicitations")

    def boot_vm(vm):  # what a cloud image does on boot: DHCP, and an RS for SLAAC
        ns = Netns(names["vms"][vm.role], vm.role)
        lease = udhcpc(lab, ns, configure=True)
        if cloud.slaac_addresses(vm):
            ns.run(["rdisc6", "-1", "-w", "1000", "eth0"], check=False)
        return f"{vm.role}: {lease['ip'] if lease else 'no lease'}"

    with concurrent.futures.ThreadPoolExecutor(len(cloud.vms)) as pool:
        progress.detail(", ".join(pool.map(boot_vm, cloud.vms)))
    state["phase"] = "up"
    save_state(state, path)


def start_cluster(lab, state, cloud, fabric, ctl, token, health, count, progress, path):
    """``count`` orchestrators on PostgreSQL + redis-server, all in ``ctl``."""
    directory = lab.tmpdir("cluster")
    sections = clouds.orchestrator_sections(lab.prefix, fabric.name, directory, cloud,
                                            token, health)
    cluster = Cluster(lab.prefix, fabric.name, ctl, directory, count=count, token=token,
                      sections={k: v for k, v in sections.items()
                                if k in ("management", "health", "netns")},
                      timeout=10, heartbeat=1.0)
    progress.step(f"cluster store and coordination: PostgreSQL on 127.0.0.1:"
                  f"{cluster.postgres.port}, redis-server on 127.0.0.1:"
                  f"{cluster.coordination.port} (in {ctl.name})")
    state["cluster"] = {"postgres": {"directory": str(cluster.postgres.directory)},
                        "redis": {"directory": str(cluster.coordination.directory)},
                        "members": []}
    save_state(state, path)
    try:
        cluster.start_servers()
    finally:
        state["cluster"]["postgres"] = cluster.postgres.state()
        state["cluster"]["redis"] = cluster.coordination.state()
        save_state(state, path)
    cluster.write_configs()
    progress.detail(cluster.upgrade_store())
    first = cluster.member(1)
    state["orchestrator"] = {"config": str(first.config), "token": token,
                             "dir": str(directory), "log": str(first.log), "pid": None}
    progress.step(f"orchestrators: {', '.join(cluster.members)} "
                  f"(astara-orchestrator --netns {ctl.name})")
    try:
        for identity, member in cluster.members.items():
            progress.detail(identity)
            with errors_as(LabError):
                member.start(timeout=60)
            state["cluster"]["members"].append({
                "identity": identity, "config": str(member.config), "log": str(member.log),
                "pid": member.pid, "port": Cluster.admin_port(Cluster.index(identity))})
    finally:
        state["orchestrator"]["pid"] = first.pid
        save_state(state, path)


def stop_cluster(state):
    """Stop a lab cluster's members (by PID), then its PostgreSQL and redis-server."""
    from .services import stop_recorded
    cluster = state.get("cluster") or {}
    for member in cluster.get("members", []):
        OrchestratorProcess(state["namespaces"].get("ctl"), member["config"], member["log"],
                            pid=member["pid"]).stop()
    for name in ("redis", "postgres"):
        if cluster.get(name):
            stop_recorded(cluster[name])


def wait_configured(api, resource_id, progress, log, timeout=CONFIGURE_TIMEOUT):
    """Wait until the resource is configured and in sync, showing its state meanwhile."""
    deadline = time.monotonic() + timeout
    resource = None
    while time.monotonic() < deadline:
        try:
            resource = api.resource(resource_id)
        except (OSError, AdminApiError) as exc:
            progress.detail(f"admin API: {exc}")
        else:
            if in_sync(resource):
                progress.detail("configured")
                return resource
            text = f"{resource['state']}, {len(resource['instances'])} instance(s)"
            for instance in resource["instances"]:
                if not instance.get("alive"):
                    text += f", {instance['id']} up {time.time() - instance['created_at']:.0f}s"
            if resource.get("last_error"):
                text += f", last error: {resource['last_error'][:80]}"
            progress.detail(text)
        time.sleep(0.5)
    raise LabError(f"{resource_id} not configured within {timeout}s "
                   f"(last seen: {resource and resource.get('state')}, error: "
                   f"{resource and resource.get('last_error')}). Orchestrator log:\n"
                   f"{log_tail(log, 3000)}")


# -- self-check ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    key: str
    name: str
    ok: bool
    detail: str


class View:
    """What the checks need, rebuilt from the state file (no Lab object: ``status`` runs
    in another process than ``up``)."""

    def __init__(self, state):
        self.state = state
        self.cloud = CLOUDS[state["cloud"]]
        names = state["namespaces"]
        self.ctl = Netns(names["ctl"], "ctl")
        self.inet = Netns(names["inet"], "inet")
        self.fabric = Netns(names["fabric"], "fab")
        self.vms = {role: Netns(name, role) for role, name in names["vms"].items()}
        self.api = admin_api(state)
        self._scratch = None

    def tmpdir(self, name):
        """Scratch dirs for DHCP client scripts, removed by ``close()``."""
        if self._scratch is None:
            self._scratch = pathlib.Path(tempfile.mkdtemp(prefix="check-",
                                                          dir=self.state["tmp_root"]))
        path = self._scratch / name
        path.mkdir()
        return path

    def close(self):
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def ns_of(self, vm):
        return self.vms[vm.role]


def get_json(ns_name, host, path="/", port=WEB_PORT, timeout=3):
    response = NetnsHTTPClient(ns_name, host, port, timeout=timeout).get(path)
    if response.status != 200:
        raise OSError(f"HTTP {response.status} from {host}")
    return response.json()


def check_router(view):
    ok, details = True, []
    for router in view.cloud.routers:
        resource = view.api.resource(router.id)
        ok = ok and in_sync(resource)
        where = ", ".join(describe_instance(i) for i in resource["instances"])
        owner = f" by {resource['owner']} (epoch {resource['epoch']})" \
            if resource.get("owner") and view.state.get("cluster") else ""
        details.append(f"{router.id}: {resource['state']}{owner}" +
                       (f" in {where}" if where else "")
                       + (f"; {resource['last_error']}" if resource.get("last_error") else ""))
    return ok, "; ".join(details)


def describe_instance(instance):
    details = instance["details"]
    if "netns" in details:
        return f"{details['netns']} (agent pid {details.get('agent_pid')})"
    return (f"VM {instance['id']} (QEMU pid {details.get('pid')}, {details.get('accel')}, "
            f"image {details.get('image') or 'default'})")


def _eth0_addresses(ns, family):
    return [a for link in ns.ip_json(family, "addr", "show", "dev", "eth0")
            for a in link.get("addr_info", ()) if a.get("scope") == "global"]


def check_dhcp(view):
    good, problems = [], []
    for vm in view.cloud.vms:
        ns = view.ns_of(vm)
        gateway = next(s.gateway_ip for s in view.cloud.network(vm.network_id).subnets
                       if s.version == 4)
        lease = udhcpc(view, ns, tries=3)
        configured = any(a["local"] == vm.ipv4 for a in _eth0_addresses(ns, "-4"))
        if lease and lease.get("ip") == vm.ipv4 and lease.get("router") == gateway \
                and configured:
            good.append(f"{vm.role} {vm.ipv4}")
        else:
            got = f"offered {lease.get('ip')} via {lease.get('router')}" if lease else \
                "no offer"
            problems.append(f"{vm.role}: {got}" + ("" if configured else ", not on eth0"))
    detail = f"{len(good)}/{len(view.cloud.vms)} VMs: " + ", ".join(good + problems)
    return not problems, detail


def check_snat(view):
    vm = next(v for v in view.cloud.vms if not view.cloud.floating_ip_of(v))
    seen = get_json(view.ns_of(vm).name, PUBLIC_V4)["client"]
    expected = view.cloud.gateway_address(4)
    return seen == expected, f"{vm.role} → {PUBLIC_V4}: the internet saw {seen} " \
                             f"(router: {expected})"


def check_fip(view):
    ok, details = True, []
    upstream = view.cloud.upstream_address(4)
    for fip in view.cloud.floating_ips:
        answer = get_json(view.inet.name, fip.address)
        fine = answer["server"] == fip.vm and answer["client"] == upstream
        ok = ok and fine
        details.append(f"internet → {fip.address} reached {answer['server']}, "
                       f"which saw {answer['client']}")
    return ok, "; ".join(details)


def check_metadata(view):
    good, problems = [], []
    for vm in view.cloud.vms:
        try:
            answer = get_json(view.ns_of(vm).name, "169.254.169.254", "/latest/meta-data/")
        except (OSError, ValueError) as exc:
            problems.append(f"{vm.role}: {exc}")
            continue
        if answer.get("instance") == vm.device_id:
            good.append(vm.role)
        else:
            problems.append(f"{vm.role}: X-Instance-ID {answer.get('instance')}")
    detail = f"{len(good)}/{len(view.cloud.vms)} VMs identified by X-Instance-ID"
    return not problems, detail + (": " + "; ".join(problems) if problems else "")


def check_ra(view):
    good, problems = [], []
    for vm in view.cloud.vms:
        for expected in view.cloud.slaac_addresses(vm):
            ns = view.ns_of(vm)
            found = [a for a in _eth0_addresses(ns, "-6") if a["local"] == expected]
            if found and not found[0].get("tentative"):
                good.append(f"{vm.role} {expected}")
            else:
                ns.run(["rdisc6", "-1", "-w", "1000", "eth0"], check=False)  # ask again
                problems.append(f"{vm.role}: no {expected}")
    return bool(good) and not problems, ", ".join(good + problems)


def check_bgp(view):
    wanted = set(view.cloud.tenant_v6_prefixes())
    learned = learned_prefixes(view.state["peer_bird"]["socket"], PeerBird.PROTOCOL)
    return learned == wanted, (f"learned {', '.join(sorted(learned)) or 'nothing'} from "
                               f"{view.cloud.gateway_address(6)}"
                               + ("" if learned == wanted else
                                  f" (expected {', '.join(sorted(wanted))})"))


def check_ipv6(view):
    vm = next(v for v in view.cloud.vms if view.cloud.slaac_addresses(v))
    own = view.cloud.slaac_addresses(vm)[0]
    seen = get_json(view.ns_of(vm).name, PUBLIC_V6)["client"]
    return ipaddress.ip_address(seen) == ipaddress.ip_address(own), \
        f"{vm.role} → {PUBLIC_V6}: the internet saw {seen}"


def check_vpn(view):
    """A VM behind one end of the VPN reaches a VM behind the other with its own address
    (through the tunnel: the internet has no route to either tenant network) while its
    internet traffic still leaves SNATed as its router's address."""
    cloud = view.cloud
    vpn = cloud.vpn_connections[0]

    def behind(subnet_id, no_fip=False):
        network = cloud.network_of_subnet(subnet_id)
        return next(v for v in cloud.vms if v.network_id == network.id
                    and not (no_fip and cloud.floating_ip_of(v)))

    local, remote = behind(vpn.local_subnet, no_fip=True), behind(vpn.peer_subnet)
    answer = get_json(view.ns_of(local).name, remote.ipv4)
    internet = get_json(view.ns_of(local).name, PUBLIC_V4)["client"]
    router = cloud.router_address(vpn.router_id, 4)
    ok = answer["server"] == remote.role and answer["client"] == local.ipv4 \
        and internet == router
    return ok, (f"{local.role} → {remote.role} {remote.ipv4} ({vpn.router_id} ⇄ "
                f"{vpn.peer_router_id}): seen as {answer['client']}; {local.role} → "
                f"internet: seen as {internet} (router: {router})")


LB_REQUESTS = 40


def check_loadbalancing(view):
    """The load-balancer appliance is in sync, and requests to its VIP from a VM on another
    network (through the router) are all answered by members, spread by weight (nginx's
    smooth weighted round robin, shared by its workers, deals exactly; ±2 allows for a
    retried request)."""
    ok, details = True, []
    for lb in view.cloud.loadbalancers:
        ok = ok and in_sync(view.api.resource(lb.id))
        client = next(v for v in view.cloud.vms if v.role not in {m.vm for m in lb.members})
        seen = {}
        for _ in range(LB_REQUESTS):
            server = get_json(view.ns_of(client).name, lb.vip, port=lb.port)["server"]
            seen[server] = seen.get(server, 0) + 1
        total = sum(m.weight for m in lb.members)
        wanted = {m.vm: LB_REQUESTS * m.weight / total for m in lb.members}
        ok = ok and set(seen) <= set(wanted) and all(
            abs(seen.get(vm, 0) - count) <= 2 for vm, count in wanted.items())
        spread = ", ".join(f"{m.vm} {seen.get(m.vm, 0)} (weight {m.weight})"
                           for m in lb.members)
        strays = ", ".join(f"{vm} {n}" for vm, n in seen.items() if vm not in wanted)
        details.append(f"{client.role} → {lb.vip}:{lb.port} ×{LB_REQUESTS}: {spread}"
                       + (f"; not members: {strays}" if strays else ""))
    return ok, "; ".join(details)


def _until(predicate, timeout, interval=0.1):
    """peers.eventually for a self-check row: True once ``predicate`` holds, False when
    ``timeout`` seconds pass first (the row reports it; nothing raises)."""
    try:
        return bool(eventually(predicate, timeout, "", interval))
    except AssertionError:
        return False


def check_ha_failover(view):
    """Crash the HA router's VRRP master (every process SIGKILLed, links cut) while a TCP
    connection through a floating IP is open; the backup must take over and the same
    connection keep working. Then wait until the orchestrator has rebuilt the crashed
    instance (it replaces a lost HA member), so the check can run again."""
    router = next(r for r in view.cloud.routers if r.ha)
    vm = view.cloud.vms_behind(router)[0]
    fip = view.cloud.floating_ip_of(vm)
    address = view.cloud.router_address(router.id, 4)
    resource = view.api.resource(router.id)
    instances = resource["instances"]
    if not in_sync(resource) or len(instances) != 2:
        return False, (f"{router.id}: waiting for both instances ({resource['state']}, "
                       f"{len(instances)} instance(s))")
    pair = [Netns(i["details"]["netns"]) for i in instances]
    master = failover.holder(pair, address)
    if master is None:
        return False, f"{router.id}: not exactly one instance holds {address}"
    backup = next(ns for ns in pair if ns is not master)
    lost = next(i["details"]["agent_pid"] for i in instances
                if i["details"]["netns"] == master.name)
    flow = failover.KeepAlive(view.inet.name, fip)
    try:
        if flow.get()["server"] != vm.role:
            return False, f"{fip} did not reach {vm.role}"
        started = time.monotonic()
        failover.crash(master, view.fabric)
        moved = _until(lambda: {ipaddress.ip_address(address), ipaddress.ip_address(fip)}
                       <= failover.addresses(backup), 30)
        took = time.monotonic() - started
        if not moved:
            return False, f"{master.name} crashed; {backup.name} did not take over in 30 s"
        answer = flow.get()
    finally:
        flow.close()
    if answer["server"] != vm.role:
        return False, f"after the failover {fip} reached {answer['server']}"
    rebuilt = _until(lambda: in_sync(r := view.api.resource(router.id)) and
                     len(r["instances"]) == 2 and lost not in
                     {i["details"]["agent_pid"] for i in r["instances"]}, 180, interval=0.5)
    return rebuilt, (f"master {master.name} crashed (killed, links cut); {backup.name} took "
                     f"over in {took:.1f} s; a connection to {fip} ({vm.role}) opened before "
                     "kept working" + ("; the orchestrator rebuilt the lost instance"
                                       if rebuilt else "; no rebuild within 180 s"))


def pki_directory(state):
    """The lab's orchestrator's CA and client certificate, where its ini puts them (a
    cluster's members share one ``[tls] directory``)."""
    return pathlib.Path(orchestrator(state).settings.pki_directory)


def orchestrator_tls(state, client_certificate=True):
    """A TLS client context as the lab's orchestrator has it: its CA, and (unless
    ``client_certificate`` is False) its client certificate."""
    pki = pki_directory(state)
    if not client_certificate:
        return tls_client_context(pki / "ca.crt")
    return tls_client_context(pki / "ca.crt", pki / "client.crt", pki / "client.key")


def agent_client(state, instance, timeout=10, context=None):
    """An appliance's API as the orchestrator calls it (HTTPS verifying the instance's
    name, with the orchestrator's client certificate: ``context``, else made from the
    orchestrator's ini), from the controller namespace."""
    return NetnsHTTPClient(state["namespaces"]["ctl"], instance["management_address"],
                           API_PORT, timeout, context=context or orchestrator_tls(state),
                           server_name=instance["name"])


def check_tls(view):
    """Every appliance's API, from the controller: refused at the TLS layer without the
    orchestrator's client certificate, 200 with it (and the certificate names the
    instance: ``server_hostname`` is its name, not its address)."""
    with_cert = orchestrator_tls(view.state)
    without = orchestrator_tls(view.state, client_certificate=False)
    count = 0
    for resource in (*view.cloud.routers, *view.cloud.loadbalancers):
        for instance in view.api.resource(resource.id)["instances"]:
            name, address = instance["name"], instance["management_address"]
            try:
                status = tls_get(view.ctl.name, address, with_cert, name)[0]
            except OSError as exc:
                return False, f"{name}: with the orchestrator's certificate: {exc}"
            if not status.endswith(" 200 OK"):
                return False, f"{name}: {status!r} with the orchestrator's certificate"
            try:
                status = tls_get(view.ctl.name, address, without, name)[0]
            except ssl.SSLError as exc:
                refusal = exc.reason or str(exc)
            else:
                return False, f"{name} answered a client without certificate: {status!r}"
            count += 1
    return count > 0, (f"{count} appliance APIs: 200 with the orchestrator's client "
                       f"certificate, refused without it ({refusal})" if count else
                       "no appliance instances")


def check_metrics(view):
    """``GET /metrics``: every appliance's agent, called as the orchestrator calls it,
    reports its committed generation and packets received on its NICs; the orchestrator
    (each member of a cluster) reports every router and load balancer by state. Its health
    polls and applied pushes are shown, not required: both count from the process's start,
    and a restarted orchestrator adopts its appliances without pushing."""
    context = orchestrator_tls(view.state)
    details = []
    for resource in (*view.cloud.routers, *view.cloud.loadbalancers):
        for instance in view.api.resource(resource.id)["instances"]:
            response = agent_client(view.state, instance, context=context).get("/metrics")
            if response.status != 200:
                return False, f"{instance['name']}: GET /metrics answered {response.status}"
            agent = samples(response.text)
            generation = agent.get(("astara_generation", ()), 0)
            received = sum(value for (name, _), value in agent.items()
                           if name == "astara_interface_rx_packets_total")
            details.append(f"{instance['name']}: generation {generation:.0f}, "
                           f"{received:.0f} packets received")
            if generation < 1 or received < 1:
                return False, "; ".join(details)
    # A cluster's members each count the resources of the shared store, and their own
    # polls and pushes (those of the resources they own).
    members = [samples(member.metrics()) for member in view.api.members()]
    states = {dict(labels)["state"]: count for (name, labels), count in members[0].items()
              if name == "astara_orchestrator_resources"}
    polls = [member.get(("astara_orchestrator_health_polls_total", ()), 0)
             for member in members]
    applied = sum(member.get(("astara_orchestrator_pushes_total", (("result", "applied"),)),
                             0) for member in members)
    expected = len(view.cloud.routers) + len(view.cloud.loadbalancers)
    by_state = ", ".join(f"{count:.0f} {state}" for state, count in sorted(states.items()))
    details.append(f"orchestrator{'s' if len(members) > 1 else ''}: {by_state}, "
                   f"{sum(polls):.0f} health polls, {applied:.0f} pushes applied")
    return sum(states.values()) == expected, "; ".join(details)


CHECKS = (
    ("router", "router appliance configured by the orchestrator", check_router),
    ("tls", "mutual TLS: orchestrator → appliance APIs", check_tls),
    ("metrics", "metrics: GET /metrics on the appliances and the orchestrator", check_metrics),
    ("dhcp", "DHCP: VMs get their ports' addresses", check_dhcp),
    ("snat", "SNAT: VM → internet, as the router's address", check_snat),
    ("fip", "floating IP: internet → VM", check_fip),
    ("metadata", "metadata: VM → 169.254.169.254 → orchestrator", check_metadata),
    ("ra", "IPv6 RA: SLAAC address in the tenant prefix", check_ra),
    ("bgp", "BGP: the internet learned the tenant IPv6 prefix", check_bgp),
    ("ipv6", "IPv6: VM → internet, routed (no NAT)", check_ipv6),
    ("vpn", "VPN: VM → VM behind another router (IPsec), internet still SNATed", check_vpn),
    ("lb", "load balancing: VIP → members by weight", check_loadbalancing),
    ("ha", "HA failover: master crashes, a connection survives", check_ha_failover),
)


def check_clock(view):
    """Over ssh as astara (the driver's own shell command): timesyncd synchronised with
    the controller's NTP server, which the user data named."""
    good, problems = [], []
    for resource_id in clouds.vm_resources(view.cloud, view.state.get("driver", "netns")):
        for instance in view.api.resource(resource_id)["instances"]:
            result = view.ctl.run([*instance["shell"], "-o", "BatchMode=yes", "-o",
                                   "ConnectTimeout=10", "timedatectl", "show-timesync",
                                   "-p", "ServerAddress", "--value", "&&", "timedatectl",
                                   "show", "-p", "NTPSynchronized", "--value"], check=False)
            server, _, synced = result.stdout.strip().partition("\n")
            if result.returncode == 0 and synced == "yes" and \
                    ipaddress.ip_address(server) == ipaddress.ip_address(ORCHESTRATOR_ADDRESS):
                good.append(f"{instance['id']} ← {server}")
            else:
                problems.append(f"{instance['id']}: {result.stdout.strip()!r} "
                                f"{result.stderr.strip()[-100:]}")
    return bool(good) and not problems, ", ".join(good + problems)


# Rows of labs whose appliances are VMs (their own clock, reached over ssh).
VM_CHECKS = (
    ("clock", "clock: the router VM synchronised with the controller's NTP", check_clock),
)


def checks_for(state):
    return CHECKS + (VM_CHECKS if state.get("driver", "netns") != "netns" else ())


def self_check(state, patience=0.0, progress=None, only=None):
    """Run the checks (``only``: keys); a failing one is retried for ``patience`` seconds
    (things still converging: BGP, SLAAC). Returns [Row]."""
    view = View(state)
    rows = []
    try:
        for key, name, check in checks_for(state):
            if only and key not in only:
                continue
            if progress:
                progress.detail(name)
            deadline = time.monotonic() + patience
            while True:
                try:
                    ok, detail = check(view)
                except (OSError, ValueError, KeyError, AdminApiError,
                        subprocess.SubprocessError) as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if ok or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            rows.append(Row(key, name, ok, detail))
    finally:
        view.close()
    return rows


def format_table(rows):
    width = max(len(r.name) for r in rows)
    lines = [f"  {'PASS' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}" for r in rows]
    lines.append(f"\n  {sum(r.ok for r in rows)}/{len(rows)} checks pass")
    return "\n".join(lines)


def format_timings(timings):
    names = {"image_build": "image build"}
    lines = []
    for key, seconds in timings.items():
        name = names.get(key) or key.replace("_boot_to_configured", ": boot to configured")
        lines.append(f"  {name:<40} {seconds:6.1f} s")
    return "\n".join(lines)


def hints(state):
    names = state["namespaces"]
    cloud = CLOUDS[state["cloud"]]
    ctl_bin = pathlib.Path(sys.executable).parent / "astara-ctl"
    ctl = str(ctl_bin) if ctl_bin.exists() else "astara-ctl"
    config = state["orchestrator"]["config"]
    router = cloud.routers[0].id
    vm = state.get("driver", "netns") != "netns"
    directory = pathlib.Path(state["orchestrator"]["dir"])
    pki = pki_directory(state)
    vm0, spare = cloud.vms[0], cloud.vms[2]
    fip = cloud.floating_ip_of(vm0)
    lines = [
        "Explore (as root). The admin API listens in the controller namespace, so astara-ctl",
        "runs there, with the lab's config:",
        f"  alias astara-ctl='ip netns exec {names['ctl']} {ctl} --config {config}'",
        "  astara-ctl browse                      # live table of resources and states (q quits)",
        f"  astara-ctl resource show {router}   # state, last error, instances, hashes",
        f"  astara-ctl ssh {router}             # " + (
            "ssh astara@<management address>, the lab's key" if vm else
            "a shell inside the router appliance"),
        "  astara-ctl resource show ha-router   # the HA pair: two instances, the VRRP "
        "master holds 172.24.4.9",
        f"  astara-ctl floatingip create router_id={router} floating_ip_address=172.24.4.102 "
        f"fixed_ip_address={spare.ipv4}",
        "Namespaces:",
        f"  ip netns exec {names['vms'][vm0.role]} bash   # tenant VM {vm0.role} "
        f"({vm0.ipv4}, floating IP {fip})",
        f"  ip netns exec {names['inet']} ping -c1 {fip}   # the internet",
        *(f"  ip netns exec {names['vms'][spare.role]} curl -s http://{lb.vip}/   # load "
          f"balancer {lb.id}" for lb in cloud.loadbalancers),
        f"  ip netns list | grep {state['prefix']}   # everything the lab made",
        "An appliance's API speaks mutual TLS; call it with the orchestrator's certificate",
        f"(<name>, <address>: astara-ctl resource show {router}):",
        f"  ip netns exec {names['ctl']} curl --cacert {pki}/ca.crt --cert {pki}/client.crt "
        f"--key {pki}/client.key --resolve '<name>:5000:[<address>]' https://<name>:5000/v1/",
        f"  birdc -s {state['peer_bird']['socket']} show route   # what the internet learned "
        "by BGP",
        "Logs:",
        f"  {state['orchestrator']['log']}",
        *([f"  {directory / 'qemu'}/<VM id>/console.log   # {router}'s serial console"]
          if vm else []),
        f"  {directory / 'appliances'}/<appliance namespace>/agent.log",
        "astara-lab status   # re-run the checks        astara-lab down   # remove everything",
    ]
    return "\n".join(lines)


# -- status / down ------------------------------------------------------------------------------

def status(path=None, patience=5.0):
    """(rows, resources) of the lab in the state file; raises LabError when none is up."""
    state = load_state(path)
    if not state or not lab_exists(state):
        raise LabError("no lab is up")
    if state.get("phase") != "up":
        raise LabError(f"the lab {state['prefix']} is half-built (`astara-lab down` "
                       "removes it)")
    rows = self_check(state, patience=patience)
    try:
        resources = admin_api(state).resources()
    except (OSError, AdminApiError) as exc:
        resources = exc
    return rows, resources


def down(path=None, quiet=False):
    """Remove the lab in the state file: the orchestrator (by PID), then every namespace,
    process and file of its prefix. Idempotent."""
    path = state_path(path)
    state = load_state(path)
    if not state:
        if not quiet:
            print(f"no lab is up (no {path}); `astara-leftovers` lists what crashed labs "
                  "left behind")
        return False
    if state.get("cluster"):
        stop_cluster(state)
    else:
        orchestrator(state).stop()
    found = find_leftovers(state["prefix"])
    if quiet:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            remove_leftovers(found)
    else:
        remove_leftovers(found)
    path.unlink(missing_ok=True)
    if not quiet:
        print(f"lab {state['prefix']} removed")
    return True


# -- CLI ----------------------------------------------------------------------------------------

def cmd_up(args):
    existing = load_state()
    if existing and lab_exists(existing):
        print(f"a lab is already up ({existing['prefix']}): `astara-lab status` checks it, "
              "`astara-lab down` removes it", file=sys.stderr)
        return 1
    progress = Progress()
    print("astara-lab: building a small cloud out of network namespaces" + (
        ", the router a VM of the appliance image" if args.driver == "qemu" else ""))
    try:
        state = up(progress=progress, orchestrators=args.orchestrators, driver=args.driver)
    except AlreadyUp as exc:
        print(exc, file=sys.stderr)
        return 1
    except (LabError, OSError, subprocess.SubprocessError, KeyboardInterrupt) as exc:
        progress.finish()
        print(f"\nastara-lab up failed: {exc or type(exc).__name__}", file=sys.stderr)
        state = load_state()
        if state:
            print(f"The half-built lab {state['prefix']} is left for inspection; "
                  "`astara-lab down` removes it.", file=sys.stderr)
        return 1
    progress.step("self-check")
    rows = self_check(state, patience=60, progress=progress)
    progress.finish()
    print(f"\nLab {state['prefix']} ({state['driver']} driver) is up after "
          f"{progress.elapsed():.0f}s:\n")
    print(format_table(rows) + "\n")
    print(format_timings(state["timings"]) + "\n")
    print(hints(state))
    return 0 if all(r.ok for r in rows) else 1


def cmd_status(args):
    from orchestrator_lite.cli.ctl import resource_table
    try:
        rows, resources = status()
    except LabError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(format_table(rows) + "\n")
    if isinstance(resources, Exception):
        print(f"orchestrator: {resources}")
    else:
        print(resource_table(resources))
    return 0 if all(r.ok for r in rows) else 1


def cmd_down(args):
    down()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="astara-lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument("--orchestrators", type=int, default=1, metavar="N",
                        help="up: N orchestrators sharing a PostgreSQL store, coordinated "
                             "through redis-server (default 1: one, on SQLite)")
    parser.add_argument("--driver", choices=clouds.DRIVERS, default="netns",
                        help="up: how the router appliance runs (netns: a namespace with "
                             "the agent; qemu: a VM of out/astara.qcow2)")
    args = parser.parse_args(argv)
    if args.orchestrators < 1:
        parser.error("--orchestrators must be at least 1")
    if os.geteuid() != 0:
        print("astara-lab needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    return {"up": cmd_up, "status": cmd_status, "down": cmd_down}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
