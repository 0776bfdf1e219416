"""``astara-gratuitous-arp IFNAME ADDRESS...``: tell a link that addresses now live here.

IPv4: a gratuitous ARP in both forms neighbours honour, broadcast: the request form
(RFC 5227 "ARP announcement": sender = target = the address, target MAC zero) and the
reply form the original appliance sent (opcode 2, target MAC = our MAC). IPv6: an
unsolicited neighbour advertisement (RFC 4861 7.2.6: ICMPv6 136 to ff02::1, hop limit 255,
override flag, target link-layer address option). Frames are built here (pure functions)
and sent on a raw AF_PACKET socket: no external tools.
"""
import argparse
import ipaddress
import socket
import struct
import sys

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # 33:33 + low 32 bits of ff02::1
ETH_MIN_FRAME = 60  # without the FCS; shorter frames are padded with zeros
ARP_REQUEST, ARP_REPLY = 1, 2
ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
ND_OPT_TARGET_LL_ADDR = 2


# -- frames (pure) --------------------------------------------------------------------------

def mac_bytes(mac):
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"a MAC has 6 bytes, not {len(mac)}")
        return mac
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"invalid MAC {mac!r}")
    return bytes(int(part, 16) for part in parts)


def ethernet(destination, source, ethertype, payload):
    frame = destination + source + struct.pack("!H", ethertype) + payload
    return frame.ljust(ETH_MIN_FRAME, b"\0")


def arp_announcement(mac, address, opcode=ARP_REQUEST):
    """One gratuitous ARP frame: sender and target protocol address are both ``address``."""
    mac = mac_bytes(mac)
    address = ipaddress.IPv4Address(address)
    target_mac = mac if opcode == ARP_REPLY else b"\0" * 6
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, opcode,
                      mac, address.packed, target_mac, address.packed)
    return ethernet(BROADCAST_MAC, mac, ETH_P_ARP, arp)


def gratuitous_arp_frames(mac, address):
    return [arp_announcement(mac, address, ARP_REQUEST),
            arp_announcement(mac, address, ARP_REPLY)]


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(source, destination, message):
    pseudo = (source.packed + destination.packed
              + struct.pack("!I3xB", len(message), ICMPV6))
    return checksum(pseudo + message)


def unsolicited_na(mac, address, router=False):
    """An unsolicited neighbour advertisement for ``address`` (also its source: an
    address of the sending interface, as RFC 4861 asks) to all nodes."""
    mac = mac_bytes(mac)
    address = ipaddress.IPv6Address(address)
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    option = struct.pack("!BB6s", ND_OPT_TARGET_LL_ADDR, 1, mac)
    body = struct.pack("!I16s", flags, address.packed) + option
    unsummed = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0, 0) + body
    message = struct.pack("!BBH", ND_NEIGHBOR_ADVERT, 0,
                          icmpv6_checksum(address, ALL_NODES, unsummed)) + body
    header = struct.pack("!IHBB16s16s", 6 << 28, len(message), ICMPV6, 255,
                         address.packed, ALL_NODES.packed)
    return ethernet(ALL_NODES_MAC, mac, ETH_P_IPV6, header + message)


def announcement_frames(mac, address, router=False):
    """The frames that announce ``address`` (either family) as living at ``mac``."""
    address = ipaddress.ip_address(str(address))
    if address.version == 4:
        return gratuitous_arp_frames(mac, address)
    return [unsolicited_na(mac, address, router)]


# -- sending ------------------------------------------------------------------------------

def _socket(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only
    try:
        sock.bind((ifname, 0))
    except OSError:
        sock.close()
        raise
    return sock


def announce(ifname, addresses, mac=None, router=False):
    """Send the announcements of ``addresses`` on ``ifname`` (MAC: the interface's own
    unless given). Returns the number of frames sent."""
    sent = 0
    with _socket(ifname) as sock:
        mac = mac_bytes(mac) if mac else sock.getsockname()[4]
        for address in addresses:
            for frame in announcement_frames(mac, address, router):
                sock.send(frame)
                sent += 1
    return sent


def main(argv=None):
    parser = argparse.ArgumentParser(prog="astara-gratuitous-arp", description=__doc__
                                     .splitlines()[0].split(": ", 1)[1])
    parser.add_argument("ifname", help="kernel interface name, e.g. eth1")
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        type=ipaddress.ip_address, help="IPv4 or IPv6 address")
    parser.add_argument("--router", action="store_true",
                        help="set the router flag in IPv6 advertisements")
    args = parser.parse_args(argv)
    try:
        sent = announce(args.ifname, args.addresses, router=args.router)
    except OSError as exc:
        print(f"astara-gratuitous-arp: {args.ifname}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {sent} frame(s) on {args.ifname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
