"""The metadata proxy's configuration file, rendered from the model (pure, no I/O).

One listener per tenant network (``metadata_listeners``: the router's first IPv4 address
on it, port 9600 + N), each with the map "source address → instance" of that network
only, so an address reused on two tenant networks never answers for the wrong instance.
"""
import json

from .metadata import metadata_listeners

FORMAT = 1


def instance_map(network):
    """Every address of every allocation on ``network`` → its ``device_id`` (the Nova
    instance). Allocations without a device id are left out: their requests get a 404
    instead of reaching the orchestrator with an empty X-Instance-ID. First one wins when
    an address is listed twice."""
    found = {}
    for allocation in network.allocations:
        if not allocation.device_id:
            continue
        for address, _dhcp in allocation.ip_addresses:
            found.setdefault(str(address), allocation.device_id)
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
    if data is None:
        return None
    return json.dumps(data, sort_keys=True, indent=1) + "\n"
