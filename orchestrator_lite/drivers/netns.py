"""Network-namespace compute driver (the embedded default; used by the lab and the tests).

An appliance "instance" is a network namespace ``<lab prefix>-<role>`` (role = kind letter
+ 4 hex digits of the resource id + instance index, e.g. ``ast1a2b3c-rfbf50``), so it
matches the lab's name pattern and ``astara-leftovers`` finds it. Inside: one NIC per
port (``eth0`` = MGT, then the data ports), each with the port's MAC, plugged into the
fabric's bridges (management bridge for MGT, one bridge per network, names from the
config), and the real agent, started the way a VM boots it::

  python -m astara_router.cli.management <mgt mac> <addr>/<len> --mtu M --state-dir D
      --sshd-config none
  python -m astara_router.cli.api --state-dir D --enabled-services router,loadbalancer
      [--config-file <instance dir>/tls/agent.ini]

With a TLS bundle (mutual TLS, pki.py) its files are written under the instance's
directory first (``tls/``, 0700, the key 0600) and the agent reads them from that ini.

The root namespace is never touched: veths are created from inside the fabric namespace
with their peer moved straight into the appliance namespace (as astara_netns's Lab.plug
does), bridges live only in the fabric. Each instance's record (``instance.json``: name,
NICs, agent PID) lives in ``<state_root>/<namespace>/`` together with the agent's state
dir and log, so ``list(prefix)`` works across orchestrator restarts (adoption). Deleting
an instance kills the processes inside its namespace (by PID, found with ``ip netns pids``),
then deletes the namespace, its /etc/netns dir and its state dir.
"""
import hashlib
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

from astara_netns import (NETNS_ETC_DIR, NETNS_RUN_DIR, CommandError, Lab, Netns,
                              kill_netns_processes, run)

from .base import ACTIVE, BUILD, ERROR, ComputeDriver, DriverError, Instance, Nic
from .fabric import Fabric
from .records import InstanceRecords, runs

LOG = logging.getLogger(__name__)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME_RE = re.compile(r"^ak-(?P<kind>[a-z]+)-(?P<id>.+)_(?P<n>\d+)$")
KIND_LETTER = {"router": "r", "loadbalancer": "l"}


def netns_mounts_hidden(mountinfo="/proc/self/mountinfo"):
    """True when /run/netns is a slave mount here (we run under ``ip netns exec``): a
    namespace we create would then be mounted only in our private mount namespace."""
    try:
        with open(mountinfo) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 6 and fields[4] == str(NETNS_RUN_DIR):
                    optional = fields[6:fields.index("-")]
                    return any(f.startswith("master:") for f in optional)
    except OSError:
        pass
    return False


def role_candidates(instance_name):
    """Namespace roles for an instance, most readable first: ``r`` + 4 hex of the router
    id + index; then hashed variants in case two ids share their first 4 hex digits."""
    match = NAME_RE.match(instance_name)
    letter = KIND_LETTER.get(match["kind"], "i") if match else "i"
    index = match["n"][-1] if match else "0"
    hexid = re.sub(r"[^0-9a-f]", "", match["id"].lower()) if match else ""
    if len(hexid) >= 4 and match["id"].lower().startswith(hexid[:4]):
        yield f"{letter}{hexid[:4]}{index}"
    for salt in range(16):
        digest = hashlib.sha256(f"{instance_name}/{salt}".encode()).hexdigest()
        yield f"{letter}{digest[:4]}{index}"


class NetnsDriver(ComputeDriver):
    name = "netns"

    def __init__(self, prefix, state_root, fabric=None, management_bridge="b-mgmt",
                 bridges=None, auto_bridges=True, python=None,
                 enabled_services="router,loadbalancer", management_mtu=1450):
        if not Lab.PREFIX_RE.fullmatch(prefix or ""):
            raise DriverError(f"[netns] prefix {prefix!r} must match "
                              f"{Lab.PREFIX_RE.pattern} (a lab prefix)")
        if netns_mounts_hidden():
            raise DriverError(
                "this process runs in a private mount namespace (started with `ip netns "
                "exec`?): namespaces it creates would be invisible to the host. Start "
                "astara-orchestrator with --netns NAME instead.")
        self.prefix = prefix
        self.fabric = Fabric(fabric or f"{prefix}-fab", management_bridge, bridges,
                             auto_bridges)
        self.state_root = pathlib.Path(state_root)
        self.python = python or sys.executable
        self.enabled_services = enabled_services
        self.management_mtu = management_mtu
        self._lock = threading.RLock()
        self._children = {}  # namespace -> Popen of agents we started (to reap them)
        self.records = InstanceRecords(self.state_root)  # namespace -> record

    @classmethod
    def from_settings(cls, settings):
        n = settings.netns
        return cls(prefix=n.prefix, state_root=n.state_root or
                   os.path.join(settings.state_dir, "appliances"), fabric=n.fabric_name,
                   management_bridge=n.management_bridge, bridges=n.bridges,
                   auto_bridges=n.auto_bridges, python=n.python,
                   enabled_services=n.enabled_services, management_mtu=n.management_mtu)

    # -- records ---------------------------------------------------------------------------------
    def _allocate(self, name):
        taken = {r["id"] for r in self.records.all()}
        if NETNS_RUN_DIR.is_dir():  # also names the lab itself uses (fab, ctl, ...)
            taken |= {p.name for p in NETNS_RUN_DIR.glob(f"{self.prefix}-*")}
        for role in role_candidates(name):
            ns_name = f"{self.prefix}-{role}"
            if ns_name not in taken:
                return ns_name
        raise DriverError(f"no free namespace name for {name}")

    # -- status ----------------------------------------------------------------------------------
    def _agent_alive(self, record):
        child = self._children.get(record["id"])
        if child is not None and child.poll() is not None:
            return False  # exited (and now reaped)
        return runs(record.get("agent_pid"), b"astara_router.cli.api")

    def _instance(self, record):
        exists = (NETNS_RUN_DIR / record["id"]).exists()
        status = ACTIVE if exists and self._agent_alive(record) else ERROR
        if record.get("booting") and exists:
            status = BUILD
        nics = tuple(Nic(n["mac"], n["network_id"], n["role"], n.get("mtu"))
                     for n in record["nics"])
        return Instance(id=record["id"], name=record["name"], status=status,
                        management_address=record["management_cidr"].split("/")[0],
                        created_at=record["created_at"], nics=nics,
                        details={"netns": record["id"], "agent_pid": record.get("agent_pid"),
                                 "image": record.get("image", self.python),
                                 "image_id": record.get("image", self.python),
                                 "state_dir": record["state_dir"], "log": record["log"]})

    def get(self, instance_id):
        record = self.records.load(instance_id)
        return self._instance(record) if record else None

    def list(self, prefix):
        return [self._instance(r) for r in self.records.all() if r["name"].startswith(prefix)]

    def shell_command(self, instance_id):
        return ["ip", "netns", "exec", instance_id, "bash"]

    def image_id(self, image=None):
        """The interpreter ``image`` names (None or "": the driver's own)."""
        python = image or self.python
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise DriverError(f"image {python!r} is not an executable Python interpreter")
        return python

    # -- plumbing --------------------------------------------------------------------------------
    def _plug(self, ns, record, nic):
        """One NIC: a veth pair made inside the fabric, peer moved into ``ns``."""
        index = max([n["index"] for n in record["nics"]], default=-1) + 1
        ifname = f"eth{index}"
        role = ns.name[len(self.prefix) + 1:]
        fab_end = f"{role}-{index}"[:15]
        bridge = self.fabric.bridge_for(nic)
        entry = {"mac": nic.mac, "network_id": nic.network_id, "role": nic.role,
                 "mtu": nic.mtu, "index": index, "ifname": ifname, "bridge": bridge,
                 "fabric_end": fab_end}
        # A namespace of the same name deleted a moment ago may still be torn down by the
        # kernel (asynchronously), its fabric end still there: that end is ours, remove it.
        self.fabric.ns.ip("link", "del", fab_end, check=False)
        self.fabric.ns.ip("link", "add", fab_end, "type", "veth", "peer", "name", ifname,
                          "netns", ns.name)
        record["nics"].append(entry)  # recorded as soon as it exists
        ns.ip("link", "set", ifname, "address", nic.mac)
        mtu = self.management_mtu if nic.role == "mgt" else nic.mtu
        if mtu:
            ns.ip("link", "set", ifname, "mtu", str(mtu))
            self.fabric.ns.ip("link", "set", fab_end, "mtu", str(mtu))
        self.fabric.ns.ip("link", "set", fab_end, "master", bridge, "up")
        return entry

    # -- lifecycle -------------------------------------------------------------------------------
    def create(self, name, nics, management_cidr, image=None, server_group=None, tls=None):
        """``image`` for this driver: the Python interpreter (a virtualenv's) whose
        astara_router runs as the agent, like booting another image's agent."""
        nics = list(nics)
        python = self.image_id(image)
        if not nics or nics[0].role != "mgt":
            raise DriverError("the first NIC must be the management NIC")
        with self._lock:
            if any(r["name"] == name for r in self.records.all()):
                raise DriverError(f"an instance named {name} exists")
            ns_name = self._allocate(name)
            directory = self.records.dir(ns_name)
            try:
                directory.mkdir(parents=True)
            except FileExistsError:  # another orchestrator on this host took the name
                raise DriverError(f"namespace name {ns_name} was just taken; "
                                  "retrying later") from None
            record = {"id": ns_name, "name": name, "created_at": time.time(), "nics": [],
                      "management_cidr": management_cidr, "booting": True,
                      "state_dir": str(directory / "state"),
                      "log": str(directory / "agent.log"), "agent_pid": None,
                      "image": python}
            self.records.save(record)  # a half-built instance is listed, hence deletable
        ns = Netns(ns_name)
        try:
            run(["ip", "netns", "add", ns_name])
            etc = NETNS_ETC_DIR / ns_name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").touch()  # DHCP clients inside cannot touch the host's
            ns.ip("link", "set", "lo", "up")
            for nic in nics:
                self._plug(ns, record, nic)
                self.records.save(record)
            os.makedirs(record["state_dir"], exist_ok=True)
            agent_args = []
            if tls is not None:
                from ..pki import AGENT_INI, write_files
                write_files(tls.boot_files(directory))
                agent_args = ["--config-file", str(directory / AGENT_INI)]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
            boot = subprocess.run(
                ["ip", "netns", "exec", ns_name, python, "-m",
                 "astara_router.cli.management", nics[0].mac, management_cidr, "--mtu",
                 str(self.management_mtu), "--state-dir", record["state_dir"],
                 "--sshd-config", "none"], env=env, capture_output=True, text=True)
            if boot.returncode != 0:
                raise CommandError(boot.returncode, boot.args, boot.stdout, boot.stderr)
            with open(record["log"], "ab") as log:
                child = subprocess.Popen(
                    ["ip", "netns", "exec", ns_name, python, "-m",
                     "astara_router.cli.api", "--state-dir", record["state_dir"],
                     "--enabled-services", self.enabled_services, *agent_args],
                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)  # survives an orchestrator restart
            self._children[ns_name] = child
            record["agent_pid"] = child.pid
            record.pop("booting")
            self.records.save(record)
        except (CommandError, OSError) as exc:
            LOG.warning("creating %s (%s) failed: %s", name, ns_name, exc)
            self.delete(ns_name)
            raise DriverError(f"cannot create {name}: {exc}") from exc
        LOG.info("instance %s: namespace %s, agent pid %s", name, ns_name, child.pid)
        return self._instance(record)

    def delete(self, instance_id):
        if not re.fullmatch(rf"{self.prefix}-[a-z0-9]{{1,6}}", instance_id):
            raise DriverError(f"{instance_id} is not an instance of this driver")
        ns_name = instance_id
        with self._lock:
            if (NETNS_RUN_DIR / ns_name).exists():
                kill_netns_processes([ns_name], grace=2.0)
                result = run(["ip", "netns", "del", ns_name], check=False)
                if result.returncode != 0 and (NETNS_RUN_DIR / ns_name).exists():
                    raise DriverError(f"cannot delete namespace {ns_name}: "
                                      f"{result.stderr.strip()}")
            child = self._children.pop(ns_name, None)
            if child is not None:
                try:
                    child.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    LOG.warning("agent of %s did not exit", ns_name)
            shutil.rmtree(NETNS_ETC_DIR / ns_name, ignore_errors=True)
            shutil.rmtree(self.records.dir(ns_name), ignore_errors=True)
            self.records.forget(ns_name)

    def attach(self, instance_id, nic):
        with self._lock:
            record = self.records.require(instance_id)
            self._plug(Netns(instance_id), record, nic)
            self.records.save(record)
        return self._instance(record)

    def detach(self, instance_id, mac):
        with self._lock:
            record = self.records.require(instance_id)
            entry = self.records.nic(record, mac)
            # Deleting the appliance end removes the pair (and its fabric end).
            Netns(instance_id).ip("link", "del", entry["ifname"], check=False)
            record["nics"].remove(entry)
            self.records.save(record)
        return self._instance(record)

    def close(self):
        """Forget our children without killing them: they must survive for adoption."""
        self._children.clear()
