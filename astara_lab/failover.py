"""Crashing an appliance the way a dead hypervisor would, and watching a VRRP pair: shared
by the HA tests, the lab's failover check and the HA benchmark.

``crash(ns, fabric)`` kills every process in the appliance's namespace with SIGKILL (the
agent, keepalived, conntrackd: nothing gets to clean up, so its addresses stay configured)
and then cuts its links by setting their fabric ends down — without that, the kernel of a
"dead" namespace would still answer ARP and forward. ``reconnect`` brings the links back.
"""
import ipaddress
import os
import signal
import time

from astara_netns import netns_pids


def fabric_ends(ns, fabric):
    """The fabric-side names of ``ns``'s veths (every NIC of an appliance is one), in the
    order of the appliance's NICs (the management NIC, created first, comes first)."""
    names = {link["ifindex"]: link["ifname"] for link in fabric.ip_json("link", "show")}
    return [names[link["link_index"]]
            for link in sorted(ns.ip_json("link", "show"), key=lambda link: link["ifindex"])
            if link.get("link_index") in names and link["ifname"] != "lo"]


def kill_all(ns_name, timeout=5.0):
    """SIGKILL everything in the namespace until nothing is left (a parent that forks
    again between two listings is caught by the next one)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = netns_pids(ns_name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes left in {ns_name}: {pids}")
        time.sleep(0.01)


def crash(ns, fabric):
    """Kill every process in ``ns`` (SIGKILL), then cut its links. Returns the fabric ends
    (for ``reconnect``)."""
    ends = fabric_ends(ns, fabric)
    kill_all(ns.name)
    for end in ends:
        fabric.ip("link", "set", end, "down")
    return ends


def reconnect(fabric, ends):
    for end in ends:
        fabric.ip("link", "set", end, "up")


def addresses(ns):
    """Every address configured in ``ns`` (no prefix length)."""
    return {ipaddress.ip_address(info["local"]) for link in ns.ip_json("addr", "show")
            for info in link.get("addr_info", ())}


def holder(namespaces, address):
    """The one namespace of ``namespaces`` that holds ``address``, or None (nobody, or
    several: a split brain)."""
    address = ipaddress.ip_address(address)
    found = [ns for ns in namespaces if address in addresses(ns)]
    return found[0] if len(found) == 1 else None


def ha_daemons(ns):
    """Which of keepalived and conntrackd run in ``ns``."""
    found = set()
    for pid in netns_pids(ns.name):
        try:
            with open(f"/proc/{pid}/comm") as handle:
                found.add(handle.read().strip())
        except OSError:
            pass
    return found & {"keepalived", "conntrackd"}
