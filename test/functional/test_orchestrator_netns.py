"""The orchestrator with its netns driver, for real: a fabric, a management bridge and the
ctl namespace (fdca:3ba5:a17a:acda::2) where astara-orchestrator runs; resources are
created with astara-ctl; appliances are namespaces running the real agent.

The server is started with ``--netns <ctl>`` rather than under ``ip netns exec``: the
latter gives it a private mount namespace, where namespaces it creates would be invisible
to everybody else (see orchestrator_lite/cli/server.py and astara_lab/orchestrator.py).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from astara_lab.appliance import controller_node
from astara_netns import NetnsHTTPClient, pid_alive
from astara_lab.orchestrator import OrchestratorError, OrchestratorProcess, errors_as, write_config
from orchestrator_lite.drivers.netns import NetnsDriver

pytestmark = pytest.mark.netns

ROUTER = "5e1f0c3a-7d2b-4c1e-9a8f-0b1c2d3e4f50"
BAD_ROUTER = "b0d0c3a1-7d2b-4c1e-9a8f-0b1c2d3e4f51"
HEALTH = {"period": 1, "jitter": 0.1, "dead_grace": 3, "boot_timeout": 40,
          "boot_check_interval": 0.3, "max_boot_attempts": 3, "boot_backoff_base": 0.5,
          "boot_backoff_cap": 2, "error_cooldown": 2, "delete_timeout": 15}


class World:
    """Lab + orchestrator process + astara-ctl, all in the ctl namespace. Plain HTTP to
    the appliances (the original orchestrator's mode, so the tests can read the agents
    directly) unless ``tls`` gives the orchestrator's [tls] section."""

    def __init__(self, lab, tls=None):
        self.lab = lab
        self.fabric = lab.fabric()
        lab.bridge("b-mgmt")
        self.ctl = controller_node(lab, "b-mgmt")
        self.dir = lab.tmpdir("orchestrator")
        self.ini = write_config(self.dir / "orchestrator.ini", {
            "DEFAULT": {"host": "controller-1", "state_dir": f"{self.dir}/state"},
            "api": {"listen": "127.0.0.1", "port": 44250, "token": "functional-token"},
            "compute": {"driver": "netns"},
            "netns": {"prefix": lab.prefix, "fabric": self.fabric.name,
                      "management_bridge": "b-mgmt", "state_root": f"{self.dir}/appliances"},
            "health": HEALTH, "tls": tls or {"enabled": "false"}})
        self.orchestrator = OrchestratorProcess(self.ctl.name, self.ini,
                                                self.dir / "orchestrator.log",
                                                extra_args=["--log-level", "DEBUG"])
        self.start()

    def start(self):
        with errors_as(AssertionError):  # a test failure
            self.orchestrator.start(timeout=20)

    def stop(self):
        self.orchestrator.stop()

    def close(self):
        self.stop()
        # The appliances outlive the orchestrator (on purpose): remove them before the
        # lab deletes the fabric. Deleting kills the processes inside each namespace.
        driver = NetnsDriver(self.lab.prefix, self.dir / "appliances",
                             fabric=self.fabric.name)
        for instance in driver.list("ak-"):
            driver.delete(instance.id)

    def run_ctl(self, *args):
        return self.ctl.run([sys.executable, "-m", "orchestrator_lite.cli.ctl", "--config",
                             str(self.ini), *args], check=False)

    def ctl_ok(self, *args):
        return self.run_ctl(*args).returncode == 0

    def ctl_json(self, *args):
        result = self.run_ctl(*args)
        assert result.returncode == 0, f"astara-ctl {args}: {result.stderr}\n{self.tail()}"
        return json.loads(result.stdout)

    def resource(self, resource_id):
        return self.ctl_json("resource", "show", resource_id)

    def state(self, resource_id):
        result = self.run_ctl("resource", "show", resource_id)
        return json.loads(result.stdout)["state"] if result.returncode == 0 else None

    def agent(self, address):
        return NetnsHTTPClient(self.ctl.name, address, 5000, timeout=10)

    def tail(self):
        return self.orchestrator.tail(6000)

    def wait_for(self, predicate, timeout, what):
        with errors_as(AssertionError):  # a test failure
            return self.orchestrator.wait_for(predicate, timeout, what)


@pytest.fixture
def world(lab):
    w = World(lab)
    try:
        yield w
    finally:
        w.close()


def build_router(world, router_id, tenant):
    ctl = world.ctl_json
    if not world.ctl_ok("network", "show", "ext"):
        ctl("network", "create", "id=ext", "external=true", "mtu=1500")
        ctl("subnet", "create", "id=ext4", "network_id=ext", "cidr=198.51.100.0/24",
            "gateway_ip=198.51.100.1", "enable_dhcp=false")
    net, sub = f"net-{router_id[:4]}", f"sub-{router_id[:4]}"
    ctl("network", "create", f"id={net}", f"tenant_id={tenant}", "mtu=1450")
    ctl("subnet", "create", f"id={sub}", f"network_id={net}", "cidr=10.1.0.0/24",
        'dns_nameservers=["198.51.100.53"]')
    ctl("router", "create", f"id={router_id}", f"tenant_id={tenant}")
    ctl("router", "set-gateway", router_id, "ext")
    ctl("router", "add-interface", router_id, sub)
    ctl("port", "create", f"network_id={net}", "device_id=vm-1", "device_owner=compute:nova",
        'fixed_ips=[{"ip_address": "10.1.0.10"}]')


def committed(world, instance):
    """The appliance's GET /v1/system/config, or None while it does not answer."""
    try:
        return world.agent(instance["management_address"]).get("/v1/system/config").json()
    except OSError:
        return None


def in_sync(world, router_id):
    """The resource is configured and every appliance's committed hash is the desired
    one; returns the resource view."""
    resource = world.resource(router_id)
    if resource["state"] != "configured" or not resource["instances"]:
        return None
    for instance in resource["instances"]:
        config = committed(world, instance)
        if config is None or config["hash"] != resource["desired_hash"].get(instance["name"]):
            return None
    return resource


def test_orchestrator_drives_a_real_appliance(world):
    build_router(world, ROUTER, "tenant1")
    resource = world.wait_for(lambda: in_sync(world, ROUTER), 60, "router configured")
    [instance] = resource["instances"]
    netns = instance["details"]["netns"]
    assert netns == f"{world.lab.prefix}-r5e1f0"  # short, readable, astara-leftovers' pattern
    config = committed(world, instance)
    assert config["configuration"]["hostname"] == "ak-tenant1"
    assert [n["network_type"] for n in config["configuration"]["networks"]] == \
        ["management", "external", "internal"]
    pid = instance["details"]["agent_pid"]
    assert pid_alive(pid)
    assert world.run_ctl("ssh", ROUTER).stdout.strip() == f"ip netns exec {netns} bash"
    assert "configured" in world.run_ctl("browse", "--once").stdout

    # Drift: another payload PUT behind the orchestrator's back is repaired by a poll.
    desired = resource["desired_hash"][instance["name"]]
    agent = world.agent(instance["management_address"])
    rogue = dict(config["configuration"], floating_ips=[
        {"floating_ip": "198.51.100.77", "fixed_ip": "10.1.0.10"}])
    response = agent.put_json("/v1/system/config", rogue)
    assert response.status == 200, response.text
    assert agent.get("/v1/system/config").json()["hash"] != desired
    world.wait_for(lambda: agent.get("/v1/system/config").json()["hash"] == desired, 30,
                   "drift repaired")
    assert world.resource(ROUTER)["instances"][0]["details"]["agent_pid"] == pid  # no reboot

    # A desired-state change reaches the appliance (the router's own event).
    world.ctl_json("floatingip", "create", f"router_id={ROUTER}",
                   "floating_ip_address=198.51.100.50", "fixed_ip_address=10.1.0.10")
    world.wait_for(lambda: agent.get("/v1/system/config").json()["configuration"].get(
        "floating_ips") == [{"floating_ip": "198.51.100.50", "fixed_ip": "10.1.0.10"}], 30,
        "floating IP pushed")
    world.wait_for(lambda: in_sync(world, ROUTER), 30, "in sync after the change")

    # Restarting the orchestrator adopts the running appliance: same agent, no push.
    generation = agent.get("/v1/system/config").json()["generation"]
    world.stop()
    assert pid_alive(pid)
    world.start()
    resource = world.wait_for(lambda: in_sync(world, ROUTER), 30, "adopted")
    assert resource["instances"][0]["details"]["agent_pid"] == pid
    assert resource["instances"][0]["details"]["netns"] == netns
    assert agent.get("/v1/system/config").json()["generation"] == generation

    # The agent dies (every process in the appliance's namespace, like a VM crash): the
    # orchestrator notices, replaces the appliance and configures the new one.
    for victim in subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                 text=True, check=True).stdout.split():
        os.kill(int(victim), signal.SIGKILL)
    resource = world.wait_for(
        lambda: (r := in_sync(world, ROUTER)) and
        r["instances"][0]["details"]["agent_pid"] != pid and r, 60, "rebuilt")
    new = resource["instances"][0]
    assert pid_alive(new["details"]["agent_pid"])
    assert committed(world, new)["configuration"]["floating_ips"] == [
        {"floating_ip": "198.51.100.50", "fixed_ip": "10.1.0.10"}]


def test_refused_payload_parks_in_error_and_the_appliance_is_not_rebooted(world):
    # "ak-bad_tenant" is no RFC 1123 host name: the agent refuses the payload with 422.
    build_router(world, BAD_ROUTER, "bad_tenant")
    resource = world.wait_for(
        lambda: (r := world.resource(BAD_ROUTER))["state"] == "error" and r, 60, "error")
    assert "422" in resource["last_error"] and "hostname" in resource["last_error"]
    assert "ak-bad_tenant" in resource["last_error"]
    [instance] = resource["instances"]
    pid = instance["details"]["agent_pid"]
    assert committed(world, instance)["generation"] == 0  # nothing half-applied
    polls = resource["automaton"]["polls"]
    # Three health polls are handled while parked: none retries the push or reboots.
    resource = world.wait_for(
        lambda: (r := world.resource(BAD_ROUTER))["automaton"]["polls"] >= polls + 3 and r,
        60, "three polls while parked")
    assert resource["state"] == "error"
    assert [i["details"]["agent_pid"] for i in resource["instances"]] == [pid]
    assert "resource list" and "error" in world.run_ctl("resource", "list").stdout

    # Fixing the desired state clears the error; the same appliance gets configured.
    world.ctl_json("router", "set", BAD_ROUTER, "tenant_id=goodtenant")
    resource = world.wait_for(lambda: in_sync(world, BAD_ROUTER), 30, "fixed")
    assert resource["instances"][0]["details"]["agent_pid"] == pid
    assert committed(world, resource["instances"][0])["configuration"]["hostname"] == \
        "ak-goodtenant"


def test_netns_driver_plugs_and_cleans_up(lab):
    """The driver alone: an appliance namespace with the real agent, hot-plug and unplug
    of a NIC (seen by the agent), and a delete that leaves nothing behind."""
    from orchestrator_lite.drivers.base import DriverError, Nic

    lab.bridge("b-mgmt")
    ctl = controller_node(lab, "b-mgmt")
    root = lab.tmpdir("appliances")
    driver = NetnsDriver(lab.prefix, root, fabric=lab.fabric().name,
                         bridges={"net-a": lab.bridge("b-neta")}, auto_bridges=False)
    instance = driver.create("ak-loadbalancer-961cb534-0a20_0",
                             [Nic("fa:16:3e:5e:4c:53", "mgmt", "mgt")],
                             "fdca:3ba5:a17a:acda:f816:3eff:fe5e:4c53/64")
    try:
        assert instance.id == f"{lab.prefix}-l961c0"
        agent = NetnsHTTPClient(ctl.name, instance.management_address, 5000, timeout=5)

        def nics():
            try:
                return {i["lladdr"]: i["ifname"]
                        for i in agent.get("/v1/system/interfaces").json()["interfaces"]}
            except OSError:
                return None

        deadline = time.monotonic() + 30
        while nics() != {"fa:16:3e:5e:4c:53": "ge0"}:
            assert time.monotonic() < deadline, "agent not answering"
            time.sleep(0.2)
        driver.attach(instance.id, Nic("fa:16:3e:13:6b:14", "net-a", "data", 1450))
        assert nics() == {"fa:16:3e:5e:4c:53": "ge0", "fa:16:3e:13:6b:14": "ge1"}
        fabric_links = lab.fabric().ip_json("link", "show", "master", "b-neta")
        assert [link["ifname"] for link in fabric_links] == ["l961c0-1"]
        assert [i.name for i in driver.list("ak-loadbalancer-")] == [instance.name]
        driver.detach(instance.id, "fa:16:3e:13:6b:14")
        assert nics() == {"fa:16:3e:5e:4c:53": "ge0"}
        with pytest.raises(DriverError, match="exists"):
            driver.create(instance.name, [Nic("fa:16:3e:00:00:01", "mgmt", "mgt")],
                          "fdca:3ba5:a17a:acda::1:1/64")
        pids = subprocess.run(["ip", "netns", "pids", instance.id], capture_output=True,
                              text=True, check=True).stdout.split()
        assert pids
    finally:
        driver.delete(instance.id)
    assert instance.id not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                             text=True).stdout
    assert not any(pid_alive(int(p)) for p in pids)
    assert driver.list("ak-") == [] and not (root / instance.id).exists()


def test_an_orchestrator_that_dies_at_start_fails_fast_with_its_log(lab):
    directory = lab.tmpdir("orchestrator")
    ini = write_config(directory / "orchestrator.ini", {
        "DEFAULT": {"state_dir": f"{directory}/state"}, "api": {"token": "t"}})
    missing = f"{lab.prefix}-missing"  # no such namespace: the server cannot enter it
    process = OrchestratorProcess(missing, ini, directory / "orchestrator.log")
    with pytest.raises(OrchestratorError, match=r"exited \(\d+\) while waiting for the "
                                                r"admin API") as failure:
        process.start(timeout=60)
    assert missing in str(failure.value)  # the log's tail says why
    assert not process.stop()  # nothing left to stop


def test_metrics_and_the_push_request_id_in_both_logs(world):
    """The orchestrator's /metrics after it booted and configured a real appliance, and the
    request id of its push: on its own log line and on the agent's lines for that apply."""
    build_router(world, ROUTER, "tenant1")
    resource = world.wait_for(lambda: in_sync(world, ROUTER), 60, "router configured")
    [instance] = resource["instances"]
    api = NetnsHTTPClient(world.ctl.name, "127.0.0.1", 44250, timeout=10)
    assert api.get("/metrics").status == 401
    response = api.request("GET", "/metrics",
                           headers={"Authorization": "Bearer functional-token"})
    assert response.status == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in response.text.splitlines() if line and not line.startswith("#")}
    assert samples['astara_orchestrator_resources{state="configured"}'] == 1
    assert samples['astara_orchestrator_boots_total{result="created"}'] == 1
    assert samples['astara_orchestrator_pushes_total{result="applied"}'] >= 1
    assert samples["astara_orchestrator_health_polls_total"] >= 1

    pushed = [line for line in (world.dir / "orchestrator.log").read_text().splitlines()
              if f"configured {instance['name']}" in line and "request_id=req-" in line]
    assert pushed, world.tail()
    request_id = pushed[0].split("request_id=")[1].split()[0]
    agent_log = open(instance["details"]["log"]).read()
    applied = [line for line in agent_log.splitlines() if f"request_id={request_id}" in line]
    assert any("push: applied" in line and "generation 0 -> 1" in line for line in applied), \
        agent_log[-3000:]
