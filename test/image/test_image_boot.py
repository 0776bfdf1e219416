"""The built appliance image, booted for real and driven like the original orchestrator does.

Slow (minutes under TCG emulation) and needs a built image in ``out/``: ``make image-test``
builds one if needed and runs it; ``make test`` leaves ``test/image`` out.

What it proves, in order:

1. the image boots under qemu (``-accel tcg``, direct kernel boot, ``snapshot=on``) with three
   virtio NICs (the router-basic MACs) and a NoCloud seed holding the orchestrator's
   cloud-init user data: ``bootcmd`` runs ``astara-configure-management MAC ADDR/64 --mtu
   1450`` and ``users`` gives ``astara`` an ssh key and passwordless sudo;
2. ``GET /v1/firewall/rules`` (the orchestrator's liveness probe) answers 200 on the
   management address, from the controller namespace;
3. ``GET /v1/system/interfaces`` lists ge0..ge2 with those MACs, ge0 carrying the address;
4. ``PUT /v1/system/config`` with router-basic.json answers 200 and the VM shows the payload's
   addresses; ``GET /v1/system/config`` says generation 1;
5. the API (and ssh) still answer on new connections once the agent's firewall is loaded;
   over ssh, ``sudo -n`` works and the agent's journal has the apply;
6. the agent's venv in the running VM holds the agent's distribution and exactly the
   versions of ``locks/agent.txt``, nothing more.

Boot-to-API and apply times are printed (no timing assertions).

Topology, all inside one Lab (nothing is created in the root namespace)::

    <lab>-fab   bridges b-mgmt, b-ge1, b-ge2; taps t0, t1, t2 enslaved to them;
                qemu runs here and owns the taps (they die with the namespace)
    <lab>-ctl   eth0 on b-mgmt, fdca:3ba5:a17a:acda::2/64 (the orchestrator)
"""

import ipaddress
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from astara_lab.appliance import (
    CONTRACT_NIC_MACS, contract_payloads, controller_node, management_cidr)
from astara_netns import Lab, NetnsHTTPClient, netns_unavailable_reason, run

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "out"
IMAGE_NAME = os.environ.get("ASTARA_IMAGE_NAME", "astara")
IMAGE = OUT / f"{IMAGE_NAME}.qcow2"
KERNEL = OUT / f"{IMAGE_NAME}.vmlinuz"
INITRD = OUT / f"{IMAGE_NAME}.initrd"
FAILED_CONSOLE = OUT / f"{IMAGE_NAME}-image-test.console.log"

PAYLOAD_NAME = "router-basic"
MACS = CONTRACT_NIC_MACS[PAYLOAD_NAME]  # ge0 (management), ge1 (external), ge2 (internal)
MGMT_MTU = 1450
API_PORT = 5000
# The original client waits 90 s for a PUT; under TCG on a busy machine allow more.
PUT_TIMEOUT = 300
# TCG on a busy 2-core machine: a boot normally takes 1-3 minutes; allow for much worse.
BOOT_TIMEOUT = float(os.environ.get("ASTARA_IMAGE_BOOT_TIMEOUT", "900"))
KERNEL_ARGS = ("root=LABEL=cloudimg-rootfs ro console=ttyS0 "
               # the journal (agent, cloud-init) on the serial log: the test's diagnosis
               "systemd.journald.forward_to_console=1")

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not (IMAGE.exists() and KERNEL.exists() and INITRD.exists()),
                       reason=f"no built image {IMAGE} (+ .vmlinuz, .initrd): make image"),
]

# The original orchestrator's user data (astara/api/nova.py TEMPLATE), with the MTU of the
# management network that this deployment's boot command passes.
USER_DATA = """#cloud-config

cloud_config_modules:
  - emit_upstart
  - set_hostname
  - locale
  - set-passwords
  - timezone
  - disable-ec2-metadata
  - runcmd

output: {{all: '| tee -a /var/log/cloud-init-output.log'}}

debug:
  - verbose: true

bootcmd:
  - /usr/local/bin/astara-configure-management {mac} {address} --mtu {mtu}

users:
  - name: astara
    gecos: Astara
    groups: users
    shell: /bin/bash
    sudo: ALL=(ALL) NOPASSWD:ALL
    lock-passwd: true
    ssh-authorized-keys:
      - {ssh_public_key}

final_message: "Astara appliance is running"
"""


def require_tools():
    """The opt-in was given and the image exists: missing tools are a failure, not a skip."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    missing = [tool for tool in ("qemu-system-x86_64", "genisoimage", "ssh", "ssh-keygen")
               if shutil.which(tool) is None]
    assert not missing, (f"missing {', '.join(missing)}: "
                         "run scripts/install-deps --image (make image-test does)")


def build_seed(directory, user_data, instance_id):
    """A NoCloud seed: an ISO 9660 volume labelled "cidata" (what cloud-localds makes)."""
    (directory / "user-data").write_text(user_data)
    (directory / "meta-data").write_text(
        f"instance-id: {instance_id}\nlocal-hostname: ak-image-test\n")
    seed = directory / "seed.iso"
    run(["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock",
         directory / "user-data", directory / "meta-data"])
    return seed


class ApplianceVM:
    """The image under qemu in the lab's fabric namespace, one tap per NIC on its bridge."""

    def __init__(self, lab, workdir, macs, bridges, seed):
        self.lab = lab
        self.fab = lab.fabric()
        self.workdir = workdir
        self.macs = macs
        self.bridges = bridges
        self.seed = seed
        self.console_path = workdir / "console.log"
        self.proc = None
        self.started = None

    def start(self):
        netdevs = []
        for i, (mac, bridge) in enumerate(zip(self.macs, self.bridges)):
            tap = f"t{i}"
            self.fab.ip("tuntap", "add", "dev", tap, "mode", "tap")
            self.fab.ip("link", "set", tap, "mtu", "1500", "master", bridge, "up")
            netdevs += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                        "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
        cmd = [
            "qemu-system-x86_64", "-name", "astara-image-test",
            "-accel", "tcg", "-smp", "2", "-m", "1024",
            "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
            "-serial", f"file:{self.console_path}",
            "-kernel", KERNEL, "-initrd", INITRD, "-append", KERNEL_ARGS,
            "-drive", f"file={IMAGE},if=virtio,format=qcow2,snapshot=on",
            "-drive", f"file={self.seed},if=virtio,format=raw,readonly=on",
            "-device", "virtio-rng-pci",
            *netdevs,
        ]
        self.started = time.monotonic()
        # `ip netns exec` execs qemu: proc.pid is qemu's own PID.
        self.proc = self.lab.spawn(self.fab, cmd, log_path=self.workdir / "qemu.log")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM qemu by its PID (it exits at once: the disk is a throw-away snapshot)."""
        if self.running():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        for i in range(len(self.macs)):
            self.fab.ip("link", "del", f"t{i}", check=False)

    def console(self, tail=6000):
        try:
            return self.console_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def qemu_log(self):
        try:
            return (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def wait_for_api(vm, client, timeout):
    """Poll the orchestrator's liveness probe until it answers 200; return the seconds
    since qemu started."""
    deadline = vm.started + timeout
    last = None
    while True:
        if not vm.running():
            raise AssertionError(f"qemu exited with {vm.proc.returncode}: {vm.qemu_log()}")
        try:
            response = client.get("/v1/firewall/rules")
            if response.status == 200:
                return time.monotonic() - vm.started
            last = f"HTTP {response.status}: {response.text[:200]}"
        except OSError as exc:  # refused, unreachable, timed out: not up yet
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer on the management address in {timeout:.0f} s "
                                 f"(last: {last})")
        time.sleep(2)


def ssh(ctl, key, address, *command):
    return ctl.run(["ssh", "-F", "/dev/null", "-i", key, "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
                    f"astara@{address}", *command], check=False)


# Every distribution the agent's venv can import, "Name==version" per line.
LIST_DISTRIBUTIONS = ("import importlib.metadata as m; print('\\n'.join("
                      "f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))")


def interfaces_by_name(client):
    response = client.get("/v1/system/interfaces")
    assert response.status == 200, response.text
    return {i["ifname"]: i for i in response.json()["interfaces"]}


@pytest.fixture
def image_lab():
    require_tools()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def test_image_boots_and_applies_router_basic(image_lab, capsys, assert_agent_set):
    lab = image_lab
    payload = contract_payloads("original-orchestrator")[PAYLOAD_NAME]
    mgmt = ipaddress.ip_interface(management_cidr(payload))
    workdir = lab.tmpdir("vm")

    bridges = [lab.bridge("b-mgmt"), lab.bridge("b-ge1"), lab.bridge("b-ge2")]
    ctl = controller_node(lab, bridges[0])
    key = workdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "astara-image-test", "-f", key])
    seed = build_seed(workdir, USER_DATA.format(
        mac=MACS[0], address=mgmt, mtu=MGMT_MTU,
        ssh_public_key=(workdir / "id_ed25519.pub").read_text().strip()), uuid.uuid4())

    vm = ApplianceVM(lab, workdir, MACS, bridges, seed)
    probe = NetnsHTTPClient(ctl.name, str(mgmt.ip), API_PORT, timeout=10)
    client = NetnsHTTPClient(ctl.name, str(mgmt.ip), API_PORT, timeout=PUT_TIMEOUT)
    try:
        vm.start()
        boot_to_api = wait_for_api(vm, probe, BOOT_TIMEOUT)

        # The orchestrator maps NICs by MAC: exactly ge0..ge2, management address on ge0.
        before = interfaces_by_name(client)
        assert {name: i["lladdr"] for name, i in before.items()} == {
            f"ge{n}": mac for n, mac in enumerate(MACS)}
        assert str(mgmt) in before["ge0"]["addresses"]
        assert before["ge0"]["mtu"] == MGMT_MTU

        put_started = time.monotonic()
        response = client.put_json("/v1/system/config", payload)
        put_seconds = time.monotonic() - put_started
        assert response.status == 200, response.text
        assert response.json()["generation"] == 1

        # New connections after the firewall is loaded: its INPUT rules admit the API.
        response = client.get("/v1/system/config")
        assert response.status == 200, response.text
        assert response.json()["generation"] == 1
        rules = client.get("/v1/firewall/rules")
        assert rules.status == 200 and rules.text.strip(), "no firewall ruleset after apply"

        after = interfaces_by_name(client)
        assert {"172.24.4.7/24", "172.24.4.228/32"} <= set(after["ge1"]["addresses"])
        assert "10.1.0.1/24" in after["ge2"]["addresses"]

        # The orchestrator re-sends unchanged configs: nothing may change in the VM.
        again = client.put_json("/v1/system/config", payload)
        assert again.status == 200, again.text
        assert (again.json()["generation"], again.json()["changes"]) == (1, 0)

        # The user data's astara user: key login and passwordless sudo, through the firewall.
        journal = ssh(ctl, key, mgmt.ip, "sudo", "-n", "journalctl", "--no-pager", "-o", "cat",
                      "-u", "astara-router-api.service")
        assert journal.returncode == 0, journal.stderr
        applied = re.findall(r"applied in ([0-9.]+) s with (\d+) changes", journal.stdout)
        assert len(applied) == 2 and applied[1][1] == "0", (
            f"expected the apply and the no-op re-send in the agent's journal:\n"
            f"{journal.stdout[-3000:]}")

        # What the appliance runs: the agent and its locked dependencies, nothing more.
        venv = ssh(ctl, key, mgmt.ip, "/opt/astara/bin/python", "-c",
                   shlex.quote(LIST_DISTRIBUTIONS))
        assert venv.returncode == 0, venv.stderr
        assert_agent_set(venv.stdout, "/opt/astara in the booted image")
    except BaseException:
        FAILED_CONSOLE.write_text(vm.console(tail=200000))
        print(f"serial console saved to {FAILED_CONSOLE}; its end:\n{vm.console()}")
        raise
    finally:
        vm.stop()

    with capsys.disabled():
        print(f"\nimage test: boot to API {boot_to_api:.1f} s (qemu start to the first 200 "
              f"on /v1/firewall/rules); PUT router-basic {put_seconds:.2f} s round trip, "
              f"agent apply {float(applied[0][0]):.3f} s ({applied[0][1]} changes), "
              f"re-send {float(applied[1][0]):.3f} s (0 changes)")
