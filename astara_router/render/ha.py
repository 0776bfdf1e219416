"""High availability of a router (``ha_resource``): keepalived and conntrackd, rendered
purely from the model (README, "ha").

* **One VRRP instance** per appliance, run over the management network: unicast adverts
  from the management address to the one peer in ``ha_config.peers``, ``priority`` from
  ``ha_config``. Every data-plane address, floating IP and route of the router is one of
  its virtual addresses/routes (``render/netlink.py`` marks them ``keepalived``), so they
  move together and only the master holds them; the backup's data links are up but empty.
  Every data link is tracked: a dead one puts the instance in FAULT, and the peer takes
  over. Everyone starts as BACKUP; the election decides.
* **Mixed families.** The instance's family is the management network's (IPv6 in the
  original deployment) and keepalived wants the addresses *in the advert*
  (``virtual_ipaddress``) to be of that family. That block therefore holds a single
  link-local address on the management interface, derived from the tenant; every data-plane
  address, of either family, goes into ``virtual_ipaddress_excluded`` (not advertised,
  which also keeps the adverts small with thousands of floating IPs). VRRPv3 always: it
  carries IPv6 and sub-second advertisement intervals.
* **A stable VRRP id**: derived from the tenant id, which both instances share and which
  never changes while the router lives (a change would make both instances masters until
  both reloaded). With unicast adverts and ``check_unicast_src`` an id only has to match
  between the two peers, so two routers sharing an id never interfere.
* **conntrackd** (FTFW over unicast UDP on the management network, port ``CONNTRACKD_PORT``
  which the firewall admits from the peers) syncs TCP and UDP flows to the peer's external
  cache. keepalived's notify script commits that cache into the kernel when this instance
  becomes master, so established flows (floating-IP DNAT and SNAT included) survive a
  failover. conntrackd syncs with exactly one peer: more are refused (422).
* The advertisement interval and preemption are agent settings (``[ha]``), not payload.

Nothing from the payload reaches these files as text except addresses (parsed ``ipaddress``
objects), numbers and NIC names checked against a strict pattern; file paths (from the
agent's state directory) are checked too, so no value can open a block, end a line or start
a comment.
"""
import hashlib
import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ApplyError
from .firewall import CONNTRACKD_PORT
from .interfaces import kernel_name
from .netlink import render_netlink

KEEPALIVED_CONF = "keepalived.conf"
CONNTRACKD_CONF = "conntrackd.conf"
NOTIFY = "notify.sh"
NOTIFY_FIFO = "notify.fifo"  # keepalived's state changes for the agent (options.notify_fifo)
VRRP_STATE = "vrrp.state"  # written by the notify script: MASTER, BACKUP, FAULT, STOP
CONNTRACKD_SOCKET = "conntrackd.ctl"
CONNTRACKD_LOCK = "conntrackd.lock"
CONNTRACKD_LOG = "conntrackd.log"
INSTANCE = "astara"

# A NIC name keepalived and conntrackd read as one token (no space, brace, quote, '#', '!').
SAFE_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,15}\Z")


@dataclass(frozen=True)
class HaOptions:
    """The agent's ``[ha]`` settings."""
    advert_interval: float = 1.0  # seconds; sub-second needs VRRPv3 (always used)
    preempt: bool = True  # a higher-priority instance takes the addresses back
    preempt_delay: float = 0.0  # seconds it waits first (only with preempt)
    # keepalived writes its state changes to NOTIFY_FIFO and the agent runs the notify
    # script: an agent that is not root (keepalived calls setgroups() before any script it
    # runs, which needs CAP_SETGID; README "Least privilege")
    notify_fifo: bool = False


@dataclass(frozen=True)
class Line:
    text: str
    path: str = field(default="", compare=False)  # the payload field behind it


@dataclass(frozen=True)
class HaPlan:
    keepalived: tuple  # of Line
    conntrackd: Optional[str]  # None: no peer to sync with, conntrackd does not run
    notify: str
    vrid: int
    management_interface: str
    virtual_addresses: tuple  # of (kernel name, address): what the master holds

    @property
    def keepalived_text(self):
        return "".join(f"{line.text}\n" for line in self.keepalived)

    def path_for_line(self, number):
        """The payload field behind line ``number`` (1-based) of keepalived.conf."""
        if 0 < number <= len(self.keepalived):
            return self.keepalived[number - 1].path
        return ""

    def contents(self, directory):
        """``{path: text}`` of the files (conntrackd.conf absent without a peer)."""
        files = {f"{directory}/{KEEPALIVED_CONF}": self.keepalived_text,
                 f"{directory}/{NOTIFY}": self.notify}
        if self.conntrackd is not None:
            files[f"{directory}/{CONNTRACKD_CONF}"] = self.conntrackd
        return files


def vrrp_id(tenant_id):
    """1..255, the same on both instances of a router and for all its life."""
    return 1 + int.from_bytes(hashlib.sha256(tenant_id.encode()).digest()[:4], "big") % 255


def advertised_address(tenant_id, version):
    """The one address in the adverts: link-local, of the transport's family, unique per
    tenant (no interface identifier of a real NIC has this shape)."""
    digest = hashlib.sha256(f"astara-vrrp/{tenant_id}".encode()).digest()
    if version == 6:
        return ipaddress.ip_interface(
            (ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + b"\xa5\x7a" + digest[:6]), 64))
    third = 1 + digest[0] % 253  # 169.254.1.x .. 169.254.253.x, never 169.254.169.254
    third += third == 169
    return ipaddress.ip_interface(f"169.254.{third}.{1 + digest[1] % 254}/32")


def _name(value, what):
    if not SAFE_NAME.fullmatch(value):
        raise ApplyError("", f"{what} {value!r} cannot be written into keepalived.conf "
                             "(letters, digits, '_', '.', '@', '-' only)", status=500)
    return value


def _transport(config):
    """(management network, local address, peers): where VRRP and the state sync run;
    what the payload asks for and they cannot do is refused (422)."""
    network = config.management_network
    if network is None:
        raise ApplyError("ha_resource", "an HA router needs a management network: VRRP and "
                                        "conntrackd run over it")
    peers = config.ha_config.peers
    if len(peers) > 1:
        raise ApplyError("ha_config.peers", f"{len(peers)} peers given; an HA router has "
                                            "exactly one peer (conntrackd syncs connection "
                                            "state with one)")
    version = peers[0].version if peers else (config.management_address.version
                                              if config.management_address else 6)
    local = network.interface.first(version)
    if local is None:
        raise ApplyError("ha_config.peers[0]",
                         f"{peers[0]} is IPv{version}, the management network has no "
                         f"IPv{version} address of this appliance")
    for i, peer in enumerate(peers):
        if peer == local:
            raise ApplyError(f"ha_config.peers[{i}]",
                             f"{peer} is this appliance's own management address")
    return network, local, peers


def render_ha(config, names, directory, options=HaOptions()):
    """The HA plan of ``config`` (``names``: geN → kernel name; ``directory``: where the
    files live, under the state_dir settings.load checked), or None when the router is not
    HA."""
    if not config.ha:
        return None
    network, local, peers = _transport(config)
    mgmt_if = _name(kernel_name(names, network.interface.ifname,
                                f"networks[{config.networks.index(network)}]"),
                    "management interface")
    plan = render_netlink(config)
    vrid = vrrp_id(config.tenant_id)
    addresses, routes, tracked = [], [], []
    for spec in plan.links:
        if not spec.keepalived:
            continue
        dev = _name(kernel_name(names, spec.generic, spec.path.removesuffix(".interface")),
                    "interface")
        tracked.append(dev)
        for address in sorted(spec.addresses, key=lambda a: (a.version, a)):
            addresses.append((dev, address, f"{spec.path}.addresses"))
    for route in plan.routes:
        if route.keepalived:
            dev = (_name(names[route.generic], "interface")
                   if route.generic in names else None)
            routes.append((route, dev))

    notify = ([Line(f"    notify_fifo {directory}/{NOTIFY_FIFO}")] if options.notify_fifo
              else [Line("    script_user root"), Line("    enable_script_security")])
    lines = [Line("# keepalived of this HA router, written by the astara agent"),
             Line("global_defs {"),
             *notify,
             Line("}"),
             Line(f"vrrp_instance {INSTANCE} {{"),
             Line("    state BACKUP"),
             Line(f"    interface {mgmt_if}"),
             Line(f"    virtual_router_id {vrid}", "tenant_id"),
             Line(f"    priority {config.ha_config.priority}", "ha_config.priority"),
             Line(f"    advert_int {options.advert_interval:.2f}"),
             Line("    version 3")]
    if not options.preempt:
        lines.append(Line("    nopreempt"))
    elif options.preempt_delay > 0:
        lines.append(Line(f"    preempt_delay {options.preempt_delay:g}"))
    if tracked:
        lines += [Line("    track_interface {"),
                  *(Line(f"        {dev}") for dev in tracked), Line("    }")]
    if peers:  # without one, multicast (keepalived refuses a unicast source alone)
        lines += [Line(f"    unicast_src_ip {local}"), Line("    check_unicast_src"),
                  Line("    unicast_peer {"),
                  *(Line(f"        {peer}", f"ha_config.peers[{i}]")
                    for i, peer in enumerate(peers)),
                  Line("    }")]
    lines += [Line("    virtual_ipaddress {"),
              Line(f"        {advertised_address(config.tenant_id, local.version)} "
                   f"dev {mgmt_if}"),
              Line("    }")]
    if addresses:
        lines.append(Line("    virtual_ipaddress_excluded {"))
        lines += [Line(f"        {_vip(address, dev)}", path)
                  for dev, address, path in addresses]
        lines.append(Line("    }"))
    if routes:
        lines.append(Line("    virtual_routes {"))
        lines += [Line(f"        {_route(route, dev)}", route.path) for route, dev in routes]
        lines.append(Line("    }"))
    if not options.notify_fifo:
        lines.append(Line(f"    notify {directory}/{NOTIFY}"))
    lines.append(Line("}"))

    conntrackd = (render_conntrackd(directory, mgmt_if, local, peers[0])
                  if peers else None)
    return HaPlan(tuple(lines), conntrackd, render_notify(directory), vrid, mgmt_if,
                  tuple((dev, address) for dev, address, _ in addresses))


def _vip(address, dev):
    text = f"{address}"
    if address.version == 4 and address.network.prefixlen < 31:
        text += f" brd {address.network.broadcast_address}"
    text += f" dev {dev}"
    if address.version == 6 and address.network.prefixlen == 128:
        text += " preferred_lft forever"  # keepalived deprecates /128 VIPs by default
    return text


def _route(route, dev):
    text = f"{route.destination}"
    if route.gateway is not None:
        text += f" via {route.gateway}"
    if dev is not None:
        text += f" dev {dev}"
    return text


def render_conntrackd(directory, interface, local, peer):
    """conntrackd.conf: FTFW over unicast UDP to ``peer`` on the management interface;
    TCP and UDP flows, nothing to or from loopback and the management addresses (the API,
    VRRP and conntrackd's own traffic)."""
    family = f"IPv{local.version}"
    loopback = ["IPv4_address 127.0.0.1", "IPv6_address ::1"]
    ignored = loopback + [f"{family}_address {address}" for address in (local, peer)]
    body = [
        "General {",
        "    HashSize 8192",
        "    HashLimit 65536",
        "    Syslog off",
        f"    LogFile {directory}/{CONNTRACKD_LOG}",
        f"    LockFile {directory}/{CONNTRACKD_LOCK}",
        "    UNIX {",
        f"        Path {directory}/{CONNTRACKD_SOCKET}",
        "    }",
        "    NetlinkBufferSize 2097152",
        "    NetlinkBufferSizeMaxGrowth 8388608",
        "    Filter From Kernelspace {",
        "        Protocol Accept {",
        "            TCP",
        "            UDP",
        "        }",
        "        Address Ignore {",
        *(f"            {line}" for line in ignored),
        "        }",
        "    }",
        "}",
        "Sync {",
        "    Mode FTFW {",
        "    }",
        "    UDP {",
        f"        {family}_address {local}",
        f"        {family}_Destination_Address {peer}",
        f"        Port {CONNTRACKD_PORT}",
        f"        Interface {interface}",
        "        Checksum on",
        "    }",
        "}",
    ]
    return "".join(f"{line}\n" for line in body)


NOTIFY_SCRIPT = """#!/bin/sh
# keepalived's notify script, written by the astara agent (render/ha.py).
# Called as: notify.sh INSTANCE <name> <MASTER|BACKUP|FAULT|STOP> <priority>
state="$3"
printf '%s\\n' "$state" > {state_file}.new && mv -f {state_file}.new {state_file}
[ -e {conntrackd_conf} ] || exit 0  # no peer, no state sync
PATH=/usr/sbin:/usr/bin:/sbin:/bin
conntrack_sync() {{ conntrackd -C {conntrackd_conf} "$1" >/dev/null 2>&1; }}
case "$state" in
MASTER)
    conntrack_sync -c  # commit the peer's flows (the external cache) to the kernel
    conntrack_sync -f  # flush both caches ...
    conntrack_sync -R  # ... and fill the internal one from the kernel table again
    conntrack_sync -B  # send everything to the new backup
    ;;
BACKUP)
    conntrack_sync -t  # shorten the timers of flows this instance no longer routes
    conntrack_sync -n  # ask the master for a full resync of its flows
    ;;
FAULT)
    conntrack_sync -t
    ;;
esac
exit 0
"""


def render_notify(directory):
    return NOTIFY_SCRIPT.format(state_file=shlex.quote(f"{directory}/{VRRP_STATE}"),
                                conntrackd_conf=shlex.quote(f"{directory}/{CONNTRACKD_CONF}"))
