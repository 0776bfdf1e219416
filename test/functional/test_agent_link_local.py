"""Link-local addresses and IPv6 address flags (issue 12, finding 6): the model refuses a
link-local address in a payload, so none reaches a link, and a refused push keeps the
management address's nodad flag."""
import copy

import pytest

from astara_lab.appliance import contract_payloads

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]
UNREACHABLE_ROUTE = [["198.19.50.0/24", "198.19.99.1"]]  # would fail late, after the addresses


def addresses(appliance):
    """{(ifname, address/prefix): nodad} of every address but the kernel's own link-local
    ones (fe80::/64 from the MAC, which come and go with the link state)."""
    found = {}
    for link in appliance.ns.ip_json("addr", "show"):
        for info in link.get("addr_info", ()):
            if info["local"].startswith("fe80::f816:") or info["local"].startswith("fe80::a5"):
                continue
            found[(link["ifname"], f"{info['local']}/{info['prefixlen']}")] = bool(
                info.get("nodad"))
    return found


def push_changed(appliance, change, **extra):
    body = copy.deepcopy(BASIC)
    change(body)
    body.update(extra)
    return appliance.client().put_json("/v1/system/config", body)


def with_fip(address):
    def change(body):
        body["floating_ips"].append({"floating_ip": address, "fixed_ip": "10.1.0.12"})
    return change


def with_interface_address(address):
    def change(body):
        body["networks"][2]["interface"]["addresses"].append(address)
    return change


LINK_LOCAL = {"fip 169.254.169.254": (with_fip("169.254.169.254"), "169.254.169.254/32"),
              "interface fe80::1": (with_interface_address("fe80::1/64"), "fe80::1/64")}


LINK_LOCAL_PATHS = {"fip 169.254.169.254": "floating_ips[1].floating_ip",
                    "interface fe80::1": "networks[2].interface.addresses[1]"}


@pytest.mark.parametrize("case", sorted(LINK_LOCAL))
def test_a_link_local_address_is_refused_and_never_reaches_a_link(appliance, case):
    """Finding 6 of the hardening issue: a floating IP of 169.254.169.254 or an interface
    address fe80::1 got 500 and stayed on the NIC. The model now refuses both (a 422 naming
    the field, model/semantics.py), alone or beside a change that would fail later, and
    nothing of them reaches a link."""
    change, address = LINK_LOCAL[case]
    before = addresses(appliance)
    for extra in ({}, {"static_routes": UNREACHABLE_ROUTE}):
        response = push_changed(appliance, change, **extra)
        assert response.status == 422, response.text
        assert response.json()["errors"][0]["path"] == LINK_LOCAL_PATHS[case]
        assert "link-local" in response.json()["message"]
        assert address not in {a for _, a in addresses(appliance)}
        assert addresses(appliance) == before
    assert appliance.client().get("/v1/system/config").json()["generation"] == 1


def test_ipv6_mtu_below_1280_is_refused_and_management_keeps_nodad(appliance):
    before = addresses(appliance)
    assert before[("eth0", BASIC["networks"][0]["interface"]["addresses"][0])] is True
    body = copy.deepcopy(BASIC)
    body["networks"][0]["interface"]["mtu"] = 1200
    response = appliance.client().put_json("/v1/system/config", body)
    assert response.status == 422, response.text
    assert response.json()["errors"][0]["path"] == "networks[0].interface.mtu"
    assert "1280" in response.json()["errors"][0]["message"]
    assert addresses(appliance) == before
