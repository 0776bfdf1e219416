"""QEMU compute driver: an appliance instance is a virtual machine of the built image.

Each instance boots the image (``out/astara.qcow2`` by default) the way a cloud would, on
this host:

* **Disk**: a qcow2 overlay per instance on a read-only copy of the image. An image is
  copied into ``<state_root>/images/<id>/`` on first use (``base.qcow2``, ``vmlinuz``,
  ``initrd``; ``<id>`` from the source files' identity), so rebuilding ``out/`` never
  changes the disk under a running VM, and the kernel always matches the modules on its
  disk. Unused copies are removed with the last instance that used them.
* **Boot**: direct kernel boot (``-kernel``/``-initrd``: the image has no bootloader, as
  this machine's kernel cannot build a partitioned one). Acceleration: KVM only when a
  probe shows it really runs a guest (a kernel booted to its panic within seconds; where
  ``/dev/kvm`` opens but guests hang, it does not), else TCG; ``[qemu] accel`` forces one.
  The probe's verdict is kept in ``<state_root>/accel.json`` per kernel, host and QEMU.
* **NICs**: one tap per NIC, created inside the fabric namespace (never in the root
  namespace), MTU of its network, enslaved to the network's bridge there; QEMU runs in the
  fabric namespace too, so it opens the taps by name, and the NIC gets the MAC it is given.
  Each NIC has a fixed slot (``nic<N>``/``net<N>``, PCI address or PCIe root port ``N``),
  so the management NIC (slot 0) is always first on the bus.
* **Seed**: a NoCloud ISO (``cidata``) with user data that configures the management
  address on the MGT NIC, the operator's ssh key for ``astara``, the NTP servers and,
  with mutual TLS, the instance's certificate files (userdata.py; the seed is 0600).
* **Hot-plug** through QMP: ``netdev_add`` + ``device_add`` onto a free slot (the ``pc``
  machine hot-plugs on its PCI bus through ACPI; on ``q35`` the driver pre-creates
  ``max_nics`` PCIe root ports), ``device_del`` + waiting for ``DEVICE_DELETED`` +
  ``netdev_del`` to unplug; the tap goes with it.
* **Adoption**: QEMU runs daemonized (``-daemonize -pidfile``) and survives the
  orchestrator. ``list(prefix)`` reads the instance records under ``state_root`` and finds
  each VM by its pid file (the PID must still be a QEMU with that instance's monitor
  socket) and, once per orchestrator process, asks its QMP socket whether it runs.
* **Delete** leaves nothing: QMP ``quit`` (SIGTERM/SIGKILL by PID when the monitor does
  not answer), the taps, then the instance directory (overlay, seed, socket, pid file,
  console log).

Per instance, ``<state_root>/<id>/`` holds ``instance.json`` (name, NICs with slot, tap and
bridge, image, management address), ``disk.qcow2``, ``seed.iso``, ``qmp.sock``,
``qemu.pid``, ``console.log`` (the serial console) and ``known_hosts`` (``astara-ctl ssh``).
"""
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import threading
import time

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from astara_netns import CommandError, run, terminate, wait_exit
from astara_router.store import atomic_write

from . import QEMU_ACCELS, userdata
from .base import ACTIVE, BUILD, ERROR, ComputeDriver, DriverError, Instance, Nic
from .fabric import Fabric
from .records import InstanceRecords, runs
from .netns import role_candidates

LOG = logging.getLogger(__name__)
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_IMAGE = REPO_ROOT / "out" / "astara.qcow2"
ID_RE = re.compile(r"^[a-z][0-9a-f]{4}[0-9]$")
KERNEL_ARGS = "root=LABEL=cloudimg-rootfs ro console=ttyS0"
FIRST_NIC_ADDR = 0x10  # pc machine: NIC slot N at PCI address 0x10 + N
QMP_TIMEOUT = 10.0
PROBE_TIMEOUT = 10.0  # a working KVM panics the diskless guest in 1-2 s


def image_files(qcow2):
    """(qcow2, vmlinuz, initrd) of an image: ``X.qcow2`` with ``X.vmlinuz``/``X.initrd``
    beside it (what scripts/build-image writes)."""
    qcow2 = pathlib.Path(qcow2)
    stem = qcow2.with_suffix("")
    return qcow2, stem.with_suffix(".vmlinuz"), stem.with_suffix(".initrd")


def files_identity(paths):
    """A short digest of the files' identity (device, inode, size, mtime): changes when
    any of them is rebuilt, without reading them."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\n"
                      .encode())
    return digest.hexdigest()[:12]


def is_q35(machine):
    return "q35" in machine


def qemu_command(binary, instance_dir, kernel, initrd, disk, seed, nics, accel, machine,
                 cpus, memory, max_nics, kernel_args="", name="astara"):
    """The QEMU argv for one instance (pure). ``nics``: record entries with ``slot``,
    ``tap``, ``mac``."""
    d = pathlib.Path(instance_dir)
    argv = [binary, "-name", f"{name},process=qemu-{name}",
            "-machine", f"{machine},accel={accel}", "-smp", str(cpus), "-m", str(memory),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-daemonize", "-pidfile", str(d / "qemu.pid"),
            "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{d / 'console.log'}",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", " ".join(filter(None, [KERNEL_ARGS, kernel_args])),
            "-drive", f"file={disk},if=none,id=disk0,format=qcow2,discard=unmap",
            "-device", "virtio-blk-pci,drive=disk0,addr=0x4",
            "-drive", f"file={seed},if=none,id=seed,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=seed,addr=0x5",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0,addr=0x6"]
    if is_q35(machine):
        for slot in range(max_nics):
            argv += ["-device", f"pcie-root-port,id=rp{slot},chassis={slot + 1},"
                                f"addr={FIRST_NIC_ADDR + slot:#x}"]
    for nic in nics:
        argv += ["-netdev", f"tap,id=net{nic['slot']},ifname={nic['tap']},script=no,"
                            "downscript=no",
                 "-device", nic_device(nic, machine)]
    return argv


def nic_device_args(nic, machine):
    """device_add arguments of a NIC in its slot."""
    args = {"driver": "virtio-net-pci", "id": f"nic{nic['slot']}",
            "netdev": f"net{nic['slot']}", "mac": nic["mac"],
            "romfile": ""}  # no PXE option ROM: the kernel is booted directly
    if is_q35(machine):
        args["bus"] = f"rp{nic['slot']}"
    else:
        args["addr"] = f"{FIRST_NIC_ADDR + nic['slot']:#x}"
    return args


def nic_device(nic, machine):
    args = nic_device_args(nic, machine)
    return ",".join([args.pop("driver")] + [f"{k}={v}" for k, v in args.items()])


# -- QMP -------------------------------------------------------------------------------------

class Monitor:
    """One QMP session per call (QEMU serves one monitor client at a time, so none is held
    open), every step bounded by ``timeout``."""

    def __init__(self, socket_path, timeout=QMP_TIMEOUT):
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def execute(self, *commands):
        """Run ``(command, arguments)`` pairs in order; their results."""
        return self._run(self._execute(commands))

    def execute_until(self, command, arguments, event, match, timeout):
        """Run one command, then wait up to ``timeout`` s for ``event`` whose data has
        ``match`` (dict items). True when it came."""
        return self._run(self._until(command, arguments, event, match, timeout))

    def _run(self, coroutine):
        try:
            return asyncio.run(coroutine)
        except (QMPError, OSError, asyncio.TimeoutError, EOFError) as exc:
            raise DriverError(f"QMP {self.socket_path}: {type(exc).__name__}: {exc}") \
                from None

    async def _connected(self):
        client = QMPClient("astara")
        await asyncio.wait_for(client.connect(self.socket_path), self.timeout)
        return client

    async def _execute(self, commands):
        client = await self._connected()
        try:
            return [await asyncio.wait_for(client.execute(cmd, args or None), self.timeout)
                    for cmd, args in commands]
        finally:
            await client.disconnect()

    async def _until(self, command, arguments, event, match, timeout):
        client = await self._connected()
        try:
            with client.listener(event) as listener:
                await asyncio.wait_for(client.execute(command, arguments), self.timeout)

                async def wanted():
                    async for message in listener:
                        data = message.get("data", {})
                        if all(data.get(k) == v for k, v in match.items()):
                            return True
                    return False
                try:
                    return await asyncio.wait_for(wanted(), timeout)
                except asyncio.TimeoutError:
                    return False
        finally:
            await client.disconnect()


# -- acceleration ----------------------------------------------------------------------------

def kvm_runs_a_guest(binary, kernel, timeout=PROBE_TIMEOUT):
    """(ok, detail): boot ``kernel`` under KVM without a disk; a working KVM gets it to the
    "unable to mount root" panic and out (``-no-reboot``, ``panic=-1``) within seconds."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    argv = [binary, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-m", "256", "-serial", "stdio", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 loglevel=4"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"a KVM guest did not reach its kernel panic within {timeout:g}s " \
                      "(guests hang)"
    except OSError as exc:
        return False, str(exc)
    if "Kernel panic" in result.stdout:
        return True, "a KVM guest booted its kernel"
    return False, f"KVM guest exited {result.returncode}: " \
                  f"{(result.stderr or result.stdout).strip()[-200:]}"


class QemuDriver(ComputeDriver):
    name = "qemu"

    def __init__(self, state_root, fabric, management_bridge="b-mgmt", bridges=None,
                 auto_bridges=True, image="", images=None, accel="auto",
                 binary="qemu-system-x86_64", machine="pc", cpus=1, memory=1024, max_nics=8,
                 management_mtu=1450, ssh_public_key="", ssh_identity="", ntp_servers=(),
                 kernel_args="", unplug_timeout=30.0, probe=kvm_runs_a_guest):
        if not fabric:
            raise DriverError("[qemu] fabric: the namespace holding the bridges is required "
                              "(taps are never made in the root namespace)")
        if accel not in QEMU_ACCELS:
            raise DriverError(f"[qemu] accel must be one of {', '.join(QEMU_ACCELS)}")
        if not 2 <= max_nics <= 16:
            raise DriverError("[qemu] max_nics must be between 2 and 16")
        self.state_root = pathlib.Path(state_root)
        self.fabric = Fabric(fabric, management_bridge, bridges, auto_bridges)
        self.default_image = str(image or DEFAULT_IMAGE)
        self.images = dict(images or {})
        self.accel = accel
        self.binary = binary
        self.machine = machine
        self.cpus = cpus
        self.memory = memory
        self.max_nics = max_nics
        self.management_mtu = management_mtu
        self.ssh_public_key = ssh_public_key
        self.ssh_identity = ssh_identity
        self.ntp_servers = tuple(ntp_servers)
        self.kernel_args = kernel_args
        self.unplug_timeout = unplug_timeout
        self._probe = probe
        self._lock = threading.RLock()
        self._verified = set()  # ids whose QMP answered "running" in this process
        self._accel_checked = {}  # kernel path -> accel
        self.records = InstanceRecords(self.state_root)

    @classmethod
    def from_settings(cls, settings):
        q = settings.qemu
        return cls(state_root=q.state_root or os.path.join(settings.state_dir, "qemu"),
                   fabric=q.fabric, management_bridge=q.management_bridge,
                   bridges=q.bridges, auto_bridges=q.auto_bridges, image=q.image,
                   images=q.images, accel=q.accel, binary=q.binary, machine=q.machine,
                   cpus=q.cpus, memory=q.memory, max_nics=q.max_nics,
                   management_mtu=settings.management.mtu,
                   ssh_public_key=q.ssh_public_key, ssh_identity=q.ssh_identity,
                   ntp_servers=settings.appliance.ntp_server_list,
                   kernel_args=q.kernel_args, unplug_timeout=q.unplug_timeout)

    # -- records ---------------------------------------------------------------------------------
    def _allocate(self, name):
        taken = {r["id"] for r in self.records.all()}
        taken |= {p.name for p in self.state_root.iterdir()}
        fabric_links = {link["ifname"] for link in self.fabric.ns.ip_json("link", "show")}
        for candidate in role_candidates(name):
            if candidate in taken or any(link.startswith(candidate) for link in fabric_links):
                continue
            return candidate
        raise DriverError(f"no free instance id for {name}")

    # -- images ----------------------------------------------------------------------------------
    def resolve_image(self, image):
        """(label, qcow2 path) for an image asked for: None/"" = the default, a label of
        ``[qemu] images``, or the path of an ``X.qcow2`` with ``X.vmlinuz``/``X.initrd``."""
        label = image or ""
        path = self.images.get(label) if label else self.default_image
        if path is None:
            if not label.endswith(".qcow2") or not os.path.isabs(label):
                raise DriverError(f"unknown image {label!r}: a label of [qemu] images "
                                  f"({', '.join(sorted(self.images)) or 'none'}) or the "
                                  "absolute path of a .qcow2")
            path = label
        missing = [str(p) for p in image_files(path) if not p.is_file()]
        if missing:
            raise DriverError(f"image {label or 'default'}: missing {', '.join(missing)} "
                              "(make image builds out/astara.qcow2)")
        return label, path

    def image_id(self, image=None):
        """What ``image`` currently resolves to (the rolling upgrade compares it with what
        each instance runs): changes when the image's files are rebuilt."""
        return files_identity(image_files(self.resolve_image(image)[1]))

    def _import_image(self, path, image_id):
        """The image's files copied (read-only) under ``images/<image_id>/``; that dir."""
        sources = image_files(path)
        target = self.state_root / "images" / image_id
        with self._lock:
            if not (target / "done").exists():
                staging = target.with_name(image_id + ".new")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                for source, name in zip(sources, ("base.qcow2", "vmlinuz", "initrd")):
                    run(["cp", "--reflink=auto", source, staging / name])
                    (staging / name).chmod(0o444)
                (staging / "source").write_text(f"{path}\n")
                (staging / "done").touch()
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
                LOG.info("image %s: copied %s into %s", image_id, path, target)
        return target

    def _collect_images(self):
        """Remove image copies no instance uses any more."""
        with self._lock:
            used = {r.get("image_id") for r in self.records.all()}
            images = self.state_root / "images"
            if not images.is_dir():
                return
            for entry in images.iterdir():
                if entry.name.split(".")[0] not in used:
                    shutil.rmtree(entry, ignore_errors=True)

    # -- acceleration ----------------------------------------------------------------------------
    def _accel_for(self, kernel):
        if self.accel != "auto":
            return self.accel
        with self._lock:
            known = self._accel_checked.get(str(kernel))
            if known:
                return known
            key = [os.uname().release, self._qemu_version(), files_identity([kernel])]
            cache = self.state_root / "accel.json"
            try:
                saved = json.loads(cache.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("key") == key:
                accel = saved["accel"]
            else:
                ok, detail = self._probe(self.binary, kernel)
                accel = "kvm" if ok else "tcg"
                LOG.info("acceleration: %s (%s)", accel, detail)
                atomic_write(str(cache), json.dumps({"key": key, "accel": accel,
                                                     "detail": detail}), mode=0o644)
            self._accel_checked[str(kernel)] = accel
            return accel

    def _qemu_version(self):
        result = run([self.binary, "--version"], check=False)
        return result.stdout.splitlines()[0] if result.stdout else ""

    # -- status ----------------------------------------------------------------------------------
    def _qemu_pid(self, record):
        """The PID of this instance's QEMU, or None (pid file gone, process gone, or the
        PID now belongs to something else)."""
        try:
            pid = int((self.records.dir(record["id"]) / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        socket_path = str(self.records.dir(record["id"]) / "qmp.sock").encode()
        return pid if runs(pid, socket_path) else None

    def _status(self, record, pid):
        """``pid``: ``_qemu_pid(record)``."""
        if record.get("booting"):
            return BUILD
        if pid is None:
            return ERROR
        if record["id"] not in self._verified:
            try:
                state = Monitor(self.records.dir(record["id"]) / "qmp.sock").execute(
                    ("query-status", None))[0]
            except DriverError as exc:
                LOG.warning("instance %s: %s", record["id"], exc)
                return ERROR
            if state.get("status") != "running":
                LOG.warning("instance %s: QEMU reports %s", record["id"], state)
                return ERROR
            self._verified.add(record["id"])
        return ACTIVE

    def _instance(self, record):
        nics = tuple(Nic(n["mac"], n["network_id"], n["role"], n.get("mtu"))
                     for n in sorted(record["nics"], key=lambda n: n["slot"]))
        directory = self.records.dir(record["id"])
        pid = self._qemu_pid(record)  # once per instance: every poll lists them all
        return Instance(id=record["id"], name=record["name"], status=self._status(record, pid),
                        management_address=record["management_cidr"].split("/")[0],
                        created_at=record["created_at"], nics=nics,
                        details={"image": record.get("image", ""),
                                 "image_id": record.get("image_id"),
                                 "accel": record.get("accel"),
                                 "pid": pid,
                                 "console": str(directory / "console.log"),
                                 "taps": [n["tap"] for n in record["nics"]]})

    def get(self, instance_id):
        with self._lock:
            record = self.records.cached(instance_id)
        return self._instance(record) if record else None

    def list(self, prefix):
        return [self._instance(r) for r in self.records.all() if r["name"].startswith(prefix)]

    def shell_command(self, instance_id):
        record = self.records.cached(instance_id)
        if record is None:
            return None
        argv = ["ssh", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.records.dir(instance_id) / 'known_hosts'}"]
        if self.ssh_identity:
            argv += ["-i", self.ssh_identity]
        return argv + [f"astara@{record['management_cidr'].split('/')[0]}"]

    # -- taps ------------------------------------------------------------------------------------
    def _add_tap(self, record, nic, slot):
        tap = f"{record['id']}n{slot}"
        bridge = self.fabric.bridge_for(nic)
        mtu = self.management_mtu if nic.role == "mgt" else nic.mtu
        entry = {"mac": nic.mac, "network_id": nic.network_id, "role": nic.role,
                 "mtu": nic.mtu, "slot": slot, "tap": tap, "bridge": bridge}
        record["nics"].append(entry)  # recorded before it exists: delete finds it
        self.records.save(record)
        self.fabric.ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
        if mtu:
            self.fabric.ns.ip("link", "set", tap, "mtu", str(mtu))
        self.fabric.ns.ip("link", "set", tap, "master", bridge, "up")
        return entry

    def _remove_tap(self, tap):
        self.fabric.ns.ip("link", "del", tap, check=False)

    # -- lifecycle -------------------------------------------------------------------------------
    def create(self, name, nics, management_cidr, image=None, server_group=None, tls=None):
        nics = list(nics)
        if not nics or nics[0].role != "mgt":
            raise DriverError("the first NIC must be the management NIC")
        if len(nics) > self.max_nics:
            raise DriverError(f"{len(nics)} NICs, [qemu] max_nics is {self.max_nics}")
        label, path = self.resolve_image(image)
        with self._lock:
            if any(r["name"] == name for r in self.records.all()):
                raise DriverError(f"an instance named {name} exists")
            instance_id = self._allocate(name)
            directory = self.records.dir(instance_id)
            directory.mkdir(parents=True)
            record = {"id": instance_id, "name": name, "created_at": time.time(),
                      "management_cidr": management_cidr, "image": label,
                      "image_id": None, "accel": None, "nics": [], "booting": True}
            self.records.save(record)  # a half-built instance is listed, hence deletable
        try:
            # Recorded first: a concurrent delete's clean-up keeps the copy made next.
            record["image_id"] = files_identity(image_files(path))
            self.records.save(record)
            image_dir = self._import_image(path, record["image_id"])
            disk = directory / "disk.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                 "-b", image_dir / "base.qcow2", disk])
            keys = [pathlib.Path(self.ssh_public_key).read_text()] \
                if self.ssh_public_key else []
            mgt = nics[0]
            seed = userdata.write_nocloud_seed(
                directory, userdata.cloud_config(
                    mgt.mac, management_cidr, mgt.mtu or self.management_mtu, keys,
                    self.ntp_servers, files=userdata.image_tls_files(tls)),
                userdata.meta_data(f"{instance_id}-{record['created_at']:.0f}", name))
            for slot, nic in enumerate(nics):
                self._add_tap(record, nic, slot)
            record["accel"] = self._accel_for(image_dir / "vmlinuz")
            argv = qemu_command(self.binary, directory, image_dir / "vmlinuz",
                                image_dir / "initrd", disk, seed, record["nics"],
                                record["accel"], self.machine, self.cpus, self.memory,
                                self.max_nics, self.kernel_args, instance_id)
            result = run(["ip", "netns", "exec", self.fabric.name, *argv], check=False)
            if result.returncode != 0:
                raise DriverError(f"qemu exited {result.returncode}: "
                                  f"{result.stderr.strip()[-500:]}")
            record.pop("booting")
            self.records.save(record)
        except (CommandError, OSError, DriverError) as exc:
            LOG.warning("creating %s (%s) failed: %s", name, instance_id, exc)
            self.delete(instance_id)
            if isinstance(exc, DriverError):
                raise
            raise DriverError(f"cannot create {name}: {exc}") from exc
        instance = self._instance(record)
        LOG.info("instance %s: VM %s (pid %s, %s, image %s)", name, instance_id,
                 instance.details["pid"], record["accel"], label or "default")
        return instance

    def delete(self, instance_id):
        if not ID_RE.match(instance_id or ""):
            raise DriverError(f"{instance_id} is not an instance of this driver")
        with self._lock:
            record = self.records.cached(instance_id) or self.records.load(instance_id)
            if record is not None:
                self._stop_qemu(record)
                for nic in record["nics"]:
                    self._remove_tap(nic["tap"])
            shutil.rmtree(self.records.dir(instance_id), ignore_errors=True)
            self.records.forget(instance_id)
            self._verified.discard(instance_id)
        self._collect_images()

    def _stop_qemu(self, record, grace=5.0):
        pid = self._qemu_pid(record)
        if pid is None:
            return
        with contextlib.suppress(DriverError):
            Monitor(self.records.dir(record["id"]) / "qmp.sock", timeout=2).execute(
                ("quit", None))
        if wait_exit(pid, grace):
            return
        LOG.warning("instance %s: QEMU %s still runs after quit; terminating it",
                    record["id"], pid)
        terminate(pid, grace)
        if not wait_exit(pid, grace):
            raise DriverError(f"QEMU {pid} of {record['id']} does not exit")

    def _require(self, instance_id):
        record = self.records.require(instance_id)
        if self._qemu_pid(record) is None:
            raise DriverError(f"instance {instance_id} is not running")
        return record

    def attach(self, instance_id, nic):
        with self._lock:
            record = self._require(instance_id)
            if any(n["mac"] == nic.mac for n in record["nics"]):
                raise DriverError(f"{instance_id} already has a NIC {nic.mac}")
            used = {n["slot"] for n in record["nics"]}
            slot = next((s for s in range(self.max_nics) if s not in used), None)
            if slot is None:
                raise DriverError(f"{instance_id} has no free NIC slot "
                                  f"([qemu] max_nics = {self.max_nics})")
            entry = self._add_tap(record, nic, slot)
            monitor = Monitor(self.records.dir(instance_id) / "qmp.sock")
            try:
                monitor.execute(("netdev_add", {"type": "tap", "id": f"net{slot}",
                                                "ifname": entry["tap"], "script": "no",
                                                "downscript": "no"}))
                try:
                    monitor.execute(("device_add", nic_device_args(entry, self.machine)))
                except DriverError:
                    with contextlib.suppress(DriverError):
                        monitor.execute(("netdev_del", {"id": f"net{slot}"}))
                    raise
            except DriverError:
                self._remove_tap(entry["tap"])
                record["nics"].remove(entry)
                self.records.save(record)
                raise
            LOG.info("instance %s: hot-plugged %s (network %s) in slot %d", instance_id,
                     nic.mac, nic.network_id, slot)
        return self._instance(record)

    def detach(self, instance_id, mac):
        with self._lock:
            record = self._require(instance_id)
            entry = self.records.nic(record, mac)
            if entry["role"] == "mgt":
                raise DriverError(f"{instance_id}: the management NIC stays")
            slot = entry["slot"]
            monitor = Monitor(self.records.dir(instance_id) / "qmp.sock")
            gone = monitor.execute_until("device_del", {"id": f"nic{slot}"}, "DEVICE_DELETED",
                                         {"device": f"nic{slot}"}, self.unplug_timeout)
            if not gone:
                raise DriverError(f"{instance_id}: the guest did not release NIC {mac} "
                                  f"within {self.unplug_timeout:g}s")
            monitor.execute(("netdev_del", {"id": f"net{slot}"}))
            self._remove_tap(entry["tap"])
            record["nics"].remove(entry)
            self.records.save(record)
            LOG.info("instance %s: unplugged %s from slot %d", instance_id, mac, slot)
        return self._instance(record)

    def close(self):
        """Nothing to release: the VMs run on (adoption)."""
