"""Checks on what the addresses of a well-formed payload *mean* (after parse.py built the
model): addresses that would poison a network, and the management path.

* **Addresses**: a floating IP is never a gateway, a router (interface) address or a
  subnet's network/broadcast address; subnets of different networks never overlap; a
  gateway lies in a subnet of its own network (or is an IPv6 link-local router address);
  ``default_v4_gateway`` is on an external network; link-local, loopback, multicast and
  unspecified addresses are refused as interface addresses and floating IPs, as is a
  prefix length of 0 on an interface.
* **The management path** (README, "The management path"): the management network's
  interface and addresses, and the addresses the orchestrator speaks from — the payload's
  ``orchestrator.address`` and the source of the request being applied. No route
  (default, subnet host route, static route) and no address on another interface may win
  the kernel's route lookup for any of them.

Every function here is pure: problems are added to a ``checks.Problems`` with their field.
"""
import bisect
import functools
import ipaddress

from .change import Checked
from .checks import IPV6_ABOVE, address_key
from .errors import join
from .types import Route

ONLY_UNDER_CONFIRM = (" (possible only under commit-confirm: PUT "
                      "/v1/system/config?confirm_timeout=SECONDS)")
DEFAULTS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def unusable(address):
    """Why ``address`` cannot be a host's own unicast address, or ''."""
    return _unusable(address_key(address))


def _unusable(key):
    """``unusable`` by ``address_key``."""
    # IPv4 by integer ranges: thousands of floating IPs on a first push, where each of
    # ipaddress's is_* properties costs about a microsecond.
    return _unusable_v4(key) if key < IPV6_ABOVE else _unusable_v6(key - IPV6_ABOVE)


@functools.lru_cache(maxsize=1 << 14)
def _unusable_v6(number):
    """``_unusable`` of the IPv6 address ``number`` (cached by a key hashed in C)."""
    address = ipaddress.IPv6Address(number)
    if address.is_unspecified:
        return "is the unspecified address"
    if address.is_loopback:
        return "is a loopback address"
    if address.is_multicast:
        return "is a multicast address"
    if address.is_link_local:
        return "is a link-local address"
    return ""


def _unusable_v4(number):
    """``_unusable`` of the IPv4 address ``number``: the ranges of ipaddress's is_* tests."""
    if number == 0:
        return "is the unspecified address"
    if number >> 24 == 127:  # 127.0.0.0/8
        return "is a loopback address"
    if number >> 28 == 0xE:  # 224.0.0.0/4
        return "is a multicast address"
    if number >> 16 == 0xA9FE:  # 169.254.0.0/16
        return "is a link-local address"
    return ""


def subnet_edges(cidr):
    """The addresses of an IPv4 ``cidr`` (up to /30) no host may take: its network and
    broadcast addresses. (IPv6 has no broadcast; Neutron hands out the subnet-router
    anycast address as an ordinary port address, so it is not refused.)"""
    if cidr.version != 4 or cidr.prefixlen >= 31:
        return ()
    return (cidr.network_address, cidr.broadcast_address)


def check_addresses(problems, config, locate, router_path):
    """Finding 3 of issue 12. ``locate(ifname, subnet=None)``: the payload path of a network
    (or one of its subnets) by interface name; ``router_path``: where the router's fields
    are ('' or 'services.router')."""
    if config.networks != _SOUND_NETWORKS[0]:  # the same objects when unchanged: cheap
        before = len(problems.errors)
        _interface_addresses(problems, config, locate)
        _subnets(problems, config, locate)
        if len(problems.errors) == before:
            _SOUND_NETWORKS[0] = config.networks
    router = config.router
    if router is None:
        return
    gateway = router.default_v4_gateway
    if gateway is not None:
        # On no subnet at all it goes onto the external NIC (render/netlink.py).
        network = config.network_for(gateway)
        if network is not None and not network.is_external:
            problems.add(join(router_path, "default_v4_gateway"),
                         f"{gateway} must be on an external network (it is on the "
                         f"{network.network_type} network {network.interface.ifname})")
        elif network is None and not config.external_networks:
            problems.add(join(router_path, "default_v4_gateway"),
                         f"{gateway} must be on an external network (the router has none)")
        elif unusable(gateway) or gateway in {a.ip for n in config.networks
                                              for a in n.interface.addresses}:
            problems.add(join(router_path, "default_v4_gateway"),
                         f"{gateway} is not a usable next hop (an address of the router's "
                         "own, or not unicast)")
    _floating_ips(problems, config, locate, router_path)


# The last networks whose addresses and subnets passed (they depend on nothing else)
_SOUND_NETWORKS = [None]


def _interface_addresses(problems, config, locate):
    for network in config.networks:
        for k, address in enumerate(network.interface.addresses):
            path = f"{locate(network.interface.ifname)}.interface.addresses[{k}]"
            why = unusable(address.ip)
            if why:
                problems.add(path, f"({network.interface.ifname}) {address} {why}")
            elif address.network.prefixlen == 0:
                problems.add(path, f"({network.interface.ifname}) {address} has a prefix "
                                   "length of 0 (it would claim every address)")
            elif address.ip in subnet_edges(address.network):
                problems.add(path, f"({network.interface.ifname}) {address} is the network "
                                   "or broadcast address of its prefix")


def overlapping(cidrs):
    """``{later: [earlier, ...]}``: for each index into ``cidrs``, the lower indexes of the
    prefixes it overlaps. Prefixes are nested or disjoint, so after sorting by
    first address (a container before what it holds) the ones still open on a stack are
    exactly those holding the next: O(n log n + pairs), where comparing every pair would
    cost 5 million comparisons (seconds) at the payload limit of 100 networks of 32
    subnets."""
    order = sorted(range(len(cidrs)), key=lambda i: (cidrs[i].version,
                                                     int(cidrs[i].network_address),
                                                     cidrs[i].prefixlen))
    holding = []  # (version, last address, index), each inside the one below it
    found = {}
    for i in order:
        cidr = cidrs[i]
        first = int(cidr.network_address)
        while holding and (holding[-1][0] != cidr.version or holding[-1][1] < first):
            holding.pop()
        for _, _, j in holding:
            found.setdefault(max(i, j), []).append(min(i, j))
        holding.append((cidr.version, int(cidr.broadcast_address), i))
    return {later: sorted(earlier) for later, earlier in found.items()}


def _subnets(problems, config, locate):
    seen = [(subnet, network, locate(network.interface.ifname, subnet))
            for network in config.networks for subnet in network.subnets]
    overlaps = overlapping([subnet.cidr for subnet, _, _ in seen])
    for k, (subnet, network, path) in enumerate(seen):
        ifname = network.interface.ifname
        for other_subnet, other, other_path in (seen[j] for j in overlaps.get(k, ())):
            if other is not network:
                problems.add(f"{path}.cidr", f"({ifname}) {subnet.cidr} overlaps "
                                             f"{other_subnet.cidr} of "
                                             f"{other.interface.ifname} ({other_path})")
        gateway = subnet.gateway_ip
        if gateway is None:
            continue
        if gateway.version == 6 and gateway.is_link_local:
            continue  # an IPv6 router may be announced by its link-local address
        if not any(gateway in s.cidr for s in network.subnets):
            problems.add(f"{path}.gateway_ip", f"({ifname}) {gateway} is not on the "
                                               f"network (no subnet of it holds it)")
        elif gateway in subnet_edges(subnet.cidr):
            problems.add(f"{path}.gateway_ip", f"({ifname}) {gateway} is the network "
                                               f"or broadcast address of {subnet.cidr}")


# The floating IPs found usable last, by the networks and default_v4_gateway that decided it
_USABLE_FLOATING_IPS = Checked()


def _floating_ips(problems, config, locate, router_path):
    """No floating IP is an address the router's networks already use or an unusable one;
    those a recent push found usable with the same networks are not checked again."""
    fips = config.router.floating_ips
    context = (config.networks, config.router.default_v4_gateway)
    unchecked = _USABLE_FLOATING_IPS.unchecked(context, fips)
    if unchecked == []:
        return
    before = len(problems.errors)
    _check_floating_ips(problems, config, router_path,
                        enumerate(fips) if unchecked is None else unchecked)
    if len(problems.errors) == before:
        _USABLE_FLOATING_IPS.passed(context, fips)


def _check_floating_ips(problems, config, router_path, indexed):
    taken = {}  # address_key -> what it is, for the message
    for network in config.networks:
        for address in network.interface.addresses:
            taken[address_key(address.ip)] = (f"the router's address on "
                                              f"{network.interface.ifname}")
        for subnet in network.subnets:
            for edge in subnet_edges(subnet.cidr):
                taken.setdefault(address_key(edge),
                                 f"the network or broadcast address of {subnet.cidr}")
            if subnet.gateway_ip is not None:
                taken[address_key(subnet.gateway_ip)] = f"the gateway of {subnet.cidr}"
    if config.router.default_v4_gateway is not None:
        taken[address_key(config.router.default_v4_gateway)] = "the default_v4_gateway"
    for i, fip in indexed:
        key = fip.key
        why = taken.get(key) or _unusable(key)
        if why:
            problems.add(join(router_path, f"floating_ips[{i}].floating_ip"),
                         f"{fip.floating_ip} {'is ' if key in taken else ''}{why}")


# -- the management path ------------------------------------------------------------------

def check_management(problems, config, locate, router_path, sources=()):
    """The management network exists, has an address, and nothing in the payload takes the
    kernel's route lookup for its prefixes or for ``sources`` away from its interface."""
    management = config.management_network
    if management is None:
        problems.add("networks", "there is no management network (network_type "
                                 "'management'): the orchestrator could not reach the "
                                 "appliance any more")
        return
    ifname = management.interface.ifname
    if not management.interface.addresses:
        problems.add(f"{locate(ifname)}.interface.addresses",
                     f"({ifname}) the management interface needs an address")
        return
    orchestrator = config.router.orchestrator.address if config.router else None
    targets = [(a.network, f"the management network {a.network}")
               for a in management.interface.addresses]
    targets += [(ipaddress.ip_network(s), f"the orchestrator's address {s}")
                for s in (orchestrator, *sources)
                if s is not None and not s.is_loopback and not s.is_unspecified]
    router = config.router
    # What decided the verdict apart from the floating IPs: a push that adds a floating IP
    # to a router whose path was found clear checks that one alone.
    context = (config.networks, tuple(targets),
               router and (router.default_v4_gateway, router.static_routes))
    fips = config.floating_ips
    clear = _CLEAR_PATHS[bool(sources)]
    unchecked = clear.unchecked(context, fips)
    before = len(problems.errors)
    routes = list(_routes(config, locate, router_path)) if unchecked is None else ()
    for target, what in targets:
        ours = _best(routes, target, ifname, mine=True)
        for path, destination, device in routes:
            if device == ifname or not _covers(destination, target):
                continue
            # The kernel takes the longest prefix; a tie with a foreign route is refused.
            if ours is None or destination.prefixlen >= ours:
                problems.add(path, f"{destination} via {device or 'another interface'} "
                                   f"would take {what} away from the management interface "
                                   f"{ifname}")
        for i, address in _floating_ips_in(config, target, ifname, unchecked):  # /32, /128
            problems.add(join(router_path, f"floating_ips[{i}].floating_ip"),
                         f"{address} would take {what} away from the management "
                         f"interface {ifname}")
    if len(problems.errors) == before:
        clear.passed(context, fips)


# The management path found clear last by the parse's check (False) and by the request's,
# with its source (True), each by what decided it apart from the floating IPs: one each,
# so a configuration no longer pushed keeps no floating IPs alive here.
_CLEAR_PATHS = {False: Checked(), True: Checked()}


def _floating_ips_in(config, target, ifname, only=None):
    """(index, address) of the floating IPs (on a NIC other than ``ifname``) inside
    ``target``: thousands of host routes, checked without building a network for each;
    ``only``: just these (index, FloatingIP), one by one."""
    if config.router is None or ifname in (n.interface.ifname for n in
                                           config.external_networks):
        return
    if only is not None:
        yield from ((i, fip.floating_ip) for i, fip in only
                    if fip.floating_ip.version == target.version
                    and fip.floating_ip in target)
        return
    keys, indexes = config.router.floating_ip_keys  # sorted, and their payload indexes
    start = bisect.bisect_left(keys, address_key(target.network_address))
    end = bisect.bisect_right(keys, address_key(target.broadcast_address))
    for i in sorted(indexes[start:end]):  # in payload order
        yield i, config.router.floating_ips[i].floating_ip


def management_change(problems, previous, config, locate, local=None):
    """The management network is re-addressed or moved compared with ``previous`` (the
    committed model) or no longer carries ``local`` (the address the request came in on):
    allowed only under commit-confirm, so the caller decides what these problems mean."""
    management = config.management_network
    if management is None:
        return
    ifname = management.interface.ifname
    before = previous.management_network if previous is not None else None
    if before is not None and before.interface.ifname != ifname:
        problems.add(f"{locate(ifname)}.interface.ifname",
                     f"the management network moves from {before.interface.ifname} to "
                     f"{ifname}" + ONLY_UNDER_CONFIRM)
    elif before is not None and set(before.interface.addresses) != \
            set(management.interface.addresses):
        problems.add(f"{locate(ifname)}.interface.addresses",
                     f"({ifname}) the management address changes from "
                     f"{_texts(before.interface.addresses)} to "
                     f"{_texts(management.interface.addresses)}" + ONLY_UNDER_CONFIRM)
    elif local is not None and not local.is_unspecified and not local.is_loopback and \
            local not in {a.ip for a in management.interface.addresses}:
        problems.add(f"{locate(ifname)}.interface.addresses",
                     f"({ifname}) the appliance answers on {local}, which the management "
                     f"interface would no longer carry" + ONLY_UNDER_CONFIRM)


def _routes(config, locate, router_path):
    """(path, destination, ifname or None) for what steers the kernel's route lookup besides
    floating IPs (``_floating_ips_in``): connected prefixes of every interface address,
    default routes, subnet host routes and static routes."""
    for network in config.networks:
        ifname = network.interface.ifname
        for k, address in enumerate(network.interface.addresses):
            yield (f"{locate(ifname)}.interface.addresses[{k}]", address.network, ifname)
        for subnet in network.subnets:
            for k, route in enumerate(subnet.host_routes):
                yield (f"{locate(ifname, subnet)}.host_routes[{k}]", route.destination,
                       ifname)
    router = config.router
    if router is not None:
        if router.default_v4_gateway is not None:
            yield from _via(config, join(router_path, "default_v4_gateway"),
                            Route(DEFAULTS[0], router.default_v4_gateway))
        for route in router.static_routes:
            yield from _via(config, route.path, route)


def _via(config, path, route):
    network = config.network_for(route.nexthop)
    yield (path, route.destination, network.interface.ifname if network else None)


def _best(routes, target, ifname, mine):
    lengths = [destination.prefixlen for _, destination, device in routes
               if (device == ifname) == mine and _covers(destination, target)]
    return max(lengths) if lengths else None


def _covers(destination, target):
    return destination.version == target.version and (
        target.subnet_of(destination) or destination.subnet_of(target))


def _texts(addresses):
    return ", ".join(str(a) for a in sorted(addresses, key=lambda a: (a.version, a)))
