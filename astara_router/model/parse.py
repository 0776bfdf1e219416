"""Parse and validate a ``PUT /v1/system/config`` body into a :class:`SystemConfig`.

One pass collects every problem (with its JSON path); nothing is applied unless the whole
body is valid.
"""
import re

from .errors import FieldError, PayloadError, UnsupportedService
from .loadbalancer import parse_loadbalancer
from .reader import Reader, join
from .types import (NETWORK_TYPES, Allocation, FloatingIP, HAConfig, Interface, Label,
                    Network, Orchestrator, Route, RouterConfig, Subnet, SystemConfig)
from .vpn import parse_vpn

KNOWN_SERVICES = ("router", "loadbalancer")
GENERIC_IFNAME = re.compile(r"^ge(0|[1-9][0-9]{0,3})$")
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
DESCRIPTION = re.compile(r"^\w*$")
DEFAULT_ASN = 64512


def valid_hostname(name):
    """RFC 1123 host name: dot-separated labels of letters, digits and inner dashes."""
    return (isinstance(name, str) and 0 < len(name) <= 253
            and all(HOST_LABEL.fullmatch(label) for label in name.split(".")))


def parse_payload(body, enabled_services=("router",)):
    """Return the model for ``body`` or raise PayloadError / UnsupportedService."""
    if not isinstance(body, dict):
        raise PayloadError([FieldError("", f"the body must be a JSON object, not "
                                           f"{type(body).__name__}")])
    r = Reader()
    services = r.object(body, "services", "", required=False)
    unknown = [name for name in services if name not in enabled_services]
    if unknown:
        raise UnsupportedService([FieldError(join("services", name),
                                             f"this appliance does not offer the service "
                                             f"{name!r} (enabled: {', '.join(enabled_services)})")
                                  for name in unknown])

    tenant_id = r.str(body, "tenant_id", "", allow_empty=False)
    hostname = r.str(body, "hostname", "", allow_empty=False)
    if hostname and not valid_hostname(hostname):
        r.error("hostname", f"{hostname!r} is not a valid host name (RFC 1123: letters, digits "
                            "and inner '-', labels of at most 63 characters)")
    networks = _networks(r, body)
    ha = r.bool(body, "ha_resource", "", default=False)
    ha_config = _ha_config(r, body)

    router = None
    if body.get("asn"):
        router = _router(r, body, "", networks)
    elif services.get("router"):
        router = _router(r, services["router"], "services.router", networks)
    elif body.get("floating_ips") and "router" in enabled_services:
        r.error("asn", "floating_ips need a router configuration (asn is missing)")

    loadbalancer = None
    if services.get("loadbalancer"):
        loadbalancer = parse_loadbalancer(r, services["loadbalancer"], "services.loadbalancer")

    r.raise_if_errors()
    return SystemConfig(tenant_id=tenant_id, hostname=hostname, networks=networks, ha=ha,
                        ha_config=ha_config, router=router, loadbalancer=loadbalancer)


# -- networks -------------------------------------------------------------------------------

def _networks(r, body):
    parsed = []
    for path, item in r.objects(body, "networks", ""):
        network = _network(r, item, path)
        if network is not None:
            parsed.append((path, network))
    return _merge_duplicates(r, parsed)


def _network(r, obj, path):
    network_id = r.str(obj, "network_id", path, allow_empty=False)
    iface_obj = r.object(obj, "interface", path)
    interface = _interface(r, iface_obj, join(path, "interface"))
    network_type = r.choice(obj, "network_type", path, NETWORK_TYPES, "isolated")
    subnets = tuple(_subnet(r, s, spath) for spath, s in r.objects(obj, "subnets", path))
    allocations = tuple(_allocation(r, a, apath)
                        for apath, a in r.objects(obj, "allocations", path))
    network = Network(
        network_id=network_id, name=r.str(obj, "name", path, required=False),
        network_type=network_type, interface=interface, subnets=subnets,
        allocations=allocations,
        v4_conf_service=r.choice(obj, "v4_conf_service", path, ("dhcp", "static"), "static"),
        v6_conf_service=r.choice(obj, "v6_conf_service", path, ("dhcp", "ra", "static"),
                                 "static"),
        mtu=r.int(obj, "mtu", path, lo=68, hi=65535))
    return network if interface is not None else None


def _interface(r, obj, path):
    ifname = r.str(obj, "ifname", path, allow_empty=False)
    if ifname and not GENERIC_IFNAME.fullmatch(ifname):
        r.error(join(path, "ifname"), f"{ifname!r} is not a generic interface name (geN)")
        ifname = None
    context = f"({ifname}) " if ifname else ""
    addresses = []
    for i, text in enumerate(r.list(obj, "addresses", path)):
        address = r.interface_value(text, join(join(path, "addresses"), i), context)
        if address is not None and address not in addresses:
            addresses.append(address)
    description = r.str(obj, "description", path, required=False) or ""
    if not DESCRIPTION.fullmatch(description):
        r.error(join(path, "description"), "must be characters from [a-zA-Z0-9_]")
    mtu = r.int(obj, "mtu", path, lo=68, hi=65535)
    if ifname is None:
        return None
    return Interface(ifname=ifname, addresses=tuple(addresses), mtu=mtu,
                     description=description)


def _subnet(r, obj, path):
    cidr = r.network_value(obj.get("cidr"), join(path, "cidr")) if "cidr" in obj else \
        r.error(join(path, "cidr"), "is required but missing")
    gateway = r.ip(obj, "gateway_ip", path, required=False, allow_empty=True)
    if cidr is not None and gateway is not None and gateway.version != cidr.version:
        r.error(join(path, "gateway_ip"), f"{gateway} is not in the address family of {cidr}")
    dns = []
    for i, text in enumerate(r.list(obj, "dns_nameservers", path)):
        address = r.ip_value(text, join(join(path, "dns_nameservers"), i))
        if address is not None:
            dns.append(address)
    routes = []
    for rpath, route in r.objects(obj, "host_routes", path):
        parsed = _route(r, route.get("destination"), route.get("nexthop"),
                        join(rpath, "destination"), join(rpath, "nexthop"), rpath)
        if parsed is not None:
            routes.append(parsed)
    return Subnet(id=r.str(obj, "id", path, allow_empty=False), cidr=cidr, gateway_ip=gateway,
                  dhcp_enabled=r.bool(obj, "dhcp_enabled", path, required=True),
                  dns_nameservers=tuple(dns), host_routes=tuple(routes),
                  ipv6_ra_mode=r.str(obj, "ipv6_ra_mode", path, required=False, default=None),
                  ipv6_address_mode=r.str(obj, "ipv6_address_mode", path, required=False,
                                          default=None))


def _route(r, destination, nexthop, dpath, npath, path):
    dest = r.network_value(destination, dpath)
    hop = r.ip_value(nexthop, npath)
    if dest is None or hop is None:
        return None
    if dest.version != hop.version:
        return r.error(npath, f"next hop {hop} is not in the address family of {dest}")
    return Route(dest, hop, path)


def _allocation(r, obj, path):
    mac = r.mac_value(obj.get("mac_address"), join(path, "mac_address"))
    ips = []
    ip_obj = r.object(obj, "ip_addresses", path)
    for text, enabled in ip_obj.items():
        ipath = join(join(path, "ip_addresses"), text)
        address = r.ip_value(text, ipath)
        if not isinstance(enabled, bool):
            r.error(ipath, f"must be true or false, not {enabled!r}")
        elif address is not None:
            ips.append((address, enabled))
    hostname = r.str(obj, "hostname", path)
    if hostname and not valid_hostname(hostname):
        r.error(join(path, "hostname"), f"{hostname!r} is not a valid host name")
    return Allocation(mac_address=mac, ip_addresses=tuple(sorted(ips, key=_ip_key)),
                      hostname=hostname, device_id=r.str(obj, "device_id", path))


def _ip_key(item):
    return (item[0].version, item[0])


def _merge_duplicates(r, parsed):
    """The original orchestrator sends two entries for one network attached by two subnets
    (same network_id and ifname, see router-dual-stack-by-subnet). Merge those; any other
    reuse of an interface name is an error."""
    merged, where = [], {}
    for path, network in parsed:
        ifname = network.interface.ifname
        if ifname not in where:
            where[ifname] = (len(merged), path)
            merged.append(network)
            continue
        index, first_path = where[ifname]
        first = merged[index]
        if first.network_id != network.network_id:
            r.error(join(path, "interface.ifname"),
                    f"{ifname} is already used by network {first.network_id} ({first_path})")
            continue
        iface = first.interface
        merged[index] = Network(
            network_id=first.network_id, name=first.name, network_type=first.network_type,
            interface=Interface(iface.ifname,
                                _union(iface.addresses, network.interface.addresses),
                                iface.mtu or network.interface.mtu, iface.description),
            subnets=_union(first.subnets, network.subnets),
            allocations=_union(first.allocations, network.allocations),
            v4_conf_service=first.v4_conf_service, v6_conf_service=first.v6_conf_service,
            mtu=first.mtu or network.mtu)
    managements = [n for n in merged if n.is_management]
    if len(managements) > 1:
        r.error("networks", "more than one management network: "
                + ", ".join(n.interface.ifname for n in managements))
    return tuple(merged)


def _union(first, second):
    return tuple(first) + tuple(x for x in second if x not in first)


# -- top level ------------------------------------------------------------------------------

def _ha_config(r, body):
    obj = r.object(body, "ha_config", "", required=False)
    peers = tuple(p for p in (r.ip_value(v, join("ha_config.peers", i))
                              for i, v in enumerate(r.list(obj, "peers", "ha_config"))) if p)
    return HAConfig(peers=peers,
                    priority=r.int(obj, "priority", "ha_config", default=50, lo=1, hi=254))


def _router(r, obj, path, networks):
    asn = r.int(obj, "asn", path, default=DEFAULT_ASN, lo=1, hi=4294967295)
    neighbor_asn = r.int(obj, "neighbor_asn", path, default=asn, lo=1, hi=4294967295)
    gateway = r.ip(obj, "default_v4_gateway", path, required=False, version=4, allow_empty=True)

    static_routes = []
    for i, item in enumerate(r.list(obj, "static_routes", path)):
        rpath = join(join(path, "static_routes"), i)
        if isinstance(item, dict):
            dest, hop = item.get("destination"), item.get("next_hop", item.get("nexthop"))
        elif isinstance(item, list) and len(item) == 2:
            dest, hop = item
        else:
            r.error(rpath, f"must be [destination, next_hop], not {item!r}")
            continue
        route = _route(r, dest, hop, rpath + "[0]" if isinstance(item, list) else
                       join(rpath, "destination"), rpath + "[1]" if isinstance(item, list)
                       else join(rpath, "next_hop"), rpath)
        if route is not None:
            static_routes.append(route)

    fips, seen = [], set()
    for fpath, item in r.objects(obj, "floating_ips", path):
        floating = r.ip(item, "floating_ip", fpath)
        fixed = r.ip(item, "fixed_ip", fpath)
        if floating is None or fixed is None:
            continue
        if floating.version != fixed.version:
            r.error(join(fpath, "fixed_ip"),
                    f"{fixed} and floating address {floating} are not of the same family")
        elif floating in seen:
            r.error(join(fpath, "floating_ip"), f"{floating} is listed twice")
        else:
            seen.add(floating)
            fips.append(FloatingIP(floating, fixed))
    if fips and not any(n.is_external for n in networks):
        r.error(join(path, "floating_ips"), "floating IPs need an external network")

    labels = []
    for name, cidrs in r.object(obj, "labels", path, required=False).items():
        lpath = join(join(path, "labels"), name)
        if not isinstance(cidrs, list):
            r.error(lpath, "must be a list of CIDRs")
            continue
        nets = tuple(r.network_value(c, join(lpath, i)) for i, c in enumerate(cidrs))
        labels.append(Label(name, nets))

    orch = r.object(obj, "orchestrator", path, required=False)
    opath = join(path, "orchestrator")
    orchestrator = Orchestrator(
        address=r.ip(orch, "address", opath, required=False, allow_empty=True),
        metadata_port=r.int(orch, "metadata_port", opath, default=9697, lo=1, hi=65535),
        host=r.str(orch, "host", opath, required=False))

    address_book = tuple(sorted(r.object(obj, "address_book", path, required=False).keys()))
    anchors = tuple(r.str(a, "name", apath) for apath, a in r.objects(obj, "anchors", path))
    return RouterConfig(asn=asn, neighbor_asn=neighbor_asn, default_v4_gateway=gateway,
                        static_routes=tuple(static_routes), floating_ips=tuple(fips),
                        labels=tuple(labels), orchestrator=orchestrator,
                        vpn=parse_vpn(r, obj, path),
                        address_book=address_book, anchors=anchors)
