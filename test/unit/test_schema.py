"""The published JSON Schema, checked with an independent validator (jsonschema): it is valid
draft 2020-12, accepts every contract body, refuses the invalid ones at the same field as the
agent, and accepts exactly what the agent's decoder accepts."""
import copy

import jsonschema
import pytest

from astara_lab.appliance import contract_payloads
from astara_router.model import PayloadError, parse_payload
from astara_router.model.schema import Payload, conforms, payload_json_schema

VALID = contract_payloads("original-orchestrator")
INVALID = contract_payloads("invalid")
SCHEMA = payload_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def json_path(error):
    """jsonschema's location of an error, spelled like the agent's paths. Optional fields are
    anyOf [type, null], so the error that names the field is the deepest one of the context."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def test_the_schema_is_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    payload = SCHEMA["$defs"]["Payload"]
    assert {"tenant_id", "hostname"} <= set(payload["required"])
    assert SCHEMA["$defs"]["Services"]["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_body_is_valid(name):
    VALIDATOR.validate(VALID[name])


@pytest.mark.parametrize("name,where", [
    ("missing-tenant-id", ""),  # "required" is reported on the object that lacks the key
    ("missing-hostname", ""),
    ("floating-ip-not-an-ip", "floating_ips[0].floating_ip"),
    ("interface-address-not-cidr", "networks[2].interface.addresses[0]"),
    ("hostname-injection", "hostname"),
    ("unknown-service", "services"),
])
def test_invalid_contract_bodies_are_refused_where_the_agent_refuses_them(name, where):
    errors = list(VALIDATOR.iter_errors(INVALID[name]))
    # one place; perhaps several rules (the injected hostname breaks its pattern and length)
    assert {json_path(e) for e in errors} == {where}, [e.message for e in errors]
    with pytest.raises(PayloadError) as agent:
        parse_payload(INVALID[name], ("router", "loadbalancer"))
    assert agent.value.errors[0].path.startswith(where)


MUTATIONS = {
    "networks not a list": lambda b: b.__setitem__("networks", {}),
    "network not an object": lambda b: b["networks"].append("ge9"),
    "unknown network type": lambda b: b["networks"][1].__setitem__("network_type", "dmz"),
    "dhcp_enabled a string": lambda b: b["networks"][2]["subnets"][0].__setitem__(
        "dhcp_enabled", "yes"),
    "bad MAC": lambda b: b["networks"][2]["allocations"][0].__setitem__("mac_address", "x"),
    "upper-case MAC": lambda b: b["networks"][2]["allocations"][0].__setitem__(
        "mac_address", "FA:16:3E:1D:CB:D6"),
    "kernel ifname": lambda b: b["networks"][2]["interface"].__setitem__("ifname", "eth2"),
    "ifname with a newline": lambda b: b["networks"][2]["interface"].__setitem__(
        "ifname", "ge2\n"),
    "MTU too small": lambda b: b["networks"][2]["interface"].__setitem__("mtu", 20),
    "MTU null": lambda b: b["networks"][2].__setitem__("mtu", None),
    "IPv6 v4 gateway": lambda b: b.__setitem__("default_v4_gateway", "fe80::1"),
    "empty v4 gateway": lambda b: b.__setitem__("default_v4_gateway", ""),
    "asn a string": lambda b: b.__setitem__("asn", "64512"),
    "asn a float": lambda b: b.__setitem__("asn", 64512.5),
    "route pair too short": lambda b: b.__setitem__("static_routes", [["10.0.0.0/8"]]),
    "route pair": lambda b: b.__setitem__("static_routes", [["10.0.0.0/8", "10.1.0.9"]]),
    "route object": lambda b: b.__setitem__("static_routes", [
        {"destination": "10.0.0.0/8", "nexthop": "10.1.0.9"}]),
    "label not a list": lambda b: b.__setitem__("labels", {"ext": "10.0.0.0/8"}),
    "allocation key not an address": lambda b: b["networks"][2]["allocations"][0].__setitem__(
        "ip_addresses", {"10.1.0.300": True}),
    "hostname with a trailing newline": lambda b: b.__setitem__("hostname", "ak-x\n"),
    "hostname of 254 characters": lambda b: b.__setitem__("hostname", "a." * 126 + "ab"),
    "unknown keys are ignored": lambda b: b["networks"][0].__setitem__("binding:host_id", 1),
    "tenant_id empty": lambda b: b.__setitem__("tenant_id", ""),
    "loadbalancer without listeners": lambda b: b.__setitem__(
        "services", {"loadbalancer": {"id": "lb", "vip_address": "10.1.0.5"}}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_published_schema_accepts_what_the_decoder_accepts(name):
    body = copy.deepcopy(VALID["router-basic"])
    MUTATIONS[name](body)
    assert VALIDATOR.is_valid(body) == conforms(body, Payload)


def test_the_mutations_cover_both_answers():
    answers = set()
    for mutate in MUTATIONS.values():
        body = copy.deepcopy(VALID["router-basic"])
        mutate(body)
        answers.add(conforms(body, Payload))
    assert answers == {True, False}
