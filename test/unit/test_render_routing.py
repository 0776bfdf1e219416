"""The pure BIRD plan and bird.conf text of each payload, checked by bird's own parser."""
import copy
import dataclasses
import ipaddress

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.apply.routing import parse_failure
from astara_router.errors import ApplyError
from astara_router.model import parse_payload
from astara_router.model.types import Subnet
from astara_router.render.routing import bird_plan, render_bird, router_id_for
from astara_router.render.ipv6 import ipv6_mode

from bird_checker import bird_parse, needs_bird  # test/unit

VALID = contract_payloads("original-orchestrator")
SERVICES = ("router", "loadbalancer")


def config_of(body):
    return parse_payload(body, SERVICES)


def only_networks(config, *types):
    """``config`` with only the networks of ``types`` (and no gateway or floating IPs): a
    shape the parser refuses (no management or external network), built from the model."""
    return dataclasses.replace(config, networks=config.networks_of(*types),
                               router=dataclasses.replace(config.router, floating_ips=(),
                                                          default_v4_gateway=None))


def kernel_names(config):
    """geN -> ethN, as a fresh VM numbers its NICs."""
    return {n.interface.ifname: f"eth{n.interface.index}" for n in config.networks}


def plan_of(body):
    config = config_of(body)
    return bird_plan(config, kernel_names(config))


def text_of(body, log_path="/var/lib/astara/bird/bird.log"):
    return render_bird(plan_of(body), log_path)


def network(body, ifname):
    return next(n for n in body["networks"] if n["interface"]["ifname"] == ifname)


def stripped_lines(text):
    return [line.split("#")[0].strip() for line in text.splitlines()]


# -- ipv6_mode ----------------------------------------------------------------------------------

def subnet(dhcp_enabled, address_mode=None):
    return Subnet("s", ipaddress.ip_network("fd00:1::/64"), None, dhcp_enabled, (), (),
                  ipv6_address_mode=address_mode)


@pytest.mark.parametrize("dhcp_enabled, address_mode, expected", [
    (False, None, "slaac"),
    (True, None, "dhcpv6-stateful"),
    (True, "slaac", "slaac"),  # Neutron: SLAAC subnets may still say enable_dhcp
    (False, "dhcpv6-stateful", "dhcpv6-stateful"),
    (True, "dhcpv6-stateless", "dhcpv6-stateless"),
    (True, "DHCPv6-Stateless", "dhcpv6-stateless"),
    (True, "", "dhcpv6-stateful"),
    (False, "bogus", "slaac"),  # unknown: fall back like a missing mode
])
def test_ipv6_mode(dhcp_enabled, address_mode, expected):
    assert ipv6_mode(subnet(dhcp_enabled, address_mode)) == expected


# -- router-dual-stack --------------------------------------------------------------------------

def test_dual_stack_plan():
    plan = plan_of(VALID["router-dual-stack"])
    assert str(plan.router_id) == "198.51.100.12"
    ra = {i.kernel_name: i for i in plan.ra_interfaces}
    assert sorted(ra) == ["eth2", "eth3"]  # ge4 (static-net) has no IPv6 subnet
    slaac, stateful = ra["eth2"], ra["eth3"]
    assert [(str(p.cidr), p.mode, p.autonomous) for p in slaac.prefixes] == [
        ("fd4e:7a31:2c5b:1::/64", "slaac", True)]
    assert (slaac.managed, slaac.other_config, slaac.mtu) == (False, False, 1450)
    assert [str(s) for s in slaac.dns_servers] == ["2001:4860:4860::8888"]  # not 8.8.8.8
    assert [(str(p.cidr), p.mode, p.autonomous) for p in stateful.prefixes] == [
        ("fd4e:7a31:2c5b:2::/64", "dhcpv6-stateful", False)]
    assert (stateful.managed, stateful.other_config) == (True, False)
    assert [str(p) for p in plan.exported_prefixes] == ["fd4e:7a31:2c5b:1::/64",
                                                        "fd4e:7a31:2c5b:2::/64"]
    assert plan.export_interfaces == ("eth2", "eth3")
    assert [(str(p.neighbor), p.kernel_name, p.path) for p in plan.peers] == [
        ("2001:db8:c0de:1::1", "eth1", "networks[1].subnets[1].gateway_ip")]
    assert (plan.local_asn, plan.neighbor_asn) == (64512, 64512)


def test_dual_stack_text_key_lines():
    rendered = text_of(VALID["router-dual-stack"])
    lines = stripped_lines(rendered.text)
    for line in [
        'log "/var/lib/astara/bird/bird.log" 1000000 "/var/lib/astara/bird/bird.log.old" '
        "{ info, remote, warning, error, auth, fatal, bug };",
        "router id 198.51.100.12;",
        "protocol radv tenant_ra {",
        'interface "eth2" {', 'interface "eth3" {',
        "managed yes;", "managed no;", "other config no;", "link mtu 1450;",
        "prefix fd4e:7a31:2c5b:1::/64 {", "autonomous yes;",
        "prefix fd4e:7a31:2c5b:2::/64 {", "autonomous no;",
        "prefix ::/0 {", "skip yes;",
        "ns 2001:4860:4860::8888;", "ns 2001:4860:4860::8844;",
        "define tenant_prefixes = [ fd4e:7a31:2c5b:1::/64, fd4e:7a31:2c5b:2::/64 ];",
        'interface "eth2", "eth3";',
        "protocol bgp upstream_ge1_20010db8c0de00010000000000000001 {",
        "local as 64512;",
        "neighbor 2001:db8:c0de:1::1 as 64512;",
        'interface "eth1";',
        "import none;",
        "export where source = RTS_DEVICE && net ~ tenant_prefixes;",
    ]:
        assert line in lines, line
    assert "fc00::/7" not in rendered.text  # ULA tenant prefixes are what the peer must learn
    assert "protocol kernel" not in rendered.text  # BIRD never writes the kernel FIB
    assert "8.8.8.8" not in rendered.text
    assert rendered.protocols == ("device", "tenant_ra",
                                  "upstream_ge1_20010db8c0de00010000000000000001",
                                  "tenant_subnets")
    # the interface blocks carry their own flags
    eth3 = rendered.text.split('interface "eth3"')[1].split('interface "')[0]
    assert "managed yes;" in eth3 and "autonomous no;" in eth3


def test_rendering_is_deterministic_and_names_the_source_field_of_each_line():
    first, second = text_of(VALID["router-dual-stack"]), text_of(VALID["router-dual-stack"])
    assert first == second and first.digest == second.digest
    lines = first.text.splitlines()
    assert len(lines) == len(first.line_paths)
    neighbor = next(i for i, line in enumerate(lines, 1) if "neighbor" in line)
    assert first.path_for_line(neighbor) == "networks[1].subnets[1].gateway_ip"
    mtu = next(i for i, line in enumerate(lines, 1) if "link mtu" in line)
    assert first.path_for_line(mtu) == "networks[2].interface.mtu"
    assert first.path_for_line(0) == "" and first.path_for_line(len(lines) + 5) == ""


def test_protocol_names_do_not_depend_on_subnet_order():
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge1")["subnets"].reverse()
    assert text_of(body).protocols == text_of(VALID["router-dual-stack"]).protocols


def test_dhcpv6_stateless_sets_the_other_config_flag():
    body = copy.deepcopy(VALID["router-dual-stack"])
    v6 = next(s for s in network(body, "ge2")["subnets"] if ":" in s["cidr"])
    v6["ipv6_address_mode"] = "dhcpv6-stateless"
    iface = next(i for i in plan_of(body).ra_interfaces if i.kernel_name == "eth2")
    assert (iface.managed, iface.other_config) == (False, True)
    assert iface.prefixes[0].autonomous is True


def test_duplicate_network_entries_on_one_nic_are_merged():
    plan = plan_of(VALID["router-dual-stack-by-subnet"])
    ra = {i.kernel_name: [str(p.cidr) for p in i.prefixes] for i in plan.ra_interfaces}
    assert ra == {"eth3": ["fd4e:7a31:2c5b:1::/64"], "eth4": ["fd4e:7a31:2c5b:2::/64"]}
    assert [str(p) for p in plan.exported_prefixes] == ["fd4e:7a31:2c5b:1::/64",
                                                        "fd4e:7a31:2c5b:2::/64"]


def test_isolated_networks_get_ras_but_are_not_announced():
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge3")["network_type"] = "isolated"
    plan = plan_of(body)
    assert "eth3" in [i.kernel_name for i in plan.ra_interfaces]
    assert [str(p) for p in plan.exported_prefixes] == ["fd4e:7a31:2c5b:1::/64"]
    assert plan.export_interfaces == ("eth2",)


# -- what is not there --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["router-basic", "router-no-gateway", "router-many-fips",
                                  "router-wide", "router-ha-primary", "loadbalancer-http"])
def test_no_ipv6_tenant_and_no_ipv6_upstream_means_no_bird(name):
    assert plan_of(VALID[name]) is None


def test_upstream_v6_without_tenant_v6_is_bgp_only_exporting_nothing():
    rendered = text_of(VALID["router-vpn"])
    assert "protocol radv" not in rendered.text
    assert "protocol direct" not in rendered.text
    assert "export none;" in stripped_lines(rendered.text)
    assert "neighbor 2001:db8:c0de:1::1 as 64512;" in stripped_lines(rendered.text)


def test_tenant_v6_without_external_v6_is_ra_only():
    body = copy.deepcopy(VALID["router-dual-stack"])
    external = network(body, "ge1")
    external["subnets"] = [s for s in external["subnets"] if ":" not in s["cidr"]]
    external["interface"]["addresses"] = ["198.51.100.12/24"]
    rendered = text_of(body)
    assert "protocol radv tenant_ra {" in rendered.text
    assert "protocol bgp" not in rendered.text and "protocol direct" not in rendered.text


# -- router id ----------------------------------------------------------------------------------

def test_router_id_without_external_ipv4_comes_from_the_management_address():
    config = only_networks(config_of(VALID["router-dual-stack"]), "management", "internal")
    router_id, source = router_id_for(config)
    # fdca:3ba5:a17a:acda:f816:3eff:fe15:f6fb -> low 32 bits fe15:f6fb
    assert (str(router_id), source) == ("254.21.246.251", "low 32 bits of the management address")
    assert router_id_for(only_networks(config_of(VALID["router-dual-stack"]), "management",
                                       "internal")) == (router_id, source)  # never random


def test_router_id_without_any_address_is_a_hash_of_the_tenant():
    config = only_networks(config_of(VALID["router-dual-stack"]), "internal")
    first = router_id_for(config)
    assert first[1] == "hash of the tenant id" and int(first[0]) not in (0, 0xFFFFFFFF)
    assert router_id_for(only_networks(config_of(VALID["router-dual-stack"]),
                                       "internal")) == first
    other = dataclasses.replace(config, tenant_id="another-tenant")
    assert router_id_for(other)[0] != first[0]


def test_missing_nic_is_an_error_naming_the_network():
    config = config_of(VALID["router-dual-stack"])
    names = kernel_names(config)
    del names["ge3"]
    with pytest.raises(ApplyError) as caught:
        bird_plan(config, names)
    assert caught.value.path == "networks[3].interface.ifname"
    assert caught.value.status == 422


def test_syslog_when_no_log_path():
    assert "log syslog {" in render_bird(plan_of(VALID["router-dual-stack"])).text


# -- bird's own parser ----------------------------------------------------------------------------

def variants():
    dual = VALID["router-dual-stack"]
    stateless = copy.deepcopy(dual)
    for s in network(stateless, "ge2")["subnets"]:
        s["ipv6_address_mode"] = "dhcpv6-stateless"
    isolated = copy.deepcopy(dual)
    network(isolated, "ge2")["network_type"] = "isolated"
    network(isolated, "ge3")["network_type"] = "isolated"
    no_upstream = copy.deepcopy(dual)
    network(no_upstream, "ge1")["subnets"] = network(no_upstream, "ge1")["subnets"][:1]
    found = {f"contract:{name}": body for name, body in VALID.items()
             if plan_of(body) is not None}
    found.update({"dhcpv6-stateless": stateless, "all-isolated": isolated,
                  "ra-only": no_upstream})
    return found


def test_contract_payloads_that_need_bird():
    assert sorted(k for k in variants() if k.startswith("contract:")) == [
        "contract:router-dual-stack", "contract:router-dual-stack-by-subnet",
        "contract:router-vpn"]


@needs_bird
@pytest.mark.parametrize("name, body", sorted(variants().items()))
def test_bird_accepts_the_rendered_config(tmp_path, name, body):
    result = bird_parse(tmp_path, text_of(body, str(tmp_path / "bird.log")).text)
    assert result.returncode == 0, result.stderr


@needs_bird
def test_bird_rejection_names_the_payload_field(tmp_path):
    # A gateway of "::" is refused by the parser (semantics.py); bird's own refusal is
    # still mapped to the field, shown on a model built past the parser.
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge1")["subnets"].append({
        "id": "bad", "cidr": "2001:db8:c0de:2::/64", "gateway_ip": "2001:db8:c0de:2::1",
        "dhcp_enabled": False, "dns_nameservers": [], "host_routes": []})
    config = config_of(body)
    ge1 = config.networks[1]
    bad = dataclasses.replace(ge1.subnets[2], gateway_ip=ipaddress.ip_address("::"))
    config = dataclasses.replace(config, networks=(
        config.networks[0], dataclasses.replace(ge1, subnets=ge1.subnets[:2] + (bad,)),
        *config.networks[2:]))
    rendered = render_bird(bird_plan(config, kernel_names(config)),
                           "/var/lib/astara/bird/bird.log")
    result = bird_parse(tmp_path, rendered.text)
    assert result.returncode != 0
    error = parse_failure("bird -p rejected the configuration", result.stderr, rendered)
    assert error.path == "networks[1].subnets[2].gateway_ip"
    assert error.status == 422
    assert "Neighbor must be configured" in error.message


def test_unmapped_parse_failure_blames_the_appliance():
    error = parse_failure("birdc configure failed", "something odd", None)
    assert (error.path, error.status) == ("", 500)
