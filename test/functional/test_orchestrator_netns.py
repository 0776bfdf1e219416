"""The orchestrator with its netns driver, for real: a fabric, a management bridge and the
ctl namespace (fdca:3ba5:a17a:acda::2) where astara-orchestrator runs; resources are
created with astara-ctl; appliances are namespaces running the real agent.

The server is started with ``--netns <ctl>`` rather than under ``ip netns exec``: the
latter gives it a private mount namespace, where namespaces it creates would be invisible
to everybody else (see orchestrator_lite/cli/server.py and astara_lab/orchestrator.py).
The world and the astara-ctl steps are in orchestrator_world.py (the `world` fixture in
conftest.py).
"""
import os
import signal
import subprocess
import time

import pytest

from astara_lab.appliance import controller_node
from astara_netns import NetnsHTTPClient, pid_alive
from astara_lab.orchestrator import OrchestratorError, OrchestratorProcess, write_config
from orchestrator_lite.drivers.netns import NetnsDriver

from .orchestrator_world import ROUTER, build_router, committed, in_sync

pytestmark = pytest.mark.netns

BAD_ROUTER = "b0d0c3a1-7d2b-4c1e-9a8f-0b1c2d3e4f51"


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
    assert samples['astara_orchestrator_boots_total{result="created"}'] == 1, world.tail()
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
