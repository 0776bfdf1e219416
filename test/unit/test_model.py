"""The payload model: every contract body parses, every invalid one fails on its field."""
import copy
import ipaddress

import msgspec
import pytest

from astara_lab.appliance import contract_payloads
from astara_router.model import (PayloadError, UnsupportedService, parse_payload,
                                 valid_hostname)
from astara_router.model.errors import schema_error
from astara_router.model.schema import Payload

VALID = contract_payloads("original-orchestrator")
INVALID = contract_payloads("invalid")
BOTH = ("router", "loadbalancer")


def errors_of(body, services=BOTH):
    with pytest.raises(PayloadError) as info:
        parse_payload(body, services)
    return info.value


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_payload_parses(name):
    config = parse_payload(VALID[name], BOTH)
    assert config.tenant_id == VALID[name]["tenant_id"]
    assert config.management_network is not None
    assert (config.router is None) == name.startswith("loadbalancer")
    assert (config.loadbalancer is None) != name.startswith("loadbalancer")


def test_router_basic_fields():
    config = parse_payload(VALID["router-basic"])
    router = config.router
    assert router.asn == router.neighbor_asn == 64512
    assert router.default_v4_gateway == ipaddress.ip_address("172.24.4.1")
    assert [(str(f.floating_ip), str(f.fixed_ip)) for f in router.floating_ips] == [
        ("172.24.4.228", "10.1.0.8")]
    assert [(label.name, [str(c) for c in label.cidrs]) for label in router.labels] == [
        ("ext", ["192.168.57.0/24"])]
    assert str(router.orchestrator.address) == "fdca:3ba5:a17a:acda::2"
    internal = config.tenant_networks[0]
    assert internal.interface.ifname == "ge2" and internal.interface.mtu == 1450
    subnet = internal.subnets[0]
    assert [str(d) for d in subnet.dns_nameservers] == ["8.8.8.8", "8.8.4.4"]
    route = subnet.host_routes[0]
    assert (str(route.destination), str(route.nexthop)) == ("192.168.200.0/24", "10.1.0.254")
    web1 = next(a for a in internal.allocations if a.mac_address == "fa:16:3e:1d:cb:d6")
    assert web1.dhcp_addresses == (ipaddress.ip_address("10.1.0.8"),)
    assert str(config.management_address) == "fdca:3ba5:a17a:acda:f816:3eff:fe67:416c"


def test_model_is_immutable():
    config = parse_payload(VALID["router-basic"])
    with pytest.raises(AttributeError):
        config.hostname = "x"
    with pytest.raises(AttributeError):
        config.networks[0].interface.mtu = 9000


def test_duplicate_network_entries_are_merged():
    config = parse_payload(VALID["router-dual-stack-by-subnet"])
    ge3 = [n for n in config.networks if n.interface.ifname == "ge3"]
    assert len(ge3) == 1
    assert sorted(map(str, ge3[0].interface.addresses)) == [
        "10.20.0.1/24", "fd4e:7a31:2c5b:1::1/64"]
    assert len(ge3[0].subnets) == 2


def test_same_ifname_on_two_networks_is_refused():
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][2]["interface"]["ifname"] = "ge1"
    error = errors_of(body)
    assert "networks[2].interface.ifname" in str(error) and "ge1" in str(error)


@pytest.mark.parametrize("name,status,words", [
    ("missing-tenant-id", 422, ["tenant_id"]),
    ("missing-hostname", 422, ["hostname"]),
    ("floating-ip-not-an-ip", 422, ["floating_ips[0].floating_ip", "172.24.4.300"]),
    ("interface-address-not-cidr", 422, ["networks[2].interface.addresses[0]", "ge2",
                                         "10.1.0.1/33"]),
    ("unknown-service", 400, ["services.firewall", "firewall"]),
    ("hostname-injection", 422, ["hostname"]),
])
def test_invalid_contract_payloads(name, status, words):
    error = errors_of(INVALID[name])
    assert error.status == status
    for word in words:
        assert word in str(error)
    assert error.to_dict()["errors"][0]["path"]


def test_unknown_service_is_a_400_even_when_loadbalancer_is_disabled():
    with pytest.raises(UnsupportedService):
        parse_payload(VALID["loadbalancer-http"], ("router",))


@pytest.mark.parametrize("mutate,path", [
    (lambda b: b.__setitem__("networks", {}), "networks"),
    (lambda b: b["networks"].append("ge9"), "networks[3]"),
    (lambda b: b["networks"][1].__setitem__("network_type", "dmz"), "networks[1].network_type"),
    (lambda b: b["networks"][2]["subnets"][0].__setitem__("cidr", "10.1.0.1/24"),
     "networks[2].subnets[0].cidr"),
    (lambda b: b["networks"][2]["subnets"][0].__setitem__("dhcp_enabled", "yes"),
     "networks[2].subnets[0].dhcp_enabled"),
    (lambda b: b["networks"][2]["allocations"][0].__setitem__("mac_address", "nope"),
     "networks[2].allocations[0].mac_address"),
    (lambda b: b["networks"][2]["interface"].__setitem__("ifname", "eth2"),
     "networks[2].interface.ifname"),
    (lambda b: b["networks"][2]["interface"].__setitem__("mtu", 20),
     "networks[2].interface.mtu"),
    (lambda b: b.__setitem__("default_v4_gateway", "fe80::1"), "default_v4_gateway"),
    (lambda b: b.__setitem__("asn", "x"), "asn"),
    (lambda b: b.__setitem__("static_routes", [["10.0.0.0/8"]]), "static_routes[0]"),
    (lambda b: b["floating_ips"].append({"floating_ip": "172.24.4.228",
                                         "fixed_ip": "10.1.0.12"}), "floating_ips[1].floating_ip"),
    (lambda b: b["floating_ips"][0].__setitem__("fixed_ip", "2001:db8::8"),
     "floating_ips[0].fixed_ip"),
    (lambda b: b.__setitem__("ha_config", {"peers": ["x"], "priority": 100}),
     "ha_config.peers[0]"),
    (lambda b: b.__setitem__("labels", {"ext": "10.0.0.0/8"}), "labels.ext"),
    (lambda b: b.__setitem__("tenant_id", 42), "tenant_id"),
])
def test_wrong_shapes_name_their_field(mutate, path):
    body = copy.deepcopy(VALID["router-basic"])
    mutate(body)
    error = errors_of(body)
    assert any(e.path == path for e in error.errors), error.errors


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_non_object_body(body):
    assert errors_of(body).status == 422


def test_a_body_without_networks_is_refused_on_its_field():
    assert [e.path for e in errors_of({"hostname": "0", "tenant_id": "0"}).errors] == \
        ["networks"]


def test_the_schema_reports_its_first_problem():
    body = copy.deepcopy(VALID["router-basic"])
    del body["tenant_id"]
    body["hostname"] = "bad name"
    body["floating_ips"][0]["floating_ip"] = "nope"
    errors = errors_of(body).errors
    assert len(errors) == 1 and errors[0].path in {"tenant_id", "hostname",
                                                   "floating_ips[0].floating_ip"}


def test_problems_after_the_schema_are_reported_at_once():
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][2]["subnets"][0]["cidr"] = "10.1.0.1/24"  # host bits set
    body["floating_ips"].append({"floating_ip": "172.24.4.228", "fixed_ip": "10.1.0.12"})
    body["networks"][2]["interface"]["addresses"].append("fd00::1::2/64")  # shape, not IPv6
    paths = [e.path for e in errors_of(body).errors]
    assert sorted(paths) == ["floating_ips[1].floating_ip",
                             "networks[2].interface.addresses[1]",
                             "networks[2].subnets[0].cidr"]


@pytest.mark.parametrize("mutate,path,words", [
    (lambda b: b["networks"][2]["interface"].__setitem__("mtu", 20),
     "networks[2].interface.mtu", ["(ge2)", "from 68 to 65535", "not 20"]),
    (lambda b: b["networks"][2]["allocations"][0].__setitem__(
        "ip_addresses", {"10.1.0.8": True, "10.1.0.999": True}),
     "networks[2].allocations[0].ip_addresses.10.1.0.999", ["IPv4 or IPv6", "'10.1.0.999'"]),
    (lambda b: b["networks"][2]["allocations"][0].__setitem__("ip_addresses", {"10.1.0.8": 1}),
     "networks[2].allocations[0].ip_addresses.10.1.0.8", ["true or false", "not 1"]),
    (lambda b: b.__setitem__("labels", {"ext": ["10.0.0.0/8", 3], "int": []}),
     "labels.ext[1]", ["network CIDR", "not 3"]),
    (lambda b: b.__setitem__("static_routes", [{"destination": "10.0.0.0/8"}]),
     "static_routes[0].next_hop", ["required"]),
    (lambda b: b.__setitem__("static_routes", [["10.0.0.0/8", "fe80::1"]]),
     "static_routes[0][1]", ["address family"]),
    (lambda b: b["networks"][2]["subnets"][0].pop("cidr"),
     "networks[2].subnets[0].cidr", ["(ge2)", "required but missing"]),
    (lambda b: b["networks"][1].__setitem__("network_type", "dmz"),
     "networks[1].network_type", ["(ge1)", "external|internal", "'dmz'"]),
    (lambda b: b.__setitem__("services", {"router": {"asn": 0}}),
     "services.router.asn", ["from 1 to 4294967295", "not 0"]),
    (lambda b: b.__setitem__("hostname", "x" * 254), "hostname", ["host name"]),
    (lambda b: b["networks"][0]["interface"].__setitem__("description", "ünï"),
     "networks[0].interface.description", ["[a-zA-Z0-9_]"]),
])
def test_errors_name_the_field_the_rule_and_the_value(mutate, path, words):
    body = copy.deepcopy(VALID["router-basic"])
    mutate(body)
    (error,) = errors_of(body).errors
    assert error.path == path, error
    for word in words:
        assert word in error.message, error


def test_null_means_the_default():
    body = copy.deepcopy(VALID["router-basic"])
    explicit = copy.deepcopy(body)
    for network in explicit["networks"]:
        network.update(name=None, mtu=None, v4_conf_service=None, allocations=None)
        network["interface"].update(description=None)
        for subnet in network["subnets"]:
            subnet.update(dns_nameservers=None, host_routes=None)
    explicit.update(ha_resource=None, ha_config={"peers": None, "priority": None},
                    labels=None, anchors=None, address_book=None, vpn={"ipsec": None})
    explicit["orchestrator"]["metadata_port"] = None
    for network in body["networks"]:
        network.pop("name", None), network.pop("mtu", None), network.pop("allocations", None)
        network.pop("v4_conf_service", None), network["interface"].pop("description", None)
        for subnet in network["subnets"]:
            subnet.pop("dns_nameservers"), subnet.pop("host_routes")
    for key in ("ha_resource", "ha_config", "labels", "anchors", "address_book", "vpn"):
        body.pop(key, None)
    body["orchestrator"].pop("metadata_port")
    assert parse_payload(explicit) == parse_payload(body)
    assert parse_payload(body).router.orchestrator.metadata_port == 9697


def test_vpn_psk_and_proposals_are_parsed():
    service = parse_payload(VALID["router-vpn"]).router.vpn[0]
    connection = service.connections[0]
    assert connection.psk == "Xq7-branch1-PSK-2016"
    assert connection.ikepolicy.encryption_algorithm == "aes-128"
    assert connection.ipsecpolicy.encryption_algorithm == "aes-256"
    assert [str(c) for c in connection.peer_ep_group.endpoints] == [
        "192.168.240.0/24", "192.168.241.0/24"]


def test_loadbalancer_members():
    lb = parse_payload(VALID["loadbalancer-multi"], BOTH).loadbalancer
    pools = {listener.protocol_port: listener.default_pool for listener in lb.listeners}
    assert pools[80].lb_algorithm == "LEAST_CONNECTIONS"
    assert [(str(m.address), m.weight, m.admin_state_up) for m in pools[80].members] == [
        ("10.80.0.11", 1, True), ("10.80.0.12", 3, True), ("10.80.0.13", 5, False)]
    assert pools[5432].lb_algorithm == "SOURCE_IP"


@pytest.mark.parametrize("name,ok", [
    ("ak-baef51913f354071ab020eae853d4ffe", True),
    ("ak-loadbalancer-" + "a" * 32, True),
    ("router.example.org", True), ("a." * 31 + "ab", True),
    ("a." * 32 + "a", False),  # 65 characters: more than the kernel's host name holds
    ("-bad", False), ("bad-", False), ("a" * 64, False), ("a b", False),
    ("x;reboot", False), ("x\n127.0.0.1 evil", False), ("", False), ("a..b", False),
])
def test_hostname_rule(name, ok):
    assert valid_hostname(name) is ok


@pytest.mark.parametrize("field,value", [("hostname", "ak-x\n"), ("tenant_id", None)])
def test_trailing_newline_is_not_a_valid_name(field, value):
    body = copy.deepcopy(VALID["router-basic"])
    if value is None:
        body["networks"][2]["interface"]["ifname"] = "ge2\n"
        path = "networks[2].interface.ifname"
    else:
        body[field] = value
        path = field
    assert any(e.path == path for e in errors_of(body).errors)


def test_the_appliance_name_holds_64_characters_an_allocations_dns_name_253():
    def name(length):  # labels of at most 29 characters, ``length`` in all (not 30k)
        return ("a" * 29 + ".") * (length // 30) + "b" * (length % 30)
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][2]["allocations"][0]["hostname"] = name(100)
    body["hostname"] = name(64)
    parse_payload(body, ("router",))
    body["hostname"] = name(65)
    assert [e.path for e in errors_of(body).errors] == ["hostname"]


def test_an_error_message_the_translator_cannot_follow_keeps_msgspec_words():
    error = schema_error(msgspec.ValidationError("Expected `int`, got `str` - at `$.nope[3]`"),
                         {}, Payload)
    assert (error.path, error.message) == ("nope[3]", "Expected `int`, got `str`")


def test_an_unchanged_network_is_the_same_model_object_in_the_next_parse():
    """Renderers memoize per network object: a network entry that is the same as in the
    previous parse (at the same place) is handed out again; a changed one is new."""
    body = copy.deepcopy(contract_payloads()["router-basic"])
    first = parse_payload(body, ("router",))
    body["networks"][2]["interface"]["mtu"] = 1400
    second = parse_payload(body, ("router",))
    assert second.networks[0] is first.networks[0]
    assert second.networks[2] is not first.networks[2]
    assert second.networks[2].interface.mtu == 1400
    body["networks"][0], body["networks"][1] = body["networks"][1], body["networks"][0]
    third = parse_payload(body, ("router",))  # the same entry at another place: rebuilt
    assert third.networks[0] is not second.networks[1]


def test_a_floating_ip_is_the_same_object_in_the_next_parse_then_forgotten():
    """Floating IPs keep their derived forms across pushes (the same object for the same
    pair in the next parse), and one the last parse did not have is forgotten: memory stays
    bounded by two payloads however many floating IPs come and go."""
    body = copy.deepcopy(contract_payloads()["router-basic"])
    kept = parse_payload(body, ("router",)).router.floating_ips[0]
    assert parse_payload(body, ("router",)).router.floating_ips[0] is kept
    assert parse_payload(body, ("router",)).router.floating_ips[0] is kept
    without = copy.deepcopy(body)
    without["floating_ips"] = []
    parse_payload(without, ("router",))
    again = parse_payload(body, ("router",)).router.floating_ips[0]
    assert again == kept and again is not kept


def test_a_parse_that_replaces_every_floating_ip_keeps_none_of_the_previous_ones():
    """What a successful parse did not reuse is forgotten at its end, not at the next
    parse: after a push that replaces every floating IP, the memos hold one payload."""
    import gc
    from astara_router.model.types import FloatingIP
    body = copy.deepcopy(contract_payloads()["router-basic"])
    # Addresses no other test pushes: other tests' configurations (and the checks' memory
    # of the last one) may keep router-basic's own floating IPs alive in this process.
    for k, fip in enumerate(body["floating_ips"]):
        fip["floating_ip"] = f"172.24.4.{241 + k}"
    old = {fip.floating_ip for fip in parse_payload(body, ("router",)).router.floating_ips}
    moved = copy.deepcopy(body)
    for fip in moved["floating_ips"]:
        fip["floating_ip"] = fip["floating_ip"].rsplit(".", 1)[0] + ".250"
    kept = parse_payload(moved, ("router",))
    gc.collect()
    assert old and not [o for o in gc.get_objects()
                        if type(o) is FloatingIP and o.floating_ip in old]
    assert parse_payload(moved, ("router",)).router.floating_ips[0] is \
        kept.router.floating_ips[0]


@pytest.mark.parametrize("text", ["198.51.100.7", "2001:db8::7", "fe80::1%eth0"])
def test_a_floating_ips_host_interface_is_the_address_alone(text):
    from astara_router.model.types import FloatingIP
    address = ipaddress.ip_address(text)
    host = FloatingIP(address, address).host
    assert str(host) == f"{text}/{address.max_prefixlen}"
    expected = ipaddress.ip_interface((address, address.max_prefixlen))
    assert (host, host.ip, host.network, hash(host)) == (
        expected, expected.ip, expected.network, hash(expected))


def test_entries_known_from_the_last_parse_give_the_same_model_and_errors():
    from astara_router.model.checks import next_parse
    body = copy.deepcopy(VALID["router-many-fips"])
    first = parse_payload(copy.deepcopy(body), BOTH)
    again = parse_payload(copy.deepcopy(body), BOTH)  # networks and FIPs known now
    assert again == first
    broken = copy.deepcopy(body)
    broken["floating_ips"].insert(3, {"floating_ip": "172.24.4.300", "fixed_ip": "10.40.1.10"})
    broken["networks"][2]["interface"]["mtu"] = "big"
    with pytest.raises(PayloadError) as known:
        parse_payload(copy.deepcopy(broken), BOTH)
    next_parse(), next_parse()  # two parses later every memo has forgotten the body
    with pytest.raises(PayloadError) as fresh:
        parse_payload(copy.deepcopy(broken), BOTH)
    assert known.value.to_dict() == fresh.value.to_dict()


def _forms_of_a_repeated_entry():
    """Ways a floating-IP entry between repeated ones can differ from the last push's."""
    def entry(fips, index, **change):
        fips[index] = {**fips[index], **change}
    return {
        "an extra key": lambda fips: entry(fips, 5, extra="x"),
        "a number": lambda fips: entry(fips, 5, fixed_ip=5),
        "a missing key": lambda fips: fips[5].pop("fixed_ip"),
        "not an object": lambda fips: fips.__setitem__(5, "172.24.4.9"),
        "listed twice": lambda fips: fips.append(dict(fips[5])),
        "removed": lambda fips: fips.pop(5),
        "moved": lambda fips: fips.insert(0, fips.pop()),
        "reversed": lambda fips: fips.reverse(),
    }


@pytest.mark.parametrize("form", list(_forms_of_a_repeated_entry()))
def test_floating_ips_repeated_from_the_last_push_give_what_a_fresh_parse_gives(form):
    """The entries repeated from the last parse are taken from it by comparing their texts
    (parse._with_known_floating_ips); any other difference gives what a parse that
    remembers nothing gives, model or errors."""
    from astara_router.model.checks import next_parse
    body = copy.deepcopy(VALID["router-many-fips"])
    changed = copy.deepcopy(body)
    _forms_of_a_repeated_entry()[form](changed["floating_ips"])

    def outcome():
        try:
            return parse_payload(copy.deepcopy(changed), BOTH)
        except PayloadError as exc:
            return exc.to_dict()
    parse_payload(copy.deepcopy(body), BOTH)
    known = outcome()
    next_parse(), next_parse()  # two parses later every memo has forgotten the body
    assert known == outcome()


def test_parsed_addresses_are_remembered_by_text_and_bounded():
    """parse_ip gives the same object for the same text (the model, the metadata proxy's
    maps and the floating IPs share it), a refused text is not remembered, and what it
    remembers stays bounded: when full it starts over."""
    from astara_router.model import checks
    first = checks.parse_ip("198.51.100.77")
    assert checks.parse_ip("198.51.100.77") is first == ipaddress.ip_address("198.51.100.77")
    assert checks.new_address("198.51.100.77") is not first
    for text in ("198.51.100.077", "198.51.100", "2001:db8::g"):
        with pytest.raises(ValueError):
            checks.parse_ip(text)
    remembered = checks.parse_ip.__self__
    assert "198.51.100.077" not in remembered
    for number in range(checks.CACHE_SIZE + 1):
        checks.parse_ip(f"198.18.{number >> 8}.{number & 255}")
        assert len(remembered) <= checks.CACHE_SIZE
    assert checks.parse_ip("198.51.100.77") == first
