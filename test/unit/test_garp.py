"""Gratuitous ARP / unsolicited NA: exact frames, and which addresses get announced."""
import copy
import ipaddress
import struct

from astara_lab.appliance import contract_payloads
from astara_router.apply.garp import GarpSubsystem, announced_addresses
from astara_router.garp import (announcement_frames, arp_announcement, gratuitous_arp_frames,
                                unsolicited_na)
from astara_router.model import parse_payload

PAYLOADS = contract_payloads("original-orchestrator")
BASIC = PAYLOADS["router-basic"]
MAC = "fa:16:3e:59:11:a7"
MAC_BYTES = bytes.fromhex("fa163e5911a7")


def model(body):
    return parse_payload(body, ("router", "loadbalancer"))


def ip(text):
    return ipaddress.ip_address(text)


def test_gratuitous_arp_request_and_reply_frames():
    fip = bytes([172, 24, 4, 228])
    arp = b"\x00\x01\x08\x00\x06\x04"
    assert arp_announcement(MAC, "172.24.4.228", 1) == (
        b"\xff" * 6 + MAC_BYTES + b"\x08\x06" + arp + b"\x00\x01"
        + MAC_BYTES + fip + b"\x00" * 6 + fip + b"\x00" * 18)
    # the original's form: a broadcast reply whose target is ourselves
    assert arp_announcement(MAC, "172.24.4.228", 2) == (
        b"\xff" * 6 + MAC_BYTES + b"\x08\x06" + arp + b"\x00\x02"
        + MAC_BYTES + fip + MAC_BYTES + fip + b"\x00" * 18)
    assert gratuitous_arp_frames(MAC, "172.24.4.228") == announcement_frames(
        MAC, ip("172.24.4.228"))


def ones_complement_sum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_unsolicited_neighbour_advertisement():
    target = ip("2001:db8:c0de:1:f816:3eff:fe2f:9ee6")
    frame = unsolicited_na(MAC, target, router=True)
    assert frame[:14] == bytes.fromhex("333300000001") + MAC_BYTES + b"\x86\xdd"
    version, length, next_header, hop_limit, src, dst = struct.unpack(
        "!IHBB16s16s", frame[14:54])
    assert (version >> 28, length, next_header, hop_limit) == (6, 32, 58, 255)
    assert (src, dst) == (target.packed, ip("ff02::1").packed)
    icmp = frame[54:54 + length]
    assert icmp[:2] == bytes([136, 0])
    assert struct.unpack("!I", icmp[4:8])[0] == 0xA0000000  # router + override, unsolicited
    assert icmp[8:24] == target.packed
    assert icmp[24:] == b"\x02\x01" + MAC_BYTES  # target link-layer address option
    pseudo = src + dst + struct.pack("!I3xB", length, 58)
    assert ones_complement_sum(pseudo + icmp) == 0xFFFF  # checksum right
    flags = struct.unpack("!I", unsolicited_na(MAC, target)[58:62])[0]
    assert flags == 0x20000000  # override only, for an appliance that is no router


def new_announcements(config, previous=()):
    """What the subsystem announces after committing ``config`` over ``previous``."""
    garp = GarpSubsystem()
    base = garp.plan(previous[0], {}) if previous else None
    return garp.new(garp.plan(config, {}), base)


def test_first_apply_announces_every_address_and_floating_ip():
    assert new_announcements(model(BASIC)) == (
        ("ge0", ip("fdca:3ba5:a17a:acda:f816:3eff:fe67:416c")),
        ("ge1", ip("172.24.4.7")), ("ge1", ip("172.24.4.228")),
        ("ge2", ip("10.1.0.1")))


def test_identical_reapply_announces_nothing():
    assert new_announcements(model(BASIC), [model(copy.deepcopy(BASIC))]) == ()


def test_only_what_appeared_is_announced():
    before = model(BASIC)
    after = copy.deepcopy(BASIC)
    after["floating_ips"].append({"fixed_ip": "10.1.0.12", "floating_ip": "172.24.4.229"})
    after["networks"][2]["interface"]["addresses"] = ["10.1.0.1/24", "10.1.0.2/24"]
    assert new_announcements(model(after), [before]) == (
        ("ge1", ip("172.24.4.229")), ("ge2", ip("10.1.0.2")))
    # removing something announces nothing
    assert new_announcements(before, [model(after)]) == ()


def test_floating_ips_live_on_their_external_network():
    dual = model(PAYLOADS["router-dual-stack"])
    found = announced_addresses(dual)
    assert ("ge1", ip("198.51.100.50")) in found
    assert ("ge1", ip("2001:db8:c0de:1:f816:3eff:fe2f:9ee6")) in found
    assert not any(address.is_link_local for _, address in found)
