"""astara-router-ctl against the real agent in a namespace, run inside the appliance's
namespace as an operator on the appliance would: the committed config, the interface map,
health, the history of applies (and the request id reaching the agent's log), the diff of a
candidate, and a rollback to an older generation read back from the kernel."""
import copy
import json
import os
import re
import signal
import stat
import sys

import pytest

from astara_lab.appliance import REPO_ROOT, contract_appliance, contract_payloads
from astara_lab.peers import eventually
from orchestrator_lite.pki import CertificateAuthority, write_files

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]


def variant(extra_address=None, floating_ip=None):
    """router-basic with one more address on the external NIC and/or another floating IP."""
    body = copy.deepcopy(BASIC)
    external = next(n for n in body["networks"] if n["network_type"] == "external")
    if extra_address:
        external["interface"]["addresses"].append(extra_address)
    if floating_ip:
        body["floating_ips"][0]["floating_ip"] = floating_ip
    return body


def restarted_with(lab, ini_text, wait=True):
    """router-basic's appliance, its agent restarted with ``ini_text`` as its config file
    (``appliance.ini``, which astara-router-ctl reads too)."""
    appliance = contract_appliance(lab, "router-basic", BASIC)
    appliance.stop()
    appliance.ini = lab.tmpdir("agent-ini") / "astara.ini"
    appliance.ini.write_text(ini_text)
    appliance.start(extra_args=["--config-file", str(appliance.ini)], wait=wait)
    return appliance


@pytest.fixture
def appliance(lab):
    """router-basic's appliance with the supervisor off (a dead daemon stays dead, so health
    can be read while it is down), router-basic applied as generation 1."""
    appliance = restarted_with(lab, "[supervisor]\ninterval = 0\n")
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200, response.text
    return appliance


def ctl(appliance, *args, input=None):
    """astara-router-ctl in the appliance's namespace: (exit status, stdout, stderr)."""
    proc = appliance.ns.run(["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-m",
                             "astara_router.cli.ctl", "--config-file", str(appliance.ini),
                             "--state-dir", str(appliance.state_dir), *args],
                            check=False, input=input)
    return proc.returncode, proc.stdout, proc.stderr


def ctl_json(appliance, *args):
    status, out, err = ctl(appliance, "--json", *args)
    assert status in (0, 1), err
    return json.loads(out)


def put(appliance, body, request_id=None):
    headers = {"X-Request-Id": request_id} if request_id else {}
    return appliance.client().request("PUT", "/v1/system/config", json.dumps(body).encode(),
                                      {"Content-Type": "application/json", **headers})


def test_config_interfaces_health_and_history(appliance):
    status, out, _ = ctl(appliance, "config")
    assert status == 0 and out.startswith("generation 1  hash ")
    committed = ctl_json(appliance, "config")
    assert committed["generation"] == 1 and committed["configuration"] == BASIC

    interfaces = {i["ifname"]: i for i in ctl_json(appliance, "interfaces")["interfaces"]}
    assert {name: (i["lladdr"], i["kernel_name"]) for name, i in interfaces.items()} == \
        {f"ge{n}": (mac, f"eth{n}") for n, mac in enumerate(appliance.macs)}
    assert "172.24.4.7/24" in interfaces["ge1"]["addresses"]
    status, out, _ = ctl(appliance, "interfaces")
    assert status == 0 and re.search(r"^ge1\s+eth1\s+" + appliance.macs[1], out, re.M)

    status, out, _ = ctl(appliance, "health")
    assert status == 0 and out.startswith("state: ready  generation: 1")
    dnsmasq = appliance.daemon_pid("dnsmasq/dnsmasq.pid")
    os.kill(dnsmasq, signal.SIGKILL)
    eventually(lambda: ctl(appliance, "health")[0] == 1, timeout=10,
               what="health to report the dead dnsmasq")
    status, out, _ = ctl(appliance, "health")
    assert status == 1 and "state: degraded" in out and "down: dhcp is down" in out

    # History: the caller's request id, the generations, each subsystem's time; a refusal.
    assert put(appliance, variant(extra_address="172.24.4.8/24"), "req-ctl-test-1").status == 200
    refused = copy.deepcopy(BASIC)
    refused["networks"][1]["interface"]["addresses"] = ["0.0.0.0/0"]
    assert put(appliance, refused, "req-ctl-refused").status == 422
    entries = ctl_json(appliance, "history")["history"]
    by_id = {e["request_id"]: e for e in entries}
    applied = by_id["req-ctl-test-1"]
    assert (applied["origin"], applied["result"], applied["previous_generation"],
            applied["generation"]) == ("push", "applied", 1, 2)
    assert applied["changes"] > 0 and {"netlink", "firewall"} <= set(applied["subsystem_seconds"])
    assert (by_id["req-ctl-refused"]["result"], by_id["req-ctl-refused"]["status"]) == \
        ("refused", 422)
    assert "networks[1]" in by_id["req-ctl-refused"]["error"]
    assert entries[0]["origin"] == "boot"
    status, out, _ = ctl(appliance, "history", "-n", "2")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3 + ("last apply per subsystem" in out)
    assert "req-ctl-test-1" in lines[1] and "applied" in lines[1] and "1->2" in lines[1]
    assert "req-ctl-refused" in lines[2] and "refused" in lines[2]

    # The request id reached the agent's log: on the push's one summary line too.
    log = appliance.log_path.read_text()
    tagged = [line for line in log.splitlines() if "request_id=req-ctl-test-1" in line]
    assert any("push: applied" in line and "generation 1 -> 2" in line and
               line.endswith("generation=2") for line in tagged), log[-3000:]
    assert any("push: applied" in line and "generation 1 -> 2" in line for line in tagged)
    assert not any(" applied in " in line and "push: applied" not in line
                   for line in tagged)  # once per push (history.py), not by the engine too


def test_diff_shows_the_change_and_applies_nothing(appliance):
    before = appliance.dump(), appliance.ruleset()
    candidate = appliance.lab.tmpdir("candidate") / "candidate.json"
    candidate.write_text(json.dumps(variant(floating_ip="172.24.4.230")))
    status, out, _ = ctl(appliance, "diff", str(candidate))
    assert status == 1, out
    assert '-      "floating_ip": "172.24.4.228"' in out.splitlines()
    assert '+      "floating_ip": "172.24.4.230"' in out.splitlines()
    would = out.splitlines()[-1]
    assert would.startswith("would change: ") and "firewall" in would and "dhcp" not in would
    assert (appliance.dump(), appliance.ruleset()) == before
    assert ctl_json(appliance, "config")["generation"] == 1

    status, out, _ = ctl(appliance, "diff", "-", input=json.dumps(BASIC))
    assert (status, out.strip()) == (0, "identical to the running generation 1")
    refused = variant(floating_ip="172.24.4.7")  # the router's own address
    status, out, _ = ctl(appliance, "diff", "-", input=json.dumps(refused))
    assert status == 2 and out.startswith("refused: ") and "floating_ips[0]" in out


def test_diff_against_nothing_committed_names_every_line_and_redacts(lab):
    """(Was a unit test: a diff plans the candidate as a push would, so it needs an
    appliance with the payload's NICs.)"""
    vpn = contract_payloads("original-orchestrator")["router-vpn"]  # the one body with a psk
    appliance = contract_appliance(lab, "router-vpn", vpn)
    client = appliance.client()
    candidate = copy.deepcopy(vpn)
    [psk] = [c["psk"] for s in candidate["vpn"]["ipsec"] for c in s["ipsec_connections"]]
    response = client.request("POST", "/v1/system/config/diff",
                              json.dumps(candidate).encode(),
                              {"Content-Type": "application/json"})
    assert response.status == 200, response.text
    answer = response.json()
    assert answer["identical"] is False and answer["generation"] == 0
    assert answer["diff"][:2] == ["--- generation 0", "+++ candidate"]
    added = "\n".join(line[1:] for line in answer["diff"] if line.startswith("+")
                      and not line.startswith("+++"))
    assert f'"hostname": "{candidate["hostname"]}"' in added
    assert '"psk": "<redacted>"' in added
    assert psk not in json.dumps(answer)
    assert {"netlink", "firewall"} <= set(answer["subsystems"])
    assert client.get("/v1/system/config").json()["generation"] == 0  # not applied
    # Only the boot re-apply (of nothing): the diff is no activity.
    assert [e["origin"] for e in client.get("/v1/system/history").json()["history"]] == \
        ["boot"]


def test_diff_refuses_what_a_push_refuses(appliance):
    """A renderer's refusal at plan time (an HA router has one peer) and a moved management
    address (only under commit-confirm): the diff answers exactly what the push answers."""
    two_peers = copy.deepcopy(BASIC)
    two_peers["ha_resource"] = True
    two_peers["ha_config"] = {"peers": ["fdca:3ba5:a17a:acda::71", "fdca:3ba5:a17a:acda::72"],
                              "priority": 100}
    moved = copy.deepcopy(BASIC)
    management = next(n for n in moved["networks"] if n["network_type"] == "management")
    management["interface"]["addresses"] = ["fdca:3ba5:a17a:acda::99/64"]
    client = appliance.client()
    for candidate, field in ((two_peers, "ha_config.peers"), (moved, "networks[0]")):
        diffed = client.request("POST", "/v1/system/config/diff",
                                json.dumps(candidate).encode(),
                                {"Content-Type": "application/json"})
        pushed = put(appliance, candidate)
        assert (diffed.status, diffed.json()) == (pushed.status, pushed.json()) and \
            diffed.status == 422, diffed.text
        assert diffed.json()["errors"][0]["path"].startswith(field), diffed.text
    status, out, _ = ctl(appliance, "diff", "-", input=json.dumps(two_peers))
    assert status == 2 and out.startswith("refused: ") and "ha_config.peers" in out
    assert ctl_json(appliance, "config")["generation"] == 1


def test_rollback_to_an_older_generation_restores_its_dataplane(appliance):
    kernel = {1: (appliance.dump(), appliance.ruleset())}
    for generation, body in ((2, variant(extra_address="172.24.4.8/24")),
                             (3, variant(floating_ip="172.24.4.230"))):
        response = put(appliance, body)
        assert response.status == 200 and response.json()["generation"] == generation
        kernel[generation] = (appliance.dump(), appliance.ruleset())
    assert kernel[1] != kernel[2] != kernel[3] != kernel[1]
    kept = ctl_json(appliance, "generations")["generations"]
    assert [(g["generation"], g["committed"]) for g in kept] == \
        [(3, True), (2, False), (1, False)]

    status, out, err = ctl(appliance, "rollback", "1")
    assert status == 0, err
    assert out.startswith("rolled back to generation 1: now generation 4 (")
    committed = ctl_json(appliance, "config")
    assert committed["generation"] == 4 and committed["configuration"] == BASIC
    assert committed["hash"] == kept[-1]["hash"]
    assert (appliance.dump(), appliance.ruleset()) == kernel[1]

    status, out, err = ctl(appliance, "rollback")  # the previous one: generation 3's
    assert status == 0, err
    assert (appliance.dump(), appliance.ruleset()) == kernel[3]
    last = ctl_json(appliance, "history")["history"][-2:]
    assert [(e["origin"], e["detail"], e["result"], e["generation"]) for e in last] == \
        [("rollback", "to generation 1", "applied", 4),
         ("rollback", "to generation 3", "applied", 5)]

    status, _, err = ctl(appliance, "rollback", "99")
    assert status == 2 and "generation 99 is not kept" in err and "kept: 5, 4, 3, 2, 1" in err
    assert ctl_json(appliance, "config")["generation"] == 5

    # Under commit-confirm: awaiting until the operator confirms.
    status, out, err = ctl(appliance, "rollback", "2", "--confirm-timeout", "300")
    assert status == 0 and "now generation 6" in out, err
    assert (appliance.dump(), appliance.ruleset()) == kernel[2]
    assert "awaiting confirmation: generation 6" in ctl(appliance, "health")[1]
    assert ctl(appliance, "confirm")[1].strip() == "confirmed generation 6"
    assert "awaiting confirmation" not in ctl(appliance, "health")[1]
    assert [g["generation"] for g in ctl_json(appliance, "generations")["generations"]] == \
        [6, 5, 4, 3, 2, 1]


def test_config_and_generations_read_the_state_directory_when_the_agent_is_down(appliance):
    assert put(appliance, variant(extra_address="172.24.4.8/24")).status == 200
    appliance.stop()
    status, out, err = ctl(appliance, "--json", "config")
    assert status == 0 and "does not answer" in err
    offline = json.loads(out)
    assert offline["generation"] == 2
    assert offline["configuration"] == variant(extra_address="172.24.4.8/24")
    status, out, _ = ctl(appliance, "generations")
    assert status == 0 and f"read from {appliance.state_dir}" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["2", "1"]
    status, _, err = ctl(appliance, "health")
    assert status == 3 and "does not answer" in err


def test_history_shows_a_supervisor_repair(lab):
    appliance = restarted_with(lab, "[supervisor]\ninterval = 0.3\nmax_backoff = 2\n")
    assert put(appliance, BASIC, "req-first").status == 200
    os.kill(appliance.daemon_pid("dnsmasq/dnsmasq.pid"), signal.SIGKILL)

    def repaired():
        return [e for e in ctl_json(appliance, "history")["history"]
                if e["origin"] == "reconcile" and "dhcp is down" in (e["detail"] or "")]

    [repair, *_] = eventually(repaired, timeout=20, what="a reconcile entry")
    assert (repair["result"], repair["previous_generation"], repair["generation"]) == \
        ("applied", 1, 1)
    assert repair["changes"] > 0 and repair["request_id"].startswith("req-")
    assert appliance.daemon_pid("dnsmasq/dnsmasq.pid") is not None


def test_ctl_speaks_mutual_tls_with_a_client_certificate(lab):
    """The agent under mutual TLS with certificates of the orchestrator's own CA
    (orchestrator_lite/pki.py: the appliance's is for server use only): over TCP
    astara-router-ctl trusts the agent's [api] ca_certs from its config file and gets in
    with --cert/--key, a client certificate of that CA, not without one; the operator
    socket needs none."""
    ca = CertificateAuthority(lab.tmpdir("pki"))
    bundle = ca.issue("ak-ctl-test")
    base = lab.tmpdir("agent-tls")
    write_files(bundle.boot_files(base))
    appliance = restarted_with(lab, (base / "tls" / "agent.ini").read_text() +
                               "[supervisor]\ninterval = 0\n", wait=False)
    url = f"https://[{appliance.mgmt.ip}]:5000"
    # the orchestrator's client certificate, of the same CA
    certificate = ["--cert", str(ca.client_cert_file), "--key", str(ca.client_key_file)]
    eventually(lambda: ctl(appliance, "--url", url, *certificate, "health")[0] == 0,
               timeout=30, what="the agent over TLS")
    assert ctl_json(appliance, "--url", url, *certificate, "config")["generation"] == 0
    status, _, err = ctl(appliance, "--url", url, "health")  # no client certificate
    assert status == 3 and "does not answer" in err
    status, _, err = ctl(appliance, "--url", f"http://[{appliance.mgmt.ip}]:5000", "health")
    assert status == 3 and "does not answer" in err
    # Without --url: the operator socket, which needs no certificate at all.
    socket = appliance.state_dir / "run" / "api.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    assert ctl(appliance, "--cert", "/nonexistent", "health")[0] == 0
    assert ctl(appliance, "health")[0] == 0


def test_without_the_operator_socket_the_ctl_uses_the_api_address(appliance):
    socket = appliance.state_dir / "run" / "api.sock"
    assert socket.exists()
    socket.unlink()  # as with a state directory too deep for a socket path
    status, out, _ = ctl(appliance, "health")
    assert status == 0 and out.startswith("state: ready  generation: 1")
