"""The supervisor and the reconcile loop (issue 12, finding 5): with no push at all, dead
daemons come back and the kernel returns to the committed generation; the status says
``degraded`` with the reason while something stays down."""
import os
import signal

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab.peers import eventually
from astara_lab.scrape import metric

pytestmark = pytest.mark.netns

CONTRACT = contract_payloads("original-orchestrator")
BASIC = CONTRACT["router-basic"]


def supervised(lab, name):
    """Contract body ``name`` applied by an agent whose supervisor looks every 0.3 s
    (back-off up to 2 s)."""
    appliance = contract_appliance(lab, name, CONTRACT[name])
    appliance.stop()
    config = lab.tmpdir("agent-config") / "agent.ini"
    config.write_text("[supervisor]\ninterval = 0.3\nmax_backoff = 2\n")
    appliance.start(extra_args=("--config-file", str(config)))
    response = appliance.client().put_json("/v1/system/config", CONTRACT[name])
    assert response.status == 200, response.text
    return appliance


@pytest.fixture
def appliance(lab):
    return supervised(lab, "router-basic")


def status(appliance):
    return appliance.client().get("/v1/status/").json()


# daemon: (contract body that runs it, its pid file, the supervisor's reason)
DAEMONS = {"dnsmasq": ("router-basic", "dnsmasq/dnsmasq.pid", "dhcp is down"),
           "bird": ("router-dual-stack", "bird/bird.pid", "routing is down")}


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_a_killed_daemon_is_restarted(lab, daemon):
    name, pidfile, reason = DAEMONS[daemon]
    appliance = supervised(lab, name)
    old = appliance.daemon_pid(pidfile)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    eventually(lambda: appliance.daemon_pid(pidfile) not in (None, old), 10, f"{daemon} restarted")
    eventually(lambda: status(appliance)["repairs"].get(reason, 0) >= 1, 10, "repair counted")
    assert status(appliance)["state"] == "ready"
    assert appliance.client().get("/v1/system/config").json()["generation"] == 1


DRIFT = {
    "address": (lambda a: a.ns.ip("addr", "del", "10.1.0.1/24", "dev", "eth2"),
                lambda a: "10.1.0.1/24" in str(a.dump()), "netlink changed"),
    "nft element": (lambda a: a.ns.run(["nft", "delete element inet astara fip_dnat "
                                        "{ 172.24.4.228 }"]),
                    lambda a: "172.24.4.228" in a.ruleset(), "nftables changed"),
}


@pytest.mark.parametrize("drift", sorted(DRIFT))
def test_kernel_drift_is_repaired_without_a_push(appliance, drift):
    tamper, present, reason = DRIFT[drift]
    assert present(appliance)
    tamper(appliance)
    eventually(lambda: present(appliance), 10, f"{drift} repaired")
    eventually(lambda: status(appliance)["repairs"].get(reason, 0) >= 1, 10, "repair counted")


def test_status_is_degraded_while_a_daemon_cannot_come_back(appliance):
    """dnsmasq dies and cannot start again while its lease file is a directory: the status
    says degraded and why, until the file system is fixed and the supervisor restarts it."""
    _, pidfile, reason = DAEMONS["dnsmasq"]
    leases = appliance.state_dir / "dnsmasq" / "leases"
    old = appliance.daemon_pid(pidfile)
    leases.rename(leases.with_name("leases.aside"))
    leases.mkdir()
    try:
        os.kill(old, signal.SIGKILL)
        eventually(lambda: status(appliance)["state"] == "degraded", 10, "status degraded")
        report = status(appliance)
        assert reason in report["reasons"] and reason in report["last_error"]
        assert report["repairs"].get(reason, 0) == 0
    finally:
        leases.rmdir()
        leases.with_name("leases.aside").rename(leases)
    eventually(lambda: status(appliance)["repairs"].get(reason, 0) == 1, 20, "repaired")
    assert status(appliance)["state"] == "ready"
    assert appliance.daemon_pid(pidfile) is not None


def test_metrics_count_applies_refusals_repairs_and_restarts(appliance):
    client = appliance.client()
    before = client.get("/metrics").text
    assert metric(before, "astara_generation") == 1
    assert metric(before, "astara_applies_total", result="applied") >= 1
    assert metric(before, "astara_subsystem_apply_seconds_count", subsystem="dhcp") >= 1
    bad = dict(BASIC, floating_ips=[{"floating_ip": "not an address", "fixed_ip": "x"}])
    assert client.put_json("/v1/system/config", bad).status == 422
    _, pidfile, reason = DAEMONS["dnsmasq"]
    os.kill(appliance.daemon_pid(pidfile), signal.SIGKILL)
    eventually(lambda: status(appliance)["repairs"].get(reason, 0) >= 1, 10, "repaired")
    after = client.get("/metrics").text
    assert metric(after, "astara_refusals_total", reason="invalid_payload") == 1
    assert metric(after, "astara_reconcile_repairs_total", reason=reason) >= 1
    assert metric(after, "astara_daemon_restarts_total", subsystem="dhcp") >= 1
    assert metric(after, "astara_applies_total", result="applied") > metric(
        before, "astara_applies_total", result="applied")
