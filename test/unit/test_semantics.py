"""Semantic checks (issue 12, findings 2 and 3): addresses that would poison a network and
payloads that would cut the management path are refused, naming the field."""
import copy
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astara_lab.appliance import contract_payloads
from astara_router.model import PayloadError, check_management_path, parse_payload
from astara_router.model.semantics import overlapping, unusable

VALID = contract_payloads("original-orchestrator")
BASIC = VALID["router-basic"]
DUAL = VALID["router-dual-stack"]
BOTH = ("router", "loadbalancer")
ORCHESTRATOR = "fdca:3ba5:a17a:acda::2"


def refused(body):
    with pytest.raises(PayloadError) as info:
        parse_payload(body, BOTH)
    return {error.path: error.message for error in info.value.errors}


def changed(base, mutate):
    body = copy.deepcopy(base)
    mutate(body)
    return body


def add_fip(address):
    return lambda b: b["floating_ips"].append({"floating_ip": address, "fixed_ip": "10.1.0.12"})


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_body_passes_the_semantic_checks(name):
    config = parse_payload(VALID[name], BOTH)
    sources = (ipaddress.ip_address(ORCHESTRATOR),)
    check_management_path(config, VALID[name], sources, previous=config,
                          local=config.management_address)


@pytest.mark.parametrize("mutate, path, words", [
    (add_fip("172.24.4.1"), "floating_ips[1].floating_ip", "default_v4_gateway"),
    (add_fip("172.24.4.7"), "floating_ips[1].floating_ip", "router's address on ge1"),
    (add_fip("172.24.4.255"), "floating_ips[1].floating_ip", "broadcast"),
    (add_fip("172.24.4.0"), "floating_ips[1].floating_ip", "network or broadcast"),
    (add_fip("127.0.0.1"), "floating_ips[1].floating_ip", "loopback"),
    (add_fip("169.254.169.254"), "floating_ips[1].floating_ip", "link-local"),
    (add_fip("224.0.0.5"), "floating_ips[1].floating_ip", "multicast"),
    (lambda b: b.__setitem__("default_v4_gateway", "10.1.0.254"), "default_v4_gateway",
     "external network"),
    (lambda b: b["networks"][2]["interface"]["addresses"].append("0.0.0.0/0"),
     "networks[2].interface.addresses[1]", "unspecified"),
    (lambda b: b["networks"][2]["interface"]["addresses"].append("198.18.0.1/0"),
     "networks[2].interface.addresses[1]", "prefix length of 0"),
    (lambda b: b["networks"][2]["interface"]["addresses"].append("127.0.0.5/8"),
     "networks[2].interface.addresses[1]", "loopback"),
    (lambda b: b["networks"][2]["interface"]["addresses"].append("fe80::1/64"),
     "networks[2].interface.addresses[1]", "link-local"),
    (lambda b: b["networks"][2]["interface"].__setitem__("addresses", ["10.1.0.255/24"]),
     "networks[2].interface.addresses[0]", "broadcast"),
    (lambda b: b["networks"][2]["subnets"][0].__setitem__("cidr", "172.24.0.0/16"),
     "networks[2].subnets[0].cidr", "overlaps 172.24.4.0/24 of ge1"),
    (lambda b: b["networks"][2]["subnets"][0].__setitem__("gateway_ip", "10.9.0.1"),
     "networks[2].subnets[0].gateway_ip", "not on the network"),
    (lambda b: b["networks"][1]["subnets"][0].__setitem__("gateway_ip", "172.24.4.255"),
     "networks[1].subnets[0].gateway_ip", "broadcast"),
])
def test_addresses_that_poison_a_network_are_refused(mutate, path, words):
    errors = refused(changed(BASIC, mutate))
    assert path in errors, errors
    assert words in errors[path]


def test_the_management_network_is_required():
    errors = refused(changed(BASIC, lambda b: b.__setitem__("networks", b["networks"][1:])))
    assert "management network" in errors["networks"]


def test_the_management_interface_needs_an_address():
    errors = refused(changed(BASIC, lambda b: b["networks"][0]["interface"].__setitem__(
        "addresses", [])))
    assert "networks[0].interface.addresses" in errors


@pytest.mark.parametrize("mutate, path", [
    # a static route to the orchestrator's address via a tenant next hop
    (lambda b: b.__setitem__("static_routes",
                             [[ORCHESTRATOR + "/128", "fd4e:7a31:2c5b:1::99"]]),
     "static_routes[0]"),
    # a longer prefix of the management network via the external gateway
    (lambda b: b.__setitem__("static_routes",
                             [["fdca:3ba5:a17a:acda::/96", "2001:db8:c0de:1::1"]]),
     "static_routes[0]"),
    # a subnet host route covering the orchestrator (installed on the router too)
    (lambda b: b["networks"][2]["subnets"][1]["host_routes"].append(
        {"destination": ORCHESTRATOR + "/128", "nexthop": "fd4e:7a31:2c5b:1::99"}),
     "networks[2].subnets[1].host_routes[0]"),
])
def test_routes_covering_the_management_path_are_refused(mutate, path):
    errors = refused(changed(DUAL, mutate))
    assert path in errors, errors
    assert "management interface ge0" in errors[path]


def test_a_shorter_prefix_elsewhere_does_not_cut_the_path():
    body = changed(DUAL, lambda b: b.__setitem__(
        "static_routes", [["fdca:3ba5::/32", "2001:db8:c0de:1::1"]]))
    parse_payload(body, BOTH)


def test_the_request_source_is_part_of_the_management_path():
    """A route to the (routed) source of the request via a tenant next hop is refused
    even though the payload does not name that address."""
    body = changed(BASIC, lambda b: b.__setitem__("static_routes",
                                                  [["198.18.7.0/24", "10.1.0.254"]]))
    config = parse_payload(body, BOTH)  # nothing in the payload itself says so
    check_management_path(config, body, (ipaddress.ip_address(ORCHESTRATOR),))
    with pytest.raises(PayloadError) as info:
        check_management_path(config, body, (ipaddress.ip_address("198.18.7.9"),))
    assert "static_routes[0]" in {error.path for error in info.value.errors}


def re_addressed(body):
    return changed(body, lambda b: b["networks"][0]["interface"].__setitem__(
        "addresses", ["fdca:3ba5:a17a:acda::77/64"]))


def moved(body):
    def move(b):
        b["networks"][0]["interface"]["ifname"] = "ge3"
        b["networks"][2]["interface"]["ifname"] = "ge0"
    return changed(body, move)


@pytest.mark.parametrize("change, path, words", [
    (re_addressed, "networks[0].interface.addresses", "management address changes"),
    (moved, "networks[0].interface.ifname", "moves from ge0 to ge3"),
])
def test_changing_the_management_network_needs_commit_confirm(change, path, words):
    previous = parse_payload(BASIC, BOTH)
    body = change(BASIC)
    config = parse_payload(body, BOTH)
    with pytest.raises(PayloadError) as info:
        check_management_path(config, body, previous=previous)
    (error,) = info.value.errors
    assert error.path == path and words in error.message
    assert "confirm_timeout" in error.message
    check_management_path(config, body, previous=previous, confirming=True)


def test_the_address_the_request_came_in_on_must_stay():
    body = re_addressed(BASIC)
    config = parse_payload(body, BOTH)
    local = ipaddress.ip_address("fdca:3ba5:a17a:acda:f816:3eff:fe67:416c")
    with pytest.raises(PayloadError) as info:
        check_management_path(config, body, local=local)
    assert "answers on" in info.value.errors[0].message
    check_management_path(config, body, local=local, confirming=True)


def test_a_floating_ip_on_the_orchestrators_address_is_refused():
    """The floating address becomes local on the external NIC: answers to the orchestrator
    would never leave through the management interface."""
    body = copy.deepcopy(BASIC)
    body["floating_ips"].append({"floating_ip": "198.18.7.9", "fixed_ip": "10.1.0.12"})
    config = parse_payload(body, BOTH)
    with pytest.raises(PayloadError) as info:
        check_management_path(config, body, (ipaddress.ip_address("198.18.7.9"),))
    assert "floating_ips[1].floating_ip" in {error.path for error in info.value.errors}


def test_only_the_management_change_asks_for_commit_confirm():
    body = changed(DUAL, lambda b: b.__setitem__(
        "static_routes", [[ORCHESTRATOR + "/128", "fd4e:7a31:2c5b:1::99"]]))
    errors = refused(body)
    assert "confirm" not in errors["static_routes[0]"]


def _prefix(value, length, bits):
    return ipaddress.ip_network((value >> (bits - length) << (bits - length), length))


# Prefixes drawn from a small space (198.18.0.0/20, or 2001:db8::/96) so
# that nesting, duplicates and disjoint neighbours are all common.
PREFIXES = st.one_of(
    st.builds(lambda v, n: _prefix((198 << 24 | 18 << 16) + v, n, 32),
              st.integers(0, 4095), st.integers(20, 32)),
    st.builds(lambda v, n: _prefix((0x20010db8 << 96) + (v << 20), n, 128),
              st.integers(0, 4095), st.integers(96, 128)))


@settings(max_examples=300, deadline=None)
@given(st.lists(PREFIXES, max_size=40))
def test_overlapping_finds_exactly_the_pairs_that_overlap(cidrs):
    """The sweep (sort + stack) finds what comparing every pair finds, and nothing else."""
    every_pair = {}
    for later, cidr in enumerate(cidrs):
        for earlier in range(later):
            if cidrs[earlier].version == cidr.version and cidrs[earlier].overlaps(cidr):
                every_pair.setdefault(later, []).append(earlier)
    assert overlapping(cidrs) == every_pair


def test_floating_ips_in_a_prefix_are_found_in_payload_order():
    from astara_router.model import semantics
    body = copy.deepcopy(DUAL)
    body["floating_ips"] = [
        {"floating_ip": address, "fixed_ip": fixed} for address, fixed in (
            ("198.51.100.90", "10.20.0.11"), ("2001:db8:c0de:1::5", "fd4e:7a31:2c5b:1::11"),
            ("198.51.100.10", "10.20.0.12"), ("198.51.100.200", "10.20.0.13"),
            ("198.51.100.11", "10.20.0.14"))]
    config = parse_payload(body, BOTH)
    for target in ("198.51.100.0/26", "198.51.100.0/24", "198.51.100.11/32",
                   "2001:db8:c0de:1::/64", "10.0.0.0/8"):
        network = ipaddress.ip_network(target)
        brute = [(i, fip.floating_ip) for i, fip in enumerate(config.floating_ips)
                 if fip.floating_ip.version == network.version and fip.floating_ip in network]
        assert list(semantics._floating_ips_in(config, network, "ge0")) == brute, target


def _unusable_by_ipaddress(address):
    for test, why in (("is_unspecified", "is the unspecified address"),
                      ("is_loopback", "is a loopback address"),
                      ("is_multicast", "is a multicast address"),
                      ("is_link_local", "is a link-local address")):
        if getattr(address, test):
            return why
    return ""


@settings(max_examples=500)
@given(st.one_of(st.integers(0, 2**32 - 1),
                 st.sampled_from([0, 0x7F000000, 0x7FFFFFFF, 0x80000000, 0xDFFFFFFF,
                                  0xE0000000, 0xEFFFFFFF, 0xF0000000, 0xA9FE0000,
                                  0xA9FEFFFF, 0xA9FDFFFF,
                                  0xA9FF0000])))
def test_ipv4_usability_by_integer_ranges_agrees_with_ipaddress(number):
    address = ipaddress.IPv4Address(number)
    assert unusable(address) == _unusable_by_ipaddress(address)
