"""A push that changes floating IPs alone: the change is found without walking the
thousands repeated (model/change.py), the subsystems that map floating IPs patch their
committed plan into the one a whole plan gives, and the semantic checks look at the added
floating IPs only when nothing else they depend on changed — still refusing a bad one,
naming its field."""
import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astara_lab.synthetic import synthetic_router
from astara_router.apply.garp import GarpSubsystem, announced_addresses
from astara_router.apply.netlink import NetlinkSubsystem, plan_netlink
from astara_router.model import PayloadError, check_management_path, parse_payload
from astara_router.model.change import Checked, common_ends, floating_ip_change
from astara_router.render.firewall import render_firewall, with_floating_ip_change

NAMES = {f"ge{i}": f"eth{i}" for i in range(12)}


def router(floating_ips=40):
    return synthetic_router(networks=4, floating_ips=floating_ips, vms_per_network=12)


def free_fixed(body, skip=0):
    used = {f["fixed_ip"] for f in body["floating_ips"]}
    free = [a for n in body["networks"] for alloc in n.get("allocations", ())
            for a in alloc["ip_addresses"] if a not in used]
    return free[skip]


def changed(body, mutate):
    body = copy.deepcopy(body)
    mutate(body)
    return body


def refusal(body):
    with pytest.raises(PayloadError) as info:
        parse_payload(body)
    return {error.path: error.message for error in info.value.errors}


# -- finding the change -----------------------------------------------------------------------

class Item:  # distinct objects, like the parser's FloatingIPs
    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return self.name == other.name

    def __hash__(self):
        return hash(self.name)


def items(n):
    return tuple(Item(str(i)) for i in range(n))


def test_the_change_is_what_was_added_and_removed_wherever_it_is():
    old = items(100)
    extra = Item("new")
    change = floating_ip_change(old, old + (extra,))
    assert change.added == (extra,) and change.removed == ()
    change = floating_ip_change(old, old[:40] + old[41:])
    assert change.added == () and change.removed == (old[40],)
    change = floating_ip_change(old, old[:10] + (extra,) + old[11:])
    assert change.added == (extra,) and change.removed == (old[10],)
    assert floating_ip_change(old, old[50:] + old[:50]) is not None  # reordered: same set
    assert floating_ip_change(old, old[50:] + old[:50]).added == ()


def test_an_equal_pair_parsed_anew_is_no_change_and_too_many_is_none():
    old = items(100)
    anew = Item(old[7].name)  # equal, not the same object
    change = floating_ip_change(old, old[:7] + (anew,) + old[8:])
    assert change.added == () and change.removed == ()
    assert floating_ip_change(old, items(30), limit=64) is None


def test_checked_remembers_the_last_verdict():
    checked = Checked()
    fips = items(10)
    assert checked.unchecked("a", fips) is None
    checked.passed("a", fips)
    more = fips + (Item("x"),)
    assert checked.unchecked("a", more) == [(10, more[10])]
    assert checked.unchecked("b", more) is None
    checked.passed("b", more)
    assert checked.unchecked("a", more) is None  # forgotten: only the last verdict is kept
    assert checked.unchecked("b", more) == []


# -- the semantic checks look at what changed, and still refuse it -------------------------------

def test_an_added_floating_ip_is_checked_after_a_push_that_passed():
    body = router()
    parse_payload(body)  # passes: the checks remember its floating IPs
    bad = changed(body, lambda b: b["floating_ips"].append(
        {"floating_ip": "198.18.0.1", "fixed_ip": free_fixed(b)}))
    errors = refusal(bad)
    assert "default_v4_gateway" in errors["floating_ips[40].floating_ip"]
    taken = changed(body, lambda b: b["floating_ips"].insert(
        3, {"floating_ip": "198.18.0.2", "fixed_ip": free_fixed(b)}))
    assert "router's address on ge1" in refusal(taken)["floating_ips[3].floating_ip"]


def test_a_network_change_checks_every_floating_ip_again():
    body = router()
    parse_payload(body)
    moved = body["floating_ips"][5]["floating_ip"]
    bad = changed(body, lambda b: b["networks"][1]["interface"].__setitem__(
        "addresses", [f"{moved}/16"]))
    assert "router's address on ge1" in refusal(bad)["floating_ips[5].floating_ip"]


def test_an_added_floating_ip_in_the_management_network_is_refused():
    body = router()
    config = parse_payload(body)
    check_management_path(config, body, (), config, None)  # passes: remembered
    prefix = body["networks"][0]["subnets"][0]["cidr"].split("/")[0]
    bad = changed(body, lambda b: b["floating_ips"].append(
        {"floating_ip": prefix + "77", "fixed_ip": "fdca:3ba5:a17a:acda::78"}))
    errors = refusal(bad)
    assert "away from the management interface" in errors["floating_ips[40].floating_ip"]


# -- patched plans are the whole plans ------------------------------------------------------------

def pushes():
    body = router()
    yield "added", body, changed(body, lambda b: b["floating_ips"].append(
        {"floating_ip": "198.18.200.1", "fixed_ip": free_fixed(b)}))
    yield "removed", body, changed(body, lambda b: b["floating_ips"].pop(17))
    yield "moved", body, changed(body, lambda b: b["floating_ips"][3].__setitem__(
        "fixed_ip", free_fixed(b)))
    yield "several", body, changed(body, lambda b: (
        b["floating_ips"].pop(0), b["floating_ips"].pop(30),
        b["floating_ips"].insert(8, {"floating_ip": "198.18.201.9",
                                     "fixed_ip": free_fixed(b)}),
        b["floating_ips"].append({"floating_ip": "198.18.201.1",
                                  "fixed_ip": free_fixed(b, 1)})))


@pytest.mark.parametrize("what, before, after", list(pushes()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_a_patched_plan_is_the_whole_plan(what, before, after):
    old, new = parse_payload(before), parse_payload(after)
    change = floating_ip_change(old.floating_ips, new.floating_ips)
    assert change is not None and change.added + change.removed
    assert NetlinkSubsystem().plan_floating_ips(
        plan_netlink(old, NAMES), change, new, NAMES) == plan_netlink(new, NAMES)
    garp = GarpSubsystem()  # announces what the few changed add, found without whole sets
    assert garp.new(garp.plan(new, NAMES), garp.plan(old, NAMES)) == tuple(sorted(
        announced_addresses(new) - announced_addresses(old),
        key=lambda item: (item[0], item[1].version, item[1])))
    whole = render_firewall(new, NAMES)
    assert with_floating_ip_change(render_firewall(old, NAMES), new, change) == whole
    assert whole.set("fip_dnat").elements != render_firewall(old, NAMES).set(
        "fip_dnat").elements


def test_a_shared_fixed_ip_is_left_to_a_whole_render():
    body = router()
    shared = changed(body, lambda b: b["floating_ips"].append(
        {"floating_ip": "198.18.200.1", "fixed_ip": b["floating_ips"][0]["fixed_ip"]}))
    old, new = parse_payload(body), parse_payload(shared)
    change = floating_ip_change(old.floating_ips, new.floating_ips)
    assert with_floating_ip_change(render_firewall(old, NAMES), new, change) is None
    reordered = changed(shared, lambda b: b["floating_ips"].insert(0, b["floating_ips"].pop()))
    again = parse_payload(reordered)
    change = floating_ip_change(new.floating_ips, again.floating_ips)
    assert with_floating_ip_change(render_firewall(new, NAMES), again, change) is None
    assert render_firewall(again, NAMES) != render_firewall(new, NAMES)  # SNAT moved


def test_networks_are_checked_again_when_they_change():
    body = router()
    parse_payload(body)  # passes: its networks are remembered as sound
    bad = changed(body, lambda b: b["networks"][3]["subnets"][0].__setitem__(
        "cidr", b["networks"][2]["subnets"][0]["cidr"]))
    errors = refusal(bad)
    assert any(path.startswith("networks[3].subnets[0]") and "overlaps" in message
               for path, message in errors.items())


def test_a_floating_ip_listed_twice_is_named_where_a_whole_parse_names_it():
    body = router()
    parse_payload(body)  # passes: the next parse reuses its floating IPs
    twin = body["floating_ips"][30]["floating_ip"]
    bad = changed(body, lambda b: b["floating_ips"].insert(
        5, {"floating_ip": twin, "fixed_ip": free_fixed(b)}))
    assert refusal(bad) == {"floating_ips[31].floating_ip": f"{twin} is listed twice"}


def test_a_repeated_router_hands_out_the_same_floating_ip_objects():
    body = router()
    first = parse_payload(body)
    grown = changed(body, lambda b: b["floating_ips"].append(
        {"floating_ip": "198.18.200.1", "fixed_ip": free_fixed(b)}))
    for _ in range(3):  # the parser's memory lives two parses: what it hands out stays
        again = parse_payload(grown)
        parse_payload(body)
    assert all(a is b for a, b in zip(first.floating_ips, again.floating_ips))


def naive_ends(first, second):
    """The common head, then the common tail of what is left after it, item by item."""
    head = 0
    while head < min(len(first), len(second)) and first[head] == second[head]:
        head += 1
    tail = 0
    while (tail < min(len(first), len(second)) - head
           and first[len(first) - 1 - tail] == second[len(second) - 1 - tail]):
        tail += 1
    return head, tail


@given(st.lists(st.sampled_from("abc"), max_size=12),
       st.lists(st.sampled_from("abc"), max_size=12))
@settings(max_examples=300, deadline=None)
def test_common_ends_of_lists_bytes_and_memoryviews_match_a_walk_item_by_item(first, second):
    expected = naive_ends(first, second)
    assert common_ends(tuple(first), tuple(second)) == expected
    assert common_ends(first, second) == expected
    first_bytes, second_bytes = "".join(first).encode(), "".join(second).encode()
    assert common_ends(first_bytes, second_bytes) == expected
    assert common_ends(first_bytes, memoryview(second_bytes)) == expected
