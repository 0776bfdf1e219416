"""Crashing an appliance the way a dead hypervisor would, and watching a VRRP pair: shared
by the HA tests, the lab's failover check and the HA benchmark.

``HaPair`` is two real agents on shared segments (RouterTopology around the primary, the
secondary on the same bridges), pushed the contract HA bodies or ``ha_bodies(body)``.

``crash(ns, fabric)`` kills every process in the appliance's namespace with SIGKILL (the
agent, keepalived, conntrackd: nothing gets to clean up, so its addresses stay configured)
and then cuts its links by setting their fabric ends down — without that, the kernel of a
"dead" namespace would still answer ARP and forward. ``reconnect`` brings the links back.
"""
import copy
import http.client
import ipaddress
import json
import os
import signal
import socket
import time

from astara_netns import in_netns, netns_pids

from .appliance import Appliance, contract_payloads, management_cidr, nic_macs
from .peers import eventually
from .topology import RouterTopology

CONTRACT = contract_payloads()
CONTRACT_PAIR = (CONTRACT["router-ha-primary"], CONTRACT["router-ha-secondary"])


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


class KeepAlive:
    """One TCP connection from namespace ``ns_name`` to an HTTP server, used for every GET
    (HTTP/1.1 keep-alive): an answer after a failover proves that this very connection
    survived. It never reconnects (a new socket would not be in the namespace)."""

    def __init__(self, ns_name, host, port=80, timeout=5):
        with in_netns(ns_name):
            self.sock = socket.create_connection((str(host), port), timeout=timeout)
        self.conn = http.client.HTTPConnection(str(host), port, timeout=timeout)
        self.conn.sock = self.sock
        self.conn.auto_open = 0

    def get(self, path="/"):
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200 or self.conn.sock is not self.sock:
            raise ConnectionError(f"HTTP {response.status}, connection "
                                  f"{'kept' if self.conn.sock is self.sock else 'closed'}")
        return json.loads(body)

    def close(self):
        self.conn.close()


def ha_bodies(body):
    """An HA pair of ``body`` (a router payload): the second instance gets the next
    management address; each names the other as its peer."""
    primary, secondary = copy.deepcopy(body), copy.deepcopy(body)
    first = ipaddress.ip_interface(management_cidr(body))
    second = ipaddress.ip_interface(f"{first.ip + 1}/{first.network.prefixlen}")
    management = next(n for n in secondary["networks"] if n["network_type"] == "management")
    management["interface"]["addresses"] = [str(second)]
    for payload, peer, priority in ((primary, second, 100), (secondary, first, 50)):
        payload.update(ha_resource=True, ha_config={"peers": [str(peer.ip)],
                                                    "priority": priority})
    return primary, secondary


def virtual_addresses(body):
    """The addresses keepalived moves: the data-plane addresses and floating IPs."""
    found = {ipaddress.ip_interface(a).ip for n in body["networks"]
             if n["network_type"] != "management" for a in n["interface"]["addresses"]}
    return found | {ipaddress.ip_address(f["floating_ip"]) for f in body["floating_ips"]}


class HaPair:
    """Two agents for one HA router; ``names``: the contract names behind their NIC MACs
    (an unknown name gets generated MACs); agent settings ``[ha]`` from the arguments."""

    def __init__(self, lab, advert_interval=1.0, preempt=True,
                 names=("router-ha-primary", "router-ha-secondary"), bodies=CONTRACT_PAIR):
        self.lab = lab
        self.bodies = bodies
        self.virtual = virtual_addresses(bodies[0])
        self.topology = RouterTopology(lab, names[0], bodies[0])
        self.primary = self.topology.appliance
        self.secondary = Appliance(lab, "sec", nic_macs(names[1], bodies[1]),
                                   management_cidr(bodies[1]), "b-mgmt",
                                   bridges=self.topology.bridges,
                                   controller=self.topology.ctl)
        self.fabric = lab.fabric()
        self.config = lab.tmpdir("ha-settings") / "astara.ini"
        self.config.write_text(f"[ha]\nadvert_interval = {advert_interval}\n"
                               f"preempt = {str(preempt).lower()}\n")
        for appliance in (self.primary, self.secondary):
            appliance.configure_management()
            appliance.start(extra_args=("--config-file", str(self.config)))
        self.vm = self.topology.vms[0]

    @property
    def appliances(self):
        return (self.primary, self.secondary)

    def push(self, primary=None, secondary=None):
        """PUT each instance its body; their change counts. The virtual addresses are
        from then on those of the primary's body."""
        changes = []
        bodies = (primary or self.bodies[0], secondary or self.bodies[1])
        self.virtual = virtual_addresses(bodies[0])
        for appliance, payload in zip(self.appliances, bodies):
            response = appliance.client().put_json("/v1/system/config", payload)
            if response.status != 200:
                raise AssertionError(f"{appliance.ns.role}: {response.status} {response.text}")
            changes.append(response.json()["changes"])
        return changes

    def master(self, timeout=30):
        """The appliance holding every virtual address (and the other none of them)."""
        def settled():
            owners = {holder([a.ns for a in self.appliances], v) for v in self.virtual}
            return owners.pop() if len(owners) == 1 and None not in owners else None
        ns = eventually(settled, timeout, "one appliance holds every virtual address")
        return self.primary if ns is self.primary.ns else self.secondary

    def takes_over(self, appliance, timeout=30):
        """``appliance`` holds every virtual address (the crashed one may still hold
        them too: nothing cleaned up after it, but its links are cut)."""
        eventually(lambda: self.virtual <= addresses(appliance.ns), timeout,
                   f"{appliance.ns.role} holds every virtual address")

    def restore(self, appliance, ends):
        """The crashed appliance comes back: management link, agent (its boot re-apply
        clears the addresses the killed keepalived left, restarts both daemons), then the
        data links."""
        appliance.proc.wait(5)  # reap the killed agent (a zombie looks alive to gunicorn)
        reconnect(self.fabric, ends[:1])
        appliance.start(extra_args=("--config-file", str(self.config)))
        reconnect(self.fabric, ends[1:])
