"""Generic interface names (``geN``) for the appliance's NICs.

The orchestrator only speaks ``geN``: it matches each name to a Neutron port by the MAC that
``GET /v1/system/interfaces`` reports. We therefore key the numbering on the MAC and persist
it, so a name never moves to another NIC while the VM lives (hot-unplug of ge2 does not turn
ge3 into ge2). NICs seen for the first time are numbered in natural order of their kernel
names (eth2 before eth10, ens3 before ens10), which on a fresh VM reproduces Nova's port
order exactly like the original did, minus its string-sort bug.
"""
import json
import re
import threading
from dataclasses import dataclass, field

from . import rtnl
from .store import atomic_write

# Link kinds that are not NICs of this VM: they are created by us or by daemons.
NOT_A_NIC = {"bridge", "bond", "vlan", "dummy", "tun", "tap", "ifb", "vxlan", "gre",
             "gretap", "ipip", "sit", "vrf", "wireguard", "macvtap", "ip6tnl"}


def natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Nic:
    """One kernel NIC as the kernel sees it right now."""
    index: int
    kernel_name: str
    mac: str
    mtu: int
    up: bool
    addresses: tuple  # "ip/prefix" strings, kernel order
    # rtnl.link_counters (rx/tx bytes, packets, ...) when asked for: not part of identity
    counters: dict = field(default=None, compare=False)


def list_nics(with_addresses=True, with_counters=False):
    """All NICs in the current network namespace (no lo, bridges, tunnels...)."""
    found = rtnl.addresses() if with_addresses else {}
    nics = []
    for index, name, mac, mtu, up, kind, *counters in rtnl.links(with_counters):
        if len(mac) != 6 or not any(mac) or name == "lo" or kind in NOT_A_NIC:
            continue
        nics.append(Nic(index=index, kernel_name=name, mac=mac.hex(":"), mtu=mtu, up=up,
                        addresses=tuple(found.get(index, ())),
                        counters=counters[0] if counters else None))
    return nics


class InterfaceNames:
    """MAC → geN numbering, persisted in ``<state_dir>/interfaces.json``."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        try:
            with open(path) as handle:
                self._numbers = {mac: int(n) for mac, n in json.load(handle).items()}
        except (OSError, ValueError, AttributeError):
            self._numbers = {}

    def assign(self, nics):
        """Return ``{generic_name: Nic}`` for the NICs present, numbering new MACs."""
        with self._lock:
            present = {nic.mac: nic for nic in nics}
            numbers = {mac: n for mac, n in self._numbers.items() if mac in present}
            used = set(numbers.values())
            free = (n for n in range(10000) if n not in used)
            new = [nic for nic in nics if nic.mac not in numbers]  # usually none: no sort
            for nic in sorted(new, key=lambda nic: natural_key(nic.kernel_name)):
                if nic.mac not in numbers:  # a MAC listed twice is numbered once
                    numbers[nic.mac] = next(free)
            if numbers != self._numbers:
                self._numbers = numbers
                atomic_write(self.path, json.dumps(numbers, sort_keys=True, indent=1))
            return {f"ge{n}": present[mac] for mac, n in sorted(numbers.items(),
                                                                 key=lambda kv: kv[1])}


def interface_view(generic, nic):
    """The JSON shape the original client expects (keys of models.Interface.to_dict())."""
    return {"ifname": generic, "lladdr": nic.mac, "addresses": list(nic.addresses),
            "mtu": nic.mtu, "state": "up" if nic.up else "down", "description": "",
            "groups": [], "media": None, "kernel_name": nic.kernel_name}
