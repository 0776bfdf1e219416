"""The dnsmasq files each payload renders to, and dnsmasq's own verdict on them."""
import copy
import shutil

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.apply.dhcp import check_chunks, dnsmasq_test as check, reservation_groups
from astara_router.errors import ApplyError
from astara_router.model import parse_payload
from astara_router.render.dhcp import Line, render_dnsmasq

VALID = contract_payloads("original-orchestrator")
DIR = "/var/lib/astara/dnsmasq"
KERNEL = {f"ge{i}": f"eth{i}" for i in range(16)}

needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None,
                                   reason="dnsmasq is not installed")

HEADER = f"""\
# dnsmasq for the tenant networks; written by astara_router, do not edit.
# Reservations are in dhcp-hosts, DNS names in dns-names: both re-read on SIGHUP.
user=root
pid-file={DIR}/dnsmasq.pid
dhcp-leasefile={DIR}/leases
log-facility={DIR}/dnsmasq.log
no-resolv
no-hosts
no-poll
bind-dynamic
except-interface=lo
dhcp-authoritative
dhcp-lease-max=65536
dhcp-hostsfile={DIR}/dhcp-hosts
addn-hosts={DIR}/dns-names
local=/local/
"""


def render(body, interfaces=KERNEL):
    return render_dnsmasq(parse_payload(body, ("router", "loadbalancer")), interfaces, DIR)


def network(body, ifname):
    return next(n for n in body["networks"] if n["interface"]["ifname"] == ifname)


def test_router_basic():
    files = render(VALID["router-basic"])
    assert files.conf == HEADER + """\
# ge2 = eth2: network cd85ed9c-7580-4882-9f21-c6603b4d90a0 (internal)
interface=eth2
dhcp-range=set:ge2_0,10.1.0.0,static,255.255.255.0,86400s
dhcp-option=tag:ge2_0,option:router,10.1.0.1
dhcp-option=tag:ge2_0,option:dns-server,8.8.8.8,8.8.4.4
dhcp-option=tag:ge2_0,option:classless-static-route,192.168.200.0/24,10.1.0.254,0.0.0.0/0,10.1.0.1
dhcp-option=tag:ge2_0,option:mtu,1450
"""
    # The router's own port (10.1.0.1) is an allocation too: a name, never a reservation.
    assert files.hosts == ("fa:16:3e:10:9f:9b,10.1.0.12,10-1-0-12\n"
                           "fa:16:3e:1d:cb:d6,10.1.0.8,10-1-0-8\n")
    assert files.names == ("10.1.0.12 10-1-0-12.local 10-1-0-12\n"
                           "10.1.0.8 10-1-0-8.local 10-1-0-8\n"
                           "10.1.0.1 10-1-0-1.local 10-1-0-1\n")
    assert set(files.contents()) == {f"{DIR}/dnsmasq.conf", f"{DIR}/dhcp-hosts",
                                     f"{DIR}/dns-names"}


def test_router_dual_stack():
    files = render(VALID["router-dual-stack"])
    # ge2: DHCPv4 only (its v6 subnet is SLAAC, RAs are BIRD's); ge3: stateful DHCPv6 with
    # bracketed DNS servers; ge4 (DHCP off) is not listened on at all.
    assert files.conf == HEADER + """\
# ge2 = eth2: network 31dabf46-6bb7-4803-9a7d-921e870945f4 (internal)
interface=eth2
dhcp-range=set:ge2_0,10.20.0.0,static,255.255.255.0,86400s
dhcp-option=tag:ge2_0,option:router,10.20.0.1
dhcp-option=tag:ge2_0,option:dns-server,8.8.8.8
dhcp-option=tag:ge2_0,option:mtu,1450
# ge3 = eth3: network b5de4686-53ea-467d-b695-6e0f4fa1f918 (internal)
interface=eth3
dhcp-range=set:ge3_0,fd4e:7a31:2c5b:2::,static,64,86400s
dhcp-option=tag:ge3_0,option6:dns-server,[2001:4860:4860::8844]
"""
    # SLAAC addresses carry "true" in allocations but are not reserved; static-vm-1's
    # flag is false: no line.
    assert files.hosts == ("fa:16:3e:4a:0a:95,10.20.0.11,10-20-0-11\n"
                           "fa:16:3e:56:1e:79,10.20.0.12,10-20-0-12\n"
                           "fa:16:3e:5e:0e:5f,[fd4e:7a31:2c5b:2::1a5],fd4e-7a31-2c5b-2--1a5\n"
                           "fa:16:3e:8f:f7:52,[fd4e:7a31:2c5b:2::2c7],fd4e-7a31-2c5b-2--2c7\n")
    names = files.names.splitlines()
    assert "fd4e:7a31:2c5b:1:f816:3eff:fe4a:a95 10-20-0-11.local 10-20-0-11" in names
    assert "10.30.0.21 10-30-0-21.local 10-30-0-21" in names  # static VMs have names too
    assert "enable-ra" not in files.conf and "ra-" not in files.conf


@needs_dnsmasq
@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_payload_passes_dnsmasq_test(name, tmp_path):
    files = render(VALID[name])
    if name.startswith("loadbalancer"):
        assert files is None  # no tenant network: no dnsmasq
        return
    check(files, str(tmp_path / "check.conf"))


def test_many_fips_reserves_forty_hosts():
    files = render(VALID["router-many-fips"])
    assert len(files.hosts.splitlines()) == 40
    assert [line for line in files.conf.splitlines() if line.startswith("interface=")] == \
        ["interface=eth2", "interface=eth3", "interface=eth4", "interface=eth5"]


def test_wide_router_uses_kernel_names_of_two_digit_interfaces():
    interfaces = {f"ge{i}": f"ens{i + 3}" for i in range(13)}
    conf = render(VALID["router-wide"], interfaces).conf
    assert "interface=ens13\ndhcp-range=set:ge10_0,10.60.9.0," in conf


def test_no_dhcp_subnet_means_no_dnsmasq():
    body = copy.deepcopy(VALID["router-basic"])
    network(body, "ge2")["subnets"][0]["dhcp_enabled"] = False
    assert render(body) is None


def test_subnet_without_dns_servers_gets_the_routers_address():
    files = render(VALID["router-no-gateway"])
    assert "dhcp-option=tag:ge2_0,option:dns-server,192.168.51.1\n" in files.conf
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge3")["subnets"][0]["dns_nameservers"] = []
    assert "dhcp-option=tag:ge3_0,option6:dns-server,[fd4e:7a31:2c5b:2::1]\n" in \
        render(body).conf


def test_subnet_without_gateway_offers_no_router():
    body = copy.deepcopy(VALID["router-basic"])
    network(body, "ge2")["subnets"][0]["gateway_ip"] = ""
    conf = render(body).conf
    # An empty option 3 stops dnsmasq from offering itself; no default route in 121.
    assert "dhcp-option=tag:ge2_0,option:router\n" in conf
    assert "classless-static-route,192.168.200.0/24,10.1.0.254\n" in conf


def test_explicit_default_host_route_is_not_doubled():
    body = copy.deepcopy(VALID["router-basic"])
    network(body, "ge2")["subnets"][0]["host_routes"].append(
        {"destination": "0.0.0.0/0", "nexthop": "10.1.0.253"})
    assert ("option:classless-static-route,192.168.200.0/24,10.1.0.254,0.0.0.0/0,10.1.0.253\n"
            in render(body).conf)


def test_no_host_routes_no_option_121():
    assert "classless" not in render(VALID["router-no-gateway"]).conf


@pytest.mark.parametrize("mode, served, reserved", [
    ("slaac", False, False),
    ("dhcpv6-stateless", True, False),
    ("dhcpv6-stateful", True, True),
])
def test_ipv6_address_mode_decides(mode, served, reserved):
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge3")["subnets"][0]["ipv6_address_mode"] = mode
    files = render(body)
    assert ("dhcp-range=set:ge3_0,fd4e:7a31:2c5b:2::,static,64" in files.conf) is served
    assert ("[fd4e:7a31:2c5b:2::1a5]" in files.hosts) is reserved


def test_ipv6_without_mode_follows_dhcp_enabled():
    body = copy.deepcopy(VALID["router-dual-stack"])
    network(body, "ge3")["subnets"][0]["dhcp_enabled"] = False
    files = render(body)
    assert "eth3" not in files.conf and "fd4e:7a31:2c5b:2::" not in files.hosts


def test_allocation_in_two_v4_subnets_gets_one_line_per_subnet():
    body = copy.deepcopy(VALID["router-basic"])
    ge2 = network(body, "ge2")
    ge2["subnets"].append({"id": "s2", "cidr": "10.9.0.0/24", "gateway_ip": "10.9.0.1",
                           "dhcp_enabled": True, "dns_nameservers": [], "host_routes": []})
    ge2["interface"]["addresses"].append("10.9.0.1/24")
    ge2["allocations"][1]["ip_addresses"].update({"10.9.0.8": True, "10.9.0.7": True})
    hosts = render(body).hosts.splitlines()
    assert "fa:16:3e:1d:cb:d6,10.1.0.8,10-1-0-8" in hosts
    assert "fa:16:3e:1d:cb:d6,10.9.0.7,10-1-0-8" in hosts  # the lowest of that subnet


def test_unknown_interface_names_the_field():
    with pytest.raises(ApplyError) as error:
        render(VALID["router-basic"], {"ge0": "eth0", "ge1": "eth1"})
    assert error.value.path == "networks[2].interface.ifname"


def test_hosts_do_not_depend_on_allocation_order():
    body = copy.deepcopy(VALID["router-many-fips"])
    for item in body["networks"]:
        item["allocations"].reverse()
    before = render(VALID["router-many-fips"])
    after = render(body)
    assert (after.conf, after.hosts, after.names) == (before.conf, before.hosts, before.names)


@needs_dnsmasq
def test_duplicate_reservation_is_refused_and_named(tmp_path):
    body = copy.deepcopy(VALID["router-basic"])
    network(body, "ge2")["allocations"][2]["ip_addresses"] = {"10.1.0.8": True}
    with pytest.raises(ApplyError) as error:
        check(render(body), str(tmp_path / "check.conf"))
    assert error.value.status == 422
    assert error.value.path.startswith("networks[2].allocations[")
    assert "duplicate dhcp-host IP address 10.1.0.8" in error.value.message
    assert not list(tmp_path.iterdir())  # the candidate is gone


@needs_dnsmasq
def test_dhcpv6_range_shorter_than_64_is_refused_and_named(tmp_path):
    body = copy.deepcopy(VALID["router-dual-stack"])
    ge3 = network(body, "ge3")
    ge3["subnets"][0]["cidr"] = "fd4e:7a32::/48"  # overlapping no other network's subnet
    ge3["subnets"][0]["gateway_ip"] = "fd4e:7a32::1"
    ge3["interface"]["addresses"] = ["fd4e:7a32::1/48"]
    with pytest.raises(ApplyError) as error:
        check(render(body), str(tmp_path / "check.conf"))
    assert (error.value.status, error.value.path) == (422, "networks[3].subnets[0].cidr")
    assert "prefix length must be at least 64" in error.value.message


def test_reservations_sharing_an_address_are_grouped():
    lines = [Line("dhcp-host=fa:16:3e:00:00:01,10.1.0.5,vm1", "a"),
             Line("dhcp-host=fa:16:3e:00:00:02,10.1.0.6,[2001:db8:1::6],vm2", "b"),
             Line("dhcp-host=fa:16:3e:00:00:03,10.1.0.7,vm3", "c"),
             Line("dhcp-host=fa:16:3e:00:00:04,[2001:db8:1::6],vm4", "d"),  # b's v6
             Line("dhcp-host=fa:16:3e:00:00:05,10.1.0.5,vm5", "e")]  # a's v4
    groups = sorted([line.path for line in group] for group in reservation_groups(lines))
    assert groups == [["a", "e"], ["b", "d"], ["c"]]


def test_a_small_candidate_is_checked_whole():
    files = render(VALID["router-basic"])
    assert check_chunks(files) == [files.check_lines()]


@pytest.mark.parametrize("name", sorted(n for n in VALID if not n.startswith("loadbalancer")))
def test_the_check_text_is_the_check_lines(name):
    """What dnsmasq --test reads is written without a Line per reservation; a refusal
    names the line by its number in the same text."""
    files = render(VALID[name])
    assert files.check_text() == "".join(f"{line.text}\n" for line in files.check_lines())


def with_duplicate_and_another():
    """router-basic with two reservations of 10.1.0.8 and one more VM (three in all)."""
    body = copy.deepcopy(VALID["router-basic"])
    allocations = network(body, "ge2")["allocations"]
    allocations[2]["ip_addresses"] = {"10.1.0.8": True}
    allocations.append(dict(copy.deepcopy(allocations[1]), mac_address="fa:16:3e:00:00:20",
                            hostname="10-1-0-20.local", ip_addresses={"10.1.0.20": True}))
    return body


def test_a_large_candidate_is_shared_out_with_duplicates_together():
    files = render(with_duplicate_and_another())
    conf = files.conf_lines
    chunks = check_chunks(files, size=1)
    assert len(chunks) > 1
    assert all(chunk[:len(conf)] == conf for chunk in chunks)
    inlined = [line for chunk in chunks for line in chunk[len(conf):]]
    assert sorted(inlined, key=repr) == sorted(files.check_lines()[len(conf):], key=repr)
    duplicate = [chunk for chunk in chunks
                 if sum(",10.1.0.8," in line.text for line in chunk) == 2]
    assert len(duplicate) == 1  # the two reservations of 10.1.0.8 are checked together


@needs_dnsmasq
def test_a_duplicate_is_refused_when_checked_in_shares(tmp_path, monkeypatch):
    monkeypatch.setattr("astara_router.apply.dhcp.CHECK_CHUNK", 1)
    files = render(with_duplicate_and_another())
    assert len(check_chunks(files, 1)) == 2
    with pytest.raises(ApplyError) as error:
        check(files, str(tmp_path / "check.conf"))
    assert error.value.status == 422
    assert error.value.path.startswith("networks[2].allocations[")
    assert "duplicate dhcp-host IP address 10.1.0.8" in error.value.message
    assert not list(tmp_path.iterdir())  # every share's candidate is gone
    check(render(VALID["router-basic"]), str(tmp_path / "check.conf"))  # valid: passes
