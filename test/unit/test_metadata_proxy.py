"""Pure parts of the metadata proxy: its configuration, the instance lookup, the upstream
URL and headers; and the agent's [metadata] settings."""
import copy
import ipaddress
import json

import pytest

from astara_lab.appliance import contract_payloads
from astara_router import settings as settings_mod
from astara_router.apply.metadata import MetadataSubsystem
from astara_router.errors import ApplyError
from astara_router.metadata_proxy import (ConfigError, Upstream, config_digest,
                                          error_body, format_host, forward_headers,
                                          instance_for, parse_config, upstream_url)
from astara_router.model import parse_payload
from astara_router.render.metadata import proxy_config, render_proxy_config

PAYLOADS = contract_payloads("original-orchestrator")
BASIC = PAYLOADS["router-basic"]
WEB1 = "e4b010e5-c133-4cdc-85b2-0f3e6e1b95e9"


def model(body):
    return parse_payload(body, ("router", "loadbalancer"))


def basic_listener():
    return parse_config(render_proxy_config(model(BASIC))).listeners[0]


# -- configuration --------------------------------------------------------------------------

def test_router_basic_configuration():
    assert proxy_config(model(BASIC), 5, 30) == {
        "format": 1,
        "tenant_id": "baef51913f354071ab020eae853d4ffe",
        "upstream": {"address": "fdca:3ba5:a17a:acda::2", "port": 9697,
                     "connect_timeout": 5.0, "read_timeout": 30.0},
        "listeners": [{
            "network_id": "cd85ed9c-7580-4882-9f21-c6603b4d90a0", "interface": "ge2",
            "address": "10.1.0.1", "port": 9602,
            "instances": {"10.1.0.1": "fbf50d45-b64d-4036-804a-b81cad4c7c82",
                          "10.1.0.8": WEB1,
                          "10.1.0.12": "a52ee083-0c32-4631-8d88-a631589e2280"}}],
    }


def test_dual_stack_listens_on_every_tenant_network_with_ipv4():
    config = proxy_config(model(PAYLOADS["router-dual-stack"]), 5, 30)
    assert [(l["interface"], l["address"], l["port"]) for l in config["listeners"]] == [
        ("ge2", "10.20.0.1", 9602), ("ge4", "10.30.0.1", 9604)]  # ge3 is IPv6 only
    ge2 = config["listeners"][0]["instances"]
    # every address of an allocation, DHCP or not, v6 too
    assert ge2["10.20.0.11"] == ge2["fd4e:7a31:2c5b:1:f816:3eff:fe4a:a95"]


def test_no_listener_no_configuration():
    assert render_proxy_config(model(PAYLOADS["loadbalancer-http"])) is None
    no_tenant = copy.deepcopy(BASIC)
    no_tenant["networks"] = no_tenant["networks"][:2]
    no_tenant["floating_ips"] = []
    assert render_proxy_config(model(no_tenant)) is None


def test_rendering_is_stable_and_accepted_by_the_proxy():
    for name, body in PAYLOADS.items():
        text = render_proxy_config(model(body), 2, 7.5)
        if text is None:
            continue
        assert text == render_proxy_config(model(copy.deepcopy(body)), 2, 7.5)
        config = parse_config(text)
        assert config.upstream.read_timeout == 7.5 and config.upstream.connect_timeout == 2
        assert config_digest(text) != config_digest(render_proxy_config(model(body), 2, 8))


def test_allocations_without_device_id_are_unknown():
    body = copy.deepcopy(BASIC)
    body["networks"][2]["allocations"][1]["device_id"] = ""
    instances = proxy_config(model(body), 5, 30)["listeners"][0]["instances"]
    assert "10.1.0.8" not in instances


def valid():
    return json.loads(render_proxy_config(model(BASIC)))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(format=2), "format 1"),
    (lambda c: c.pop("tenant_id"), "tenant_id"),
    (lambda c: c["upstream"].update(address="fdca::zz"), "upstream.address"),
    (lambda c: c["upstream"].update(port=0), "out of range"),
    (lambda c: c["upstream"].update(read_timeout=0), "read_timeout"),
    (lambda c: c["upstream"].update(connect_timeout="5"), "connect_timeout"),
    (lambda c: c["listeners"].append(copy.deepcopy(c["listeners"][0])), "listed twice"),
    (lambda c: c["listeners"][0]["instances"].update({"10.1.0.300": "x"}), "instances"),
    (lambda c: c["listeners"][0]["instances"].update({"10.1.0.30": ""}), "empty device id"),
    (lambda c: c["listeners"][0].update(port=True), "port"),
])
def test_the_proxy_refuses_broken_configurations(change, message):
    config = valid()
    change(config)
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(config))


def test_the_proxy_refuses_non_json():
    with pytest.raises(ConfigError, match="not JSON"):
        parse_config("{")


# -- request mapping -----------------------------------------------------------------------

def test_upstream_url_brackets_ipv6_only_and_keeps_path_and_query():
    v6 = Upstream(ipaddress.ip_address("fdca:3ba5:a17a:acda::2"), 9697)
    assert upstream_url(v6, "/latest/meta-data/?a=1&b=%20") == \
        "http://[fdca:3ba5:a17a:acda::2]:9697/latest/meta-data/?a=1&b=%20"
    v4 = Upstream(ipaddress.ip_address("192.168.25.30"), 8775)
    assert upstream_url(v4, "/") == "http://192.168.25.30:8775/"
    assert format_host("::1") == "[::1]" and format_host("10.0.0.1") == "10.0.0.1"
    with pytest.raises(ValueError):
        upstream_url(v4, "http://169.254.169.254/latest")


def test_instances_are_looked_up_on_the_listener_network_only():
    listener = basic_listener()
    assert instance_for(listener, "10.1.0.8") == WEB1
    assert instance_for(listener, "::ffff:10.1.0.8") == WEB1  # a dual-stack socket's view
    assert instance_for(listener, "10.1.0.77") is None
    assert instance_for(listener, "10.20.0.11") is None  # another tenant's address
    assert instance_for(listener, "not an address") is None


def test_identity_headers_are_the_proxys_own():
    listener = basic_listener()
    incoming = [("Host", "169.254.169.254"), ("X-Instance-ID", "someone-else"),
                ("x-tenant-id", "other-tenant"), ("X-Forwarded-For", "1.2.3.4"),
                ("content-type", "application/json"), ("Accept", "*/*"),
                ("Connection", "keep-alive"), ("Cookie", "x=1")]
    assert forward_headers("tenant-a", listener, "10.1.0.8", WEB1, incoming) == {
        "Content-Type": "application/json",
        "Accept": "*/*",
        "X-Forwarded-For": "10.1.0.8",
        "X-Instance-ID": WEB1,
        "X-Tenant-ID": "tenant-a",
        "X-Neutron-Network-ID": "cd85ed9c-7580-4882-9f21-c6603b4d90a0",
        "X-Quantum-Network-ID": "cd85ed9c-7580-4882-9f21-c6603b4d90a0",
    }


def test_error_bodies_are_json():
    assert json.loads(error_body(404, "unknown instance", "no", address="10.1.0.77")) == {
        "error": "unknown instance", "message": "no", "status": 404, "address": "10.1.0.77"}


# -- the agent side ----------------------------------------------------------------------------

def test_the_check_phase_refuses_what_the_proxy_cannot_parse(tmp_path):
    """The proxy's own parser is the checker, run before any change (the engine's check
    phase): the refusal leaves the subsystem serving nothing new."""
    subsystem = MetadataSubsystem(settings_mod.Settings(state_dir=str(tmp_path)))
    live = render_proxy_config(model(BASIC))
    with pytest.raises(ApplyError, match="rejected"):  # the check phase, before any change
        subsystem.check('{"format": 1}', live)
    assert subsystem.proxy.text is None and not subsystem.proxy.servers  # nothing served


def test_the_check_phase_parses_the_data_the_plan_was_written_from(tmp_path):
    """The verdict is the text's, and the instance map holds the model's addresses and
    device ids (not copies decoded from the text, nor texts made for the map: 0.7 MB at
    5 000 allocations)."""
    config = model(BASIC)
    subsystem = MetadataSubsystem(settings_mod.Settings(state_dir=str(tmp_path)))
    plan = subsystem.plan(config, {})
    subsystem.check(plan, None)
    checked, parsed = subsystem._checked
    assert checked is plan and parsed == parse_config(plan)
    device_ids = [a.device_id for n in config.networks for a in n.allocations]
    served = [d for listener in parsed.listeners for d in listener.instances.values()]
    assert served and all(any(d is mine for mine in device_ids) for d in served)
    addresses = [ip for network in config.networks for allocation in network.allocations
                 for ip, _ in allocation.ip_addresses]
    keys = [k for listener in parsed.listeners for k in listener.instances]
    assert keys and all(any(k is mine for mine in addresses) for k in keys)
    subsystem.check(plan, None)  # a second check (no plan in between) parses the text
    assert subsystem._checked[1] == parsed


def test_timeouts_are_agent_settings(tmp_path):
    ini = tmp_path / "agent.ini"
    ini.write_text("[metadata]\nconnect_timeout = 1.5\nread_timeout = 4\n")
    loaded = settings_mod.load(str(ini))
    assert (loaded.metadata_connect_timeout, loaded.metadata_read_timeout) == (1.5, 4.0)
    defaults = settings_mod.Settings()
    assert (defaults.metadata_connect_timeout, defaults.metadata_read_timeout) == (5.0, 30.0)
