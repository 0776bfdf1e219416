"""astara-router-ctl's own logic: where it finds the agent, what it prints and its exit
statuses, given the API's answers (the API itself: test_operator_api.py; both together
against the real agent: test/functional/test_agent_ctl.py)."""
import copy
import io
import json
import subprocess
import sys

import pytest

from astara_lab.appliance import contract_payloads
from astara_router import settings as settings_mod
from astara_router.cli import ctl
from astara_router.store import Store


@pytest.mark.parametrize("bind,expected", [
    ("[fdca:3ba5:a17a:acda::5]:5000", ("fdca:3ba5:a17a:acda::5", 5000)),
    ("198.51.100.5:5001", ("198.51.100.5", 5001)),
    ("[::]:5000", ("::1", 5000)), ("0.0.0.0:5000", ("127.0.0.1", 5000))])
def test_split_bind(bind, expected):
    assert ctl.split_bind(bind) == expected


def test_the_agent_is_found_where_it_listens_without_settling_a_pending_generation(tmp_path):
    store = Store(str(tmp_path))
    confirmed = contract_payloads("original-orchestrator")["router-basic"]
    awaiting = copy.deepcopy(confirmed)  # the same router, another management address
    [management] = [n for n in awaiting["networks"] if n["network_type"] == "management"]
    assert management["interface"]["addresses"] != ["fdca:3ba5:a17a:acda::5/64"]
    management["interface"]["addresses"] = ["fdca:3ba5:a17a:acda::5/64"]
    store.commit(1, confirmed)
    store.commit(2, awaiting, awaiting=True)
    settings = settings_mod.load(state_dir=str(tmp_path))
    agent = ctl.Agent.from_settings(settings)
    # Where the agent listens now: generation 2's address. Reading it must not settle
    # the generation awaiting confirmation (a load would revert to generation 1's).
    assert (agent.host, agent.port) == ("fdca:3ba5:a17a:acda::5", 5000)
    assert store.awaiting() == 2 and store.current().number == 2
    url = ctl.Agent.from_settings(settings, "http://[fdca::7]:5002")
    assert (url.host, url.port, url.tls) == ("fdca::7", 5002, None)


def test_the_ctl_does_not_import_the_agent():
    """Every operator command starts a Python: the API package (Flask, the engine, every
    applier, prometheus_client) would add ~0.35 s to each; the socket path is in settings."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, astara_router.cli.ctl; print(sorted(m for m in "
         "('flask', 'astara_router.api', 'astara_router.engine') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


class Answers:
    """Stands in for the agent's API: canned answers by (method, path)."""

    def __init__(self, answers):
        self.answers, self.sent = answers, []

    def request(self, method, path, body=None):
        self.sent.append((method, path, body))
        answer = self.answers[(method, path.split("?")[0])]
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(argv, answers, tmp_path):
    out = io.StringIO()
    args = ctl.parse_args(argv)
    status = ctl.run(args, answers, settings_mod.load(state_dir=str(tmp_path)), out)
    return status, out.getvalue()


def test_diff_exit_statuses(tmp_path):
    candidate = tmp_path / "c.json"
    candidate.write_text("{}")
    path = ("POST", "/v1/system/config/diff")
    status, out = run(["diff", str(candidate)], Answers({path: {
        "identical": False, "diff": ["--- generation 3", "+++ candidate", "-a", "+b"],
        "subsystems": ["firewall"], "generation": 3}}), tmp_path)
    assert status == 1 and out.splitlines() == [
        "--- generation 3", "+++ candidate", "-a", "+b", "would change: firewall"]
    status, out = run(["diff", str(candidate)], Answers({path: {
        "identical": True, "generation": 3}}), tmp_path)
    assert (status, out) == (0, "identical to the running generation 3\n")
    refusal = ctl.AgentError(422, {"message": "not valid", "errors": [
        {"path": "hostname", "message": "too long"}]})
    status, out = run(["diff", str(candidate)], Answers({path: refusal}), tmp_path)
    assert (status, out) == (2, "refused: not valid\n  hostname: too long\n")


def test_health_exit_status_follows_the_state(tmp_path):
    path = ("GET", "/v1/status/")
    assert run(["health"], Answers({path: {"state": "ready"}}), tmp_path)[0] == 0
    status, out = run(["health"], Answers({path: {
        "state": "degraded", "generation": 4, "reasons": ["dhcp is down"],
        "last_error": "dhcp is down", "repairs": {"dhcp is down": 2}}}), tmp_path)
    assert status == 1
    assert out.splitlines() == ["state: degraded  generation: 4", "  down: dhcp is down",
                                "last error: dhcp is down", "repairs: dhcp is down (2)"]


def test_history_table(tmp_path):
    entry = {"origin": "rollback", "detail": "to generation 1", "request_id": "req-1",
             "result": "applied", "previous_generation": 3, "generation": 4, "changes": 5,
             "seconds": 0.25, "started_at": 86400, "error": None,
             "subsystem_seconds": {"netlink": 0.125}}
    answers = Answers({("GET", "/v1/system/history"): {"history": [entry]}})
    status, out = run(["history", "-n", "5"], answers, tmp_path)
    header, row, last = out.splitlines()
    assert status == 0 and answers.sent == [("GET", "/v1/system/history?limit=5", None)]
    assert header.split() == ["STARTED", "(UTC)", "ORIGIN", "REQUEST", "ID", "RESULT",
                              "GENERATION", "CHANGES", "SECONDS", "ERROR"]
    assert row.split()[:2] == ["1970-01-02", "00:00:00"]
    assert row.split()[2:] == ["rollback", "to", "generation", "1", "req-1", "applied",
                               "3->4", "5", "0.250"]
    assert last == "last apply per subsystem: netlink 0.125 s"


def test_rollback_sends_the_generation_and_the_confirm_timeout(tmp_path):
    answers = Answers({("POST", "/v1/system/config/rollback"): {
        "generation": 9, "changes": 2, "hash": "h"}})
    status, out = run(["--json", "rollback", "4", "--confirm-timeout", "60"], answers,
                      tmp_path)
    assert status == 0 and json.loads(out)["generation"] == 9
    assert answers.sent == [("POST", "/v1/system/config/rollback?confirm_timeout=60",
                             {"generation": 4})]


def test_the_operator_socket_serves_the_api_to_the_ctl(tmp_path):
    from astara_router.api import create_app, local
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    (tmp_path / "run").mkdir()
    server = local.serve(create_app(settings), settings)
    try:
        path = tmp_path / "run" / "api.sock"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        agent = ctl.Agent.from_settings(settings)
        assert agent.unix == str(path)
        assert agent.request("GET", "/v1/system/generations") == {"generation": 0,
                                                                  "generations": []}
    finally:
        server.shutdown()
        server.server_close()


def test_no_operator_socket_where_the_path_is_too_long(tmp_path):
    from astara_router.api import local
    deep = tmp_path / ("d" * 100)
    settings = settings_mod.load(state_dir=str(deep))
    assert local.serve(None, settings) is None
