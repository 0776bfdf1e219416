"""The fabric namespace's bridges, shared by the drivers that plug NICs into them (netns:
veths, qemu: taps). The management NIC goes to the management bridge; a data NIC to its
network's bridge (``bridges``: network id -> name), else, with ``auto_bridges``, to
``b-<8 hex of the network id>``, created on first use. Bridges exist only inside the
fabric namespace, never in the root namespace.
"""
import hashlib
import logging
import re
import threading

from astara_netns import Netns, run

from .base import DriverError

LOG = logging.getLogger(__name__)


class Fabric:
    def __init__(self, name, management_bridge="b-mgmt", bridges=None, auto_bridges=True):
        self.ns = Netns(name)
        self.name = name
        self.management_bridge = management_bridge
        self.bridges = dict(bridges or {})
        self.auto_bridges = auto_bridges
        self._lock = threading.Lock()

    def bridge_for(self, nic):
        """The bridge ``nic`` (a base.Nic) plugs into; made when auto-named and missing."""
        if nic.role == "mgt":
            return self.management_bridge
        bridge = self.bridges.get(nic.network_id)
        if bridge:
            return bridge
        if not self.auto_bridges:
            raise DriverError(f"no bridge configured for network {nic.network_id} "
                              "(bridges = <network id>=<bridge>)")
        compact = nic.network_id.lower().replace("-", "")[:8]
        if not re.fullmatch(r"[0-9a-f]{8}", compact):  # not a UUID: hash it
            compact = hashlib.sha256(nic.network_id.encode()).hexdigest()[:8]
        bridge = "b-" + compact
        with self._lock:
            if not self.has_link(bridge):
                self.ns.ip("link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
                self.ns.ip("link", "set", bridge, "up")
                LOG.info("created bridge %s for network %s in %s", bridge, nic.network_id,
                         self.name)
        return bridge

    def has_link(self, name):
        return run(["ip", "-n", self.name, "link", "show", name], check=False).returncode == 0
