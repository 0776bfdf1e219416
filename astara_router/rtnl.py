"""A minimal rtnetlink client: dumps of links (with their counters, for ``GET /metrics``)
and addresses, acknowledged address, route and link changes, and the message/attribute
parsing the kernel watch shares.

The engine reads the NIC list on every transaction and the API on every
``GET /v1/system/interfaces`` and ``GET /metrics``; pyroute2 decodes each message in Python
through its generic machinery (about 2 ms per link on this machine, 50 NICs: ~100 ms),
where this reads the few fields we use straight from the bytes (~1 ms for 50 NICs; the
counters add nothing measurable: 144 against 140 µs for this machine's 4 links). Importing
pyroute2 also costs the agent's process 12 MB (PSS); nothing in astara_router imports it
any more.
"""
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_STATS64 = 1, 3, 4, 18, 23
IFLA_INFO_KIND = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_NODAD, IFA_F_PERMANENT = 0x02, 0x80
IFF_UP = 0x1
NLA_TYPE_MASK = 0x3FFF

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")
# struct rtnl_link_stats64 starts with these eight __u64 (linux/if_link.h)
LINK_COUNTERS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors",
                 "tx_errors", "rx_dropped", "tx_dropped")
LINK_STATS64 = struct.Struct(f"={len(LINK_COUNTERS)}Q")


def messages(data):
    """(type, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            return
        yield kind, data[offset + NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def attributes(data, offset=0, wanted=None):
    """{type: value bytes} of the attributes from ``offset`` on (first one of each type);
    ``wanted``: only these types, and no further than the last of them."""
    found = {}
    end, unpack, size = len(data), RTATTR.unpack_from, RTATTR.size
    while offset + size <= end:
        length, kind = unpack(data, offset)
        if length < size:
            break
        kind &= NLA_TYPE_MASK
        if (wanted is None or kind in wanted) and kind not in found:
            found[kind] = data[offset + size:offset + length]
            if wanted is not None and len(found) == len(wanted):
                break
        offset += (length + 3) & ~3
    return found


def _string(value):
    return value.split(b"\0", 1)[0].decode(errors="replace")


def dump(kind, header, strict=False, protocol=NETLINK_ROUTE):
    """Every message of one dump request (``header``: the family message), as payloads;
    ``strict``: the kernel filters by the header's fields (table, protocol);
    ``protocol``: the netlink family (conntrack.py: NETLINK_NETFILTER)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       protocol) as sock:
        if strict:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
        request = NLMSGHDR.pack(NLMSGHDR.size + len(header), kind, NLM_F_REQUEST | NLM_F_DUMP,
                                1, 0) + header
        sock.send(request)
        found = []
        while True:
            for msg_type, payload in messages(sock.recv(1 << 20)):
                if msg_type == NLMSG_DONE:
                    return found
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    continue
                found.append(payload)


def link_counters(value):
    """{counter: value} of an IFLA_STATS64 attribute (``LINK_COUNTERS``); {} when short."""
    if len(value) < LINK_STATS64.size:
        return {}
    return dict(zip(LINK_COUNTERS, LINK_STATS64.unpack_from(value)))


LINK_ATTRIBUTES = frozenset((IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO))
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS = 29, 1 << 3


def link(payload, counters=False):
    """(index, name, mac bytes, mtu, up, kind) of one RTM_NEWLINK message; with
    ``counters``, its ``link_counters`` appended (the dump carries them anyway)."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = attributes(payload, IFINFOMSG.size,
                       LINK_ATTRIBUTES | {IFLA_STATS64} if counters else LINK_ATTRIBUTES)
    info = attributes(attrs.get(IFLA_LINKINFO, b""), 0, (IFLA_INFO_KIND,))
    kind = _string(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else None
    mtu = struct.unpack("=I", attrs[IFLA_MTU][:4])[0] if IFLA_MTU in attrs else None
    found = (index, _string(attrs.get(IFLA_IFNAME, b"")), attrs.get(IFLA_ADDRESS, b""), mtu,
             bool(flags & IFF_UP), kind)
    return found + (link_counters(attrs.get(IFLA_STATS64, b"")),) if counters else found


def links(counters=False):
    """``link`` of every link, in one dump (without counters the kernel leaves the
    statistics out: a quarter of the bytes)."""
    header = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    if not counters:
        header += attribute(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
    return [link(payload, counters) for payload in dump(RTM_GETLINK, header)]


INTERFACE_OF_LENGTH = {4: ipaddress.IPv4Interface, 16: ipaddress.IPv6Interface}


def address_record(payload):
    """(link index, IPv4/6Interface, IFA flags) of one RTM_NEWADDR/RTM_DELADDR message (a
    dump's or a notification's), or None without an address."""
    _family, prefixlen, flags, _scope, index = IFADDRMSG.unpack_from(payload)
    attrs = attributes(payload, IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # the local end of a peer
    if not raw:
        return None
    if IFA_FLAGS in attrs:
        flags = struct.unpack("=I", attrs[IFA_FLAGS][:4])[0]
    interface = INTERFACE_OF_LENGTH.get(len(raw))
    if interface is None:
        return None
    # From the integer: given an address object, ipaddress formats and parses it twice more.
    return index, interface((int.from_bytes(raw, "big"), prefixlen)), flags


def address_records(family=socket.AF_UNSPEC):
    """``address_record`` of every address of ``family``, in one dump: the one reader
    behind the views below."""
    records = (address_record(payload) for payload in
               dump(RTM_GETADDR, IFADDRMSG.pack(family, 0, 0, 0, 0))
               if family == socket.AF_UNSPEC or payload[0] == family)
    return [record for record in records if record is not None]


def addresses():
    """{link index: ["address/prefix", ...]} in the kernel's order."""
    found = {}
    for index, address, _flags in address_records():
        found.setdefault(index, []).append(str(address))
    return found


# -- address changes -----------------------------------------------------------------------

NLM_F_ACK = 0x4
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
BATCH = 256  # requests per datagram


def attribute(kind, value):
    data = RTATTR.pack(RTATTR.size + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


# The whole request for an IPv4 address without a broadcast address (a floating IP's /32,
# thousands in a full apply), in one pack: header, ifaddrmsg, IFA_LOCAL, IFA_ADDRESS.
HOST4_REQUEST = struct.Struct(f"={NLMSGHDR.format[1:]}{IFADDRMSG.format[1:]}HH4sHH4s")


def prefix_length(interface):
    """An IPv4/6Interface's prefix length, read where ``ipaddress`` keeps it: asking
    ``.network`` would build a network object for each floating IP's host address
    (model/types.py, ``WholeIPv4Address``: it makes its network only on demand)."""
    return interface._prefixlen


def address_request(seq, add, index, address, nodad=False):
    """One RTM_NEWADDR ("address replace", with the broadcast address for IPv4 prefixes
    shorter than /31, like ``ip ... broadcast +``) or RTM_DELADDR message."""
    version, prefixlen = address.version, prefix_length(address)
    if version == 4 and not nodad and (prefixlen >= 31 or not add):  # same bytes
        packed = address.packed
        return HOST4_REQUEST.pack(
            HOST4_REQUEST.size, RTM_NEWADDR if add else RTM_DELADDR,
            NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if add else 0), seq, 0,
            socket.AF_INET, prefixlen, 0, 0, index,
            RTATTR.size + 4, IFA_LOCAL, packed, RTATTR.size + 4, IFA_ADDRESS, packed)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    flags = IFA_F_NODAD if nodad else 0
    packed = address.packed  # an IPv4/6Interface is its address: no address object made
    attrs = attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed)
    if add and version == 4 and prefixlen < 31:
        attrs += attribute(IFA_BROADCAST, address.network.broadcast_address.packed)
    if flags:
        attrs += attribute(IFA_FLAGS, struct.pack("=I", flags))
    body = IFADDRMSG.pack(family, prefixlen, flags, 0, index) + attrs
    kind = RTM_NEWADDR if add else RTM_DELADDR
    request_flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if add else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, request_flags, seq, 0) + body


def change_addresses(changes):
    """Apply ``changes`` — (add, link index, IPv4/6Interface, nodad) — in order (see
    ``transact``)."""
    return transact([lambda seq, change=change: address_request(seq, *change)
                     for change in changes])


RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_UNSPEC, RTN_UNICAST, RT_SCOPE_UNIVERSE = 0, 1, 0
RTMSG = struct.Struct("=BBBBBBBBI")


def route_request(seq, add, destination, gateway, oif, table, protocol):
    """RTM_NEWROUTE ("route replace") or RTM_DELROUTE of a unicast route."""
    family = socket.AF_INET if destination.version == 4 else socket.AF_INET6
    attrs = attribute(RTA_TABLE, struct.pack("=I", table))
    if destination.prefixlen:
        attrs += attribute(RTA_DST, destination.network_address.packed)
    if gateway is not None:
        attrs += attribute(RTA_GATEWAY, gateway.packed)
    if oif:
        attrs += attribute(RTA_OIF, struct.pack("=I", oif))
    body = RTMSG.pack(family, destination.prefixlen, 0, 0, RT_TABLE_UNSPEC, protocol,
                      RT_SCOPE_UNIVERSE, RTN_UNICAST, 0) + attrs
    kind = RTM_NEWROUTE if add else RTM_DELROUTE
    request_flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if add else 0)
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, request_flags, seq, 0) + body


def link_request(seq, index, mtu=None, up=None):
    """RTM_NEWLINK setting a link's MTU and/or administrative state."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    attrs = attribute(IFLA_MTU, struct.pack("=I", mtu)) if mtu is not None else b""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK,
                         seq, 0) + body


def transact(builders, protocol=NETLINK_ROUTE, tolerated=frozenset()):
    """Send the requests ``builders`` make (each called with its sequence number), in
    datagrams of ``BATCH``, and read their outcome. Returns (len(builders), None), or at the
    first refusal (its position, OSError); later requests of the same datagram may have been
    applied too (a failed transaction's rollback reads the live state), later datagrams are
    not sent. Only a datagram's last request asks for an acknowledgement: the kernel
    handles a datagram's requests in order and reports every refusal anyway, so that one
    ack closes the datagram (an ack per request, each received on its own, cost 1 000
    addresses about twice what the kernel spends adding them). ``protocol``: the netlink
    family (conntrack.py: NETLINK_NETFILTER); ``tolerated``: errno values that are no
    refusal (ENOENT for a deletion: the kernel deleted it itself meanwhile)."""
    buffer = bytearray(1 << 16)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       protocol) as sock:
        sock.bind((0, 0))
        for start in range(0, len(builders), BATCH):
            chunk = builders[start:start + BATCH]
            last = start + len(chunk)
            sock.send(b"".join(build(start + i + 1) if start + i + 1 == last
                               else without_ack(build(start + i + 1))
                               for i, build in enumerate(chunk)))
            failed = None
            closed = False
            while not closed:
                received = memoryview(buffer)[:sock.recv_into(buffer)]
                for kind, payload in messages(received):
                    if kind != NLMSG_ERROR:
                        continue
                    code = -struct.unpack_from("=i", payload)[0]
                    seq = NLMSGHDR.unpack_from(payload, 4)[3]
                    closed = closed or seq == last
                    if code and code not in tolerated and (failed is None or seq < failed[0]):
                        failed = (seq, OSError(code, os.strerror(code)))
            if failed is not None:
                return failed[0] - 1, failed[1]
    return len(builders), None


def without_ack(message):
    """A netlink request (bytes) that asks for no acknowledgement: only a refusal answers."""
    length, kind, flags, seq, pid = NLMSGHDR.unpack_from(message)
    return NLMSGHDR.pack(length, kind, flags & ~NLM_F_ACK, seq, pid) + message[NLMSGHDR.size:]


def address_flags(family=socket.AF_INET6):
    """{(link index, address): IFA flags} of every address of ``family``."""
    return {(index, address.ip): flags for index, address, flags in address_records(family)}


def permanent_addresses():
    """({link index: frozenset of IPv4/6Interface}, {indexes of links with an IPv6 address
    that skips DAD}) of the permanent addresses; dynamic ones (SLAAC, DHCP) and link-local
    ones belong to the kernel."""
    found, nodad = {}, set()
    for index, address, flags in address_records():
        if not flags & IFA_F_PERMANENT or address.ip.is_link_local:
            continue
        found.setdefault(index, set()).add(address)
        if address.version == 6 and flags & IFA_F_NODAD:
            nodad.add(index)
    return {index: frozenset(addresses) for index, addresses in found.items()}, nodad


def routes(table, protocol):
    """(destination network, gateway or None, output link index or None) of the unicast
    routes of ``table`` with ``protocol``, filtered by the kernel (strict dump check)."""
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        header = RTMSG.pack(family, 0, 0, 0, table, protocol, 0, 0, 0)
        for payload in dump(RTM_GETROUTE, header, strict=True):
            (msg_family, dst_len, _src, _tos, msg_table, msg_protocol, _scope, kind,
             _flags) = RTMSG.unpack_from(payload)
            attrs = attributes(payload, RTMSG.size)
            if RTA_TABLE in attrs:
                msg_table = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
            if msg_table != table or msg_protocol != protocol or kind != RTN_UNICAST:
                continue  # a kernel without the filter: filtered here
            zero = b"\0" * (4 if msg_family == socket.AF_INET else 16)
            destination = ipaddress.ip_network((ipaddress.ip_address(
                attrs.get(RTA_DST, zero)), dst_len))
            gateway = attrs.get(RTA_GATEWAY)
            oif = attrs.get(RTA_OIF)
            found.append((destination, ipaddress.ip_address(gateway) if gateway else None,
                          struct.unpack("=I", oif[:4])[0] if oif else None))
    return found
