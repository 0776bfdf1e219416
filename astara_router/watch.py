"""Drift detection: has anything changed behind the agent's back since its last commit?

Instead of re-reading the kernel on every push, the agent subscribes to the kernel's own
change notifications: rtnetlink (links, addresses, routes) and nfnetlink (nftables). After
each of its own transactions it opens fresh subscriptions (so its own changes are never
mistaken for drift), and before the next one it reads whatever arrived meanwhile:

* a link appeared or vanished (hot-plug), or a managed one lost the MTU or the "up" the
  plan gave it → the netlink subsystem re-reads the kernel (carrier and operstate updates,
  which the kernel sends a moment after a link comes up, are not drift);
* an address that is not link-local and not dynamic (SLAAC/DHCP) was removed, or one was
  added that the committed plan does not put there → the same (a flag update of one of our
  own addresses, e.g. the end of DAD, is not drift);
* a route of ours (protocol ``RTPROT_ASTARA``) was added or removed → the same;
* anything touched the agent's nftables table → the firewall re-reads and reloads it.

On an HA router keepalived adds and removes the data-plane addresses as the VRRP state
changes: those (``Expected.ignored``) are not drift, and its routes carry its own protocol.
Unmanaged links and their addresses (the kernel's loopback, say) are not watched. A full
receive queue (the kernel drops notifications then) counts as drift. Changes that
happen *during* an apply are not seen here (the subscriptions are renewed after it); the
periodic reconcile compares the whole state. Only the writer uses a watch (no locking),
but for ``link_changes``.

``link_changes`` counts link notifications on a third subscription, which transactions do
not close: while it stands still, no link changed (not even by the agent's own
transaction), so the NIC list read before still holds and need not be read again.
"""
import errno
import logging
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Mapping

from .rtnl import (IFA_F_PERMANENT, IFF_UP, IFINFOMSG, IFLA_MTU, NETLINK_ROUTE, RTM_DELADDR,
                   RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE,
                   SOL_NETLINK, address_record, attributes, messages)

LOG = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 4 << 20

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
ROUTE_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
                | RTMGRP_IPV6_ROUTE)
NFNLGRP_NFTABLES = 7

NFNL_SUBSYS_NFTABLES = 10
NFPROTO_INET = 1
LOOPBACK_INDEX = 1
RTPROT_ASTARA = 211  # marks the routes this agent owns (apply/netlink.py)

NFGENMSG = struct.Struct("=BBH")


def _open(protocol, groups=0, group=None):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:  # without CAP_NET_ADMIN: the default size, overflow = drift
        pass
    sock.bind((0, groups))
    if group is not None:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    return sock


@dataclass(frozen=True)
class Expected:
    """What the committed plan put on the links: ``addresses`` ``{link index: frozenset of
    addresses}`` (the plan's own sets: nothing rebuilt per push for thousands of floating
    IPs), ``links`` ``{link index: (mtu or None, up)}`` of the managed NICs, ``indexes``
    every NIC the agent saw; ``ignored`` ``{(link index, address)}`` another daemon adds
    and removes (keepalived's virtual addresses on an HA router): never drift."""
    addresses: Mapping = field(default_factory=dict)
    links: Mapping = field(default_factory=dict)
    indexes: frozenset = frozenset()
    ignored: frozenset = frozenset()


class KernelWatch:
    """Two subscriptions; ``netlink_drift``/``nftables_drift`` say whether the kernel may no
    longer hold what was committed (``expected``). A third counts link changes
    (``link_changes``)."""

    def __init__(self, table_name, table_family=NFPROTO_INET):
        self.table_name = table_name.encode()
        self.table_family = table_family
        self._route = self._nft = None
        self.netlink_drift = self.nftables_drift = True  # nothing known yet
        self.expected = Expected()
        self._links = None  # the link subscription: open from the first link_changes on
        self._link_count = 0
        self._links_lock = threading.Lock()  # link_changes: the writer and its background

    def renew(self, expected=Expected()):
        """Forget everything so far (the agent's own changes) and watch from now on."""
        self.close()
        try:
            self._route = _open(NETLINK_ROUTE, ROUTE_GROUPS)
            self._nft = _open(NETLINK_NETFILTER, group=NFNLGRP_NFTABLES)
        except OSError as exc:  # cannot watch: every apply re-reads the kernel
            LOG.warning("cannot subscribe to kernel notifications: %s", exc)
            self.close()
            self.netlink_drift = self.nftables_drift = True
            return
        self.expected = expected
        self.netlink_drift = self.nftables_drift = False

    def poll(self):
        """Read what arrived since ``renew``; returns (netlink_drift, nftables_drift)."""
        if self._route is None:
            return True, True
        if not self.netlink_drift:
            self.netlink_drift = self._drain(self._route, self._route_drift)
        if not self.nftables_drift:
            self.nftables_drift = self._drain(self._nft, self._nft_drift)
        return self.netlink_drift, self.nftables_drift

    def link_changes(self):
        """A number that stays the same while no link changes in any way (not even its
        carrier), or None when links cannot be watched. Its own subscription, open from
        the first call on and across transactions: a transaction that changes no link
        leaves it as it was, and the NIC list read before it needs no new dump."""
        with self._links_lock:
            if self._links is None:
                try:
                    self._links = _open(NETLINK_ROUTE, RTMGRP_LINK)
                except OSError as exc:
                    LOG.warning("cannot subscribe to link notifications: %s", exc)
                    return None
                self._link_count += 1  # whatever happened before is unknown
            while True:
                try:
                    if self._links.recv(1 << 16):
                        self._link_count += 1
                except BlockingIOError:
                    return self._link_count
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:  # else: dropped, so changed
                        raise
                    self._link_count += 1

    def close(self):
        for sock in (self._route, self._nft):
            if sock is not None:
                sock.close()
        self._route = self._nft = None

    # -- reading ------------------------------------------------------------------------------
    @staticmethod
    def _drain(sock, judge):
        drift = False
        while True:
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return drift
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were dropped
                    LOG.info("kernel notification queue overflowed: assuming drift")
                    return True
                raise
            if not drift and any(judge(kind, payload) for kind, payload in messages(data)):
                drift = True  # keep draining so the socket does not overflow

    def _route_drift(self, kind, payload):
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            return self._link_drift(kind, payload)
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return self._address_drift(kind, payload)
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            protocol = payload[5]
            if protocol == RTPROT_ASTARA:
                LOG.debug("drift: a route of ours changed")
                return True
        return False

    def _link_drift(self, kind, payload):
        _family, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
        if index == LOOPBACK_INDEX:
            return False
        if kind == RTM_DELLINK or index not in self.expected.indexes:
            LOG.debug("drift: link %d %s", index, "removed" if kind == RTM_DELLINK else "new")
            return True
        want = self.expected.links.get(index)
        if want is None:
            return False  # a NIC the configuration does not use
        mtu, up = want
        raw = attributes(payload, IFINFOMSG.size).get(IFLA_MTU)
        if (up and not flags & IFF_UP) or (
                mtu is not None and raw is not None and struct.unpack("=I", raw[:4])[0] != mtu):
            LOG.debug("drift: link %d lost its state (flags %#x)", index, flags)
            return True
        return False

    def _address_drift(self, kind, payload):
        record = address_record(payload)
        if record is None or record[0] not in self.expected.links:
            return False
        index, address, flags = record
        if address.ip.is_link_local or not flags & IFA_F_PERMANENT:
            return False  # the kernel's (link-local, SLAAC) or a DHCP client's
        if kind == RTM_NEWADDR and address in self.expected.addresses.get(index, ()):
            return False  # one of ours changed state (e.g. DAD finished)
        if (index, address) in self.expected.ignored:
            return False  # keepalived's: the VRRP master holds it, a backup does not
        LOG.debug("drift: address %s on link %d %s", address, index,
                  "added" if kind == RTM_NEWADDR else "removed")
        return True

    def _nft_drift(self, kind, payload):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES or len(payload) < NFGENMSG.size:
            return False
        family = NFGENMSG.unpack_from(payload)[0]
        table = attributes(payload, NFGENMSG.size).get(1, b"").rstrip(b"\0")
        if family == self.table_family and table == self.table_name:
            LOG.debug("drift: nftables table %s changed", table.decode())
            return True
        return False

