"""Links, MTU, addresses and routes over netlink: read live state, change only what differs.

The same ``converge`` serves the forward apply and the rollback: a snapshot of the live
state taken before an apply is just another desired state.
"""
import errno
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from ipaddress import ip_address, ip_interface, ip_network
from typing import Optional

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import ApplyError
from ..render.interfaces import kernel_name
from ..render.netlink import render_netlink
from ..watch import RTPROT_ASTARA, Expected  # RTPROT: marks the routes this agent owns

LOG = logging.getLogger(__name__)

MAIN_TABLE = 254
IFA_F_NODAD = 0x02
FAMILY = {4: 2, 6: 10}


@dataclass(frozen=True)
class LinkState:
    mtu: Optional[int]  # None: leave as is
    up: bool
    addresses: frozenset
    nodad: bool = False


@dataclass(frozen=True)
class NetState:
    links: tuple  # of (kernel_name, LinkState)
    routes: frozenset  # of (destination, gateway, kernel_name | None)
    # (kernel_name, address) keepalived owns on an HA router: neither read, added nor removed
    ignored: frozenset = frozenset()


# -- reading the kernel -----------------------------------------------------------------------
# Reads go through iproute2's JSON output, writes through pyroute2. pyroute2 decodes a dump
# in Python (~85 µs per message) and filters route dumps client-side: with 2 000 addresses
# an address dump took 171 ms and a filtered route dump 191 ms (the local table is dumped
# too), against 17 ms and 3 ms for `ip -j` (README, "Decisions").

def ip_json(*args):
    result = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ApplyError("", f"ip {' '.join(args)}: {result.stderr.strip()}", status=500)
    return json.loads(result.stdout or "[]")


def live_addresses():
    """``{link index: addresses}`` of the permanent, non-link-local addresses: the ones an
    apply owns. Dynamic (SLAAC/DHCP) and link-local addresses belong to the kernel and are
    never touched."""
    found = {}
    for link in ip_json("addr", "show"):
        for info in link.get("addr_info", ()):
            address = ip_interface(f"{info['local']}/{info['prefixlen']}")
            if address.ip.is_link_local or info.get("dynamic"):
                continue
            found.setdefault(link["ifindex"], set()).add(address)
    return {index: frozenset(addresses) for index, addresses in found.items()}


def live_routes():
    """Our routes (protocol RTPROT_ASTARA) in the main table: (destination, gateway, dev)."""
    found = set()
    for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
        for route in ip_json(family, "route", "show", "table", "main",
                             "proto", str(RTPROT_ASTARA)):
            dst = default if route["dst"] == "default" else route["dst"]
            gateway = route.get("gateway")
            found.add((ip_network(dst), ip_address(gateway) if gateway else None,
                       route.get("dev")))
    return frozenset(found)


def capture(nics, ignored=frozenset()):
    """The live state of every NIC and of our routes (``ignored`` addresses left out)."""
    addresses = live_addresses()
    links = tuple((nic.kernel_name, LinkState(nic.mtu, nic.up, _own(
        addresses.get(nic.index, frozenset()), nic.kernel_name, ignored))) for nic in nics)
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
    return NetlinkPlan(NetState(tuple(links), routes, frozenset(ignored)),
                       config.router is not None, paths)


def with_cleared(state, names):
    """``state`` plus "no addresses" for the links ``names`` that it does not mention: what
    an earlier generation configured there is removed."""
    mentioned = {name for name, _ in state.links}
    cleared = tuple((name, LinkState(None, False, frozenset()))
                    for name in sorted(set(names) - mentioned))
    return replace(state, links=state.links + cleared)


# -- changing the kernel ----------------------------------------------------------------------

class Converger:
    """Brings links, addresses and our routes to a desired NetState and counts changes."""

    def __init__(self, ipr, nics, paths=None):
        self.ipr = ipr
        self.by_name = {nic.kernel_name: nic for nic in nics}
        self.paths = paths or {}
        self.changes = 0

    def _index(self, name):
        nic = self.by_name.get(name) if name else None
        return nic.index if nic else None

    def _call(self, what, path, func, *args, ignore=(), **kwargs):
        try:
            func(*args, **kwargs)
            self.changes += 1
        except NetlinkError as exc:
            if exc.code in ignore:
                return
            raise ApplyError(path, f"{what}: {os.strerror(exc.code)}") from exc

    def _batch(self, commands):
        """Address changes go through one `ip -batch`: 5 000 floating IPs are 5 000
        netlink requests, 0.1 s this way against ~5 s one pyroute2 call at a time. ip stops
        at the first failing line and names it, which maps back to the payload field."""
        if not commands:
            return
        result = subprocess.run(["ip", "-batch", "-"], capture_output=True, text=True,
                                input="".join(f"{line}\n" for line, _, _ in commands))
        if result.returncode == 0:
            self.changes += len(commands)
            return
        failed = re.search(r"Command failed -:(\d+)", result.stderr)
        index = int(failed.group(1)) - 1 if failed else 0
        self.changes += index
        _, what, path = commands[min(index, len(commands) - 1)]
        reason = result.stderr.splitlines()[0] if result.stderr else "ip -batch failed"
        raise ApplyError(path, f"{what}: {reason.removeprefix('Error: ')}")

    def converge(self, state, current):
        """Bring the kernel from ``current`` (a NetState: read just before, or the committed
        plan when nothing changed behind our back) to ``state``. Links the NIC list does
        not have are skipped when they only lose addresses (a hot-unplugged NIC)."""
        ipr = self.ipr
        have_links = dict(current.links)
        have = {}
        for name, want in state.links:
            nic = self.by_name.get(name)
            if nic is None:
                if want.addresses:
                    raise ApplyError(self.paths.get(name, ""), f"{name} does not exist")
                continue
            if want.mtu is not None and nic.mtu != want.mtu:
                self._call(f"set mtu {want.mtu} on {name}", "", ipr.link, "set",
                           index=nic.index, mtu=want.mtu)
            if want.up and not nic.up:
                self._call(f"set {name} up", "", ipr.link, "set", index=nic.index, state="up")
            _ensure_sysctl(f"ipv4/conf/{name}/promote_secondaries", "1")
            have[name] = (_own(have_links[name].addresses, name, state.ignored)
                          if name in have_links else frozenset())  # keepalived's: not ours
        batch = []  # (ip command, what, path): adds first, so a replaced address never
        removed = False  # leaves a gap
        for name, want in state.links:
            for address in sorted(want.addresses - have.get(name, want.addresses),
                                  key=_sort_key):
                options = ""
                if address.version == 4 and address.network.prefixlen < 31:
                    options = " broadcast +"
                if address.version == 6 and want.nodad:
                    options = " nodad"
                batch.append((f"address replace {address} dev {name}{options}",
                              f"add address {address} to {name}", self.paths.get(name, "")))
        for name, want in state.links:
            for address in sorted(have.get(name, frozenset()) - want.addresses,
                                  key=_sort_key):
                removed = True
                batch.append((f"address del {address} dev {name}",
                              f"remove address {address} from {name}", ""))
        self._batch(batch)
        # Removing an address may take routes through it with it: read ours again then.
        live = live_routes() if removed else current.routes
        for dst, gateway, dev in sorted(live - state.routes, key=str):
            self._call(f"remove route {dst} via {gateway}", "", ipr.route, "del",
                       **_route_args(dst, gateway, self._index(dev)),
                       ignore=(errno.ESRCH, errno.ENOENT))
        for dst, gateway, dev in sorted(state.routes - live, key=str):
            path = self.paths.get((dst, gateway), "")
            self._call(f"route {dst} via {gateway}", path, ipr.route, "replace",
                       **_route_args(dst, gateway, self._index(dev)))

    def verify(self, state):
        """Read back what we asked for; any difference fails the transaction."""
        problems = []
        links = {nic.kernel_name: nic for nic in _refresh(self.ipr, self.by_name)}
        live = live_addresses()
        for name, want in state.links:
            nic = links.get(name)
            if nic is None:
                problems.append(f"{name} disappeared")
                continue
            if want.mtu is not None and nic.mtu != want.mtu:
                problems.append(f"{name} mtu is {nic.mtu}, wanted {want.mtu}")
            if want.up and not nic.up:
                problems.append(f"{name} is down")
            got = _own(live.get(nic.index, frozenset()), name, state.ignored)
            if got != want.addresses:
                problems.append(f"{name} addresses {sorted(map(str, got))} != "
                                f"{sorted(map(str, want.addresses))}")
        routes = live_routes()
        if routes != state.routes:
            problems.append(f"routes missing {sorted(map(str, state.routes - routes))}, "
                            f"unexpected {sorted(map(str, routes - state.routes))}")
        if problems:
            raise ApplyError("", "verification failed: " + "; ".join(problems), status=500)


def _refresh(ipr, by_name):
    from ..naming import list_nics
    return [nic for nic in list_nics(ipr, with_addresses=False) if nic.kernel_name in by_name]


def _sort_key(address):
    return (address.version, address)


def _route_args(dst, gateway, oif):
    args = {"dst": str(dst), "family": FAMILY[dst.version], "table": MAIN_TABLE,
            "proto": RTPROT_ASTARA}
    if gateway is not None:
        args["gateway"] = str(gateway)
    if oif:
        args["oif"] = oif
    return args


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


def enable_forwarding():
    _ensure_sysctl("ipv4/ip_forward", "1")
    _ensure_sysctl("ipv6/conf/all/forwarding", "1")


# -- the subsystem ---------------------------------------------------------------------------

class NetlinkSubsystem:
    """Transaction participant for links, MTU, addresses and routes."""

    name = "netlink"
    watches = "netlink"

    def __init__(self, settings=None):
        self.settings = settings

    def plan(self, config, names):
        return plan_netlink(config, names)

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
        if plan.forwarding:
            enable_forwarding()
        converger = Converger(ctx.ipr, ctx.nics, plan.paths)
        converger.converge(target, snapshot)
        return converger.changes

    def verify(self, ctx, plan, base, changes):
        if base is not None or changes == 0:
            return  # acknowledged change by change, or the live state already matched
        Converger(ctx.ipr, ctx.nics).verify(plan.state)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        nics = ctx.refresh_nics()
        Converger(ctx.ipr, nics).converge(snapshot, capture(nics, snapshot.ignored))

    def expected(self, plan, nics):
        """What the kernel watch compares its notifications with."""
        index = {nic.kernel_name: nic.index for nic in nics}
        links = {name: link for name, link in plan.state.links if name in index}
        return Expected(
            addresses=frozenset((index[name], address) for name, link in links.items()
                                for address in link.addresses),
            links={index[name]: (link.mtu, link.up) for name, link in links.items()},
            indexes=frozenset(index.values()),
            ignored=frozenset((index[name], address) for name, address in plan.state.ignored
                              if name in index))
