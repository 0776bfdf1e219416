"""Links, MTU, addresses and routes over netlink: read live state, change only what differs.

The same ``converge`` serves the forward apply and the rollback: a snapshot of the live
state taken before an apply is just another desired state.
"""
import errno
import functools
import logging
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Optional

from .. import rtnl
from ..errors import ApplyError
from ..model.change import external_names
from ..render.interfaces import kernel_name
from ..render.netlink import render_netlink
from ..watch import RTPROT_ASTARA, Expected  # RTPROT: marks the routes this agent owns

LOG = logging.getLogger(__name__)

MAIN_TABLE = 254


@dataclass(frozen=True)
class LinkState:
    mtu: Optional[int]  # None: leave as is
    up: Optional[bool]  # None: leave as is (a rollback also takes a link down again)
    addresses: frozenset
    nodad: bool = False


@dataclass(frozen=True)
class NetState:
    links: tuple  # of (kernel_name, LinkState)
    routes: frozenset  # of (destination, gateway, kernel_name | None)
    # (kernel_name, address) keepalived owns on an HA router: neither read, added nor removed
    ignored: frozenset = frozenset()


# -- reading the kernel -----------------------------------------------------------------------
# Full reads (the live path: boot, drift) are rtnetlink dumps read straight from the bytes
# (rtnl.py): no process, and the kernel filters the route dump by table and protocol.

def live_routes():
    """Our routes (protocol RTPROT_ASTARA) in the main table: (destination, gateway, dev)."""
    names = {index: name for index, name, *_ in rtnl.links()}
    return frozenset((destination, gateway, names.get(oif))
                     for destination, gateway, oif in rtnl.routes(MAIN_TABLE, RTPROT_ASTARA))


def capture(nics, ignored=frozenset()):
    """The live state of every NIC and of our routes. Addresses: the permanent ones an
    apply owns; dynamic ones (SLAAC/DHCP) and link-local ones belong to the kernel and are
    never touched (the model refuses link-local addresses in a payload); ``ignored``
    addresses (keepalived's) are left out."""
    addresses, nodad = rtnl.permanent_addresses()
    links = tuple((nic.kernel_name, LinkState(nic.mtu, nic.up, _own(
        addresses.get(nic.index, frozenset()), nic.kernel_name, ignored), nic.index in nodad))
        for nic in nics)
    return NetState(links, live_routes(), ignored)


def _own(addresses, name, ignored):
    return frozenset(a for a in addresses if (name, a) not in ignored) if ignored else addresses


# -- desired state (pure) ---------------------------------------------------------------------

@dataclass(frozen=True)
class NetlinkPlan:
    state: NetState
    forwarding: bool  # a router forwards; a load balancer does not need to
    paths: dict = field(default_factory=dict, compare=False)  # what to blame for a failure


def plan_netlink(config, names):
    """The links, addresses and routes ``config`` wants, by kernel name (``names``: geN →
    kernel name). What keepalived owns (HA) is planned out: not ours to add or remove."""
    plan = render_netlink(config)
    links, ignored = [], set()
    for spec in plan.links:
        name = kernel_name(names, spec.generic, spec.path.removesuffix(".interface"))
        if spec.keepalived:
            ignored.update((name, address) for address in spec.addresses)
        links.append((name, LinkState(spec.mtu, True,
                                      frozenset() if spec.keepalived else spec.addresses,
                                      spec.nodad)))
    own = [r for r in plan.routes if not r.keepalived]
    routes = frozenset((r.destination, r.gateway, names.get(r.generic)) for r in own)
    paths = {(r.destination, r.gateway): r.path for r in own}
    paths.update({names[s.generic]: f"{s.path}.addresses" for s in plan.links})
    return NetlinkPlan(NetState(tuple(links), routes, ignored=frozenset(ignored)),
                       config.router is not None, paths)


def with_cleared(state, names):
    """``state`` plus "no addresses" for the links ``names`` that it does not mention: what
    an earlier generation configured there is removed."""
    mentioned = {name for name, _ in state.links}
    cleared = tuple((name, LinkState(None, None, frozenset()))
                    for name in sorted(set(names) - mentioned))
    return replace(state, links=state.links + cleared)


# -- changing the kernel ----------------------------------------------------------------------

class Converger:
    """Brings links, addresses and our routes to a desired NetState and counts changes."""

    def __init__(self, ctx, nics, paths=None):
        self.ctx = ctx
        self.by_name = {nic.kernel_name: nic for nic in nics}
        self.paths = paths or {}
        self.changes = 0

    def _index(self, name):
        nic = self.by_name.get(name) if name else None
        return nic.index if nic else None

    def _request(self, what, path, build, ignore=()):
        """One acknowledged netlink request (``build(seq)`` makes it: rtnl)."""
        _, error = rtnl.transact([build])
        if error is None:
            self.changes += 1
        elif error.errno not in ignore:
            raise ApplyError(path, f"{what}: {error.strerror}")

    def _requests(self, requests):
        """Acknowledged netlink requests — (what, path, build) — sent together, many per
        datagram (fifty links brought up with their MTU: one socket, not a hundred); the
        first refusal names its payload field."""
        if not requests:
            return
        done, error = rtnl.transact([build for _, _, build in requests])
        self.changes += done
        if error is not None:
            what, path, _ = requests[done]
            raise ApplyError(path, f"{what}: {error.strerror}")

    def _batch(self, commands):
        """Address changes — (add, kernel name, address, nodad, path) — as netlink
        requests written straight to a socket, many per datagram (``_requests``): 5 000
        floating IPs take about as long as one ``ip -batch`` and one floating IP no process
        at all."""
        self._requests([(AddressChange(add, name, address), path, functools.partial(
            rtnl.address_request, add=add, index=self.by_name[name].index, address=address,
            nodad=nodad)) for add, name, address, nodad, path in commands])

    def converge(self, state, current):
        """Bring the kernel from ``current`` (a NetState: read just before, or the committed
        plan when nothing changed behind our back) to ``state``. Links the NIC list does
        not have are skipped when they only lose addresses (a hot-unplugged NIC)."""
        have_links = dict(current.links)
        have, link_changes = {}, []
        for name, want in state.links:
            nic = self.by_name.get(name)
            if nic is None:
                if want.addresses:
                    raise ApplyError(self.paths.get(name, ""), f"{name} does not exist")
                continue
            if want.mtu is not None and nic.mtu != want.mtu:
                link_changes.append((f"set mtu {want.mtu} on {name}", "", functools.partial(
                    rtnl.link_request, index=nic.index, mtu=want.mtu)))
            if want.up is not None and want.up != nic.up:
                link_changes.append((f"set {name} {'up' if want.up else 'down'}", "",
                                     functools.partial(rtnl.link_request, index=nic.index,
                                                       up=want.up)))
            have[name] = (_own(have_links[name].addresses, name, state.ignored)
                          if name in have_links else frozenset())  # keepalived's: not ours
        self._requests(link_changes)  # in order: a link's MTU before it goes up
        batch = []  # adds first, so a replaced address never leaves a gap
        removed = False
        for name, want in state.links:
            for address in sorted(want.addresses - have.get(name, want.addresses),
                                  key=_sort_key):
                batch.append((True, name, address, address.version == 6 and want.nodad,
                              self.paths.get(name, "")))
        for name, want in state.links:
            for address in sorted(have.get(name, frozenset()) - want.addresses,
                                  key=_sort_key):
                removed = True
                batch.append((False, name, address, False, ""))
        self._batch(batch)
        # Removing an address may take routes through it with it: read ours again then.
        live = live_routes() if removed else current.routes
        for dst, gateway, dev in sorted(live - state.routes, key=str):
            self._request(f"remove route {dst} via {gateway}", "",
                          self._route(False, dst, gateway, dev),
                          ignore=(errno.ESRCH, errno.ENOENT))
        for dst, gateway, dev in sorted(state.routes - live, key=str):
            self._request(f"route {dst} via {gateway}", self.paths.get((dst, gateway), ""),
                          self._route(True, dst, gateway, dev))

    def _route(self, add, destination, gateway, dev):
        return functools.partial(rtnl.route_request, add=add, destination=destination,
                                 gateway=gateway, oif=self._index(dev), table=MAIN_TABLE,
                                 protocol=RTPROT_ASTARA)


class AddressChange(NamedTuple):
    """An address request in words, formatted only when the kernel refuses it (formatting
    thousands of addresses that go through cost a full apply more than sending them)."""
    add: bool
    link: str
    address: object

    def __str__(self):
        if self.add:
            return f"add address {self.address} to {self.link}"
        return f"remove address {self.address} from {self.link}"


def _sort_key(address):
    return (address.version, int(address), rtnl.prefix_length(address))


def _ensure_sysctl(key, value):
    """Sysctls of the agent's own network namespace (/proc/sys/net is per namespace)."""
    path = f"/proc/sys/net/{key}"
    try:
        with open(path) as handle:
            if handle.read().strip() == value:
                return
        with open(path, "w") as handle:
            handle.write(value)
    except OSError as exc:
        LOG.warning("cannot set %s=%s: %s", path, value, exc)


def promote_secondaries():
    """Removing a link's primary IPv4 address keeps its other addresses of that subnet
    (one becomes primary) instead of removing them with it: for every link at once, as
    the kernel takes a link's setting or ``all``'s (a write per link was 51 reads and
    writes of /proc, 5-9 ms of a first apply on a loaded machine). Set on the live path,
    which every process's first apply takes."""
    _ensure_sysctl("ipv4/conf/all/promote_secondaries", "1")


def enable_forwarding():
    _ensure_sysctl("ipv4/ip_forward", "1")
    _ensure_sysctl("ipv6/conf/all/forwarding", "1")


def allow_nonlocal_bind():
    """Daemons may bind an address before it is on a NIC (nginx a VIP, keepalived's and
    conntrackd's the master's addresses on the backup too); this namespace only."""
    _ensure_sysctl("ipv4/ip_nonlocal_bind", "1")
    _ensure_sysctl("ipv6/ip_nonlocal_bind", "1")


# -- the subsystem ---------------------------------------------------------------------------

class NetlinkSubsystem:
    """Transaction participant for links, MTU, addresses and routes."""

    name = "netlink"
    watches = "netlink"

    def __init__(self, settings=None):
        self.settings = settings

    def plan(self, config, names):
        return plan_netlink(config, names)

    def plan_floating_ips(self, base, change, config, names):
        """``base`` with the host addresses of ``change`` (model/change.py) taken off and
        put on their external NICs: ``plan`` for a push that changes floating IPs alone;
        None (plan in full) on an HA router (keepalived's addresses are planned out)."""
        if config.ha or base is None:
            return None
        edits = {}  # kernel name -> (hosts removed, hosts added)
        for side, fips in enumerate((change.removed, change.added)):
            found = external_names(config, fips, names)
            if found is None:
                return None
            for name, fip in found:
                edits.setdefault(name, (set(), set()))[side].add(fip.host)
        links = dict(base.state.links)
        if not edits.keys() <= links.keys():
            return None
        return replace(base, state=replace(base.state, links=tuple(
            (name, replace(link, addresses=(link.addresses - edits[name][0]) | edits[name][1])
             if name in edits else link) for name, link in base.state.links)))

    def check(self, plan, base):
        pass  # the kernel is the checker: every change is acknowledged or refused

    def capture(self, ctx, plan, base):
        """The committed state when intact and the plan touches no other link; else the
        live state of every NIC (rollback then also clears links the plan added)."""
        if base is not None and {n for n, _ in plan.state.links} <= {
                n for n, _ in base.state.links}:
            return base.state
        return capture(ctx.nics, plan.state.ignored)

    def apply(self, ctx, plan, base, snapshot):
        if base is not None:  # the kernel holds base: only the difference
            target = with_cleared(plan.state, [name for name, _ in base.state.links])
        else:  # unknown: also clear what an earlier or interrupted generation left
            earlier = {n.interface.ifname for config in ctx.previous for n in config.networks}
            names = ctx.kernel_names()
            target = with_cleared(plan.state, [names[g] for g in earlier if g in names])
            promote_secondaries()
        if plan.forwarding and not (base is not None and base.forwarding):
            enable_forwarding()
        converger = Converger(ctx, ctx.nics, plan.paths)
        converger.converge(target, snapshot)
        return converger.changes

    def verify(self, ctx, plan, base, changes):
        pass  # every change was acknowledged by the kernel (ip -batch, netlink requests)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        nics = ctx.refresh_nics()
        Converger(ctx, nics).converge(snapshot, capture(nics, snapshot.ignored))

    def expected(self, plan, nics):
        """What the kernel watch compares its notifications with."""
        index = {nic.kernel_name: nic.index for nic in nics}
        links = {name: link for name, link in plan.state.links if name in index}
        return Expected(
            addresses={index[name]: link.addresses for name, link in links.items()},
            links={index[name]: (link.mtu, link.up) for name, link in links.items()},
            indexes=frozenset(index.values()),
            ignored=frozenset((index[name], address) for name, address in plan.state.ignored
                              if name in index))
