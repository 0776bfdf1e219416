"""Fuzzing the live agent in a namespace: hypothesis payloads built from the model (valid and
mutated) and schemathesis cases from the agent's own /v1/openapi.json.

Properties: no answer is a 5xx; after every refusal the kernel state (addresses, routes,
the whole nftables ruleset, the daemons' config files) is what it was before; an accepted payload
is the committed one and its interface addresses are on the NICs; no payload generated
valid is refused. Each run reports how
many cases were generated valid and how many were applied, and at least a third must have
been applied (a schema too strict to accept anything cannot pass). The number of cases is
a share of ASTARA_FUZZ_CASES (`make test`: 2 000 in all, `make fuzz`: 10 000)."""
import json

import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (response_schema_conformance,
                                               status_code_conformance)
from schemathesis.checks import not_a_server_error

from astara_lab.appliance import API_PORT, contract_appliance
from astara_netns import in_netns

from .fuzzing import (MANAGEMENT_NETWORK, NIC_COUNT, addresses_in, budget, fuzz_settings,
                      in_test_ranges, kernel_state, mutated, new_tally, router_payloads,
                      state_difference, to_test_ranges)

pytestmark = pytest.mark.netns

CONFIG = "/v1/system/config"
ROLLBACK = "/v1/system/config/rollback"


class FuzzTarget:
    """The live agent with router-basic's management network and four NICs (ge0-ge3), the
    kernel state last read back, and the checks every pushed case goes through."""

    def __init__(self, lab):
        layout = {"networks": [MANAGEMENT_NETWORK, {"interface": {
            "ifname": f"ge{NIC_COUNT - 1}"}}]}
        self.appliance = contract_appliance(lab, "fuzz", layout)
        self.client = self.appliance.client(timeout=60)
        self.ctl = self.appliance.controller.name
        self.nics = {item["ifname"]: item["kernel_name"] for item in
                     self.client.get("/v1/system/interfaces").json()["interfaces"]}
        self.last_state = kernel_state(self.appliance)

    @property
    def url(self):
        return f"http://[{self.appliance.mgmt.ip}]:{API_PORT}"

    def put(self, body):
        return self.client.put_json(CONFIG, body)

    def check(self, status, body, answer, changes=True):
        """The properties of one PUT answered ``status``; ``body``: the JSON pushed (None
        when it was not JSON); ``changes``: False for a call that must change nothing
        (a confirm with no push awaiting one)."""
        assert status < 500, f"{status} for {json.dumps(body)[:2000]}: {answer[:2000]}"
        after = kernel_state(self.appliance)
        if status >= 400 or not changes:
            changed = state_difference(self.last_state, after)
            assert not changed, (f"{status} ({answer[:500]}) but the state changed: "
                                 f"{changed}")
        elif status == 200:
            if body is not None:  # a push; else a rollback, of a payload pushed before
                committed = self.client.get(CONFIG).json()
                assert committed["configuration"] == body
                self._addresses_are_on_the_nics(body, after)
            self.last_state = after

    def confirm(self):
        """Keep what a case pushed with ?confirm_timeout: its revert would come in the
        middle of a later case."""
        assert self.client.request("POST", f"{CONFIG}/confirm").status == 200
        self.last_state = kernel_state(self.appliance)

    def _addresses_are_on_the_nics(self, body, state):
        live = {link["ifname"]: set(link["addresses"]) for link in state["ip"]["links"]}
        for network in body["networks"]:
            interface = network["interface"]
            wanted = set(interface.get("addresses") or ())
            missing = wanted - live[self.nics[interface["ifname"]]]
            assert not missing, f"{interface['ifname']}: {sorted(missing)} not on the NIC"


@pytest.fixture(scope="module")
def target(module_lab):
    return FuzzTarget(module_lab)


# -- hypothesis: payloads from the model ----------------------------------------------------------
MODEL_CASES = budget("agent-model")
cases = st.one_of(router_payloads().map(lambda body: (True, body)),
                  mutated(router_payloads()).map(lambda body: (False, body)))


def test_model_payloads_never_5xx_and_refusals_change_nothing(target):
    tally = new_tally("agent, hypothesis payloads from the model")

    @fuzz_settings(MODEL_CASES)
    @given(case=cases)
    def push(case):
        valid, body = case
        assert all(in_test_ranges(a) or a in target.appliance.mgmt.network
                   for a in addresses_in(body))
        response = target.put(body)
        tally.count(response.status, valid)
        target.check(response.status, body, response.text)
        assert response.status == 200 or not valid, f"generated valid: {response.text}"

    push()
    assert tally.cases >= MODEL_CASES
    assert 3 * tally.applied >= tally.cases, tally.line()


# -- schemathesis: the agent's own OpenAPI document -------------------------------------------------
# Its Python API rather than its pytest plugin: the schema is read from the live agent, which
# exists only once the module's fixture has started it (the plugin's lazy loader,
# schemathesis.pytest.from_fixture, fails under pytest 9: it sets a node attribute pytest
# no longer has).
SCHEMATHESIS_CASES = budget("agent-schemathesis")
PUSH_WEIGHT = 8  # the pushed configuration is where the bugs hide


def openapi_cases(api):
    """Cases of every operation, valid and invalid for the schema (positive and negative
    generation), PUT /v1/system/config drawn PUSH_WEIGHT times as often as the others."""
    pushes, others = [], []
    for result in api.get_all_operations():
        operation = result.ok()
        push = operation.method.upper() == "PUT" and operation.path == CONFIG
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            (pushes if push else others).extend([strategy] * (PUSH_WEIGHT if push else 1))
    return st.one_of(pushes + others)  # first: hypothesis leans towards earlier branches


def test_openapi_cases_never_5xx_and_refusals_change_nothing(target):
    with in_netns(target.ctl):  # the management network is the controller's
        api = schemathesis.openapi.from_url(f"{target.url}/v1/openapi.json")
    tally = new_tally("agent, schemathesis from /v1/openapi.json")

    @fuzz_settings(SCHEMATHESIS_CASES)
    @given(case=openapi_cases(api))
    def call(case):
        if case.body is not NOT_SET:
            case.body = to_test_ranges(case.body)  # only test-range addresses reach a NIC
        with in_netns(target.ctl):
            response = case.call(timeout=60)
        pushed = case.method.upper() == "PUT" and case.path == CONFIG
        tally.count(response.status_code, change=pushed or case.path == ROLLBACK)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                 response_schema_conformance])
        if pushed:
            body = case.body if isinstance(case.body, (dict, list)) else None
            target.check(response.status_code, body, response.text)
        elif case.path == ROLLBACK:
            target.check(response.status_code, None, response.text)
        elif case.method.upper() != "GET":  # a confirm with none awaiting, a diff, a renewal
            target.check(response.status_code, None, response.text, changes=False)
        if response.status_code == 200 and "confirm_timeout" in (case.query or {}):
            target.confirm()

    call()
    assert tally.cases >= SCHEMATHESIS_CASES


def test_a_request_line_too_long_is_the_documented_414(target):
    """gunicorn refuses a request line over its limit before the app answers, with the 414
    every operation documents (test/unit/test_openapi.py checks the document)."""
    answer = target.client.get("/v1/status/?confirm_timeout=" + "9" * 5000)
    assert answer.status == 414
