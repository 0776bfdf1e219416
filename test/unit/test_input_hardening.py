"""Issue 12, findings 1 and 7-10: every string that reaches a file, a command line or a
header has a grammar; bounded lists; no 5xx for input that passes type checks; the same
grammar in the orchestrator. Pure code and the real Flask apps (no kernel changes)."""
import copy
import json

import pytest

from astara_lab.appliance import contract_payloads
from astara_lab.synthetic import synthetic_router
from astara_router import settings as settings_mod
from astara_router.api import create_app
from astara_router.errors import ApplyError
from astara_router.metadata_proxy import ConfigError, forward_headers, parse_config
from astara_router.model import PayloadError, parse_payload
from astara_router.model import schema
from astara_router.render.dhcp import render_dnsmasq
from astara_router.render.metadata import render_proxy_config
from astara_router.render.routing import bird_plan, render_bird
from orchestrator_lite.api import create_app as create_admin_app

from sim_appliances import TOKEN
from unchecked import PLACEHOLDER, with_text

VALID = contract_payloads("original-orchestrator")
SERVICES = ("router", "loadbalancer")
NAMES = {f"ge{i}": f"eth{i}" for i in range(16)}
DNSMASQ_INJECTION = "x\ndhcp-script=/tmp/pwn.sh\n#"
INJECTIONS = [DNSMASQ_INJECTION, 'x"; y', "x { } y", "x;reboot", "../../etc/passwd",
              "x\r\nX-Tenant-ID: other", "\u2028x", "x\\", "x y"]


def basic():
    return copy.deepcopy(VALID["router-basic"])


def refusal(body):
    with pytest.raises(PayloadError) as refused:
        parse_payload(body, SERVICES)
    return refused.value.errors[0]


# -- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", INJECTIONS)
@pytest.mark.parametrize("field", ["network_id", "subnet_id", "device_id", "tenant_id"])
def test_ids_outside_the_grammar_are_refused_naming_the_field(field, text):
    body = basic()
    where = {"network_id": ("networks[2].network_id", lambda b: b["networks"][2]),
             "subnet_id": ("networks[2].subnets[0].id", lambda b: b["networks"][2]["subnets"][0]),
             "device_id": ("networks[2].allocations[0].device_id",
                           lambda b: b["networks"][2]["allocations"][0]),
             "tenant_id": ("tenant_id", lambda b: b)}
    path, holder = where[field]
    holder(body)["id" if field == "subnet_id" else field] = text
    error = refusal(body)
    assert error.path == path and "[A-Za-z0-9_.:-]" in error.message


@pytest.mark.parametrize("field, value", [
    ("tenant_id", "t" * 100_000), ("tenant_id", "t" * 256), ("networks[2].name", "n" * 256),
    ("networks[2].name", "private\nnet"), ("networks[2].name", "a\x00b"),
    ("networks[2].name", "\x85"), ("labels", "l" * 256)])
def test_lengths_and_control_characters_are_refused(field, value):
    body = basic()
    if field == "tenant_id":
        body["tenant_id"] = value
    elif field == "labels":
        body["labels"] = {value: ["10.9.0.0/16"]}
    else:
        body["networks"][2]["name"] = value
    assert refusal(body).path.startswith(field)


def test_neutron_texts_stay_accepted():
    body = basic()
    body["tenant_id"] = "t" * 255
    body["networks"][2]["name"] = "Réseau privé (équipe 2) — \"prod\"; {x}"
    body["labels"] = {"ext-net v2": ["10.9.0.0/16"]}
    assert parse_payload(body, SERVICES).tenant_id == "t" * 255


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_body_is_within_the_grammar(name):
    parse_payload(copy.deepcopy(VALID[name]), SERVICES)


# -- the renderers escape on their own ---------------------------------------------------------

@pytest.mark.parametrize("text", INJECTIONS)
def test_dnsmasq_config_never_takes_a_line_from_payload_text(text):
    body = basic()
    body["networks"][2]["network_id"] = PLACEHOLDER
    body["networks"][2]["name"] = PLACEHOLDER
    config = with_text(parse_payload(body, SERVICES), text)
    files = render_dnsmasq(config, NAMES, "/var/lib/astara/dnsmasq")
    lines = "".join(files.contents().values()).splitlines()
    assert not [line for line in lines if line.startswith("dhcp-script")]
    assert not [line for line in lines if text in line and not line.startswith("#")]
    assert not [line for line in lines if "/tmp/pwn.sh" in line and not line.startswith("#")]


@pytest.mark.parametrize("text", INJECTIONS)
def test_bird_config_never_holds_payload_text(text):
    body = copy.deepcopy(VALID["router-dual-stack"])
    for network in body["networks"]:
        network["network_id"] = network["name"] = PLACEHOLDER + network["interface"]["ifname"]
    config = with_text(parse_payload(body, SERVICES), text)
    bird = render_bird(bird_plan(config, NAMES))
    assert text not in bird.text and PLACEHOLDER not in bird.text


# -- the metadata proxy builds every header itself --------------------------------------------

def test_metadata_identities_with_cr_lf_never_reach_a_header():
    body = basic()
    body["networks"][2]["allocations"][0]["device_id"] = "vm\r\nX-Tenant-ID: other"
    assert refusal(body).path == "networks[2].allocations[0].device_id"
    body = basic()
    body["networks"][2]["allocations"][0]["device_id"] = PLACEHOLDER
    text = render_proxy_config(with_text(parse_payload(body, SERVICES),
                                         "vm\r\nX-Tenant-ID: other"))
    with pytest.raises(ConfigError, match="instances"):
        parse_config(text)
    text = render_proxy_config(with_text(parse_payload(body, SERVICES), "vm\u00e9"))
    with pytest.raises(ConfigError, match="not an id"):
        parse_config(text)


def test_client_headers_outside_the_allow_list_or_with_cr_lf_are_dropped():
    config = parse_config(render_proxy_config(parse_payload(basic(), SERVICES)))
    listener = config.listeners[0]
    address = str(next(iter(listener.instances)))  # a client's, as its socket gives it
    headers = forward_headers(config.tenant_id, listener, address, "vm-1", [
        ("User-Agent", "curl\r\nX-Instance-ID: other"), ("Accept", "text/plain"),
        ("X-Instance-ID", "other"), ("Host", "169.254.169.254"), ("Cookie", "a=b"),
        ("Content-Type", "application/json\u00e9")])
    assert headers == {"Accept": "text/plain", "X-Forwarded-For": address,
                       "X-Instance-ID": "vm-1", "X-Tenant-ID": config.tenant_id,
                       "X-Neutron-Network-ID": listener.network_id,
                       "X-Quantum-Network-ID": listener.network_id}


def test_an_upstream_that_is_the_appliance_itself_is_refused():
    body = basic()
    own = body["networks"][2]["interface"]["addresses"][0].split("/")[0]
    body["orchestrator"]["address"] = own
    error = refusal(body)
    assert error.path == "orchestrator.address" and "ge2" in error.message
    body["orchestrator"]["address"] = body["networks"][0]["interface"]["addresses"][0] \
        .split("/")[0]
    assert refusal(body).path == "orchestrator.address"
    for address in ("127.0.0.1", "::1", "0.0.0.0", "169.254.169.254"):
        body["orchestrator"]["address"] = address
        assert refusal(body).path == "orchestrator.address"


# -- bounds -----------------------------------------------------------------------------------

def test_list_limits_are_refused_naming_the_limit():
    body = synthetic_router(networks=2, floating_ips=10)
    body["floating_ips"] = body["floating_ips"] * (schema.MAX_FLOATING_IPS // 10 + 1)
    error = refusal(body)
    assert error.path == "floating_ips" and str(schema.MAX_FLOATING_IPS) in error.message
    body = basic()
    allocation = body["networks"][2]["allocations"][0]
    body["networks"][2]["allocations"] = [allocation] * (schema.MAX_ALLOCATIONS + 1)
    error = refusal(body)
    assert error.path == "networks[2].allocations"
    assert str(schema.MAX_ALLOCATIONS) in error.message
    body = basic()
    body["networks"] = body["networks"] * (schema.MAX_NETWORKS // 3 + 1)
    error = refusal(body)
    assert error.path == "networks" and str(schema.MAX_NETWORKS) in error.message


def test_allocations_are_limited_in_all_networks_together():
    body = synthetic_router(networks=30, floating_ips=30, vms_per_network=1)
    allocation = body["networks"][2]["allocations"][0]
    for network in body["networks"][2:]:
        network["allocations"] = [allocation] * (schema.MAX_ALLOCATIONS_TOTAL // 28 + 1)
    error = refusal(body)
    assert error.path == "networks" and str(schema.MAX_ALLOCATIONS_TOTAL) in error.message


def test_the_allocation_limit_counts_networks_known_from_the_last_parse():
    """The parser keeps a known network entry's schema object without its allocations
    (the model has them): the limit still counts them."""
    body = synthetic_router(networks=30, floating_ips=30, vms_per_network=1)
    allocation = body["networks"][2]["allocations"][0]
    tenants = body["networks"][2:]
    for network in tenants:
        network["allocations"] = [allocation] * (schema.MAX_ALLOCATIONS_TOTAL // len(tenants))
    try:
        parse_payload(copy.deepcopy(body), SERVICES)  # under the limit: networks known now
    except PayloadError:
        pass  # the same allocation everywhere: refused later, its networks still known
    extra = copy.deepcopy(body["networks"][2])
    extra["allocations"] = [allocation] * schema.MAX_ALLOCATIONS
    body["networks"].append(extra)
    error = refusal(body)
    assert error.path == "networks" and str(schema.MAX_ALLOCATIONS_TOTAL) in error.message


def test_the_5000_fip_benchmark_router_is_accepted():
    config = parse_payload(synthetic_router(50, 5000), SERVICES)
    assert len(config.router.floating_ips) == 5000


# -- the agent API: no 5xx for input, no detail in a 500 --------------------------------------

@pytest.fixture
def agent(tmp_path):
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    app = create_app(settings)
    return app


def put(client, data):
    return client.put("/v1/system/config", data=data, content_type="application/json")


@pytest.mark.parametrize("data", [
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"tenant_id": "\\ud800", "hostname": "r"}', b'{"tenant_id": "\\udc00x"}',
    b'{"tenant_id": "\xed\xa0\x80"}'])
def test_deep_json_and_lone_surrogates_are_400(agent, data):
    answer = put(agent.test_client(), data)
    assert answer.status_code == 400, answer.get_data()
    assert "JSON" in answer.get_json()["message"]


def test_a_failure_of_the_appliance_leaks_no_detail(agent, tmp_path):
    engine = agent.extensions["astara"]["engine"]
    secret = f"{tmp_path}/state/nft: Error: Could not process rule"

    def failing_apply(body, raw, **management_path):
        raise ApplyError("", secret, status=500)
    engine.apply = failing_apply
    answer = put(agent.test_client(), json.dumps(basic()))
    assert answer.status_code == 500
    assert str(tmp_path) not in answer.get_data(as_text=True)
    assert "nft" not in answer.get_data(as_text=True)

    def refusing_apply(body, raw, **management_path):  # a 422 names the field and why
        raise ApplyError("networks[2].interface.ifname", "no NIC ge9")
    engine.apply = refusing_apply
    answer = put(agent.test_client(), json.dumps(basic()))
    assert answer.status_code == 422 and "no NIC ge9" in answer.get_json()["message"]


def test_the_agent_refuses_a_body_above_max_body(agent):
    from astara_router.api import MAX_BODY
    answer = put(agent.test_client(), b" " * (MAX_BODY + 1))
    assert answer.status_code == 413


# -- the orchestrator's admin API validates the same way --------------------------------------

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin(orch):
    o = orch()
    o.store.create("network", {"id": "n1", "tenant_id": "t1"})
    return create_admin_app(o, TOKEN).test_client()


@pytest.mark.parametrize("path, body, field", [
    ("/v1/routers", {"id": "r1"}, "tenant_id"),
    ("/v1/routers", {"id": "r1", "tenant_id": "t" * 100_000}, "tenant_id"),
    ("/v1/routers", {"id": "r1", "tenant_id": "t1\ndhcp-script=/x"}, "tenant_id"),
    ("/v1/routers", {"id": "r1", "tenant_id": "t1", "name": "n" * 256}, "name"),
    ("/v1/routers", {"id": "r1", "tenant_id": "t1", "name": "a\r\nb"}, "name"),
    ("/v1/routers", {"id": "r1", "tenant_id": "t1", "name": "\ud800"}, "name"),
    ("/v1/networks", {"id": "n2", "tenant_id": "t1", "name": "x" * 300}, "name"),
    ("/v1/subnets", {"network_id": "n1", "cidr": "0.0.0.0/0"}, "cidr"),
    ("/v1/subnets", {"network_id": "n1", "cidr": "::/0"}, "cidr"),
    ("/v1/subnets", {"network_id": "n1", "cidr": "127.0.0.0/8"}, "cidr"),
    ("/v1/subnets", {"network_id": "n1", "cidr": "10.1.0.0/24", "host_routes": [
        {"destination": "2001:db8::/64", "nexthop": "10.1.0.5"}]}, "host_routes"),
    ("/v1/subnets", {"network_id": "n1", "cidr": "10.1.0.0/24", "host_routes": [
        {"destination": "10.9.0.0/16", "nexthop": "2001:db8::5"}]}, "host_routes"),
])
def test_the_orchestrator_refuses_what_the_appliance_would(admin, path, body, field):
    answer = admin.post(path, json=body, headers=HEADERS)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["field"] == field


def test_the_orchestrator_refuses_huge_and_deep_bodies(admin):
    huge = json.dumps({"id": "r1", "tenant_id": "t1", "name": "n" * (20 << 20)})
    answer = admin.post("/v1/routers", data=huge, headers=HEADERS,
                        content_type="application/json")
    assert answer.status_code == 413
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    answer = admin.post("/v1/routers", data=deep, headers=HEADERS,
                        content_type="application/json")
    assert answer.status_code == 400 and "deep" in answer.get_json()["message"]
    surrogate = b'{"id": "r1", "tenant_id": "t1", "name": "\\ud800"}'
    answer = admin.post("/v1/routers", data=surrogate, headers=HEADERS,
                        content_type="application/json")
    assert answer.status_code == 400
    named = {"id": "r1", "tenant_id": "t1", "name": "routeur d'équipe"}
    ok = admin.post("/v1/routers", json=named, headers=HEADERS)
    assert ok.status_code == 201
