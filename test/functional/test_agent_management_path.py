"""No push can cut the management path (issue 12, finding 2), and commit-confirm: the real
agent in a namespace, pushed to from the controller on the management network."""
import copy
import json
import time

import pytest

from astara_lab.appliance import ORCHESTRATOR_ADDRESS, contract_appliance, contract_payloads
from astara_lab.peers import eventually

pytestmark = pytest.mark.netns

PAYLOADS = contract_payloads("original-orchestrator")
BASIC = PAYLOADS["router-basic"]
DUAL = PAYLOADS["router-dual-stack"]
NEW_MANAGEMENT_ADDRESS = "fdca:3ba5:a17a:acda::77/64"


def booted(lab, name, payload):
    appliance = contract_appliance(lab, name, payload)
    response = appliance.client().put_json("/v1/system/config", payload)
    assert response.status == 200, response.text
    return appliance


def re_addressed(payload):
    body = copy.deepcopy(payload)
    body["networks"][0]["interface"]["addresses"] = [NEW_MANAGEMENT_ADDRESS]
    return body


def with_fip(payload):
    body = copy.deepcopy(payload)
    body["floating_ips"].append({"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"})
    return body


def committed(appliance):
    return appliance.client(timeout=3).get("/v1/system/config").json()


def answering(appliance):
    """The committed config, or None while the agent does not answer."""
    try:
        return committed(appliance)
    except OSError:
        return None


def test_a_route_taking_the_requests_source_elsewhere_is_refused(lab):
    """The payload does not name the orchestrator: only the request's source tells the
    agent that fdca:3ba5:a17a:acda::2 must stay on the management interface."""
    body = copy.deepcopy(DUAL)
    del body["orchestrator"]
    appliance = booted(lab, "router-dual-stack", body)
    before = appliance.dump()
    cutting = copy.deepcopy(body)
    cutting["static_routes"] = [[ORCHESTRATOR_ADDRESS + "/128", "fd4e:7a31:2c5b:1::99"]]
    response = appliance.client().put_json("/v1/system/config", cutting)
    assert response.status == 422, response.text
    paths = {error["path"] for error in response.json()["errors"]}
    assert paths == {"static_routes[0]"}
    assert "management interface ge0" in response.json()["errors"][0]["message"]
    assert appliance.dump() == before
    assert committed(appliance)["generation"] == 1


def test_re_addressing_the_management_network_needs_commit_confirm(lab):
    appliance = booted(lab, "router-basic", BASIC)
    before = appliance.dump()
    response = appliance.client().put_json("/v1/system/config", re_addressed(BASIC))
    assert response.status == 422, response.text
    (error,) = response.json()["errors"]
    assert error["path"] == "networks[0].interface.addresses"
    assert "confirm_timeout" in error["message"]
    assert appliance.dump() == before


def test_a_push_that_cuts_the_path_under_commit_confirm_reverts_by_itself(lab):
    appliance = booted(lab, "router-basic", BASIC)
    before = appliance.dump()
    try:  # the answer may or may not make it out before the address goes
        appliance.client(timeout=5).put_raw("/v1/system/config?confirm_timeout=3",
                                            json.dumps(re_addressed(BASIC)).encode(),
                                            "application/json")
    except OSError:
        pass
    eventually(lambda: NEW_MANAGEMENT_ADDRESS.split("/")[0] in appliance.ns.ip(
        "-6", "addr", "show", "dev", "eth0"), 10, "the new management address applied")
    config = eventually(lambda: answering(appliance), 30, "the agent answering again")
    assert config["generation"] == 3  # 2: the unconfirmed push, 3: the revert
    assert config["configuration"] == BASIC
    assert appliance.dump() == before
    status = appliance.client().get("/v1/status/").json()
    assert status["awaiting_confirmation"] is None


def test_a_confirmed_generation_stays(lab):
    appliance = booted(lab, "router-basic", BASIC)
    response = appliance.client().put_raw("/v1/system/config?confirm_timeout=2",
                                          json.dumps(with_fip(BASIC)).encode(),
                                          "application/json")
    assert response.status == 200, response.text
    assert appliance.client().get("/v1/status/").json()["awaiting_confirmation"] == 2
    confirmed = appliance.client().request("POST", "/v1/system/config/confirm")
    assert confirmed.status == 200 and confirmed.json()["confirmed"] == 2
    time.sleep(3)  # past the timeout: nothing reverts
    config = committed(appliance)
    assert config["generation"] == 2 and config["configuration"] == with_fip(BASIC)


def test_a_restart_while_awaiting_confirmation_comes_back_on_the_confirmed_one(lab):
    appliance = booted(lab, "router-basic", BASIC)
    before = appliance.dump()
    response = appliance.client().put_raw("/v1/system/config?confirm_timeout=600",
                                          json.dumps(with_fip(BASIC)).encode(),
                                          "application/json")
    assert response.status == 200, response.text
    assert appliance.dump() != before
    appliance.stop()
    appliance.start()
    config = committed(appliance)
    assert config["configuration"] == BASIC and config["generation"] == 3
    assert appliance.dump() == before


def test_a_bad_confirm_timeout_is_a_400_naming_it(lab):
    appliance = booted(lab, "router-basic", BASIC)
    response = appliance.client().put_raw("/v1/system/config?confirm_timeout=-1",
                                          json.dumps(BASIC).encode(), "application/json")
    assert response.status == 400
    assert response.json()["errors"][0]["path"] == "confirm_timeout"


def test_a_first_push_must_keep_the_address_the_agent_answers_on(lab):
    """No generation committed yet: the address the request arrived on (the one
    astara-configure-management set at boot) is the management path to keep."""
    appliance = contract_appliance(lab, "router-basic", BASIC)
    response = appliance.client().put_json("/v1/system/config", re_addressed(BASIC))
    assert response.status == 422, response.text
    (error,) = response.json()["errors"]
    assert error["path"] == "networks[0].interface.addresses"
    assert "answers on" in error["message"]
    assert committed(appliance)["generation"] == 0
