"""The pure link/address/route plan of each payload."""
import copy

from astara_lab.appliance import contract_payloads
from astara_router.model import parse_payload
from astara_router.render.netlink import render_netlink

VALID = contract_payloads("original-orchestrator")


def plan_of(body, services=("router", "loadbalancer")):
    return render_netlink(parse_payload(body, services))


def routes(plan):
    return {(str(r.destination), str(r.gateway), r.generic) for r in plan.routes}


def test_router_basic_plan():
    plan = plan_of(VALID["router-basic"])
    addresses = {link.generic: sorted(map(str, link.addresses)) for link in plan.links}
    assert addresses == {"ge0": ["fdca:3ba5:a17a:acda:f816:3eff:fe67:416c/64"],
                         "ge1": ["172.24.4.228/32", "172.24.4.7/24"],
                         "ge2": ["10.1.0.1/24"]}
    assert {link.generic: link.mtu for link in plan.links} == {"ge0": 1450, "ge1": 1500,
                                                               "ge2": 1450}
    assert routes(plan) == {("0.0.0.0/0", "172.24.4.1", "ge1"),
                            ("192.168.200.0/24", "10.1.0.254", "ge2")}
    assert plan.link("ge1").nodad is False and plan.link("ge2").nodad is True


def test_dual_stack_gets_v6_default_from_external_subnet():
    assert ("::/0", "2001:db8:c0de:1::1", "ge1") in routes(plan_of(VALID["router-dual-stack"]))


def test_no_gateway_no_default_route():
    assert not [r for r in plan_of(VALID["router-no-gateway"]).routes
                if r.destination.prefixlen == 0]


def test_loadbalancer_gets_default_via_its_network():
    assert routes(plan_of(VALID["loadbalancer-http"])) == {("0.0.0.0/0", "10.70.0.1", "ge1")}


def test_many_fips_are_host_addresses_on_external():
    plan = plan_of(VALID["router-many-fips"])
    fips = [a for a in plan.link("ge1").addresses if a.network.prefixlen == 32]
    assert len(fips) == 30


def test_static_routes_and_first_route_per_prefix_wins():
    body = copy.deepcopy(VALID["router-basic"])
    body["static_routes"] = [["198.18.0.0/16", "10.1.0.254"],
                             ["192.168.200.0/24", "10.1.0.253"]]
    plan = plan_of(body)
    assert ("198.18.0.0/16", "10.1.0.254", "ge2") in routes(plan)
    assert ("192.168.200.0/24", "10.1.0.254", "ge2") in routes(plan)
    assert next(r for r in plan.routes if str(r.destination) == "198.18.0.0/16").path == \
        "static_routes[0]"


def test_one_plan_per_config_object():
    # netlink's plan, the HA plan and the status view share one rendering of a config;
    # another config object, even an equal one, gets its own.
    config = parse_payload(VALID["router-basic"], ("router", "loadbalancer"))
    again = parse_payload(VALID["router-basic"], ("router", "loadbalancer"))
    assert render_netlink(config) is render_netlink(config)
    assert render_netlink(again) is not render_netlink(config)
    assert render_netlink(again) == render_netlink(config)
