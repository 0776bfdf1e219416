"""Conntrack entries through ctnetlink (``NETLINK_NETFILTER``), from the agent's own process.

The firewall forgets the connections of a floating IP that disappeared or moved (their NAT
bindings are wrong now). ``conntrack -L`` and ``conntrack -D`` did that as programs: each
start forks the agent, and the interpreter lock is held until the child executes, so every
push removing a floating IP stalled the threads answering reads (a thread sleeping 0.5 ms
beside ``conntrack -L`` in a loop woke 7.8-8.6 ms late at p99 against 1.9-2.1 beside a
sleep, on this 2-core machine under load). Here: one dump of the table (both families),
the entries whose original or reply destination is one of the addresses, and one
acknowledged deletion per entry, by its original tuple as the kernel reported it.
"""
import errno
import socket
import struct

from . import rtnl

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
NFGENMSG = struct.Struct("=BBH")  # family, version (NFNETLINK_V0), resource id
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE = 1, 2, 18
CTA_TUPLE_IP = 1
CTA_IP_V4_DST, CTA_IP_V6_DST = 2, 4
NLA_F_NESTED = 0x8000
ENTRY_ATTRIBUTES = frozenset((CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE))


def destination(tuple_value):
    """The destination address (packed) of a CTA_TUPLE_* attribute's value, or None."""
    ip = rtnl.attributes(tuple_value, 0, {CTA_TUPLE_IP}).get(CTA_TUPLE_IP)
    if ip is None:
        return None
    found = rtnl.attributes(ip, 0)
    return found.get(CTA_IP_V4_DST) or found.get(CTA_IP_V6_DST)


def entries_to(addresses):
    """``[(family, original tuple, zone or None)]``: the entries whose original or reply
    destination is one of ``addresses`` (ip_address objects), from one dump of the table."""
    wanted = {address.packed for address in addresses}
    if not wanted:
        return []
    found = []
    for payload in rtnl.dump(CT_GET, NFGENMSG.pack(socket.AF_UNSPEC, 0, 0),
                             protocol=NETLINK_NETFILTER):
        attributes = rtnl.attributes(payload, NFGENMSG.size, ENTRY_ATTRIBUTES)
        original = attributes.get(CTA_TUPLE_ORIG)
        reply = attributes.get(CTA_TUPLE_REPLY)
        if original is None:
            continue
        if destination(original) in wanted or (reply is not None
                                               and destination(reply) in wanted):
            found.append((payload[0], bytes(original), attributes.get(CTA_ZONE)))
    return found


def deletion(family, original, zone):
    """The builder of the request deleting one entry (rtnl.transact calls it with its
    sequence number)."""
    body = NFGENMSG.pack(family, 0, 0) + rtnl.attribute(CTA_TUPLE_ORIG | NLA_F_NESTED,
                                                        original)
    if zone is not None:
        body += rtnl.attribute(CTA_ZONE, zone)

    def build(seq):
        return rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(body), CT_DELETE,
                                  rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, seq, 0) + body
    return build


def forget(addresses):
    """Delete the entries whose original or reply destination is one of ``addresses``
    (ip_address objects); returns how many. An entry gone meanwhile (expired) is no
    error; OSError otherwise (no ctnetlink, not allowed)."""
    found = entries_to(addresses)
    done, error = rtnl.transact([deletion(*entry) for entry in found],
                                protocol=NETLINK_NETFILTER, tolerated={errno.ENOENT})
    if error is not None:
        raise error
    return done
