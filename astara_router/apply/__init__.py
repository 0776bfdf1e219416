"""Appliers: one module per subsystem, run by the engine in the order below.

Order matters: addresses exist before daemons bind to them, the firewall is in place
before services answer, gratuitous ARP goes out once everything else is ready.
"""
import importlib
import pkgutil

ORDER = (
    ("netlink", "NetlinkSubsystem"),      # links, MTU, addresses, routes
    ("hostname", "HostnameSubsystem"),    # hostname, /etc/hosts
    ("firewall", "FirewallSubsystem"),    # nftables filter + NAT, one transaction
    ("dhcp", "DhcpSubsystem"),            # dnsmasq: DHCPv4/v6, DNS
    ("metadata", "MetadataSubsystem"),    # astara-metadata-proxy
    ("routing", "RoutingSubsystem"),      # BIRD 2: RA, BGP
    ("garp", "GarpSubsystem"),            # gratuitous ARP / unsolicited NA
)


def default_subsystems(settings):
    present = {m.name for m in pkgutil.iter_modules(__path__)}
    return [getattr(importlib.import_module(f"{__name__}.{module}"), cls)(settings)
            for module, cls in ORDER if module in present]
