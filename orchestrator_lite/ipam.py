"""Address and MAC allocation (pure functions): what Neutron's IPAM would hand out.

* SLAAC subnets (``ipv6_address_mode`` slaac / dhcpv6-stateless) get the EUI-64 address of
  the port's MAC, exactly as Neutron computes it; the management address of an appliance
  is the EUI-64 of its MGT port's MAC in the management prefix.
* Other subnets get the lowest free host address that is not the gateway.
* MACs are Neutron-style ``fa:16:3e:xx:xx:xx``.
"""
import ipaddress
import random
import re

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
SLAAC_MODES = ("slaac", "dhcpv6-stateless")
_rng = random.SystemRandom()


def normalize_mac(mac):
    mac = str(mac).strip().lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise ValueError(f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast MAC address")
    return mac


def eui64(prefix, mac):
    """The SLAAC address of ``mac`` in the /64 ``prefix`` (RFC 4291 modified EUI-64)."""
    network = ipaddress.ip_network(prefix, strict=False)
    if network.version != 6 or network.prefixlen > 64:
        raise ValueError(f"{prefix} is not an IPv6 prefix of /64 or shorter")
    octets = [int(part, 16) for part in normalize_mac(mac).split(":")]
    octets[0] ^= 0x02
    interface_id = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return network.network_address + int.from_bytes(bytes(interface_id), "big")


def new_mac(taken=(), rng=None):
    rng = rng or _rng
    taken = set(taken)
    while True:
        mac = "fa:16:3e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        if mac not in taken:
            return mac


def allocate(subnet, mac, used):
    """An address for a port with ``mac`` on ``subnet`` (a store subnet dict), avoiding
    ``used`` (a set of ipaddress objects). Raises ValueError when the subnet is full."""
    network = ipaddress.ip_network(subnet["cidr"])
    if network.version == 6 and subnet.get("ipv6_address_mode") in SLAAC_MODES:
        address = eui64(network, mac)
        if address in used:
            raise ValueError(f"the SLAAC address {address} of {mac} is already in use")
        return address
    gateway = ipaddress.ip_address(subnet["gateway_ip"]) if subnet.get("gateway_ip") else None
    for address in _hosts(network):
        if address != gateway and address not in used:
            return address
    raise ValueError(f"subnet {subnet['id']} ({network}) has no free address")


def _hosts(network):
    if network.version == 4:
        return network.hosts()
    # Skip the subnet-router anycast address (::0), walk lazily (a /64 is huge).
    return (network.network_address + i for i in range(1, min(network.num_addresses, 1 << 20)))
