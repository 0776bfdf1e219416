"""Parse and validate a ``PUT /v1/system/config`` body into a :class:`SystemConfig`.

Two steps, and nothing is applied unless both pass. The schema (``schema.py``, decoded by
msgspec) checks the body's shape and stops at its first problem. Then the model is built
here with the checks a schema cannot express — addresses parse, CIDRs have no host bits,
families match, nothing is listed twice, duplicate network entries merge — and every such
problem is reported at once.
"""
import hashlib
import re
from operator import attrgetter, itemgetter

import msgspec

from . import schema, semantics
from ..store import SORTED_JSON, PayloadDigest, payload_hash
from .change import common_ends
from .checks import (Problems, TwoParses, address_key, forget_unused, new_address,
                     next_parse, parse_ip, parse_network)
from .errors import FieldError, PayloadError, UnsupportedService, join, schema_error
from .loadbalancer import build_loadbalancer
from .types import (KEPT_TEXTS, Allocation, FloatingIP, HAConfig, Interface, Label, Network,
                    Orchestrator, Route, RouterConfig, Subnet, SystemConfig)
from .vpn import build_vpn

KNOWN_SERVICES = tuple(field.name for field in msgspec.structs.fields(schema.Services))
DEFAULT_ASN = 64512
IPV6_MIN_MTU = 1280  # RFC 8200; below it Linux disables IPv6 on the link
_NETWORK_PATH = re.compile(r"^networks\[(\d+)\]\.")


def valid_hostname(name):
    """RFC 1123 host name: dot-separated labels of letters, digits and inner dashes."""
    return schema.conforms(name, schema.HostName)


def parse_payload(body, enabled_services=("router",)):
    """Return the model for ``body`` (decoded JSON) or raise PayloadError /
    UnsupportedService."""
    return _parse(body, enabled_services)[0]


def parse_hashed(body, enabled_services=("router",)):
    """``(model, payload_hash(body))``: ``parse_payload`` and the payload's digest, which
    takes the network entries as the parse encoded them for its memo keys."""
    config, digest = _parse(body, enabled_services)
    return config, (digest.hexdigest() if digest is not None else payload_hash(body))


def _parse(body, enabled_services):
    """``(model, store.PayloadDigest of body or None)``."""
    if not isinstance(body, dict):
        raise PayloadError([FieldError("", f"the body must be a JSON object, not "
                                           f"{type(body).__name__}")])
    services = body.get("services")
    if isinstance(services, dict):
        unknown = [name for name in services if name not in enabled_services]
        if unknown:
            enabled = ", ".join(enabled_services)
            raise UnsupportedService([
                FieldError(join("services", name), f"this appliance does not offer the service "
                                                   f"{name!r} (enabled: {enabled})")
                for name in unknown])
    next_parse()
    keys, known, digest = _network_keys(body)
    known = _with_known_floating_ips(known)
    try:
        payload = msgspec.convert(known, schema.Payload)
    except msgspec.ValidationError as exc:
        raise PayloadError([schema_error(exc, body, schema.Payload, _network_context)]) from None
    config = None
    try:
        config = _build(payload, enabled_services, keys)
    finally:  # also when refused: the next push skips the schema for these
        texts = list(_texts_of(payload, config))
        _RECENT_FLOATING_IPS.put_all(zip(texts, payload.floating_ips))
        _LAST_PUSHED_FLOATING_IPS[0] = (texts, payload.floating_ips)
    problems = Problems()
    locate = Locator(body)
    router_path = "" if payload.asn else "services.router"
    semantics.check_addresses(problems, config, locate, router_path)
    semantics.check_management(problems, config, locate, router_path)
    problems.raise_if_any()
    forget_unused()
    return config, digest


def prepare_schema():
    """Have msgspec build the schema's validators now (it compiles them, patterns and all,
    on first use: about 5 ms of a cold agent's first push at 1 000 floating IPs)."""
    try:
        msgspec.convert({}, schema.Payload)
    except msgspec.ValidationError:
        pass  # an empty body is not a payload: only the validators were wanted


def check_management_path(config, body, sources=(), previous=None, local=None,
                          confirming=False):
    """Raise PayloadError when applying ``config`` (parsed from ``body``) would cut the
    management path of a request from ``sources`` that arrived on ``local``; re-addressing
    or moving the management network (compared with ``previous``) passes only when
    ``confirming`` (commit-confirm reverts it unless the orchestrator confirms)."""
    problems = Problems()
    locate = Locator(body)
    router_path = "" if body.get("asn") else "services.router"
    semantics.check_management(problems, config, locate, router_path, sources)
    if not confirming:
        semantics.management_change(problems, previous, config, locate, local)
    problems.raise_if_any()


class Locator:
    """The payload path of a network (``networks[i]``, its first entry) or of one of its
    subnets by interface name: the model merges duplicate network entries, error messages
    name the field as it was pushed."""

    def __init__(self, body):
        self.body = body
        self.networks = self.subnets = None  # indexed on first use: most pushes need none

    def _index(self):
        self.networks, self.subnets = {}, {}
        for i, spec in enumerate(self.body.get("networks") or ()):
            ifname = spec["interface"]["ifname"]
            self.networks.setdefault(ifname, f"networks[{i}]")
            for j, subnet in enumerate(spec.get("subnets") or ()):
                key = (ifname, subnet.get("id"), parse_network(subnet["cidr"]))
                self.subnets.setdefault(key, f"networks[{i}].subnets[{j}]")

    def __call__(self, ifname, subnet=None):
        if self.networks is None:
            self._index()
        if subnet is None:
            return self.networks.get(ifname, "networks")
        return self.subnets.get((ifname, subnet.id, subnet.cidr), self.networks.get(ifname))


def _network_keys(body):
    """``(keys, body, digest)``: each network entry's key in the parses' memory
    (``network_key``), ``body`` with the entries met in the previous parse replaced by
    their validated schema objects, which the schema takes as they are (a push usually
    changes one thing: re-validating fifty unchanged networks was most of a parse), and
    the payload's ``PayloadDigest``, given each entry's JSON as its key is made."""
    networks = body.get("networks")
    if not isinstance(networks, list):
        return None, body, None
    digest = PayloadDigest(body)
    keys = []
    for i, spec in enumerate(networks):
        encoded = SORTED_JSON.encode(spec)
        digest.network(encoded)
        keys.append(network_key(i, encoded))
    known = [(_RECENT_NETWORKS.get(key) or (spec, None))[0]
             for key, spec in zip(keys, networks)]
    return keys, {**body, "networks": known}, digest


def network_key(index, encoded):
    """A network entry's key in the parses' memory: its path and the digest of its JSON
    with sorted keys, ``encoded`` (a digest, not the JSON: 1 MB less at 5 000 allocations
    per parse kept)."""
    return f"networks[{index}]", hashlib.sha256(encoded).digest()


# (floating, fixed) texts -> schema object, for two parses
_RECENT_FLOATING_IPS = TwoParses()


def _texts_of(payload, config):
    """The keys of the schema floating IPs of ``payload`` in the memos: the texts tuples
    their models keep when the router was built from them (``config``), else new ones."""
    specs = payload.floating_ips
    if (config is not None and payload.asn and config.router is not None
            and len(config.router.floating_ips) == len(specs)):
        return map(KEPT_TEXTS, config.router.floating_ips)
    return map(TEXTS, specs)


def _with_known_floating_ips(body):
    """``body`` with the floating-IP entries of the last two parses replaced by their
    validated schema objects, as ``_network_keys`` does for networks: a push repeats
    thousands of them, each two addresses the schema would match against its patterns."""
    fips = body.get("floating_ips")
    if not isinstance(fips, list) or not _RECENT_FLOATING_IPS.remembers_any():
        return body
    # The head and tail repeated from the last parse are its schema objects, found by
    # comparing the texts lists in C: looking each of a thousand up was 0.25 ms a push.
    last_texts, last_specs = _LAST_PUSHED_FLOATING_IPS[0]
    start = tail = 0
    texts = _pushed_texts(fips) if last_texts else None
    if texts is not None:
        start, tail = common_ends(last_texts, texts)
    known = list(last_specs[:start])
    for item in fips[start:len(fips) - tail]:
        if type(item) is dict and len(item) == 2:
            key = (item.get("floating_ip"), item.get("fixed_ip"))
            if type(key[0]) is str and type(key[1]) is str:
                item = _RECENT_FLOATING_IPS.get(key) or item
        known.append(item)
    known += last_specs[len(last_specs) - tail:]
    return {**body, "floating_ips": known}


# The (floating, fixed) texts of the last parse's top-level floating IPs (the memo's keys,
# None for an IPv6 one pushed in a non-canonical form) and their schema objects
_LAST_PUSHED_FLOATING_IPS = [((), ())]
_DICT_TEXTS = itemgetter("floating_ip", "fixed_ip")


def _pushed_texts(fips):
    """The (floating, fixed) texts of the pushed floating-IP entries ``fips`` when each is
    an object of those two keys only (the only form the memos stand for), else None."""
    try:
        texts = list(map(_DICT_TEXTS, fips))
    except (TypeError, KeyError):  # not all objects, or not all with both keys
        return None
    if set(map(type, fips)) != {dict} or set(map(len, fips)) != {2}:
        return None
    return texts


def _build(payload, enabled_services, keys):
    """The model of a decoded schema.Payload, after the checks the schema cannot make
    (``keys``: ``_network_keys``, one per network entry)."""
    problems = Problems()
    allocations = sum(map(_allocation_count, payload.networks, keys or ()))
    if allocations > schema.MAX_ALLOCATIONS_TOTAL:
        raise PayloadError([FieldError("networks", f"at most {schema.MAX_ALLOCATIONS_TOTAL} "
                                                   f"allocations in all networks together, "
                                                   f"not {allocations}")])
    networks = _merge_duplicates(problems, [
        (f"networks[{i}]", _known_network(problems, spec, keys[i]))
        for i, spec in enumerate(payload.networks)])
    services = payload.services
    router = None
    if payload.asn:
        router = _router(problems, payload, "", networks)
    elif services is not None and services.router is not None:
        router = _router(problems, services.router, "services.router", networks)
    elif payload.floating_ips and "router" in enabled_services:
        problems.add("asn", "floating_ips need a router configuration (asn is missing)")
    loadbalancer = None
    if services is not None and services.loadbalancer is not None:
        loadbalancer = build_loadbalancer(problems, services.loadbalancer,
                                          "services.loadbalancer")
    ha_config = _ha_config(problems, payload.ha_config)
    problems.raise_if_any()
    return SystemConfig(tenant_id=payload.tenant_id, hostname=payload.hostname,
                        networks=networks, ha=payload.ha_resource, ha_config=ha_config,
                        router=router, loadbalancer=loadbalancer)


def _network_context(path, body):
    """``(ge2) `` for a problem inside networks[i], so the message names the interface."""
    match = _NETWORK_PATH.match(path)
    if match is None or path.endswith(".interface.ifname"):
        return ""
    try:
        ifname = body["networks"][int(match.group(1))]["interface"]["ifname"]
    except (LookupError, TypeError):
        return ""
    return f"({ifname}) " if schema.conforms(ifname, schema.IfName) else ""


# -- networks -------------------------------------------------------------------------------

# network_key -> (schema object, model), for two parses
_RECENT_NETWORKS = TwoParses()


def _known_network(problems, spec, key):
    """``_network``, handing out the same model object for a network entry that is the same
    as in the previous push (the usual case: a push changes one thing). Renderers memoize
    their per-network work on that object (render/memo.py), so an unchanged network costs
    a dictionary lookup, not a re-render. Only valid networks are kept, and only those of
    the last two parses (memory stays bounded by the payload). ``key``: ``network_key``."""
    network = (_RECENT_NETWORKS.get(key) or (None, None))[1]
    if network is None:
        before = len(problems.errors)
        network = _network(problems, spec, key[0])
        if len(problems.errors) != before:
            return network
        # Kept without its allocations, which the model holds (their schema objects and
        # address texts were 1.8 MB at 5 000); the next parse takes this object for the
        # entry as it is, and counts the model's (_allocation_count).
        spec = msgspec.structs.replace(spec, allocations=[])
    _RECENT_NETWORKS.put(key, (spec, network))
    return network


def _allocation_count(spec, key):
    """The allocations of a network entry: its model's when it was met before (its schema
    object is kept without them: ``_known_network``)."""
    known = _RECENT_NETWORKS.get(key)
    return len((known[1] if known is not None else spec).allocations)


def _network(problems, spec, path):
    ifname = spec.interface.ifname
    addresses = []
    for i, text in enumerate(spec.interface.addresses):
        address = problems.interface(text, f"{path}.interface.addresses[{i}]", f"({ifname}) ")
        if address is not None and address not in addresses:
            addresses.append(address)
    mtu, mtu_path = ((spec.interface.mtu, f"{path}.interface.mtu") if spec.interface.mtu
                     else (spec.mtu, f"{path}.mtu"))
    if mtu is not None and mtu < IPV6_MIN_MTU and any(a.version == 6 for a in addresses):
        problems.add(mtu_path, f"({ifname}) {mtu} is below {IPV6_MIN_MTU}, the minimum MTU "
                               "of IPv6: the kernel would drop the interface's IPv6 addresses")
    interface = Interface(ifname=ifname, addresses=tuple(addresses), mtu=spec.interface.mtu,
                          description=spec.interface.description)
    return Network(
        network_id=spec.network_id, name=spec.name, network_type=spec.network_type,
        interface=interface,
        subnets=tuple(_subnet(problems, s, f"{path}.subnets[{i}]")
                      for i, s in enumerate(spec.subnets)),
        allocations=tuple([_allocation(problems, a, path, i)
                           for i, a in enumerate(spec.allocations)]),
        v4_conf_service=spec.v4_conf_service, v6_conf_service=spec.v6_conf_service,
        mtu=spec.mtu)


def _subnet(problems, spec, path):
    cidr = problems.network(spec.cidr, f"{path}.cidr")
    gateway = problems.ip(spec.gateway_ip, f"{path}.gateway_ip") if spec.gateway_ip else None
    if cidr is not None and gateway is not None and gateway.version != cidr.version:
        problems.add(f"{path}.gateway_ip", f"{gateway} is not in the address family of {cidr}")
    dns = [problems.ip(text, f"{path}.dns_nameservers[{i}]")
           for i, text in enumerate(spec.dns_nameservers)]
    routes = [_route(problems, r.destination, r.nexthop, f"{path}.host_routes[{i}]",
                     "destination", "nexthop")
              for i, r in enumerate(spec.host_routes)]
    return Subnet(id=spec.id, cidr=cidr, gateway_ip=gateway, dhcp_enabled=spec.dhcp_enabled,
                  dns_nameservers=_parsed(dns), host_routes=_parsed(routes),
                  ipv6_ra_mode=spec.ipv6_ra_mode, ipv6_address_mode=spec.ipv6_address_mode)


def _route(problems, destination, nexthop, path, destination_key, nexthop_key):
    """``destination_key``/``nexthop_key``: names (object form) or indices ([dest, hop])."""
    dest = problems.network(destination, join(path, destination_key))
    hop = problems.ip(nexthop, join(path, nexthop_key))
    if dest is None or hop is None:
        return None
    if dest.version != hop.version:
        problems.add(join(path, nexthop_key),
                     f"next hop {hop} is not in the address family of {dest}")
        return None
    return Route(dest, hop, path)


def _allocation(problems, spec, network_path, index):
    """The model of allocation ``index`` of the network at ``network_path`` (its path is
    formatted only for a problem: a network holds up to a thousand)."""
    ips = []
    for text, enabled in spec.ip_addresses.items():
        try:
            ips.append((parse_ip(text), enabled))
        except ValueError:
            problems.ip(text, f"{network_path}.allocations[{index}].ip_addresses.{text}")
    if len(ips) > 1:
        ips.sort(key=lambda item: (item[0].version, item[0]))
    mac = spec.mac_address.lower()
    addresses = ips[0][0] if len(ips) == 1 and ips[0][1] is True else tuple(ips)
    return Allocation(spec.mac_address if mac == spec.mac_address else mac, addresses,
                      spec.hostname, spec.device_id)


def _parsed(items):
    return tuple(item for item in items if item is not None)


def _merge_duplicates(problems, parsed):
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
            problems.add(f"{path}.interface.ifname",
                         f"{ifname} is already used by network {first.network_id} "
                         f"({first_path})")
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
        problems.add("networks", "more than one management network: "
                     + ", ".join(n.interface.ifname for n in managements))
    return tuple(merged)


def _union(first, second):
    return tuple(first) + tuple(x for x in second if x not in first)


# -- top level ------------------------------------------------------------------------------

def _ha_config(problems, spec):
    if spec is None:
        return HAConfig()
    peers = [problems.ip(text, f"ha_config.peers[{i}]") for i, text in enumerate(spec.peers)]
    return HAConfig(peers=_parsed(peers), priority=spec.priority)


# (floating, fixed) texts -> FloatingIP, for two parses. The key is the tuple the model
# keeps as its texts (KEPT_TEXTS), so the memos hold one tuple per floating IP, not three.
_FLOATING_IPS = TwoParses()


def _floating_ip(floating_text, fixed_text):
    """The model of one valid floating IP, the same object for the same texts (its derived
    forms are computed once: types.FloatingIP); None when the pair is not valid."""
    texts = (floating_text, fixed_text)
    known = _FLOATING_IPS.get(texts)
    if known is None:
        known = _new_floating_ip(texts)
        if known is not None:
            _FLOATING_IPS.put(texts, known)
    return known


def _new_floating_ip(texts):
    try:
        # The floating address outside parse_ip's cache: the memo keeps it (a cache entry
        # more per floating IP held 0.5 MB at 5 000); the fixed one is an allocation's,
        # parsed and cached with the networks already.
        floating, fixed = new_address(texts[0]), parse_ip(texts[1])
    except ValueError:
        return None
    if floating.version != fixed.version:
        return None
    if floating.version == 4 or texts == (str(floating), str(fixed)):
        return FloatingIP.with_texts(floating, fixed, texts)  # canonical: the pushed strings
    return FloatingIP(floating, fixed)


# The schema floating IPs of the last router whose floating IPs all passed, and their models
_LAST_FLOATING_IPS = [((), [])]
TEXTS = attrgetter("floating_ip", "fixed_ip")  # a schema floating IP's key in _floating_ip
_KEPT_KEY = attrgetter("_key")  # a FloatingIP's key once computed, else None


def _repeated_floating_ips(specs):
    """The models of the schema floating IPs ``specs`` when they are the last valid ones
    (the same schema objects: ``_with_known_floating_ips``) with a few added or removed and
    those few are valid and not listed twice; else None (``_floating_ips`` then finds every
    problem). A push repeats nearly all: the repeated head and tail are found by comparing
    slices, and looking each of a thousand up again was most of building the router."""
    last_specs, last_models = _LAST_FLOATING_IPS[0]
    start, tail = common_ends(last_specs, specs)
    if not start + tail:
        return None
    added = [_floating_ip(s.floating_ip, s.fixed_ip) for s in specs[start:len(specs) - tail]]
    if any(fip is None for fip in added):
        return None
    kept = last_models[:start] + last_models[len(last_models) - tail:]
    keys = {fip.key for fip in added}
    # The kept models' keys read in C from their slot (the property was 0.1 ms a push);
    # one not computed yet (None) fails the check too, and _floating_ips decides.
    if len(keys) != len(added) or not (keys | {None}).isdisjoint(map(_KEPT_KEY, kept)):
        return None
    # Used by this parse: the parser's memory keeps handing out these objects. (A model
    # whose texts were not the pushed ones, a non-canonical IPv6 text, has none kept.)
    _FLOATING_IPS.put_all(zip(map(KEPT_TEXTS, kept), kept))
    _FLOATING_IPS.current.pop(None, None)
    return last_models[:start] + added + last_models[len(last_models) - tail:]


def _floating_ips(problems, specs, path):
    """The models of the schema floating IPs ``specs``, each problem reported."""
    fips, seen = [], set()
    for i, item in enumerate(specs):
        known = _floating_ip(item.floating_ip, item.fixed_ip)
        if known is not None:
            count = len(seen)
            seen.add(known.key)
            if len(seen) != count:  # not listed before
                fips.append(known)
                continue
        fpath = join(path, f"floating_ips[{i}]")  # a problem: found and reported below
        floating = problems.ip(item.floating_ip, f"{fpath}.floating_ip")
        fixed = problems.ip(item.fixed_ip, f"{fpath}.fixed_ip")
        if floating is None or fixed is None:
            continue
        if floating.version != fixed.version:
            problems.add(f"{fpath}.fixed_ip",
                         f"{fixed} and floating address {floating} are not of the same family")
        elif address_key(floating) in seen:
            problems.add(f"{fpath}.floating_ip", f"{floating} is listed twice")
        else:
            seen.add(address_key(floating))
            fips.append(FloatingIP(floating, fixed))
    return fips


def _router(problems, spec, path, networks):
    asn = spec.asn or DEFAULT_ASN
    gateway = (problems.ip(spec.default_v4_gateway, join(path, "default_v4_gateway"))
               if spec.default_v4_gateway else None)

    static_routes = []
    for i, item in enumerate(spec.static_routes):
        rpath = join(path, f"static_routes[{i}]")
        if isinstance(item, tuple):
            static_routes.append(_route(problems, item[0], item[1], rpath, 0, 1))
        elif (item.next_hop or item.nexthop) is None:
            problems.add(join(rpath, "next_hop"), "is required but missing")
        else:
            static_routes.append(_route(problems, item.destination,
                                        item.next_hop or item.nexthop, rpath, "destination",
                                        "next_hop" if item.next_hop else "nexthop"))

    fips = _repeated_floating_ips(spec.floating_ips)
    if fips is None:
        fips = _floating_ips(problems, spec.floating_ips, path)
    if len(fips) == len(spec.floating_ips):  # all valid, none listed twice
        _LAST_FLOATING_IPS[0] = (spec.floating_ips, fips)
    if fips and not any(n.is_external for n in networks):
        problems.add(join(path, "floating_ips"), "floating IPs need an external network")

    labels = tuple(
        Label(name, _parsed(problems.network(c, join(path, f"labels.{name}[{i}]"))
                            for i, c in enumerate(cidrs)))
        for name, cidrs in spec.labels.items())

    orch = spec.orchestrator or schema.Orchestrator()
    orchestrator = Orchestrator(
        address=_upstream(problems, orch.address, join(path, "orchestrator.address"),
                          networks),
        metadata_port=orch.metadata_port, host=orch.host)

    return RouterConfig(asn=asn, neighbor_asn=spec.neighbor_asn or asn,
                        default_v4_gateway=gateway, static_routes=_parsed(static_routes),
                        floating_ips=tuple(fips), labels=labels, orchestrator=orchestrator,
                        vpn=build_vpn(problems, spec.vpn, join(path, "vpn"), networks),
                        address_book=tuple(sorted(spec.address_book)),
                        anchors=tuple(anchor.name for anchor in spec.anchors))


def _upstream(problems, text, path, networks):
    """The metadata proxy's upstream: never the appliance itself (a tenant VM would reach
    the agent's own API through 169.254.169.254), nor loopback or an unspecified address."""
    if not text:
        return None
    address = problems.ip(text, path)
    if address is None:
        return None
    own = next((n for n in networks
                if any(a.ip == address for a in n.interface.addresses)), None)
    if own is not None:
        problems.add(path, f"{address} is the appliance's own address on "
                           f"{own.interface.ifname}: the metadata proxy would forward "
                           f"instances' requests to the appliance itself")
        return None
    if address.is_loopback or address.is_unspecified or address.is_link_local:
        problems.add(path, f"{address} is not an orchestrator's address (loopback, "
                           f"unspecified or link-local)")
        return None
    return address
