"""The real agent in a namespace, driven over its management address with the contract
payloads: accepted bodies produce the addresses/MTUs/routes they describe, refused bodies
change nothing."""
import json

import pytest

from astara_lab.appliance import (contract_appliance, contract_payloads, expected_addresses,
                                  kernel_names)
from astara_lab.failover import ha_daemons
from astara_lab.peers import eventually

pytestmark = pytest.mark.netns

VALID = contract_payloads("original-orchestrator")
INVALID = contract_payloads("invalid")
INVALID_EXPECT = {  # file -> (status, words the message must contain), from its README
    "missing-tenant-id": (422, ["tenant_id"]),
    "missing-hostname": (422, ["hostname"]),
    "floating-ip-not-an-ip": (422, ["floating_ips[0].floating_ip", "172.24.4.300"]),
    "interface-address-not-cidr": (422, ["ge2", "10.1.0.1/33"]),
    "unknown-service": (400, ["firewall"]),
    "hostname-injection": (422, ["hostname"]),
}


def routes_by_dst(dump):
    return {(r["dst"], r.get("gateway"), r.get("dev")) for r in dump["routes"]}


@pytest.mark.parametrize("name", sorted(VALID))
def test_contract_payload_is_applied(lab, name):
    payload = VALID[name]
    appliance = contract_appliance(lab, name, payload)
    client = appliance.client()

    response = client.put_json("/v1/system/config", payload)
    assert response.status == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["generation"] == 1

    names = kernel_names(appliance)

    def dataplane():
        dump = {link["ifname"]: link for link in appliance.dump()["links"]}
        for ifname, addresses in expected_addresses(payload).items():
            live = dump[names[ifname]]
            assert addresses <= set(live["addresses"]), (ifname, live)
            assert set(live["addresses"]) == addresses, (ifname, live)
            assert live["up"]
        for network in payload["networks"]:
            mtu = network["interface"].get("mtu") or network.get("mtu")
            if mtu:
                assert dump[names[network["interface"]["ifname"]]]["mtu"] == mtu

        routes = routes_by_dst(appliance.dump())
        if payload.get("default_v4_gateway"):
            assert ("default", payload["default_v4_gateway"], names["ge1"]) in routes
        for network in payload["networks"]:
            for subnet in network["subnets"]:
                for hr in subnet["host_routes"]:
                    assert (hr["destination"], hr["nexthop"],
                            names[network["interface"]["ifname"]]) in routes
        if name == "router-dual-stack":
            assert ("default", "2001:db8:c0de:1::1", names["ge1"]) in routes
        if name == "router-no-gateway":
            assert not any(r[0] == "default" for r in routes)
        return True

    ha = bool(payload.get("ha_resource"))
    # HA: alone, the instance becomes VRRP master 3 adverts later and keepalived adds the
    # data plane; otherwise it is there when the answer comes.
    eventually(dataplane, 20 if ha else 0, f"{name}: the dataplane of its README")
    assert ha_daemons(appliance.ns) == ({"keepalived", "conntrackd"} if ha else set())

    config = client.get("/v1/system/config")
    assert config.status == 200
    assert config.json()["configuration"]["tenant_id"] == payload["tenant_id"]
    assert config.headers["ETag"].strip('"') == config.json()["hash"]


def test_many_networks_map_ge10_naturally(lab):
    """ge10 is the 11th NIC (eth10), not eth1's neighbour in a string sort."""
    payload = VALID["router-wide"]
    appliance = contract_appliance(lab, "router-wide", payload)
    interfaces = appliance.client().get("/v1/system/interfaces").json()["interfaces"]
    by_name = {i["ifname"]: i for i in interfaces}
    assert sorted(by_name, key=lambda n: int(n[2:])) == [f"ge{i}" for i in range(13)]
    assert by_name["ge10"]["kernel_name"] == "eth10"
    assert by_name["ge10"]["lladdr"] == "fa:16:3e:c2:43:31"
    assert all(i["ifname"] != "lo" for i in interfaces)
    single = appliance.client().get("/v1/system/interface/ge12")
    assert single.status == 200 and single.json()["interface"]["lladdr"] == "fa:16:3e:56:57:9b"
    assert appliance.client().get("/v1/system/interface/ge13").status == 404


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_payload_is_refused_and_changes_nothing(lab, name):
    good = VALID["router-basic"]
    appliance = contract_appliance(lab, "router-basic", good)
    client = appliance.client()
    assert client.put_json("/v1/system/config", good).status == 200
    before = appliance.dump()
    hostname_before = appliance.ns.run(["hostname"]).stdout

    response = client.put_json("/v1/system/config", INVALID[name])
    status, words = INVALID_EXPECT[name]
    assert response.status == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    message = response.json()["message"]
    for word in words:
        assert word in message, (word, message)

    assert appliance.dump() == before
    assert appliance.ns.run(["hostname"]).stdout == hostname_before != "pwned\n"
    config = client.get("/v1/system/config").json()
    assert config["generation"] == 1 and config["configuration"] == good


def test_protocol_errors(lab):
    good = VALID["router-basic"]
    appliance = contract_appliance(lab, "router-basic", good)
    client = appliance.client()
    body = json.dumps(good).encode()
    charset = client.put_raw("/v1/system/config", body, "application/json; charset=utf-8")
    assert charset.status == 200, charset.text
    before = appliance.dump()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = client.put_raw("/v1/system/config", body, content_type)
        assert response.status == 415 and "application/json" in response.json()["message"]
    no_type = client.request("PUT", "/v1/system/config", body=body)
    assert no_type.status == 415
    truncated = client.put_raw("/v1/system/config", b'{"tenant_id": "abc",',
                               "application/json")
    assert truncated.status == 400 and "JSON" in truncated.json()["message"]
    for shape, path in (([], "object"), ({**good, "networks": {}}, "networks")):
        response = client.put_json("/v1/system/config", shape)
        assert response.status == 422 and path in response.json()["message"], response.text
    missing = client.get("/v1/nothing-here")
    assert missing.status == 404 and missing.headers["Content-Type"] == "application/json"
    assert appliance.dump() == before
    rules = client.get("/v1/firewall/rules")
    assert rules.status == 200 and rules.headers["Content-Type"].startswith("text/plain")
    status = client.get("/v1/status/").json()
    assert set(status) >= {"v4", "v6", "state", "generation"}


def test_hostile_input_is_4xx_never_5xx_and_changes_nothing(lab):
    """Issue 12, findings 9 and 10, against the real agent: input that passes type checks
    never gets a 5xx, and a refusal leaves the kernel as it was."""
    good = VALID["router-basic"]
    appliance = contract_appliance(lab, "router-basic", good)
    client = appliance.client()
    assert client.put_json("/v1/system/config", good).status == 200
    before = appliance.dump()
    hostile = [
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"tenant_id": "\\ud800", "hostname": "r"}', 400),
        (json.dumps({**good, "tenant_id": "t" * 100_000}).encode(), 422),
        (json.dumps({**good, "hostname": "h" * 300}).encode(), 422),
        (json.dumps({**good, "labels": {"x\ny": ["10.9.0.0/16"]}}).encode(), 422),
    ]
    for body, status in hostile:
        response = client.put_raw("/v1/system/config", body, "application/json")
        assert response.status == status, (body[:60], response.text)
        assert response.json()["message"]
    assert appliance.dump() == before
    assert client.get("/v1/system/config").json()["generation"] == 1

    # Label names that used to collide as nft set names (label_x_v6) now apply.
    labelled = {**good, "labels": {"x": ["10.9.0.0/16", "2001:db8:9::/48"],
                                   "x_v6": ["10.8.0.0/16", "2001:db8:8::/48"]}}
    response = client.put_json("/v1/system/config", labelled)
    assert response.status == 200, response.text
    listing = appliance.ns.run(["nft", "list", "table", "inet", "astara"]).stdout
    sets = [line.split()[1] for line in listing.splitlines()
            if line.strip().startswith("set label_")]
    assert len(sets) == len(set(sets)) == 4, sets
