"""The strongSwan renderer: what the contract's VPN becomes, what is refused (naming the
field), and the grammar of the output. swanctl has no offline checker, so the grammar of
both files is pinned here: one setting or one section per line, names and values from
strict alphabets, balanced braces — whatever the payload's strings contain."""
import copy
import re

import pytest

from astara_lab.appliance import contract_payloads
from astara_router.errors import ApplyError
from astara_router.model import PayloadError, parse_payload
from astara_router.render.vpn import (AEAD, DH_GROUPS, ENCRYPTION, INTEGRITY, render_vpn,
                                      retransmit_timeout)
from unchecked import PLACEHOLDER, with_text

VPN = contract_payloads()["router-vpn"]
DIRECTORY = "/var/lib/astara/vpn"
CONN = "bf4655d2-27d0-4d9e-8578-62c5e5bf890f"
PATH = "vpn.ipsec[0].ipsec_connections[0]"


def body(**changes):
    """router-vpn.json with ``changes`` merged into its connection (dotted keys reach into
    nested objects: ``{"ikepolicy.pfs": "group14"}``)."""
    payload = copy.deepcopy(VPN)
    connection = payload["vpn"]["ipsec"][0]["ipsec_connections"][0]
    for key, value in changes.items():
        target, *rest = key.split(".")
        holder = connection
        for part in [target, *rest][:-1]:
            holder = holder[part]
        holder[key.split(".")[-1]] = value
    return payload


def plan_of(payload, backend="libipsec"):
    return render_vpn(parse_payload(payload), backend, DIRECTORY)


def settings_of(text):
    """{dotted.key: value} of a strongswan.conf/swanctl.conf text written in the renderer's
    grammar; fails on any line outside it."""
    found, stack = {}, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped == "}":
            assert stack, f"line {number}: unbalanced brace"
            stack.pop()
            continue
        section = re.fullmatch(r"([A-Za-z0-9_-]+) \{", stripped)
        if section:
            stack.append(section.group(1))
            continue
        setting = re.fullmatch(r'([A-Za-z0-9_-]+) = ("[^"\\\n{}#]*"|[^"\\\n{}#;]+)', stripped)
        assert setting, f"line {number} outside the grammar: {line!r}"
        found[".".join([*stack, setting.group(1)])] = setting.group(2).strip('"')
    assert not stack, f"unclosed sections {stack}"
    return found


def test_contract_vpn_becomes_one_ikev1_connection_with_a_child_per_subnet_pair():
    plan = plan_of(VPN)
    swanctl = settings_of(plan.swanctl)
    prefix = f"connections.{CONN}"
    assert swanctl[f"{prefix}.version"] == "1"
    assert swanctl[f"{prefix}.local_addrs"] == "198.51.100.17"
    assert swanctl[f"{prefix}.remote_addrs"] == "203.0.113.10"
    assert swanctl[f"{prefix}.proposals"] == "aes128-sha1-modp1536"
    assert swanctl[f"{prefix}.aggressive"] == "no"
    assert (swanctl[f"{prefix}.dpd_delay"], swanctl[f"{prefix}.dpd_timeout"]) == ("30s", "120s")
    assert (swanctl[f"{prefix}.rekey_time"], swanctl[f"{prefix}.over_time"]) == ("3240s", "360s")
    assert swanctl[f"{prefix}.local.id"] == "198.51.100.17"
    assert swanctl[f"{prefix}.remote.id"] == "203.0.113.10"
    children = {key.split(".")[3] for key in swanctl if key.startswith(f"{prefix}.children.")}
    assert children == {f"{CONN}-1", f"{CONN}-2"}
    first = f"{prefix}.children.{CONN}-1"
    # the ESP proposal is the IPsec policy's (the original copied the IKE one)
    assert swanctl[f"{first}.esp_proposals"] == "aes256-sha1-modp2048"
    assert (swanctl[f"{first}.local_ts"], swanctl[f"{first}.remote_ts"]) == (
        "10.8.0.0/24", "192.168.240.0/24")
    assert swanctl[f"{prefix}.children.{CONN}-2.remote_ts"] == "192.168.241.0/24"
    assert (swanctl[f"{first}.start_action"], swanctl[f"{first}.dpd_action"]) == ("start", "trap")
    assert (swanctl[f"{first}.rekey_time"], swanctl[f"{first}.life_time"]) == ("3240s", "3600s")
    secret = f"secrets.ike-{CONN}"
    assert (swanctl[f"{secret}.id-local"], swanctl[f"{secret}.id-remote"]) == (
        "198.51.100.17", "203.0.113.10")
    assert swanctl[f"{secret}.secret"] == "0x" + b"Xq7-branch1-PSK-2016".hex()
    assert "Xq7" not in plan.swanctl and "Xq7" not in repr(plan)
    assert [c.name for c in plan.connections] == [CONN]


def test_strongswan_conf_keeps_everything_in_the_state_directory():
    libipsec = settings_of(plan_of(VPN).strongswan)
    assert libipsec["charon.plugins.vici.socket"] == f"unix://{DIRECTORY}/run/charon.vici"
    assert libipsec["charon.filelog.astara.path"] == f"{DIRECTORY}/charon.log"
    assert libipsec["charon.filelog.astara.default"] == "1"  # secrets are logged at 4
    assert "kernel-libipsec!" in libipsec["charon.load"].split()
    assert libipsec["charon.plugins.kernel-netlink.mtu"] == "1400"  # 1500 - ESP-in-UDP
    kernel = settings_of(plan_of(VPN, "kernel").strongswan)
    assert "kernel-libipsec" not in kernel["charon.load"]
    assert "kernel-netlink!" in kernel["charon.load"].split()
    assert kernel["charon.plugins.kernel-netlink.mtu"] == "1500"
    assert "charon.retransmit_timeout" not in kernel  # IKEv1: DPD timeout per connection


def test_ikev2_one_child_dpd_timeout_is_the_retransmission_schedule():
    plan = plan_of(body(**{"ikepolicy.ike_version": "v2", "ikepolicy.encryption_algorithm":
                           "aes-256-gcm-16", "ikepolicy.auth_algorithm": "sha256",
                           "ipsecpolicy.encryption_algorithm": "aes-128-gcm-16",
                           "initiator": "response-only", "dpd": {
                               "action": "restart", "interval": 10, "timeout": 60}}))
    swanctl = settings_of(plan.swanctl)
    prefix = f"connections.{CONN}"
    assert swanctl[f"{prefix}.version"] == "2"
    assert swanctl[f"{prefix}.proposals"] == "aes256gcm16-prfsha256-modp1536"
    assert swanctl[f"{prefix}.mobike"] == "no"
    assert f"{prefix}.dpd_timeout" not in swanctl and f"{prefix}.aggressive" not in swanctl
    child = f"{prefix}.children.{CONN}"
    assert swanctl[f"{child}.esp_proposals"] == "aes128gcm16-modp2048"
    assert swanctl[f"{child}.remote_ts"] == "192.168.240.0/24,192.168.241.0/24"
    assert (swanctl[f"{child}.start_action"], swanctl[f"{child}.dpd_action"]) == (
        "none", "restart")
    strongswan = settings_of(plan.strongswan)
    timeout = float(strongswan["charon.retransmit_timeout"])
    schedule = sum(timeout * 1.8 ** n for n in range(6))  # tries 5: 6 waits in all
    assert (strongswan["charon.retransmit_base"], strongswan["charon.retransmit_tries"]) == (
        "1.8", "5")
    assert abs(schedule - 60) < 0.05 and retransmit_timeout(120) == pytest.approx(
        2 * timeout, abs=0.002)


def test_kilobyte_lifetime_disabled_dpd_and_legacy_peer_cidrs():
    plan = plan_of(body(**{"ipsecpolicy.lifetime": {"units": "kilobytes", "value": 1000},
                           "dpd": {"action": "disabled"}, "peer_ep_group": None,
                           "peer_cidrs": ["192.168.250.0/24"]}))
    swanctl = settings_of(plan.swanctl)
    child = f"connections.{CONN}.children.{CONN}"
    assert (swanctl[f"{child}.rekey_bytes"], swanctl[f"{child}.life_bytes"],
            swanctl[f"{child}.rekey_time"]) == ("921600", "1024000", "0s")
    assert swanctl[f"{child}.remote_ts"] == "192.168.250.0/24"
    assert not [key for key in swanctl if "dpd" in key]


def test_admin_down_means_no_charon():
    assert plan_of(body(admin_state_up=False)) is None
    down = copy.deepcopy(VPN)
    down["vpn"]["ipsec"][0]["admin_state_up"] = False
    assert plan_of(down) is None
    assert render_vpn(parse_payload(contract_payloads()["router-basic"]), "kernel",
                      DIRECTORY) is None


def test_mtu_is_the_smallest_and_leaves_room_for_esp_in_udp():
    payload = body(mtu=1400)
    second = copy.deepcopy(payload["vpn"]["ipsec"][0]["ipsec_connections"][0])
    second.update(id="second", peer_address="198.51.100.40", peer_id="", mtu=1500)
    payload["vpn"]["ipsec"][0]["ipsec_connections"].append(second)
    plan = plan_of(payload)
    assert settings_of(plan.strongswan)["charon.plugins.kernel-netlink.mtu"] == "1300"
    assert settings_of(plan_of(payload, "kernel").strongswan)[
        "charon.plugins.kernel-netlink.mtu"] == "1400"
    # an empty peer_id means the peer address
    assert settings_of(plan.swanctl)["connections.second.remote.id"] == "198.51.100.40"
    assert [c.name for c in plan.connections] == [CONN, "second"]


REFUSED = [  # changes, backend, the field named, words of the reason
    ({"dpd.action": "restart-by-peer"}, "kernel", f"{PATH}.dpd.action", "restart-by-peer"),
    ({"dpd.timeout": 30}, "kernel", f"{PATH}.dpd.timeout", "longer than the interval"),
    ({"ikepolicy.encryption_algorithm": "aes-128-gcm-16"}, "kernel",
     f"{PATH}.ikepolicy.encryption_algorithm", "IKEv2"),
    ({"ikepolicy.encryption_algorithm": "blowfish"}, "kernel",
     f"{PATH}.ikepolicy.encryption_algorithm", "'blowfish'"),
    ({"ikepolicy.auth_algorithm": "aes-cmac"}, "kernel", f"{PATH}.ikepolicy.auth_algorithm",
     "aes-cmac"),
    ({"ikepolicy.pfs": "group1"}, "kernel", f"{PATH}.ikepolicy.pfs", "Diffie-Hellman"),
    ({"ipsecpolicy.pfs": "group27"}, "kernel", f"{PATH}.ipsecpolicy.pfs", "group27"),
    ({"ikepolicy.lifetime": {"units": "kilobytes", "value": 3600}}, "kernel",
     f"{PATH}.ikepolicy.lifetime.units", "time only"),
    ({"ikepolicy.ike_version": "v2", "ikepolicy.phase1_negotiation_mode": "aggressive"},
     "kernel", f"{PATH}.ikepolicy.phase1_negotiation_mode", "IKEv1"),
    ({"ipsecpolicy.transform_protocol": "ah-esp"}, "kernel",
     f"{PATH}.ipsecpolicy.transform_protocol", "bundles"),
    ({"ipsecpolicy.transform_protocol": "ah"}, "libipsec",
     f"{PATH}.ipsecpolicy.transform_protocol", "ESP only"),
    ({"ipsecpolicy.encapsulation_mode": "transport"}, "kernel",
     f"{PATH}.ipsecpolicy.encapsulation_mode", "tunnel mode"),
    ({"route_mode": "dynamic"}, "kernel", f"{PATH}.route_mode", "static"),
    ({"mtu": 1000}, "kernel", f"{PATH}.mtu", "1280"),
    ({"peer_address": "2001:db8:c0de:2::10", "peer_ep_group.endpoints": ["2001:db8:99::/64"]},
     "kernel", f"{PATH}.peer_ep_group", "one side only"),
]


@pytest.mark.parametrize("changes,backend,path,words", REFUSED,
                         ids=[r[2].rsplit(".", 1)[-1] + "-" + r[3] for r in REFUSED])
def test_what_strongswan_cannot_carry_out_is_refused_naming_the_field(
        changes, backend, path, words):
    try:
        plan_of(body(**changes), backend)
    except ApplyError as exc:
        error = exc
    except PayloadError as exc:  # found by the model already
        error = exc.errors[0]
    else:
        pytest.fail("accepted")
    assert error.path == path and words in error.message, error


def test_ah_is_rendered_for_kernel_ipsec():
    swanctl = settings_of(plan_of(body(**{"ipsecpolicy.transform_protocol": "ah"}),
                                  "kernel").swanctl)
    assert swanctl[f"connections.{CONN}.children.{CONN}-1.ah_proposals"] == "sha1-modp2048"


def test_external_address_must_be_ours_and_of_the_peer_family():
    payload = copy.deepcopy(VPN)
    payload["vpn"]["ipsec"][0]["external_v4_ip"] = "198.51.100.99"
    with pytest.raises(ApplyError) as not_ours:
        plan_of(payload)
    assert not_ours.value.path == "vpn.ipsec[0].external_v4_ip"
    payload["vpn"]["ipsec"][0]["external_v4_ip"] = None
    with pytest.raises(ApplyError) as missing:
        plan_of(payload)
    assert missing.value.path == "vpn.ipsec[0].external_v4_ip"
    assert "IPv4 peer" in missing.value.message


def test_unknown_local_subnet_and_duplicate_identities_are_refused():
    with pytest.raises(PayloadError) as unknown:
        parse_payload(body(**{"local_ep_group.endpoints": ["no-such-subnet"]}))
    assert unknown.value.errors[0].path == f"{PATH}.local_ep_group.endpoints[0]"
    payload = copy.deepcopy(VPN)
    twin = copy.deepcopy(payload["vpn"]["ipsec"][0]["ipsec_connections"][0])
    twin.update(id="twin", psk="another-secret")
    payload["vpn"]["ipsec"][0]["ipsec_connections"].append(twin)
    with pytest.raises(ApplyError) as ambiguous:
        plan_of(payload)
    assert ambiguous.value.path == "vpn.ipsec[0].ipsec_connections[1].psk"
    assert "another-secret" not in str(ambiguous.value)
    twin["id"] = CONN
    with pytest.raises(ApplyError) as duplicate:
        plan_of(payload)
    assert duplicate.value.path == "vpn.ipsec[0].ipsec_connections[1].id"


INJECTIONS = ["x\ninclude /etc/passwd", 'x" }\nconnections { evil {', "x { } ; y", "x;reboot",
              "../../etc/swanctl", "x#comment", "x\\", "x\r\nsecret = 0x00"]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_through_identities_and_ids_is_refused(text):
    """A connection id becomes a section name: only [A-Za-z0-9_-]. A peer id is a quoted
    value: refused when it holds anything but the identity alphabet, else it is that one
    value ("../" is harmless there: an identity is never a path). The schema's id grammar
    refuses such ids first, and control characters in any text; the renderer refuses them
    on its own all the same."""
    with pytest.raises(PayloadError) as refused:
        plan_of(body(id=text))
    assert refused.value.errors[0].path == f"{PATH}.id"
    with pytest.raises(ApplyError) as refused:
        render_vpn(with_text(parse_payload(body(id=PLACEHOLDER)), text), "libipsec", DIRECTORY)
    assert refused.value.path == f"{PATH}.id"
    try:
        plan = render_vpn(with_text(parse_payload(body(peer_id=PLACEHOLDER)), text),
                          "libipsec", DIRECTORY)
    except ApplyError as exc:
        assert exc.path == f"{PATH}.peer_id"
    else:
        swanctl = settings_of(plan.swanctl)
        assert swanctl[f"connections.{CONN}.remote.id"] == text
        assert swanctl[f"secrets.ike-{CONN}.id-remote"] == text


@pytest.mark.parametrize("text", INJECTIONS)
def test_psk_and_names_never_reach_the_syntax(text):
    """Free-text fields are either not rendered (names) or hex-encoded (the PSK): the output
    stays inside the grammar and the secret round-trips exactly."""
    plan = render_vpn(with_text(parse_payload(body(
        psk=PLACEHOLDER, name=PLACEHOLDER, **{"ikepolicy.name": PLACEHOLDER})), text),
        "libipsec", DIRECTORY)
    swanctl = settings_of(plan.swanctl)
    assert bytes.fromhex(swanctl[f"secrets.ike-{CONN}.secret"][2:]).decode() == text
    assert text not in plan.swanctl and text not in plan.strongswan


def test_state_directory_must_be_a_plain_path():
    # charon's directory is under state_dir, which the agent refuses at start unless plain.
    from astara_router import settings
    with pytest.raises(ValueError, match="state_dir"):
        settings.load(state_dir="/var/lib/x\ninclude /etc/passwd")


def test_unknown_ipsec_backend_is_refused_at_start(tmp_path):
    from astara_router import settings
    ini = tmp_path / "astara.ini"
    for backend in ("auto", "kernel", "libipsec"):
        ini.write_text(f"[vpn]\nipsec_backend = {backend}\n")
        assert settings.load(str(ini)).ipsec_backend == backend
    ini.write_text("[vpn]\nipsec_backend = kernal\n")
    with pytest.raises(ValueError, match=re.escape("[vpn] ipsec_backend: 'kernal'")):
        settings.load(str(ini))


def test_tables_have_no_holes():
    """Every keyword is a plain token of strongSwan's proposal grammar."""
    for table in (ENCRYPTION, AEAD, INTEGRITY, DH_GROUPS):
        for neutron, keyword in table.items():
            assert re.fullmatch(r"[a-z0-9]+", keyword), (neutron, keyword)
