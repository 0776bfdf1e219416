"""The whole lab, end to end: ``astara-lab up`` (in process, own state file), its
self-check, and what the orchestrator does to a real appliance when things change or
break — a floating IP added with astara-ctl, config drift, a refused payload, an
orchestrator restart, a killed agent — then ``down``.

One lab serves the module (it takes a while to build); each test restores what it
changes. The order of the tests matters only for the last ones: the killed agent, and
``down``.
"""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from astara_lab import lab as astara_lab
from orchestrator_lite.rollout import in_sync
from astara_lab.leftovers import find_leftovers
from astara_netns import Netns, list_netns, netns_pids, pid_alive
from astara_lab.peers import Connection, PeerServer, eventually

from .lab_helpers import E2E_HEALTH

pytestmark = pytest.mark.netns

PERIOD = E2E_HEALTH["period"]
ROUTER = "demo-router"
TCP_PORT = 7000


class World:
    """The lab's state plus the handles the tests use."""

    def __init__(self, state, state_file):
        self.state = state
        self.state_file = state_file
        self.cloud = astara_lab.CLOUDS[state["cloud"]]
        names = state["namespaces"]
        self.ctl = Netns(names["ctl"], "ctl")
        self.inet = Netns(names["inet"], "inet")
        self.vms = {role: Netns(name, role) for role, name in names["vms"].items()}
        self.api = astara_lab.admin_api(state)

    def astara_ctl(self, *args):
        """astara-ctl as an operator runs it: a subprocess in the controller namespace,
        with the lab's config."""
        script = pathlib.Path(sys.executable).parent / "astara-ctl"
        command = [str(script)] if script.exists() else \
            [sys.executable, "-m", "orchestrator_lite.cli.ctl"]
        return self.ctl.run([*command, "--config", self.state["orchestrator"]["config"],
                             *args], check=False)

    def resource(self):
        return self.api.resource(ROUTER)

    def synced(self):
        """The router's resource view once it is configured and in sync, else None."""
        try:
            resource = self.resource()
        except OSError:
            return None
        return resource if in_sync(resource) else None

    def instance(self):
        resource = eventually(self.synced, 60, "router in sync")
        [instance] = resource["instances"]
        return instance

    def agent(self, instance):
        return astara_lab.agent_client(self.state, instance)

    def committed(self, instance):
        return self.agent(instance).get("/v1/system/config").json()

    def row(self, key, patience=60):
        [row] = astara_lab.self_check(self.state, patience=patience, only={key})
        return row

    def log(self):
        return astara_lab.orchestrator(self.state).tail(6000)


@pytest.fixture(scope="module")
def world(up_lab, lab_state_file):
    return World(up_lab, lab_state_file)


def reach(ns, address):
    """What the web server behind ``address`` answered to a GET from ``ns``, or None."""
    try:
        return astara_lab.get_json(ns.name, address, timeout=2)
    except (OSError, ValueError):
        return None


def test_up_builds_a_cloud_where_every_check_passes(world):
    rows = astara_lab.self_check(world.state, patience=60)
    assert all(row.ok for row in rows), astara_lab.format_table(rows) + "\n" + world.log()
    assert [row.key for row in rows] == [key for key, _, _ in astara_lab.CHECKS]
    saved = astara_lab.load_state(world.state_file)
    assert saved["prefix"] == world.state["prefix"] and saved["phase"] == "up"
    text = astara_lab.hints(world.state)
    assert world.ctl.name in text and world.state["orchestrator"]["config"] in text


def test_floating_ip_added_with_astara_ctl_is_reachable_from_the_internet(world):
    vm = world.cloud.vm("vm2")
    address = "172.24.4.102"
    assert reach(world.inet, address) is None
    result = world.astara_ctl("floatingip", "create", "id=fip-e2e", f"router_id={ROUTER}",
                              f"floating_ip_address={address}", f"fixed_ip_address={vm.ipv4}")
    assert result.returncode == 0, result.stderr
    try:
        answer = eventually(lambda: reach(world.inet, address), 5 * PERIOD,
                            f"{address} reachable from the internet")
        assert answer["server"] == vm.role
        assert answer["client"] == world.cloud.upstream_address(4)
    finally:
        result = world.astara_ctl("floatingip", "delete", "fip-e2e")
        assert result.returncode == 0, result.stderr
    eventually(lambda: reach(world.inet, address) is None, 5 * PERIOD, f"{address} removed")
    eventually(world.synced, 30, "in sync again")


def test_config_changed_behind_the_orchestrators_back_is_repaired(world):
    instance = world.instance()
    pid = instance["details"]["agent_pid"]
    desired = world.resource()["desired_hash"][instance["name"]]
    current = world.committed(instance)
    assert current["hash"] == desired
    rogue = dict(current["configuration"], floating_ips=current["configuration"][
        "floating_ips"] + [{"floating_ip": "172.24.4.150", "fixed_ip": "10.1.0.11"}])
    response = world.agent(instance).put_json("/v1/system/config", rogue)
    assert response.status == 200, response.text
    assert world.committed(instance)["hash"] != desired

    eventually(lambda: world.committed(instance)["hash"] == desired, 5 * PERIOD,
               "drift repaired")
    assert world.instance()["details"]["agent_pid"] == pid  # repaired, not rebooted
    assert reach(world.inet, "172.24.4.150") is None


def test_refused_payload_shows_the_appliances_message_and_keeps_the_appliance(world):
    instance = world.instance()
    pid = instance["details"]["agent_pid"]
    good = world.committed(instance)
    # "ak-bad_tenant" is no RFC 1123 host name: the agent answers 422.
    result = world.astara_ctl("router", "set", ROUTER, "tenant_id=bad_tenant")
    assert result.returncode == 0, result.stderr
    try:
        resource = eventually(lambda: (r := world.resource())["state"] == "error" and r,
                              30, "error state")
        assert "422" in resource["last_error"] and "hostname" in resource["last_error"]
        assert "ak-bad_tenant" in resource["last_error"]
        listing = world.astara_ctl("resource", "list").stdout
        assert re.search(rf"{ROUTER}\s+router\s+bad_tenant\s+error", listing), listing
        # Two health polls are handled while parked: neither retries nor reboots.
        polls = resource["automaton"]["polls"]
        resource = eventually(
            lambda: (r := world.resource())["automaton"]["polls"] >= polls + 2 and r,
            10 * PERIOD, "two polls while parked")
        assert resource["state"] == "error"
        assert [i["details"]["agent_pid"] for i in resource["instances"]] == [pid]
        assert world.committed(instance)["hash"] == good["hash"]  # nothing half-applied
        assert world.row("snat", patience=5).ok  # and it still routes
    finally:
        result = world.astara_ctl("router", "set", ROUTER, "tenant_id=demo")
        assert result.returncode == 0, result.stderr
    assert world.instance()["details"]["agent_pid"] == pid


def ping_summary(text):
    match = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_orchestrator_restart_adopts_the_appliance_without_traffic_loss(world):
    instance = world.instance()
    pid, generation = instance["details"]["agent_pid"], world.committed(instance)["generation"]
    fip = world.cloud.floating_ip_of(world.cloud.vm("vm0"))
    server = PeerServer(world.inet, TCP_PORT)
    conn = Connection(world.vms["vm0"], astara_lab.PUBLIC_V4, TCP_PORT)
    ping = subprocess.Popen(["ip", "netns", "exec", world.inet.name, "ping", "-n", "-q",
                             "-i", "0.2", "-W", "1", fip], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert conn.ask() == fip  # vm0 goes out as its floating IP
        old = world.state["orchestrator"]["pid"]
        new = astara_lab.restart_orchestrator(world.state, world.state_file)
        assert new != old and not pid_alive(old)
        adopted = eventually(world.synced, 30, "adopted after the restart")
        assert [i["details"]["agent_pid"] for i in adopted["instances"]] == [pid]
        assert world.committed(instance)["generation"] == generation  # no push either
        assert conn.ask() == fip  # the same TCP connection still works
        # Five more pings (0.2 s apart) after the adoption: a loss it caused would show
        # right after it, so this window is enough to see one.
        time.sleep(1)
    finally:
        ping.send_signal(signal.SIGINT)
        output = ping.communicate(timeout=10)[0]
        conn.close()
        server.close()
    sent, received = ping_summary(output)
    assert sent >= 5 and sent - received <= 2, output


def test_killed_agent_is_detected_reported_and_rebuilt(world):
    instance = world.instance()
    pid, netns = instance["details"]["agent_pid"], instance["details"]["netns"]
    assert pid in netns_pids(netns)  # the agent, inside its appliance namespace
    os.kill(pid, signal.SIGKILL)

    seen = []

    def rebuilt():
        resource = world.resource()
        seen.append((resource["state"], resource.get("last_error")))
        instances = resource["instances"]
        return in_sync(resource) and instances and \
            instances[0]["details"]["agent_pid"] != pid and resource

    resource = eventually(rebuilt, 120, "rebuilt and configured")
    # Reported while it happened: the state went down, last_error said why.
    assert {state for state, _ in seen} & {"down", "booting"}, seen
    assert any((error or "").startswith("appliance lost") for _, error in seen), seen
    assert resource["last_error"] is None  # cleared once configured again
    new = resource["instances"][0]["details"]
    assert pid_alive(new["agent_pid"]) and new["agent_pid"] in netns_pids(new["netns"])
    row = world.row("snat")
    assert row.ok, row.detail + "\n" + world.log()
    assert world.row("fip").ok


def test_down_removes_everything_and_is_idempotent(world):
    prefix = world.state["prefix"]
    assert astara_lab.down(world.state_file, quiet=True)
    assert not [n for n in list_netns() if n.startswith(prefix + "-")]
    assert find_leftovers(prefix) == {"namespaces": {}, "etc_dirs": [], "tmp_dirs": []}
    assert not world.state_file.exists()
    assert not processes_mentioning(prefix)
    assert not pid_alive(world.state["orchestrator"]["pid"])
    assert astara_lab.down(world.state_file, quiet=True) is False  # nothing left to do


def processes_mentioning(text):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if text.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_down_cleans_up_after_a_half_failed_up(tmp_path, monkeypatch):
    """``up`` dies while the orchestrator is booting the router: the orchestrator, the
    appliance it made and every namespace and file of the prefix still go away."""
    state_file = tmp_path / "lab.json"

    def interrupted(api, resource_id, progress, log, timeout=None):
        eventually(lambda: api.resource(resource_id)["instances"], 60, "an appliance")
        raise astara_lab.LabError("simulated failure while waiting for the router")

    monkeypatch.setattr(astara_lab, "wait_configured", interrupted)
    try:
        with pytest.raises(astara_lab.LabError, match="simulated"):
            astara_lab.up(state_file, health=E2E_HEALTH, progress=astara_lab.QuietProgress())
        state = astara_lab.load_state(state_file)
        assert state["phase"] == "building"
        prefix = state["prefix"]
        appliances = [n for n in list_netns() if re.fullmatch(rf"{prefix}-r[0-9a-f]{{4}}\d", n)]
        assert appliances  # the orchestrator made one before we "failed"
        with pytest.raises(astara_lab.LabError, match="already up"):
            astara_lab.up(state_file)
    finally:
        astara_lab.down(state_file, quiet=True)
    assert find_leftovers(prefix) == {"namespaces": {}, "etc_dirs": [], "tmp_dirs": []}
    assert not processes_mentioning(prefix)
    assert not state_file.exists()
