"""The pure keepalived/conntrackd plan of HA payloads.

conntrackd has no offline checker, so its file is pinned here by a grammar: the block and
keyword structure of conntrackd's own parser (read_config_yy.y) for the parts we use, each
value checked by type. keepalived's file is parsed the same way for its structure (its
``keepalived -t`` runs in the functional tests, where the interfaces exist)."""
import copy
import ipaddress
import re

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.apply.garp import announced_addresses
from astara_router.apply.ha import refusal
from astara_router.apply.ha_notify import notify_arguments
from astara_router.errors import ApplyError
from astara_router.model import parse_payload
from astara_router.render.firewall import CONNTRACKD_PORT
from astara_router.render.ha import HaOptions, render_ha, vrrp_id
from astara_router.render.netlink import render_netlink
from bird_checker import bird_parse, needs_bird
from unchecked import PLACEHOLDER, with_text  # noqa: E402 (test/unit)

VALID = contract_payloads("original-orchestrator")
PRIMARY, SECONDARY = VALID["router-ha-primary"], VALID["router-ha-secondary"]
NAMES = {f"ge{i}": f"eth{i}" for i in range(13)}
DIRECTORY = "/var/lib/astara/ha"
TOKEN = re.compile(r"[^\s{}\"'#!;]+\Z")


def plan_of(body, names=NAMES, directory=DIRECTORY, options=HaOptions()):
    return render_ha(parse_payload(body), names, directory, options)


# -- a grammar for both files -----------------------------------------------------------------

def parse_blocks(text, comments="#"):
    """[(keyword, args, children or None)]: ``keyword args... {`` opens a block, ``}``
    closes it, anything else is ``keyword args...``. Every token must be one token for
    the daemon (no quote, brace, comment sign, semicolon or space inside)."""
    root, stack = [], []
    current = root
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in comments:
            continue
        if line == "}":
            assert stack, f"line {number}: unbalanced }}"
            current = stack.pop()
            continue
        opens = line.endswith(" {")
        words = (line[:-2] if opens else line).split()
        for word in words:
            assert TOKEN.fullmatch(word), f"line {number}: token {word!r}"
        node = (words[0], tuple(words[1:]), [] if opens else None)
        current.append(node)
        if opens:
            stack.append(current)
            current = node[2]
    assert not stack, "unclosed block"
    return root


def block(nodes, keyword, *args):
    found = [n for n in nodes if n[0] == keyword and n[1] == args and n[2] is not None]
    assert len(found) == 1, (keyword, args, nodes)
    return found[0][2]


def values(nodes, keyword):
    return [n[1] for n in nodes if n[0] == keyword and n[2] is None]


def number(text):
    return int(text) > 0


def switch(text):
    return text in ("on", "off")


def path(text):
    return text.startswith(DIRECTORY + "/")


def address(version):
    return lambda text: ipaddress.ip_address(text).version == version


# conntrackd.conf as far as we write it: {block: (args, {keyword: check} | nested)}
CONNTRACKD_GRAMMAR = {
    ("General", ()): {
        "HashSize": number, "HashLimit": number, "Syslog": switch, "LogFile": path,
        "LockFile": path, "NetlinkBufferSize": number, "NetlinkBufferSizeMaxGrowth": number,
        ("UNIX", ()): {"Path": path},
        ("Filter", ("From", "Kernelspace")): {
            ("Protocol", ("Accept",)): {"TCP": None, "UDP": None},
            ("Address", ("Ignore",)): {"IPv4_address": address(4), "IPv6_address": address(6)},
        },
    },
    ("Sync", ()): {
        ("Mode", ("FTFW",)): {},
        ("UDP", ()): {"IPv4_address": address(4), "IPv4_Destination_Address": address(4),
                      "IPv6_address": address(6), "IPv6_Destination_Address": address(6),
                      "Port": lambda text: int(text) == CONNTRACKD_PORT,
                      "Interface": lambda text: text in NAMES.values(), "Checksum": switch},
    },
}


def check_grammar(nodes, grammar):
    for keyword, args, children in nodes:
        if children is not None:
            assert (keyword, args) in grammar, f"unknown block {keyword} {args}"
            check_grammar(children, grammar[(keyword, args)])
            continue
        assert keyword in grammar, f"unknown keyword {keyword}"
        check = grammar[keyword]
        if check is None:
            assert args == (), keyword
        else:
            assert len(args) == 1 and check(args[0]), (keyword, args)


# -- the contract pair ------------------------------------------------------------------------

def test_contract_pair_mirrors_itself():
    primary, secondary = plan_of(PRIMARY), plan_of(SECONDARY)
    assert primary.vrid == secondary.vrid == vrrp_id(PRIMARY["tenant_id"])
    one, two = (parse_blocks(p.keepalived_text) for p in (primary, secondary))
    a, b = block(one, "vrrp_instance", "astara"), block(two, "vrrp_instance", "astara")
    assert values(a, "priority") == [("100",)] and values(b, "priority") == [("50",)]
    mgmt_primary = "fdca:3ba5:a17a:acda:f816:3eff:fef7:580"
    mgmt_secondary = "fdca:3ba5:a17a:acda:f816:3eff:fe4c:b39a"
    assert values(a, "unicast_src_ip") == [(mgmt_primary,)]
    assert block(a, "unicast_peer") == [(mgmt_secondary, (), None)]
    assert block(b, "unicast_peer") == [(mgmt_primary, (), None)]
    assert values(a, "state") == values(b, "state") == [("BACKUP",)]
    # everything but the management side is the same on both
    for name in ("virtual_ipaddress", "virtual_ipaddress_excluded", "virtual_routes",
                 "track_interface"):
        assert block(a, name) == block(b, name)


def test_data_plane_is_virtual_and_mixed_families_go_to_excluded():
    instance = block(parse_blocks(plan_of(PRIMARY).keepalived_text), "vrrp_instance", "astara")
    [(advertised, args, _)] = block(instance, "virtual_ipaddress")
    assert ipaddress.ip_interface(advertised).is_link_local and args == ("dev", "eth0")
    assert ipaddress.ip_interface(advertised).version == 6  # the transport's family
    excluded = [(n[0], n[1]) for n in block(instance, "virtual_ipaddress_excluded")]
    assert excluded == [("172.24.4.9/24", ("brd", "172.24.4.255", "dev", "eth1")),
                        ("172.24.4.231/32", ("dev", "eth1")),
                        ("10.2.0.1/24", ("brd", "10.2.0.255", "dev", "eth2"))]
    routes = [(n[0], n[1]) for n in block(instance, "virtual_routes")]
    assert routes == [("0.0.0.0/0", ("via", "172.24.4.1", "dev", "eth1")),
                      ("192.168.201.0/24", ("via", "10.2.0.254", "dev", "eth2"))]
    assert [n[0] for n in block(instance, "track_interface")] == ["eth1", "eth2"]
    assert values(instance, "version") == [("3",)]
    assert values(instance, "notify") == [(f"{DIRECTORY}/notify.sh",)]


def test_netlink_leaves_the_data_plane_to_keepalived():
    plan = render_netlink(parse_payload(PRIMARY))
    assert {link.generic: link.keepalived for link in plan.links} == {
        "ge0": False, "ge1": True, "ge2": True}
    assert all(route.keepalived for route in plan.routes)
    plain = copy.deepcopy(PRIMARY)
    plain["ha_resource"] = False
    assert not any(link.keepalived for link in render_netlink(parse_payload(plain)).links)
    assert render_ha(parse_payload(plain), NAMES, DIRECTORY) is None


def test_garp_leaves_the_data_plane_to_keepalived():
    announced = announced_addresses(parse_payload(PRIMARY))
    assert {generic for generic, _ in announced} == {"ge0"}


def test_ipv4_management_and_ipv6_data_plane():
    body = copy.deepcopy(VALID["router-dual-stack"])
    management = next(n for n in body["networks"] if n["network_type"] == "management")
    management["interface"]["addresses"] = ["198.18.10.5/24"]
    body.update(ha_resource=True, ha_config={"peers": ["198.18.10.6"], "priority": 100},
                floating_ips=[{"floating_ip": "2001:db8:c0de:1::99",
                               "fixed_ip": "fd4e:7a31:2c5b:1:f816:3eff:fe4a:a95"}])
    plan = plan_of(body)
    instance = block(parse_blocks(plan.keepalived_text), "vrrp_instance", "astara")
    [(advertised, _, _)] = block(instance, "virtual_ipaddress")
    advertised = ipaddress.ip_interface(advertised)
    assert advertised.version == 4 and advertised in ipaddress.ip_network("169.254.0.0/16")
    assert advertised.ip != ipaddress.ip_address("169.254.169.254")
    excluded = {n[0]: n[1] for n in block(instance, "virtual_ipaddress_excluded")}
    assert excluded["2001:db8:c0de:1::99/128"] == ("dev", "eth1", "preferred_lft", "forever")
    assert excluded["fd4e:7a31:2c5b:2::1/64"] == ("dev", "eth3")
    routes = {n[0] for n in block(instance, "virtual_routes")}
    assert {"0.0.0.0/0", "::/0"} <= routes
    conntrackd = parse_blocks(plan.conntrackd)
    check_grammar(conntrackd, CONNTRACKD_GRAMMAR)
    udp = block(block(conntrackd, "Sync"), "UDP")
    assert values(udp, "IPv4_address") == [("198.18.10.5",)]
    assert values(udp, "IPv4_Destination_Address") == [("198.18.10.6",)]


def test_conntrackd_grammar_and_what_it_syncs():
    plan = plan_of(PRIMARY)
    nodes = parse_blocks(plan.conntrackd)
    check_grammar(nodes, CONNTRACKD_GRAMMAR)
    general, sync = block(nodes, "General"), block(nodes, "Sync")
    assert values(block(general, "UNIX"), "Path") == [(f"{DIRECTORY}/conntrackd.ctl",)]
    udp = block(sync, "UDP")
    assert values(udp, "IPv6_address") == [("fdca:3ba5:a17a:acda:f816:3eff:fef7:580",)]
    assert values(udp, "IPv6_Destination_Address") == [
        ("fdca:3ba5:a17a:acda:f816:3eff:fe4c:b39a",)]
    assert values(udp, "Port") == [(str(CONNTRACKD_PORT),)]
    assert values(udp, "Interface") == [("eth0",)]
    ignored = block(block(general, "Filter", "From", "Kernelspace"), "Address", "Ignore")
    assert ("fdca:3ba5:a17a:acda:f816:3eff:fe4c:b39a",) in values(ignored, "IPv6_address")
    assert [n[0] for n in block(block(general, "Filter", "From", "Kernelspace"),
                                "Protocol", "Accept")] == ["TCP", "UDP"]


def test_grammar_catches_a_broken_file():
    plan = plan_of(PRIMARY)
    for broken in (plan.conntrackd.replace("    Port 3780", "    Port 3780 3781"),
                   plan.conntrackd.replace("Mode FTFW", "Mode NOTRACK"),
                   plan.conntrackd.replace("HashSize 8192", "HashSize {8192")):
        with pytest.raises(AssertionError):
            check_grammar(parse_blocks(broken), CONNTRACKD_GRAMMAR)


def test_notify_commits_the_external_cache_on_master():
    script = plan_of(PRIMARY).notify
    master = script[script.index("MASTER)"):script.index(";;")]
    assert [line.split()[1] for line in master.splitlines()[1:] if line.strip()] == [
        "-c", "-f", "-R", "-B"]
    assert f"conntrackd -C {DIRECTORY}/conntrackd.conf" in script
    assert script.startswith("#!/bin/sh\n")


# -- settings and what the payload cannot ask for ---------------------------------------------

def test_agent_settings():
    text = plan_of(PRIMARY, options=HaOptions(0.1, preempt=False)).keepalived_text
    assert "    advert_int 0.10\n" in text and "    nopreempt\n" in text
    options = HaOptions(1.0, preempt=True, preempt_delay=30)
    text = plan_of(PRIMARY, options=options).keepalived_text
    assert "    preempt_delay 30\n" in text and "nopreempt" not in text


def test_without_a_peer_nothing_to_sync():
    body = copy.deepcopy(PRIMARY)
    body["ha_config"] = {"peers": [], "priority": 100}
    plan = plan_of(body)
    assert plan.conntrackd is None and "unicast_peer" not in plan.keepalived_text
    assert f"{DIRECTORY}/conntrackd.conf" not in plan.contents(DIRECTORY)


@pytest.mark.parametrize("change, field, words", [
    (lambda b: b["ha_config"].update(peers=["fdca:3ba5:a17a:acda::5",
                                            "fdca:3ba5:a17a:acda::6"]),
     "ha_config.peers", "exactly one peer"),
    (lambda b: b["ha_config"].update(peers=["198.18.10.6"]), "ha_config.peers[0]", "IPv4"),
    (lambda b: b["ha_config"].update(peers=["fdca:3ba5:a17a:acda:f816:3eff:fef7:580"]),
     "ha_config.peers[0]", "own management address"),
    # an HA body without a management network: refused by the model already
    # (model/semantics.py, test_semantics.py), before any renderer sees it
])
def test_refused_with_422_naming_the_field(change, field, words):
    body = copy.deepcopy(PRIMARY)
    change(body)
    with pytest.raises(ApplyError) as caught:
        plan_of(body)
    assert caught.value.status == 422 and caught.value.path == field
    assert words in caught.value.message


def test_vrrp_id_is_stable_and_in_range():
    ids = {vrrp_id(f"tenant-{i}") for i in range(2000)}
    assert ids <= set(range(1, 256)) and len(ids) == 255
    assert vrrp_id("12a8864cf3a646979c0a75c8d901ecf7") == vrrp_id(
        "12a8864cf3a646979c0a75c8d901ecf7")


# -- injection --------------------------------------------------------------------------------

HOSTILE = ['x\n}\nvrrp_instance evil {', 'a"b', "a'b", "a{b}", "a;b", "../../etc/passwd",
           "a#b", "a!b", "a b"]


@pytest.mark.parametrize("text", HOSTILE)
def test_payload_text_never_reaches_the_files(text):
    """The tenant id is the only free text the renderer reads; it becomes a number."""
    body = copy.deepcopy(PRIMARY)
    body["tenant_id"] = PLACEHOLDER  # the schema refuses hostile ids: past it, by hand
    plan = render_ha(with_text(parse_payload(body), text), NAMES, DIRECTORY, HaOptions())
    for rendered in (plan.keepalived_text, plan.conntrackd, plan.notify):
        assert text not in rendered
    reference = parse_blocks(plan_of(PRIMARY).keepalived_text)
    hostile = parse_blocks(plan.keepalived_text)
    assert [n[:2] for n in hostile[1:]] == [n[:2] for n in reference[1:]]
    check_grammar(parse_blocks(plan.conntrackd), CONNTRACKD_GRAMMAR)


@pytest.mark.parametrize("text", ["eth1}", 'eth"1', "eth;1", "eth 1", "eth1\n", "et#h1",
                                  "eth!1", "../eth1"])
def test_hostile_interface_names_are_refused(text):
    names = dict(NAMES, ge1=text)
    with pytest.raises(ApplyError) as caught:
        plan_of(PRIMARY, names=names)
    assert caught.value.status == 500


@pytest.mark.parametrize("directory", ["/var/lib/astara/h a", '/var/lib/"x"', "/a/../b",
                                       "/a;b", "/a{b", "relative/ha", "/a\nb"])
def test_hostile_state_directories_are_refused(directory):
    # keepalived's and conntrackd's directory is under state_dir: the agent refuses to
    # start with one that is not a plain token of their grammars.
    from astara_router import settings
    with pytest.raises(ValueError) as caught:
        settings.load(state_dir=directory)
    assert "state_dir" in str(caught.value)


def test_keepalived_refusal_names_the_payload_field():
    plan = plan_of(PRIMARY)
    number = next(i for i, line in enumerate(plan.keepalived, 1)
                  if line.text.strip().startswith("172.24.4.231/32"))
    error = refusal(f"(keepalived.conf.new: Line {number}) bad address", plan)
    assert error.status == 422 and error.path == "networks[1].interface.addresses"
    assert refusal("(keepalived.conf.new: Line 2) something", plan).status == 500


# -- the agent's [ha] settings ----------------------------------------------------------------

def test_ha_settings_from_the_ini_file(tmp_path):
    from astara_router import settings
    ini = tmp_path / "astara.ini"
    ini.write_text("[ha]\nadvert_interval = 0.1\npreempt = no\npreempt_delay = 5\n")
    loaded = settings.load(str(ini))
    assert (loaded.ha_advert_interval, loaded.ha_preempt, loaded.ha_preempt_delay) == (
        0.1, False, 5.0)
    default = settings.load(None)
    assert (default.ha_advert_interval, default.ha_preempt) == (1.0, True)
    for bad, words in (("advert_interval = 0", "advert_interval"),
                       ("advert_interval = fast", "[ha]"), ("preempt = maybe", "[ha]")):
        ini.write_text(f"[ha]\n{bad}\n")
        with pytest.raises(ValueError, match=re.escape(words)):
            settings.load(str(ini))


# -- BIRD on an HA router ---------------------------------------------------------------------

def ha_bird_plan():
    from astara_router.render.routing import bird_plan
    body = copy.deepcopy(VALID["router-dual-stack"])
    body.update(ha_resource=True, ha_config={"peers": ["fdca:3ba5:a17a:acda::9"],
                                             "priority": 100})
    return bird_plan(parse_payload(body), NAMES)


def test_ras_are_triggered_by_the_masters_tenant_address():
    from astara_router.render.routing import bird_plan, render_bird
    plan = ha_bird_plan()
    assert plan.ha_trigger == (ipaddress.ip_network("fd4e:7a31:2c5b:1::/64"), "eth2")
    text = render_bird(plan).text
    assert "    trigger fd4e:7a31:2c5b:1::/64;\n" in text
    assert ('protocol direct ha_master {\n    ipv6 { import where net = '
            'fd4e:7a31:2c5b:1::/64; };\n    interface "eth2";\n}') in text
    assert bird_plan(parse_payload(VALID["router-dual-stack"]), NAMES).ha_trigger is None


@needs_bird
def test_bird_accepts_the_ha_trigger(tmp_path):
    from astara_router.render.routing import render_bird
    result = bird_parse(tmp_path, render_bird(ha_bird_plan()).text)
    assert result.returncode == 0, result.stderr


def test_an_agent_that_is_not_root_gets_keepalived_state_changes_through_a_fifo():
    """keepalived cannot run a script without CAP_SETGID: with notify_fifo it writes its
    state changes to the FIFO the agent reads (apply/ha_notify.py) and runs none itself."""
    as_root = parse_blocks(plan_of(PRIMARY).keepalived_text)
    assert values(block(as_root, "global_defs"), "script_user") == [("root",)]
    assert values(block(as_root, "vrrp_instance", "astara"), "notify") == \
        [(f"{DIRECTORY}/notify.sh",)]
    plan = plan_of(PRIMARY, options=HaOptions(notify_fifo=True))
    unprivileged = parse_blocks(plan.keepalived_text)
    assert values(block(unprivileged, "global_defs"), "notify_fifo") == \
        [(f"{DIRECTORY}/notify.fifo",)]
    assert values(block(unprivileged, "global_defs"), "script_user") == []
    assert values(block(unprivileged, "vrrp_instance", "astara"), "notify") == []
    assert plan.notify == plan_of(PRIMARY).notify  # the same script, run by the agent


@pytest.mark.parametrize("line, arguments", [
    ('INSTANCE "astara" MASTER 100\n', ["INSTANCE", "astara", "MASTER", "100"]),
    ("INSTANCE astara BACKUP 50", ["INSTANCE", "astara", "BACKUP", "50"]),
    ('INSTANCE "astara" RUNNING 100', None), ('GROUP "g" MASTER 0', None),
    ('INSTANCE "a" MASTER 100; rm -rf /', None), ('INSTANCE "unclosed MASTER 1', None),
])
def test_fifo_lines_become_notify_arguments(line, arguments):
    assert notify_arguments(line) == arguments
