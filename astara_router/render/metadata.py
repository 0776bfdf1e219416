"""Where the metadata proxy listens: shared by the proxy's config and the firewall's DNAT."""
from dataclasses import dataclass

METADATA_ADDRESS = "169.254.169.254"
BASE_PORT = 9600  # the original's convention: geN listens on 9600 + N


@dataclass(frozen=True)
class MetadataListener:
    network_id: str
    generic: str  # geN of the tenant network's interface
    address: object  # the router's first IPv4 address on that network
    port: int


def metadata_listeners(config):
    """One listener per tenant network that has an IPv4 address on the router (the
    169.254.169.254 path is IPv4 only). Empty when there is no router or no orchestrator."""
    if config.router is None or config.router.orchestrator.address is None:
        return ()
    found = []
    for network in config.tenant_networks:
        address = network.interface.first(4)
        if address is not None:
            found.append(MetadataListener(network.network_id, network.interface.ifname,
                                          address, BASE_PORT + network.interface.index))
    return tuple(found)
