"""The built appliance image, booted by the orchestrator's QEMU driver and driven like the
orchestrator drives it. Slow (minutes under TCG emulation): ``make test`` and ``make
image-test`` build the image if needed (reused when its inputs did not change,
astara_lab/image.py) and run it. Skipped only when there is no image (a bare pytest run).

One VM for the whole module (a boot under TCG takes a minute or two), created exactly as
the orchestrator creates appliances (``QemuDriver.create``: overlay on a copy of
``out/astara.qcow2``, direct kernel boot, a tap per NIC in the fabric namespace, a NoCloud
seed with the management MAC/address, the operator's ssh key and the NTP server):

1. the management address answers the liveness probe (``GET /v1/firewall/rules``) from the
   controller namespace; the banner advertises the API version and capabilities;
2. ``GET /v1/system/interfaces`` lists ge0..ge2 with the three MACs, ge0 carrying the
   management address with its MTU;
3. ``PUT /v1/system/config`` with router-basic.json answers 200 (generation 1), the VM shows
   the payload's addresses, an identical re-send changes nothing;
4. the API and ssh still answer on new connections once the agent's firewall is loaded;
   ``astara`` logs in with the operator's key (the driver's ``astara-ctl ssh`` command);
5. the appliance's clock is synchronised with the NTP server the user data named
   (systemd-timesyncd, through cloud-init's ntp module);
6. the agent's venv in the running VM holds the agent's distribution and exactly
   ``locks/agent.txt``;
7. a NIC hot-plugged through QMP appears in the agent's interface list with its MAC, and
   disappears when unplugged (its tap too);
8. a new driver on the same state directory (a restarted orchestrator) finds the VM
   running, same QEMU process, not rebooted (the agent still has generation 1);
9. ``delete`` leaves no process, tap, overlay, socket or directory;
10. least privilege: the agent (master, worker) runs as ``astara-agent`` with exactly
   CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE, its dnsmasq as that user with no
   more, the payload's host name is applied by the root helper, and ``astara``'s sudo
   runs ``nft list ruleset`` but not a shell or ``nft flush ruleset``.

Boot-to-API and apply times are printed (no timing assertions).
"""

import ipaddress
import os
import shlex
import shutil
import time

import pytest

from astara_lab.image import outputs
from astara_lab.peers import DEFAULT_ORCHESTRATOR_ADDRESS, eventually
from astara_lab.unprivileged import unit_capabilities
from astara_lab.vm import MACS, MGMT_MTU, NAME, VmAppliance
from astara_netns import Lab, netns_unavailable_reason, pid_alive
from astara_router.privileges import capability_mask
from orchestrator_lite.drivers.base import ACTIVE, Nic
from orchestrator_lite.drivers.qemu import QemuDriver

IMAGE = outputs()
FAILED_CONSOLE = IMAGE["qcow2"].with_name(IMAGE["qcow2"].stem + "-image-test.console.log")
HOTPLUG_MAC = "fa:16:3e:00:be:ef"
BOOT_TIMEOUT = float(os.environ.get("ASTARA_IMAGE_BOOT_TIMEOUT", "900"))

pytestmark = pytest.mark.netns


def require_tools():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    missing = [tool for tool in ("qemu-system-x86_64", "qemu-img", "genisoimage", "ssh",
                                 "ssh-keygen") if shutil.which(tool) is None]
    assert not missing, (f"missing {', '.join(missing)}: "
                         "run scripts/install-deps --image (make deps does)")


@pytest.fixture(scope="module")
def appliance(built_image):
    require_tools()
    lab = Lab()
    vm = None
    try:
        vm = VmAppliance(lab)
        vm.times = {}
        try:
            vm.times["boot_to_api"] = vm.boot(BOOT_TIMEOUT)
        except AssertionError:
            FAILED_CONSOLE.write_text(vm.console(tail=200000))
            raise
        yield vm
        summary = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in vm.times.items())
        print(f"\nimage test ({vm.instance.details['accel']}): {summary}")
    finally:
        if vm is not None:
            vm.close()
        lab.close()


@pytest.fixture(autouse=True)
def keep_console(request, appliance):
    """The VM's serial console goes to out/ when a test fails (test/image/conftest.py
    records each test's outcome)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        FAILED_CONSOLE.write_text(appliance.console(tail=200000))
        print(f"serial console saved to {FAILED_CONSOLE}; its end:\n{appliance.console()}")


def test_image_boots_and_applies_router_basic(appliance):
    vm = appliance
    banner = vm.client.get("/v1/").json()
    assert banner["api_version"] and "config-hash" in banner["capabilities"]

    before = vm.interfaces()
    assert {name: i["lladdr"] for name, i in before.items()} == {
        f"ge{n}": mac for n, mac in enumerate(MACS)}
    assert str(vm.mgmt) in before["ge0"]["addresses"]
    assert before["ge0"]["mtu"] == MGMT_MTU

    vm.times["put_router_basic"], response = vm.configure()
    assert response.status == 200, response.text
    assert response.json()["generation"] == 1

    # New connections after the firewall is loaded: its input rules admit the API.
    response = vm.client.get("/v1/system/config")
    assert response.status == 200 and response.json()["generation"] == 1, response.text
    rules = vm.client.get("/v1/firewall/rules")
    assert rules.status == 200 and rules.text.strip(), "no firewall ruleset after apply"

    after = vm.interfaces()
    assert {"172.24.4.7/24", "172.24.4.228/32"} <= set(after["ge1"]["addresses"])
    assert "10.1.0.1/24" in after["ge2"]["addresses"]

    again = vm.client.put_json("/v1/system/config", vm.payload)
    assert again.status == 200, again.text
    assert (again.json()["generation"], again.json()["changes"]) == (1, 0)


def wait_for_ssh(appliance):
    """Seconds until ssh with the operator's key logs in as astara (sshd starts once
    cloud-init made the instance's host keys)."""
    def logged_in():
        result = appliance.ssh("id", "-un")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
    started = time.monotonic()
    assert eventually(logged_in, 300, "ssh as astara", interval=2) == "astara"
    return time.monotonic() - started


def test_ssh_with_the_operators_key_through_the_firewall(appliance):
    appliance.times["ssh_after_api"] = wait_for_ssh(appliance)


# pid, parent pid, real uid, CapEff, CapPrm, CapBnd and the command line of every process
# (as the astara user: /proc/<pid>/status and cmdline are world-readable)
PROCESS_TABLE = r"""for d in /proc/[0-9]*; do
  s=$(cat $d/status 2>/dev/null) || continue
  printf '%s %s %s %s %s %s %s\n' ${d#/proc/} \
    $(printf '%s\n' "$s" | awk '/^PPid:|^Uid:/{print $2} /^CapEff:|^CapPrm:|^CapBnd:/{print $2}') \
    "$(tr '\0\n' '  ' < $d/cmdline 2>/dev/null | cut -c1-200)"
done"""
AGENT_CAPABILITIES = capability_mask(unit_capabilities())  # the image unit's


def test_agent_and_its_daemons_run_unprivileged(appliance):
    """README, "Least privilege": the agent as astara-agent, its master (the engine)
    holding exactly the unit's capabilities and its worker none (but the bounding set),
    its dnsmasq as that user with no more; the host name
    the agent asked for was applied by the root helper; astara's sudo is diagnosis only."""
    wait_for_ssh(appliance)  # ssh is up (when run alone); its time is not a boot figure
    uid = int(appliance.ssh("id", "-u", "astara-agent").stdout)
    assert uid != 0
    listing = appliance.ssh("sh", "-c", shlex.quote(PROCESS_TABLE)).stdout
    processes = []
    for line in listing.splitlines():
        pid, ppid, owner, eff, prm, bnd, *cmdline = line.split(" ", 6)
        processes.append((int(pid), int(ppid), int(owner), int(eff, 16), int(prm, 16),
                          int(bnd, 16), " ".join(cmdline)))
    agent = {p[0]: p for p in processes if "astara-router-api" in p[6]}
    masters = [p for p in agent.values() if p[1] not in agent]
    workers = [p for p in agent.values() if p[1] in agent]
    assert len(masters) == 1 and workers, listing  # gunicorn master and its worker
    for pid, _, owner, eff, prm, bnd, cmdline in masters + workers:
        held = AGENT_CAPABILITIES if pid == masters[0][0] else 0
        assert (owner, eff, prm, bnd) == (uid, held, held, AGENT_CAPABILITIES), (pid, cmdline)
    dnsmasq = [p for p in processes if p[6].startswith("dnsmasq ")]
    assert dnsmasq, listing  # router-basic has DHCP
    for pid, _, owner, eff, prm, bnd, cmdline in dnsmasq:
        assert owner == uid and not (eff | prm) & ~AGENT_CAPABILITIES, (pid, cmdline)

    hostname = appliance.payload["hostname"]
    eventually(lambda: appliance.ssh("hostname").stdout.strip() == hostname or None, 60,
               "the host name applied by astara-hostname.path", interval=2)
    assert appliance.ssh("cat", "/etc/hostname").stdout == hostname + "\n"

    ruleset = appliance.ssh("sudo", "-n", "/usr/sbin/nft", "list", "ruleset")
    assert ruleset.returncode == 0 and "table inet astara" in ruleset.stdout, ruleset.stderr
    # the operator's tool, as the agent's user (the state directory is 0700)
    ctl = appliance.ssh("sudo", "-n", "-u", "astara-agent", "/usr/local/bin/astara-router-ctl",
                        "config")
    assert ctl.returncode == 0 and hostname in ctl.stdout, ctl.stdout + ctl.stderr
    # only its read-only commands: not --url (ctl sends the API token there), not rollback
    def sudo_lists(*arguments):  # sudo -l COMMAND: exit 0 only when the rules allow it
        return appliance.ssh("sudo", "-n", "-l", "-u", "astara-agent",
                             "/usr/local/bin/astara-router-ctl", *arguments).returncode == 0
    assert sudo_lists("--json", "health")
    for arguments in (("--url", "http://127.0.0.1:9", "config"), ("rollback",), ("confirm",)):
        assert not sudo_lists(*arguments), arguments
    for command in (("true",), ("/usr/sbin/nft", "flush", "ruleset"), ("-i",),
                    ("-u", "astara-agent", "/bin/sh", "-c", "id")):
        refused = appliance.ssh("sudo", "-n", *command)
        assert refused.returncode != 0, command


def test_clock_synchronised_with_the_configured_ntp_server(appliance):
    def synchronised():
        shown = appliance.ssh("timedatectl", "show-timesync", "--all")
        assert shown.returncode == 0, shown.stderr
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        assert props.get("SystemNTPServers") == DEFAULT_ORCHESTRATOR_ADDRESS, props
        assert props.get("ServerAddress") == DEFAULT_ORCHESTRATOR_ADDRESS, props
        synced = appliance.ssh("timedatectl", "show", "-p", "NTPSynchronized", "--value")
        return synced.stdout.strip() == "yes"
    eventually(synchronised, 120, "systemd-timesyncd synchronised", interval=3)
    client = str(appliance.mgmt.ip)
    assert any(ipaddress.ip_address(c) == ipaddress.ip_address(client)
               for c in appliance.ntp.clients)


# Every distribution the agent's venv can import, "Name==version" per line.
LIST_DISTRIBUTIONS = ("import importlib.metadata as m; print('\\n'.join("
                      "f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions()))")


def test_agent_venv_is_the_agent_and_its_lock(appliance, assert_agent_set):
    venv = appliance.ssh("/opt/astara/bin/python", "-c", shlex.quote(LIST_DISTRIBUTIONS))
    assert venv.returncode == 0, venv.stderr
    assert_agent_set(venv.stdout, "/opt/astara in the booted image")


def test_nic_hot_plug_and_unplug(appliance):
    vm = appliance
    fabric = vm.lab.fabric()
    started = time.monotonic()
    instance = vm.driver.attach(vm.instance.id, Nic(HOTPLUG_MAC, "spare", "data", 1450))
    tap = next(t for t in instance.details["taps"] if t.endswith("n3"))
    assert fabric.ip_json("link", "show", "master", "b-ge3")[0]["ifname"] == tap
    eventually(lambda: any(i["lladdr"] == HOTPLUG_MAC for i in vm.interfaces().values()),
               120, "the hot-plugged NIC in the agent's interfaces", interval=1)
    vm.times["hot_plug"] = time.monotonic() - started
    assert [n.mac for n in instance.nics] == MACS + [HOTPLUG_MAC]

    started = time.monotonic()
    instance = vm.driver.detach(vm.instance.id, HOTPLUG_MAC)
    vm.times["unplug"] = time.monotonic() - started
    assert [n.mac for n in instance.nics] == MACS
    assert not any(i["lladdr"] == HOTPLUG_MAC for i in vm.interfaces().values())
    assert tap not in fabric.link_names()


def test_restarted_orchestrator_adopts_the_running_vm(appliance):
    vm = appliance
    pid = vm.driver.get(vm.instance.id).details["pid"]
    again = QemuDriver(vm.driver.state_root, vm.driver.fabric.name,
                       image=str(IMAGE["qcow2"]))
    found = again.list("ak-router-")
    assert [(i.id, i.name, i.status) for i in found] == [(vm.instance.id, NAME, ACTIVE)]
    assert found[0].details["pid"] == pid and found[0].management_address == str(vm.mgmt.ip)
    assert [n.mac for n in found[0].nics] == MACS
    # Not rebooted: the configuration pushed earlier is still the running one.
    assert vm.client.get("/v1/system/config").json()["generation"] == 1


def test_delete_leaves_nothing(appliance):
    vm = appliance
    instance = vm.driver.get(vm.instance.id)
    pid, taps = instance.details["pid"], instance.details["taps"]
    directory = vm.driver.state_root / vm.instance.id
    assert pid_alive(pid) and (directory / "qmp.sock").exists()
    vm.driver.delete(vm.instance.id)
    assert not pid_alive(pid)
    assert not directory.exists()
    assert not set(taps) & set(vm.lab.fabric().link_names())
    assert vm.driver.list("ak-") == []
    assert not any((vm.driver.state_root / "images").iterdir()), "the image copy stayed"
