"""The lab's cloud description (astara_lab.cloud), pure parts: the admin-API calls it
declares are accepted by the orchestrator's real API and store and render a router payload
the agent's parser accepts, with the shape the self-check expects; the orchestrator ini
parses; the peer's bird.conf and the progress display."""
import configparser
import io
import re

import pytest

from astara_lab import cloud
from astara_lab.lab import Progress
from astara_lab.peers import peer_bird_config
from astara_router.model import parse_payload
from astara_router.render.loadbalancer import render_nginx
from orchestrator_lite import builder
from orchestrator_lite.api import create_app
from orchestrator_lite.config import Settings, from_parser
from orchestrator_lite.events import ResourceRef
from orchestrator_lite.service import Orchestrator

from fake_driver import FakeDriver

CLOUD = cloud.DEFAULT_CLOUD


@pytest.fixture
def orchestrator(tmp_path):
    orch = Orchestrator(Settings(state_dir=str(tmp_path)), driver=FakeDriver())
    yield orch
    orch.stop()


def declare(orchestrator):
    http = create_app(orchestrator, "t").test_client()
    for call in cloud.desired_state(CLOUD):
        response = http.open(call.path, method=call.method, json=call.body,
                             headers={"Authorization": "Bearer t"})
        assert response.status_code in (200, 201), (call.what, response.get_json())
    return orchestrator.store.snapshot()


def router_payload(snapshot, orchestrator, router_id="demo-router"):
    ref = ResourceRef("router", router_id, "demo")
    return builder.build(snapshot, ref, orchestrator.payload_settings,
                         builder.placeholder_view(snapshot, ref))


def test_calls_come_in_dependency_order_one_builder_per_kind():
    calls = cloud.desired_state(CLOUD)
    assert [c.path for c in calls[:3]] == ["/v1/networks", "/v1/subnets", "/v1/subnets"]
    assert [c.path for c in calls[-6:]] == ["/v1/ports", "/v1/loadbalancers", "/v1/pools",
                                           "/v1/listeners", "/v1/members", "/v1/members"]
    assert [c.path for c in calls[-8:-6]] == ["/v1/ipsec_site_connections"] * 2
    assert len(calls) == sum(len(b(CLOUD)) for b in cloud.CALL_BUILDERS)
    kinds = [c.path.split("/")[2] for c in calls]
    assert kinds.index("routers") > max(i for i, k in enumerate(kinds) if k == "subnets")


def test_the_orchestrator_accepts_the_cloud_and_renders_a_valid_router(orchestrator):
    snapshot = declare(orchestrator)
    payload = router_payload(snapshot, orchestrator)
    parse_payload(payload, ("router",))  # the agent would accept it
    assert [n["network_type"] for n in payload["networks"]] == \
        ["management", "external", "internal", "internal"]
    external, private, dualstack = payload["networks"][1:]
    assert external["interface"]["addresses"] == ["172.24.4.7/24", "2001:db8:c0de:1::7/64"]
    assert payload["default_v4_gateway"] == CLOUD.upstream_address(4) == "172.24.4.1"
    assert dualstack["interface"]["addresses"] == ["10.2.0.1/24", "2001:db8:2::1/64"]
    assert payload["floating_ips"] == [{"floating_ip": "172.24.4.101",
                                        "fixed_ip": "10.1.0.10"}]
    assert payload["hostname"] == "ak-demo"
    vms = {a["mac_address"]: a for n in (private, dualstack) for a in n["allocations"]
           if a["device_id"]}
    for vm in CLOUD.vms_behind(CLOUD.router("demo-router")):
        allocation = vms[vm.mac]
        assert allocation["device_id"] == vm.device_id  # what metadata must report
        assert set(allocation["ip_addresses"]) == {vm.ipv4, *CLOUD.slaac_addresses(vm)}
    v6 = dualstack["subnets"][1]
    assert v6["cidr"] == "2001:db8:2::/64" and v6["dhcp_enabled"] is False  # SLAAC


def test_the_load_balancer_payload_is_one_the_agent_carries_out(orchestrator):
    snapshot = declare(orchestrator)
    ref = ResourceRef("loadbalancer", "demo-lb", "demo")
    payload = builder.build(snapshot, ref, orchestrator.payload_settings,
                            builder.placeholder_view(snapshot, ref))
    config = parse_payload(payload, ("loadbalancer",))
    assert payload["networks"][0]["interface"]["addresses"] == ["10.1.0.100/24"]
    conf = render_nginx(config).contents()["http/80.conf"]
    assert re.findall(r"server (\S+) weight=(\d+);", conf) == [("10.1.0.10:80", "1"),
                                                               ("10.1.0.11:80", "3")]


def test_the_ha_router_is_an_ha_pair_with_its_own_network(orchestrator):
    snapshot = declare(orchestrator)
    payload = router_payload(snapshot, orchestrator, "ha-router")
    parse_payload(payload, ("router",))
    assert payload["ha_resource"] is True and "ha_config" in payload
    assert [n["interface"]["addresses"] for n in payload["networks"][1:]] == [
        ["172.24.4.9/24"], ["10.4.0.1/24"]]
    assert payload["floating_ips"] == [{"floating_ip": "172.24.4.103",
                                        "fixed_ip": "10.4.0.10"}]
    assert [vm.role for vm in CLOUD.vms_behind(CLOUD.router("ha-router"))] == ["vm5"]
    assert orchestrator.store.snapshot().get("router", "ha-router")["ha"] is True


def test_derived_addresses():
    vm2 = CLOUD.vm("vm2")
    assert CLOUD.slaac_addresses(vm2) == ["2001:db8:2:0:f816:3eff:fe1a:b002"]
    assert CLOUD.slaac_addresses(CLOUD.vm("vm0")) == []
    assert CLOUD.tenant_v6_prefixes() == ["2001:db8:2::/64"]
    assert CLOUD.gateway_address(6) == "2001:db8:c0de:1::7"
    assert CLOUD.floating_ip_of(CLOUD.vm("vm0")) == "172.24.4.101"
    assert CLOUD.floating_ip_of(vm2) is None
    assert len({vm.device_id for vm in CLOUD.vms}) == len(CLOUD.vms)


def test_orchestrator_config_parses_and_names_every_bridge():
    text = cloud.orchestrator_config("ast0a1b2c", "ast0a1b2c-fab", "/tmp/x", CLOUD, "tok",
                                     {"period": 2})
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    settings = from_parser(parser)
    assert settings.netns.bridges == {"public": "b-public", "private": "b-private",
                                      "dualstack": "b-dualstack", "branch": "b-branch",
                                      "ha-private": "b-ha"}
    assert settings.netns.prefix == "ast0a1b2c" and settings.compute_driver == "netns"
    assert settings.health.period == 2 and settings.health.dead_grace == 10
    assert settings.api.token == "tok"
    assert settings.management.orchestrator_address == cloud.ORCHESTRATOR_ADDRESS


def test_peer_bird_config():
    text = peer_bird_config("/d", "2001:db8:c0de:1::7", kernel_export=True)
    assert "neighbor 2001:db8:c0de:1::7 as 64512;" in text
    assert "protocol kernel" in text and "export none" in text
    assert "protocol kernel" not in peer_bird_config("/d", "2001:db8::7")


def test_progress_prints_steps_and_changed_details():
    out = io.StringIO()
    progress = Progress(out=out, live=False)
    progress.step("boot")
    progress.detail("booting")
    progress.detail("booting")
    progress.detail("configured")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("] boot") and lines[1:] == ["           booting",
                                                          "           configured"]
    assert [step for _, step in progress.marks] == ["boot"]


def test_udhcpc_scripts_are_private_and_only_configure_when_asked():
    from astara_lab.peers import udhcpc_script

    record = udhcpc_script("/w/offer")
    configure = udhcpc_script("/w/offer", configure=True)
    for script in (record, configure):
        assert script.startswith("#!/bin/sh") and "resolv.conf" not in script.replace(
            "never touches resolv.conf", "")
        assert '> "/w/offer"' in script
    assert "ip addr" not in record and "ip -4" not in record
    assert 'ip addr add "$ip/$mask" dev "$interface"' in configure
    assert 'route replace default via "${router%% *}"' in configure


def test_the_vpn_joins_the_two_routers_mirrored(orchestrator):
    """Each router's payload carries its side of the tunnel; the two sides mirror each
    other (addresses and subnets swapped), and the agent's renderer accepts both."""
    from astara_router.render.vpn import render_vpn
    snapshot = declare(orchestrator)
    sides = {}
    for router in ("demo-router", "branch-router"):
        ref = ResourceRef("router", router, "demo")
        payload = builder.build(snapshot, ref, orchestrator.payload_settings,
                                builder.placeholder_view(snapshot, ref))
        config = parse_payload(payload, ("router",))
        assert render_vpn(config, "libipsec", "/var/lib/astara/vpn") is not None
        service = config.router.vpn[0]
        (connection,) = service.connections
        sides[router] = (str(service.external_v4_ip), str(connection.peer_address),
                         [str(n) for n in connection.local_subnets],
                         [str(n) for n in connection.peer_subnets])
    assert sides["demo-router"] == ("172.24.4.7", "172.24.4.8", ["10.1.0.0/24"],
                                    ["10.3.0.0/24"])
    assert sides["branch-router"] == ("172.24.4.8", "172.24.4.7", ["10.3.0.0/24"],
                                      ["10.1.0.0/24"])
