"""The pure nftables rendering: key lines, element-only diffs, and nft's own checker.

The ``nft -c`` tests run nft inside a throwaway network namespace (``unshare -n``), never in
the host's; they are skipped where that is impossible (not root, no nft)."""
import copy
import dataclasses
import os
import random
import shutil
import subprocess

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.errors import ApplyError
from astara_router.model import PayloadError, parse_payload
from astara_router.render.firewall import (Ruleset, element_changes, floating_ips_in_listing,
                                           label_set_name, render_firewall, replace_script)
from unchecked import PLACEHOLDER, with_text

VALID = contract_payloads("original-orchestrator")
SERVICES = ("router", "loadbalancer")
NAMES = {f"ge{i}": f"eth{i}" for i in range(16)}


def ruleset_of(body, names=NAMES, **kwargs):
    return render_firewall(parse_payload(body, SERVICES), names, **kwargs)


def chain(ruleset, name):
    return next(c for c in ruleset.chains if c.name == name).rules


def lines(text):
    return {line.strip() for line in text.splitlines()}


# -- key lines --------------------------------------------------------------------------------

def test_router_basic_key_lines():
    ruleset = ruleset_of(VALID["router-basic"])
    text = ruleset.text()
    assert text.startswith("# managed by astara-router")
    assert "table inet astara {" in text
    expected = {
        # input
        'iifname "lo" accept',
        'iifname != "eth0" ip6 daddr fdca:3ba5:a17a:acda:f816:3eff:fe67:416c drop',
        "meta l4proto { icmp, ipv6-icmp } accept",
        "ct state vmap { established : accept, related : accept, invalid : drop }",
        'iifname "eth0" tcp dport { 22, 5000 } accept',
        'iifname "eth2" udp dport { 53, 67, 547 } accept',
        'iifname "eth2" tcp dport 53 accept',
        'iifname "eth2" ip daddr 10.1.0.1 tcp dport 9602 accept',
        # forward
        "type filter hook forward priority filter; policy drop;",
        'iifname "eth2" oifname { "eth2", "eth1" } accept',
        'iifname "eth1" oifname "eth2" ct status dnat accept',
        'iifname "eth1" oifname "eth2" meta l4proto ipv6-icmp accept',
        'iifname "eth1" oifname "eth2" ip6 saddr @label_ext_v6 accept',
        # nat
        'iifname "eth2" ip daddr 169.254.169.254 tcp dport 80 dnat ip to 10.1.0.1:9602',
        'iifname { "eth1", "eth2" } dnat ip to ip daddr map @fip_dnat',
        'oifname "eth1" snat ip to ip saddr map @fip_snat',
        'oifname "eth1" ip saddr @tenants snat ip to 172.24.4.7',
        "ct status dnat ip saddr @tenants snat ip to ip saddr map @fip_snat",
        "ct status dnat ip saddr @tenants snat ip to 172.24.4.7",
        # data
        "172.24.4.228 : 10.1.0.8", "10.1.0.8 : 172.24.4.228", "10.1.0.0/24",
        "192.168.57.0/24", "set label_ext {", "set label_ext_v6 {", "map fip_dnat {",
    }
    assert expected <= lines(text), sorted(expected - lines(text))
    # FIP SNAT before the generic SNAT, metadata DNAT before the FIP DNAT
    srcnat = chain(ruleset, "srcnat")
    assert srcnat.index('oifname "eth1" snat ip to ip saddr map @fip_snat') < \
        srcnat.index('oifname "eth1" ip saddr @tenants snat ip to 172.24.4.7')
    assert "iptables" not in text and "masquerade" not in text


def test_names_are_kernel_names_not_generic_ones():
    names = {"ge0": "ens3", "ge1": "ens4", "ge2": "ens10"}
    text = ruleset_of(VALID["router-basic"], names).text()
    assert '"ens10"' in text and '"ge2"' not in text and '"eth2"' not in text


def test_router_wide_uses_two_digit_interfaces():
    ruleset = ruleset_of(VALID["router-wide"])
    text = ruleset.text()
    for n in (10, 11, 12):
        assert f'"eth{n}"' in text
        assert f'iifname "eth{n}" ip daddr 10.60.{n - 1}.1 tcp dport {9600 + n} accept' in text
    assert ruleset.floating_ips() == {"172.24.4.140": "10.60.1.10",
                                      "172.24.4.141": "10.60.9.10",
                                      "172.24.4.142": "10.60.11.10"}


def test_dual_stack_bgp_and_v6_tenants():
    ruleset = ruleset_of(VALID["router-dual-stack"])
    assert ruleset.set("bgp_peers_v6").elements == ("2001:db8:c0de:1::1",)
    rules = chain(ruleset, "input")
    assert 'iifname "eth1" ip6 saddr @bgp_peers_v6 tcp dport 179 accept' in rules
    assert ruleset.set("tenants_v6").elements == ("fd4e:7a31:2c5b:1::/64",
                                                  "fd4e:7a31:2c5b:2::/64")
    assert ruleset.set("tenants").elements == ("10.20.0.0/24", "10.30.0.0/24")
    # the v6-only network gets DHCPv6, and no metadata listener (no IPv4 address)
    assert 'iifname "eth3" udp dport { 53, 67, 547 } accept' in rules
    assert not [r for r in rules if r.startswith('iifname "eth3" ip daddr')]


def test_no_gateway_router_routes_between_tenants_without_nat():
    ruleset = ruleset_of(VALID["router-no-gateway"])
    assert chain(ruleset, "srcnat") == ()
    assert ruleset.set("fip_dnat") is None
    forward = chain(ruleset, "forward")
    assert 'iifname { "eth1", "eth2" } oifname { "eth1", "eth2" } accept' in forward


def test_vpn_protected_pairs_are_exempt_from_snat():
    ruleset = ruleset_of(VALID["router-vpn"])
    assert ruleset.set("vpn_tunnels").type == "ipv4_addr . ipv4_addr"
    assert ruleset.set("vpn_tunnels").elements == ("10.8.0.0/24 . 192.168.240.0/24",
                                                   "10.8.0.0/24 . 192.168.241.0/24")
    assert ruleset.set("vpn_tunnels_v6").elements == ()
    assert ruleset.set("vpn_endpoints").elements == ("203.0.113.10",)
    srcnat = chain(ruleset, "srcnat")
    assert srcnat[0] == "ip saddr . ip daddr @vpn_tunnels accept"  # before any SNAT
    assert 'oifname "eth1" ip saddr @tenants snat ip to 198.51.100.17' in srcnat
    assert 'iifname "eth1" ip saddr @vpn_endpoints udp dport { 500, 4500 } accept' in \
        chain(ruleset, "input")
    forward = chain(ruleset, "forward")
    assert 'iifname "eth1" ip daddr . ip saddr @vpn_tunnels meta ipsec exists accept' \
        in forward
    # kernel-libipsec: decrypted packets come out of its TUN, plaintext goes into it
    assert 'iifname "ipsec0" ip daddr . ip saddr @vpn_tunnels accept' in forward
    assert 'iifname "eth2" oifname "ipsec0" ip saddr . ip daddr @vpn_tunnels accept' \
        in forward


def test_vpn_pairs_follow_admin_state():
    body = copy.deepcopy(VALID["router-vpn"])
    body["vpn"]["ipsec"][0]["ipsec_connections"][0]["admin_state_up"] = False
    ruleset = ruleset_of(body)
    assert ruleset.set("vpn_tunnels").elements == ()
    assert ruleset.set("vpn_endpoints").elements == ()
    assert ruleset_of(VALID["router-vpn"]).element_script(ruleset).splitlines() == [
        "delete element inet astara vpn_tunnels { 10.8.0.0/24 . 192.168.240.0/24, "
        "10.8.0.0/24 . 192.168.241.0/24 }",
        "delete element inet astara vpn_endpoints { 203.0.113.10 }"]


def test_ha_admits_vrrp_and_conntrackd_from_the_peers_on_management():
    ruleset = ruleset_of(VALID["router-ha-primary"])
    assert ruleset.set("ha_peers_v6").elements == ("fdca:3ba5:a17a:acda:f816:3eff:fe4c:b39a",)
    rules = chain(ruleset, "input")
    assert 'iifname "eth0" ip6 saddr @ha_peers_v6 meta l4proto 112 accept' in rules
    assert 'iifname "eth0" ip6 saddr @ha_peers_v6 udp dport 3780 accept' in rules
    assert not [r for r in chain(ruleset_of(VALID["router-basic"]), "input") if "112" in r]


def test_load_balancer_filter_without_nat():
    ruleset = ruleset_of(VALID["loadbalancer-multi"])
    assert [c.name for c in ruleset.chains] == ["input", "forward"]
    assert 'iifname "eth1" tcp dport { 80, 5432 } accept' in chain(ruleset, "input")
    assert 'iifname "eth0" tcp dport { 22, 5000 } accept' in chain(ruleset, "input")
    assert ruleset.sets == ()


def test_router_with_a_load_balancer_admits_its_listeners():
    body = copy.deepcopy(VALID["router-basic"])
    lb = VALID["loadbalancer-multi"]
    body["networks"].append(dict(copy.deepcopy(lb["networks"][0]),
                                 interface={"ifname": "ge3", "addresses": ["10.80.0.30/24"]}))
    body["services"] = copy.deepcopy(lb["services"])
    assert 'iifname "eth3" tcp dport { 80, 5432 } accept' in chain(ruleset_of(body), "input")


def test_api_ports_follow_the_settings():
    rules = chain(ruleset_of(VALID["router-basic"], api_ports=(5000, 8443)), "input")
    assert 'iifname "eth0" tcp dport { 22, 5000, 8443 } accept' in rules


def test_management_interface_from_boot_when_the_payload_has_none():
    # The parser refuses such a payload (semantics.py); the renderer still copes.
    full = parse_payload(VALID["router-no-gateway"], SERVICES)
    config = dataclasses.replace(full, networks=tuple(
        n for n in full.networks if not n.is_management))
    with pytest.raises(ApplyError) as error:
        render_firewall(config, NAMES)
    assert error.value.path == "networks" and "API" in error.value.message
    rules = chain(render_firewall(config, NAMES, boot_management="eth0"), "input")
    assert 'iifname "eth0" tcp dport { 22, 5000 } accept' in rules


def test_unknown_interface_names_the_payload_field():
    with pytest.raises(ApplyError) as error:
        ruleset_of(VALID["router-basic"], {"ge0": "eth0", "ge1": "eth1"})
    assert error.value.path == "networks[2].interface.ifname"


def test_one_fixed_ip_with_two_floating_ips_leaves_as_the_first():
    body = copy.deepcopy(VALID["router-basic"])
    body["floating_ips"].append({"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.8"})
    ruleset = ruleset_of(body)
    assert ruleset.set("fip_dnat").element_texts() == ["172.24.4.228 : 10.1.0.8",
                                                       "172.24.4.229 : 10.1.0.8"]
    assert ruleset.set("fip_snat").element_texts() == ["10.1.0.8 : 172.24.4.228"]


def test_floating_ip_maps_hold_the_models_text_pairs():
    """No element text is kept per floating IP: both maps refer to each FloatingIP's own
    ``texts`` pair, and the texts are written where the ruleset is (SNAT swapped)."""
    config = parse_payload(VALID["router-many-fips"], SERVICES)
    ruleset = render_firewall(config, NAMES)
    kept = {id(fip.texts) for fip in config.floating_ips}
    for name in ("fip_dnat", "fip_snat"):
        elements = ruleset.set(name).elements
        assert elements and all(id(pair) in kept for pair in elements)
    floating, fixed = config.floating_ips[0].texts
    text = ruleset.text()
    assert f"\t\t\t{floating} : {fixed}" in text and f"\t\t\t{fixed} : {floating}" in text


def test_ipv6_floating_ips_get_their_own_maps():
    body = copy.deepcopy(VALID["router-dual-stack"])
    body["floating_ips"].append({"floating_ip": "2001:db8:c0de:1::50",
                                 "fixed_ip": "fd4e:7a31:2c5b:2::1a5"})
    ruleset = ruleset_of(body)
    assert ruleset.set("fip_dnat_v6").element_texts() == [
        "2001:db8:c0de:1::50 : fd4e:7a31:2c5b:2::1a5"]
    assert 'oifname "eth1" snat ip6 to ip6 saddr map @fip_snat_v6' in chain(ruleset, "srcnat")
    assert ruleset_of(VALID["router-dual-stack"]).set("fip_dnat_v6") is None


def test_label_names_become_safe_distinct_identifiers():
    assert label_set_name("ext") == "label_ext"
    odd = label_set_name('bad name"; flush ruleset')
    assert odd.startswith("label_bad_name") and odd.replace("_", "").isalnum()
    assert label_set_name("a-b") != label_set_name("a_b")
    # No name used as it is can be another label's set: not the IPv6 twin (x / x_v6), not
    # the digest form of an odd name.
    assert label_set_name("x_v6") != label_set_name("x") + "_v6"
    digest_form = label_set_name("a-b")
    assert label_set_name(digest_form[len("label_"):]) != digest_form
    body = copy.deepcopy(VALID["router-basic"])
    body["labels"] = {"mixed": ["10.0.0.0/8", "10.1.0.0/16", "2001:db8:1::/48"]}
    ruleset = ruleset_of(body)
    assert ruleset.set("label_mixed").elements == ("10.0.0.0/8",)  # overlap collapsed
    assert ruleset.set("label_mixed_v6").elements == ("2001:db8:1::/48",)


COLLIDING_LABELS = [("x", "x_v6"), ("a-b", "a_b"), ("ext", "ext__v6")]


def with_labels(names):
    body = copy.deepcopy(VALID["router-basic"])
    body["labels"] = {name: [f"10.{i}.0.0/16", f"2001:db8:{i}::/48"]
                      for i, name in enumerate(names, 10)}
    return ruleset_of(body)


@pytest.mark.parametrize("labels", COLLIDING_LABELS)
def test_colliding_label_names_get_distinct_sets(labels):
    names = [s.name for s in with_labels(labels).sets if s.name.startswith("label_")]
    assert len(names) == len(set(names)) == 2 * len(labels)


# -- element-only changes -----------------------------------------------------------------------

def test_fip_changes_are_element_changes():
    old = ruleset_of(VALID["router-basic"])
    body = copy.deepcopy(VALID["router-basic"])
    body["floating_ips"] = [{"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"}]
    body["labels"]["ext"].append("2001:db8:57::/48")
    new = ruleset_of(body)
    assert old.skeleton == new.skeleton
    script = old.element_script(new)
    assert script.splitlines() == [
        "delete element inet astara fip_dnat { 172.24.4.228 : 10.1.0.8 }",
        "delete element inet astara fip_snat { 10.1.0.8 : 172.24.4.228 }",
        "add element inet astara fip_dnat { 172.24.4.229 : 10.1.0.12 }",
        "add element inet astara fip_snat { 10.1.0.12 : 172.24.4.229 }",
        "add element inet astara label_ext_v6 { 2001:db8:57::/48 }",
    ]
    assert old.element_script(old) == ""


def test_topology_changes_need_a_replace():
    old = ruleset_of(VALID["router-basic"])
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][1]["interface"]["addresses"] = ["172.24.4.8/24"]
    assert old.element_script(ruleset_of(body)) is None
    assert replace_script("").splitlines() == ["table inet astara {}",
                                               "delete table inet astara"]


def test_json_round_trip():
    for name in ("router-vpn", "router-many-fips", "loadbalancer-http"):
        ruleset = ruleset_of(VALID[name])
        assert Ruleset.from_json(ruleset.to_json()) == ruleset


# -- nft's own checker, in a throwaway namespace --------------------------------------------------

def _nft_unavailable():
    if os.geteuid() != 0:
        return "needs root (nft talks to the kernel)"
    if not shutil.which("nft") or not shutil.which("unshare"):
        return "nft or unshare missing"
    probe = subprocess.run(["unshare", "-n", "nft", "list", "ruleset"], capture_output=True)
    return None if probe.returncode == 0 else "cannot run nft in a new network namespace"


NFT_UNAVAILABLE = _nft_unavailable()
needs_nft = pytest.mark.skipif(NFT_UNAVAILABLE is not None, reason=str(NFT_UNAVAILABLE))


def nft_in_throwaway_netns(*scripts, listing=True):
    """Load ``scripts`` one after the other (each checked with ``nft -c`` first) in a fresh
    network namespace that disappears with the process; return the final listing."""
    shell = ['set -e; d=$(mktemp -d); trap "rm -rf $d" EXIT']
    for i, script in enumerate(scripts):
        shell.append(f"cat > $d/{i}.nft <<'ASTARA_EOF'\n{script}ASTARA_EOF")
        shell.append(f"nft -c -f $d/{i}.nft && nft -f $d/{i}.nft")
    if listing:
        shell.append("nft list table inet astara 2>/dev/null || true")
    result = subprocess.run(["unshare", "-n", "sh", "-c", "\n".join(shell)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_nft
@pytest.mark.parametrize("labels", COLLIDING_LABELS)
def test_colliding_label_sets_load_in_nft(labels):
    nft_in_throwaway_netns(with_labels(labels).replace_script())


@needs_nft
@pytest.mark.parametrize("name", sorted(VALID))
def test_every_contract_payload_passes_nft_check(name):
    ruleset = ruleset_of(VALID[name])
    listing = nft_in_throwaway_netns(ruleset.replace_script())
    assert listing.startswith("table inet astara {")
    # loading the same script again (the replace idiom) works on an existing table too
    assert nft_in_throwaway_netns(ruleset.replace_script(), ruleset.replace_script()) == listing
    # the listing is itself valid input: restore() relies on it
    assert nft_in_throwaway_netns(replace_script(listing)) == listing
    assert floating_ips_in_listing(listing) == ruleset.floating_ips()


@needs_nft
def test_element_script_reaches_the_same_table_as_a_fresh_load():
    old = ruleset_of(VALID["router-many-fips"])
    body = copy.deepcopy(VALID["router-many-fips"])
    body["floating_ips"] = body["floating_ips"][5:] + [
        {"floating_ip": "172.24.4.200", "fixed_ip": "10.40.3.18"},
        {"floating_ip": "172.24.4.101", "fixed_ip": "10.40.4.19"}]  # moved to another VM
    body["labels"] = {"ext": ["192.168.56.0/23"]}  # overlaps the old 192.168.57.0/24
    new = ruleset_of(body)
    patched = nft_in_throwaway_netns(old.replace_script(), old.element_script(new))
    assert patched == nft_in_throwaway_netns(new.replace_script())


@needs_nft
def test_nft_rejects_a_broken_ruleset():
    ruleset = ruleset_of(VALID["router-basic"])
    broken = ruleset.text().replace("ct status dnat accept", "ip saddr @no_such_set accept")
    result = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "/dev/stdin"], input=broken,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "no_such_set" in result.stderr


@needs_nft
@pytest.mark.parametrize("evil", ['private\n}\nflush ruleset\n#', 'x"; flush ruleset; #',
                                  "x { } ; flush ruleset", "../../etc/nftables.conf"])
def test_payload_text_cannot_inject_statements(evil):
    """Network names and label names reach comments and set names; the schema refuses
    control characters in them, and the renderer escapes whatever it gets."""
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][2]["name"] = PLACEHOLDER
    body["labels"] = {PLACEHOLDER: ["10.9.0.0/16"]}
    ruleset = render_firewall(with_text(parse_payload(body, SERVICES), evil), NAMES)
    text = ruleset.text()
    assert "flush ruleset" not in lines(text)
    assert not [line for line in text.splitlines() if line.strip().startswith("flush")]
    nft_in_throwaway_netns(ruleset.replace_script())


def test_control_characters_in_names_are_refused_by_the_schema():
    body = copy.deepcopy(VALID["router-basic"])
    body["networks"][2]["name"] = 'private\n}\nflush ruleset\n#'
    with pytest.raises(PayloadError) as refused:
        ruleset_of(body)
    assert refused.value.errors[0].path == "networks[2].name"
    body = copy.deepcopy(VALID["router-basic"])
    body["labels"] = {"x\nflush ruleset": ["10.9.0.0/16"]}
    with pytest.raises(PayloadError) as refused:
        ruleset_of(body)
    assert refused.value.errors[0].path.startswith("labels")


@needs_nft
def test_vpn_pair_element_script_loads():
    body = copy.deepcopy(VALID["router-vpn"])
    body["vpn"]["ipsec"][0]["ipsec_connections"][0]["peer_ep_group"]["endpoints"] = [
        "192.168.240.0/25", "192.168.242.0/24"]  # overlaps one of the old pairs
    old, new = ruleset_of(VALID["router-vpn"]), ruleset_of(body)
    patched = nft_in_throwaway_netns(old.replace_script(), old.element_script(new))
    assert patched == nft_in_throwaway_netns(new.replace_script())
    assert "10.8.0.0/24 . 192.168.242.0/24" in patched


def test_a_change_of_floating_ips_alone_renders_what_a_whole_render_does():
    """The renderer keeps its last whole ruleset and swaps the floating-IP maps in when
    nothing else changed; each step here must equal a render from scratch."""
    from astara_router.render import firewall
    base = VALID["router-dual-stack"]
    fips = base["floating_ips"]
    v4 = {"floating_ip": "198.51.100.60", "fixed_ip": "10.20.0.12"}
    v6 = {"floating_ip": "2001:db8:c0de:1::99", "fixed_ip": "fd4e:7a31:2c5b:1::12"}
    renamed = copy.deepcopy(base)
    renamed["networks"][2]["name"] = "renamed"
    steps = [(base, "whole"), (dict(base, floating_ips=fips + [v4]), "maps"),
             (dict(base, floating_ips=[]), "maps"), (dict(base, floating_ips=fips + [v6]), "whole"),
             (dict(base, floating_ips=fips + [v6, v4]), "maps"), (base, "whole"),
             (renamed, "whole")]
    firewall._LAST_RENDERED[0] = None
    for body, how in steps:
        before = firewall._LAST_RENDERED[0]
        kept = ruleset_of(copy.deepcopy(body))
        memo = firewall._LAST_RENDERED[0]
        assert (memo is before) == (how == "maps"), (body["floating_ips"], how)
        firewall._LAST_RENDERED[0] = None
        assert kept == ruleset_of(copy.deepcopy(body)), body["floating_ips"]
        firewall._LAST_RENDERED[0] = memo


def test_moved_floating_ips_are_those_whose_mapping_went_or_changed():
    from astara_router.apply.firewall import stale_floating_ips
    body = VALID["router-many-fips"]
    fips = body["floating_ips"]
    changed = copy.deepcopy(body)
    changed["floating_ips"] = ([dict(fips[0], fixed_ip=fips[2]["fixed_ip"])]  # moved
                               + fips[2:])  # fips[1] removed
    old, new = ruleset_of(body), ruleset_of(changed)
    moved = old.moved_floating_ips(new)
    assert {str(a) for a in moved} == {fips[0]["floating_ip"], fips[1]["floating_ip"]}
    assert moved == stale_floating_ips(old.floating_ips(), new.floating_ips())
    # back: the moved one moves again; the removed one comes back, nothing bound to it
    assert {str(a) for a in new.moved_floating_ips(old)} == {fips[0]["floating_ip"]}


def test_element_changes_are_the_set_differences_in_order():
    """``element_changes`` looks only between the common head and tail: the same answer
    as the set differences of the whole tuples, whatever moved."""
    rng = random.Random(3)
    for _ in range(300):
        old = tuple(rng.sample(range(60), rng.randrange(0, 40)))
        new = list(old)
        for _ in range(rng.randrange(0, 4)):
            action = rng.choice(("add", "remove", "move"))
            if action == "add":
                fresh = [e for e in range(60) if e not in new]
                if fresh:
                    new.insert(rng.randrange(len(new) + 1), rng.choice(fresh))
            elif new:
                element = new.pop(rng.randrange(len(new)))
                if action == "move":
                    new.insert(rng.randrange(len(new) + 1), element)
        new = tuple(new)
        assert element_changes(old, new) == ([e for e in old if e not in set(new)],
                                             [e for e in new if e not in set(old)])
