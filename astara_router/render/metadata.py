"""The metadata proxy's side of the model (pure, no I/O): where it listens — shared by the
proxy's configuration and the firewall's DNAT — and its configuration file.

One listener per tenant network (``metadata_listeners``: the router's first IPv4 address
on it, port 9600 + N), each with the map "source address → instance" of that network
only, so an address reused on two tenant networks never answers for the wrong instance.
"""
from dataclasses import dataclass

import msgspec

from .text import allocation_texts

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


FORMAT = 1  # of the proxy's configuration file


def instance_map(network):
    """Every address of every allocation on ``network`` → its ``device_id`` (the Nova
    instance). Allocations without a device id are left out: their requests get a 404
    instead of reaching the orchestrator with an empty X-Instance-ID. First one wins when
    an address is listed twice."""
    found = {}
    for allocation, texts in zip(network.allocations, allocation_texts(network)):
        if allocation.device_id:
            for text in texts:
                found.setdefault(text, allocation.device_id)
    return found


def proxy_config(config, connect_timeout, read_timeout):
    """The proxy's configuration as a dict, or None when nothing should listen."""
    listeners = metadata_listeners(config)
    if not listeners:
        return None
    networks = {network.interface.ifname: network for network in config.tenant_networks}
    orchestrator = config.router.orchestrator
    return {
        "format": FORMAT,
        "tenant_id": config.tenant_id,
        "upstream": {"address": str(orchestrator.address), "port": orchestrator.metadata_port,
                     "connect_timeout": float(connect_timeout),
                     "read_timeout": float(read_timeout)},
        "listeners": [{"network_id": listener.network_id, "interface": listener.generic,
                       "address": str(listener.address), "port": listener.port,
                       "instances": instance_map(networks[listener.generic])}
                      for listener in listeners],
    }


def render_proxy_config(config, connect_timeout=5.0, read_timeout=30.0):
    """The file text (stable: the same model always gives the same bytes), or None."""
    data = proxy_config(config, connect_timeout, read_timeout)
    return None if data is None else proxy_config_text(data)


def proxy_config_text(data):
    """The file text of ``proxy_config``'s dict: written by msgspec, byte for byte what
    ``json.dumps(sort_keys=True, indent=1)`` wrote (every string here is ASCII: the
    schema's ids and addresses) in a tenth of the time: the json module's indenting
    encoder is Python code, 10 ms at 5 000 allocations."""
    return msgspec.json.format(msgspec.json.encode(data, order="sorted"),
                               indent=1).decode() + "\n"
