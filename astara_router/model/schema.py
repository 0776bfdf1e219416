"""The payload schema: one definition that validates ``PUT /v1/system/config`` bodies (msgspec
decodes them into these structs), is published as JSON Schema (:func:`payload_json_schema`)
and can drive fuzzing.

It says everything about a body's *shape* that JSON Schema can say: types, required fields,
enumerations, integer ranges and the grammar of every string that reaches a config file or a
command line (host names, interface names, MAC addresses, IP addresses, CIDRs). What a schema
cannot say — an IPv6 address parses, a CIDR has no host bits, a next hop is in the family of
its destination, duplicate network entries merge — is checked by the model's code afterwards
(``parse.py``), also with JSON paths.

Unknown keys are ignored (the original orchestrator sends Neutron's whole port dicts), except
under ``services``, whose keys name the services an appliance runs. Optional fields accept
``null`` for "not given", as the original orchestrator sends it.
"""
import functools
from typing import Annotated, Any, Literal, Optional, Union

import msgspec
from msgspec import Meta

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def whole(core):
    """Anchor a pattern to the whole string in both Python's ``re`` and ECMA-262 (the JSON
    Schema dialect): Python's ``$`` also matches before a final newline, ``(?!\\n)`` not."""
    return f"^(?:{core})$(?!\\n)"


# -- grammar ----------------------------------------------------------------------------------
_OCTET = r"25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]"
IPV4 = rf"(?:{_OCTET})(?:\.(?:{_OCTET})){{3}}"
IPV6 = r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*"  # the shape; ipaddress decides (checks.py)
_PREFIX4 = r"3[0-2]|[12]?[0-9]"
_PREFIX6 = r"12[0-8]|1[01][0-9]|[1-9]?[0-9]"
CIDR = rf"{IPV4}/(?:{_PREFIX4})|{IPV6}/(?:{_PREFIX6})"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
GENERIC_IFNAME = r"ge(?:0|[1-9][0-9]{0,3})"
MAC = r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}"
DESCRIPTION = r"[A-Za-z0-9_]*"
# Ids (Neutron's are UUIDs; the original orchestrator's tests use other tokens): a safe
# charset with no space, quote, slash, brace, semicolon or control character, so an id can
# sit in a file, a command line or a header as it is.
IDENTIFIER = r"[A-Za-z0-9_.:-]+"
# Free text (names, descriptions): anything printable. No C0/C1 control character (no
# newline: nothing can start a new line of a config file or fold a header) and no lone
# surrogate (it cannot be encoded as UTF-8).
TEXT = r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*"
MAX_ID = MAX_NAME = 255  # Neutron's limit for ids and names
# List bounds: the worst accepted payload still applies well within the orchestrator's
# 90 s timeout (the 5 000-FIP benchmark router is half the floating IP limit).
MAX_FLOATING_IPS = 10_000
MAX_NETWORKS = 100
MAX_ALLOCATIONS = 1_000  # per network
# In all networks together (checked in parse.py): dnsmasq's check of its dhcp-host lines
# grows with their square. Measured first PUT with 100 networks and 10 000 floating IPs:
# 19 600 allocations 12 s, 39 200 allocations 45 s, 98 000: dnsmasq --test times out.
MAX_ALLOCATIONS_TOTAL = 20_000
MAX_SUBNETS = 32  # per network
MAX_ROUTES = 1_000  # static routes of the router; host routes per subnet
MAX_LABELS = 100
MAX_LIST = 1_000  # any other list (CIDRs of a label, DNS servers, members, tunnels...)


def _text(pattern, description, **constraints):
    return Annotated[str, Meta(pattern=whole(pattern), description=description, **constraints)]


def _int(lo, hi):
    return Annotated[int, Meta(ge=lo, le=hi, description=f"an integer from {lo} to {hi}")]


HOST_NAME_RULE = ("a host name (RFC 1123: letters, digits and inner '-', labels of at most 63 "
                  "characters)")
# The appliance's own name: the kernel's limit (sethostname refuses more with EINVAL, and
# the image's root helper refuses a longer file), so a longer name is a 422, not a 200 that
# leaves the old name. Allocations' DNS names keep DNS's 253.
HOST_NAME_MAX = 64
HostName = _text(HOSTNAME, HOST_NAME_RULE, max_length=HOST_NAME_MAX)
HostNameOrEmpty = _text(f"(?:{HOSTNAME})?", HOST_NAME_RULE + " or empty", max_length=253)
IfName = _text(GENERIC_IFNAME, "a generic interface name (geN)")
MacAddress = _text(MAC, "a MAC address (six hex pairs separated by ':')")
Description = _text(DESCRIPTION, "characters from [a-zA-Z0-9_]")
IPAddress = _text(f"{IPV4}|{IPV6}", "an IPv4 or IPv6 address", max_length=45)
IPAddressOrEmpty = _text(f"(?:{IPV4}|{IPV6})?", "an IPv4 or IPv6 address, or empty",
                         max_length=45)
IPv4OrEmpty = _text(f"(?:{IPV4})?", "an IPv4 address, or empty")
IPv6OrEmpty = _text(f"(?:{IPV6})?", "an IPv6 address, or empty", max_length=45)
AddressWithPrefix = _text(CIDR, "an address with its prefix length (CIDR), e.g. 10.1.0.1/24",
                          max_length=49)
NetworkCIDR = _text(CIDR, "a network CIDR, e.g. 10.1.0.0/24", max_length=49)
ID_RULE = f"an id: 1 to {MAX_ID} characters from [A-Za-z0-9_.:-]"
TEXT_RULE = f"text of at most {MAX_NAME} characters without control characters"
Identifier = _text(IDENTIFIER, ID_RULE, max_length=MAX_ID)
IdentifierOrEmpty = _text(f"(?:{IDENTIFIER})?", ID_RULE + ", or empty", max_length=MAX_ID)
Text = _text(TEXT, TEXT_RULE, max_length=MAX_NAME)
NonEmpty = _text(TEXT, "non-empty " + TEXT_RULE, min_length=1, max_length=MAX_NAME)


def _list(item, limit):
    return Annotated[list[item], Meta(max_length=limit,
                                      description=f"a list of at most {limit} items")]


MTU = _int(68, 65535)
Port = _int(1, 65535)
ASN = _int(1, 4294967295)
NETWORK_TYPES = ("external", "internal", "isolated", "management", "loadbalancer")


class _Required(msgspec.Struct, gc=False):
    """Base of the payload's objects whose fields are all required. Unknown keys are ignored.
    Classes with required fields after optional ones say ``kw_only=True`` (not inherited)."""


class _Object(_Required):
    """Base of objects with optional fields. ``null`` means "not given": the default. (Only
    these pay for ``__post_init__``; floating IPs and allocations come by the thousand.)"""

    def __post_init__(self):
        for name, default in _null_defaults(type(self)):  # null means "not given"
            if getattr(self, name) is None:
                setattr(self, name, default())


@functools.cache
def _null_defaults(cls):
    return tuple((f.name, f.default_factory if f.default_factory is not msgspec.NODEFAULT
                  else lambda d=f.default: d)
                 for f in msgspec.structs.fields(cls)
                 if f.default is not None and not f.required)


# -- networks ---------------------------------------------------------------------------------
class Interface(_Object):
    """The appliance's NIC on a network, by its generic name."""

    ifname: IfName
    addresses: Optional[_list(AddressWithPrefix, MAX_LIST)] = []
    mtu: Optional[MTU] = None
    description: Optional[Description] = ""


class HostRoute(_Required):
    """A route the subnet's DHCP hands out (option 121)."""

    destination: NetworkCIDR
    nexthop: IPAddress


class Subnet(_Object, kw_only=True):
    """A Neutron subnet of the network."""

    id: Identifier
    cidr: NetworkCIDR
    gateway_ip: Optional[IPAddressOrEmpty] = None
    dhcp_enabled: bool
    dns_nameservers: Optional[_list(IPAddress, MAX_LIST)] = []
    host_routes: Optional[_list(HostRoute, MAX_ROUTES)] = []
    ipv6_ra_mode: Optional[Text] = None
    ipv6_address_mode: Optional[Text] = None


class Allocation(_Required):
    """A VM port on the network: its DHCP reservation and DNS name."""

    mac_address: MacAddress
    ip_addresses: Annotated[dict[IPAddress, bool], Meta(
        description="address -> whether DHCP hands it out")]
    hostname: HostNameOrEmpty
    device_id: IdentifierOrEmpty


class Network(_Object, kw_only=True):
    """One network the appliance is attached to."""

    network_id: Identifier
    name: Optional[Text] = ""
    network_type: Optional[Literal[NETWORK_TYPES]] = "isolated"
    interface: Interface
    subnets: Optional[_list(Subnet, MAX_SUBNETS)] = []
    allocations: Optional[_list(Allocation, MAX_ALLOCATIONS)] = []
    v4_conf_service: Optional[Literal["dhcp", "static"]] = "static"
    v6_conf_service: Optional[Literal["dhcp", "ra", "static"]] = "static"
    mtu: Optional[MTU] = None


# -- router -----------------------------------------------------------------------------------
class StaticRoute(_Object):
    """A static route as an object (``nexthop`` is the older spelling of ``next_hop``)."""

    destination: NetworkCIDR
    next_hop: Optional[IPAddress] = None
    nexthop: Optional[IPAddress] = None


class FloatingIP(_Required):
    """1:1 NAT of an external address to a VM's fixed address."""

    floating_ip: IPAddress
    fixed_ip: IPAddress


class Orchestrator(_Object):
    """Where the metadata proxy forwards instances' requests."""

    address: Optional[IPAddressOrEmpty] = None
    metadata_port: Optional[Port] = 9697
    host: Optional[Text] = ""


class Anchor(_Required):
    """A named rule anchor of the original firewall (only the name is kept)."""

    name: Text


class Lifetime(_Object):
    """An IKE or IPsec SA lifetime."""

    units: Optional[Literal["seconds", "kilobytes"]] = "seconds"
    value: Optional[_int(60, 86400 * 7)] = 3600


class IkePolicy(_Object):
    """Phase 1 proposal."""

    id: Optional[IdentifierOrEmpty] = ""
    name: Optional[Text] = ""
    ike_version: Optional[Literal["v1", "v2"]] = "v1"
    auth_algorithm: Optional[Text] = "sha1"
    encryption_algorithm: Optional[Text] = "aes-128"
    pfs: Optional[Text] = "group5"
    phase1_negotiation_mode: Optional[Literal["main", "aggressive"]] = "main"
    lifetime: Optional[Lifetime] = None


class IpsecPolicy(_Object):
    """Phase 2 (ESP/AH) proposal."""

    id: Optional[IdentifierOrEmpty] = ""
    name: Optional[Text] = ""
    transform_protocol: Optional[Literal["esp", "ah", "ah-esp"]] = "esp"
    auth_algorithm: Optional[Text] = "sha1"
    encryption_algorithm: Optional[Text] = "aes-128"
    encapsulation_mode: Optional[Literal["tunnel", "transport"]] = "tunnel"
    pfs: Optional[Text] = "group5"
    lifetime: Optional[Lifetime] = None


class EndpointGroup(_Object):
    """Local subnets (type subnet: subnet ids) or peer networks (type cidr: CIDRs)."""

    id: Optional[IdentifierOrEmpty] = ""
    name: Optional[Text] = ""
    type: Optional[Literal["subnet", "cidr"]] = "cidr"
    endpoints: Optional[_list(NonEmpty, MAX_LIST)] = []


class DeadPeerDetection(_Object):
    """IKE dead peer detection."""

    action: Optional[Literal["hold", "clear", "restart", "disabled", "restart-by-peer"]] = "hold"
    interval: Optional[_int(1, 3600)] = 30
    timeout: Optional[_int(1, 36000)] = 120


class IpsecSiteConnection(_Object, kw_only=True):
    """One site-to-site tunnel."""

    id: Identifier
    name: Optional[Text] = ""
    peer_address: IPAddress
    peer_id: Optional[Text] = ""
    admin_state_up: Optional[bool] = True
    route_mode: Optional[Text] = "static"
    mtu: Optional[MTU] = 1500
    initiator: Optional[Literal["bi-directional", "response-only"]] = "bi-directional"
    auth_mode: Optional[Literal["psk"]] = "psk"
    psk: NonEmpty
    dpd: Optional[DeadPeerDetection] = None
    peer_cidrs: Optional[_list(NetworkCIDR, MAX_LIST)] = []
    ikepolicy: IkePolicy
    ipsecpolicy: IpsecPolicy
    local_ep_group: Optional[EndpointGroup] = None
    peer_ep_group: Optional[EndpointGroup] = None


class VpnService(_Object, kw_only=True):
    """A Neutron VPN service: the router's external addresses and its tunnels."""

    id: Identifier
    name: Optional[Text] = ""
    admin_state_up: Optional[bool] = True
    external_v4_ip: Optional[IPv4OrEmpty] = None
    external_v6_ip: Optional[IPv6OrEmpty] = None
    router_id: Optional[IdentifierOrEmpty] = ""
    subnet_id: Optional[IdentifierOrEmpty] = None
    ipsec_connections: Optional[_list(IpsecSiteConnection, MAX_LIST)] = []


class Vpn(_Object):
    """VPN services of the router."""

    ipsec: Optional[_list(VpnService, MAX_LIST)] = []


RoutePair = Annotated[tuple[NetworkCIDR, IPAddress], Meta(
    description="[destination CIDR, next hop]")]


class RouterSection(_Object):
    """What makes the appliance a router: given at the top level (with a truthy ``asn``, as
    the original orchestrator does) or as ``services.router``."""

    asn: Optional[ASN] = None
    neighbor_asn: Optional[ASN] = None
    default_v4_gateway: Optional[IPv4OrEmpty] = None
    static_routes: Optional[_list(Annotated[Union[RoutePair, StaticRoute], Meta(
        description="[destination, next_hop] or {destination, next_hop}")], MAX_ROUTES)] = []
    floating_ips: Optional[_list(FloatingIP, MAX_FLOATING_IPS)] = []
    labels: Optional[Annotated[dict[NonEmpty, _list(NetworkCIDR, MAX_LIST)], Meta(
        max_length=MAX_LABELS,
        description=f"provider label -> CIDRs (at most {MAX_LABELS} labels)")]] = {}
    orchestrator: Optional[Orchestrator] = None
    vpn: Optional[Vpn] = None
    address_book: Optional[Annotated[dict[Text, Any], Meta(
        max_length=MAX_LIST, description=f"name -> entry (at most {MAX_LIST} entries)")]] = {}
    anchors: Optional[_list(Anchor, MAX_LIST)] = []


# -- load balancer ----------------------------------------------------------------------------
PROTOCOLS = ("HTTP", "HTTPS", "TCP", "TERMINATED_HTTPS", "UDP")
ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP")


class Member(_Object, kw_only=True):
    """A backend of a pool."""

    id: Optional[IdentifierOrEmpty] = ""
    address: IPAddress
    protocol_port: Port
    weight: Optional[_int(0, 256)] = 1
    admin_state_up: Optional[bool] = True


class HealthMonitor(_Object):
    """How members are checked."""

    type: Optional[Literal["HTTP", "HTTPS", "TCP", "PING"]] = "TCP"
    delay: Optional[_int(1, 3600)] = 5
    timeout: Optional[_int(1, 3600)] = 3
    max_retries: Optional[_int(1, 10)] = 3
    url_path: Optional[Text] = "/"
    expected_codes: Optional[Text] = "200"


class SessionPersistence(_Object):
    """Which requests stick to one member."""

    type: Optional[Literal["SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE"]] = "SOURCE_IP"


class Pool(_Object):
    """A listener's members and how to balance them."""

    id: Optional[IdentifierOrEmpty] = ""
    name: Optional[Text] = ""
    protocol: Optional[Literal[PROTOCOLS]] = "TCP"
    lb_algorithm: Optional[Literal[ALGORITHMS]] = "ROUND_ROBIN"
    admin_state_up: Optional[bool] = True
    members: Optional[_list(Member, MAX_LIST)] = []
    healthmonitor: Optional[HealthMonitor] = None
    session_persistence: Optional[SessionPersistence] = None


class Listener(_Object, kw_only=True):
    """A port on the VIP."""

    id: Optional[IdentifierOrEmpty] = ""
    name: Optional[Text] = ""
    protocol: Optional[Literal[PROTOCOLS]] = "TCP"
    protocol_port: Port
    admin_state_up: Optional[bool] = True
    default_pool: Optional[Pool] = None


class LoadBalancer(_Object, kw_only=True):
    """A Neutron LBaaS v2 load balancer."""

    id: Identifier
    name: Optional[Text] = ""
    tenant_id: Optional[IdentifierOrEmpty] = ""
    admin_state_up: Optional[bool] = True
    status: Optional[Text] = ""
    vip_address: IPAddress
    listeners: _list(Listener, MAX_LIST)


class Services(msgspec.Struct, kw_only=True, gc=False, forbid_unknown_fields=True):
    """Advanced services; an appliance refuses (400) one it does not run."""

    router: Optional[RouterSection] = None
    loadbalancer: Optional[LoadBalancer] = None


# -- the body ---------------------------------------------------------------------------------
class HAConfig(_Object):
    """VRRP peers (management addresses) and this instance's priority."""

    peers: Optional[_list(IPAddress, MAX_LIST)] = []
    priority: Optional[_int(1, 254)] = 50


class Payload(RouterSection, kw_only=True):
    """The whole desired state of one appliance (``PUT /v1/system/config``)."""

    tenant_id: Identifier
    hostname: HostName
    networks: Optional[_list(Network, MAX_NETWORKS)] = []
    ha_resource: Optional[bool] = False
    ha_config: Optional[HAConfig] = None
    services: Optional[Services] = None


def payload_json_schema():
    """The JSON Schema (draft 2020-12) of a ``PUT /v1/system/config`` body, as a dict."""
    schema = msgspec.json.schema(Payload)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "Astara appliance configuration", **schema}


def conforms(value, schema_type):
    """Whether ``value`` is valid for one of the types above (e.g. ``HostName``)."""
    try:
        msgspec.convert(value, schema_type)
    except msgspec.ValidationError:
        return False
    return True
