"""The operator's routes (history, generations, diff, rollback) and request ids on the paths
that never touch the kernel, with the real engine (no root, no namespaces). What applies is
covered in test/functional/test_agent_ctl.py."""
import json
import logging

import pytest

from astara_lab.appliance import contract_payloads
from astara_lab.cluster import push_log

VALID = contract_payloads("original-orchestrator")
INVALID = contract_payloads("invalid")


def put(client, body, headers=None):
    return client.put("/v1/system/config", data=json.dumps(body),
                      content_type="application/json", headers=headers or {})


def test_a_refused_push_is_in_the_history_with_the_callers_request_id(client):
    name = sorted(INVALID)[0]
    response = put(client, INVALID[name], {"X-Request-Id": "req-from-the-orchestrator-1"})
    assert response.status_code in (400, 422)
    assert response.headers["X-Request-Id"] == "req-from-the-orchestrator-1"
    [entry] = client.get("/v1/system/history").get_json()["history"]
    assert entry["request_id"] == "req-from-the-orchestrator-1"
    assert (entry["origin"], entry["result"], entry["status"]) == \
        ("push", "refused", response.status_code)
    assert entry["error"] and entry["generation"] == entry["previous_generation"] == 0
    assert entry["seconds"] >= 0 and entry["transaction"] is False


def test_without_a_request_id_one_is_made_and_echoed(client):
    response = put(client, INVALID[sorted(INVALID)[0]])
    made = response.headers["X-Request-Id"]
    assert made.startswith("req-") and len(made) == 40
    assert client.get("/v1/system/history").get_json()["history"][-1]["request_id"] == made
    assert client.get("/v1/").headers["X-Request-Id"] != made  # one per request


@pytest.mark.parametrize("bad", ["", "-starts-with-a-dash", "has space", "x" * 129,
                                 "semi;colon", "ünïcode"])
def test_a_request_id_outside_its_grammar_is_400_naming_the_header(client, bad):
    response = client.put("/v1/system/config", data=b"{}", content_type="application/json",
                          headers={"X-Request-Id": bad.encode("utf-8").decode("latin-1")})
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["path"] == "X-Request-Id"
    assert client.get("/v1/system/history").get_json()["history"] == []  # never applied


def test_history_limit(client):
    for _ in range(3):
        put(client, INVALID[sorted(INVALID)[0]])
    assert len(client.get("/v1/system/history?limit=2").get_json()["history"]) == 2
    assert len(client.get("/v1/system/history").get_json()["history"]) == 3
    for bad in ("0", "x", "1001", "-1"):
        response = client.get(f"/v1/system/history?limit={bad}")
        assert response.status_code == 400
        assert response.get_json()["errors"][0]["path"] == "limit"


def test_diff_of_an_invalid_candidate_is_the_pushs_refusal(client):
    name = sorted(INVALID)[0]
    pushed = put(client, INVALID[name])
    diffed = client.post("/v1/system/config/diff", data=json.dumps(INVALID[name]),
                         content_type="application/json")
    assert diffed.status_code == pushed.status_code
    assert diffed.get_json() == pushed.get_json()


def test_diff_plans_even_with_nothing_committed_and_answers_a_renderers_refusal(client):
    """The candidate is planned as a push would plan it: NICs this machine lacks are the
    netlink renderer's 422 naming the field (an ApplyError at plan time), not a 200 that
    never planned nor a 500. (What a diff answers for a candidate that plans is covered in
    test/functional/test_agent_ctl.py, on an appliance with the payload's NICs.)"""
    candidate = json.loads(json.dumps(VALID["router-basic"]))
    for i, network in enumerate(candidate["networks"]):
        network["interface"]["ifname"] = f"ge{97 + i}"
    response = client.post("/v1/system/config/diff", data=json.dumps(candidate),
                           content_type="application/json")
    assert response.status_code == 422, response.get_json()
    [error] = response.get_json()["errors"]
    assert error["path"] == "networks[0].interface.ifname"
    assert "ge97 does not exist on this appliance" in error["message"]
    assert client.get("/v1/system/history").get_json()["history"] == []  # not applied


@pytest.mark.parametrize("body,status", [(b"[1]", 400), (b"{", 400), (b'{"generation": 0}', 400),
                                         (b'{"generation": true}', 400),
                                         (b'{"generation": "3"}', 400),
                                         (b'{"generation": 7}', 404), (b"", 404)])
def test_rollback_refusals(client, body, status):
    response = client.post("/v1/system/config/rollback", data=body,
                           content_type="application/json")
    assert response.status_code == status, response.get_json()
    if status == 404:
        assert response.get_json()["errors"][0]["path"] == "generation"
        assert "kept: none" in response.get_json()["message"]
        assert ("the previous generation is not kept" if body == b"" else
                "generation 7 is not kept") in response.get_json()["message"]


def test_generations_with_nothing_committed(client):
    assert client.get("/v1/system/generations").get_json() == {"generation": 0,
                                                               "generations": []}


def test_a_push_is_one_log_line_naming_its_sender(client, caplog, tmp_path):
    """The activity's summary (history.py) names who pushed; the epoch fence's refusal has
    its own line; astara_lab.cluster.push_log reads both."""
    caplog.set_level(logging.INFO)
    body = INVALID[sorted(INVALID)[0]]
    refused = put(client, body, {"X-Astara-Epoch": "5", "X-Astara-Orchestrator": "orch-a"})
    assert refused.status_code in (400, 422)
    stale = put(client, body, {"X-Astara-Epoch": "4", "X-Astara-Orchestrator": "orch-b"})
    assert stale.status_code == 409
    lines = [record.getMessage() for record in caplog.records]
    [pushed] = [line for line in lines if "orchestrator=orch-a" in line]  # one line
    assert pushed.startswith("push: refused in ") and \
        "(from orchestrator=orch-a epoch=5): " in pushed
    [entry] = client.get("/v1/system/history").get_json()["history"]
    assert entry["detail"] == "from orchestrator=orch-a epoch=5"
    log = tmp_path / "agent.log"
    log.write_text("\n".join(lines))
    assert push_log(log) == [("orch-a", 5, False), ("orch-b", 4, False)]
