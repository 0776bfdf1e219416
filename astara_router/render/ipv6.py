"""How a tenant IPv6 subnet hands out addresses: one rule, shared by the RA (bird) and the
DHCPv6 (dnsmasq) renderers so they can never disagree."""

SLAAC = "slaac"
DHCPV6_STATEFUL = "dhcpv6-stateful"
DHCPV6_STATELESS = "dhcpv6-stateless"
IPV6_MODES = (SLAAC, DHCPV6_STATEFUL, DHCPV6_STATELESS)


def ipv6_mode(subnet):
    """"slaac" | "dhcpv6-stateful" | "dhcpv6-stateless" for an IPv6 subnet.

    Neutron's ``ipv6_address_mode`` decides when the payload carries it. Without it (older
    Neutron, or a subnet created without modes) fall back to ``dhcp_enabled``: DHCP on means
    stateful DHCPv6, off means SLAAC. An unknown mode string is treated like a missing one
    rather than guessed at: the parser accepts any string, and the fallback is the
    conservative reading of the same subnet.
    """
    mode = (subnet.ipv6_address_mode or "").strip().lower()
    if mode in IPV6_MODES:
        return mode
    return DHCPV6_STATEFUL if subnet.dhcp_enabled else SLAAC
