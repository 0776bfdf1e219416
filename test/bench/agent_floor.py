"""The floors of the agent benchmark, exactly as issue 8 defines them: the least the kernel
and the daemons need to reach the state the agent reached, in a fresh namespace with the
same NICs (same kernel names and MACs, created down, like the appliance's).

* full apply = one ``ip -batch`` (each link up with its MTU, the same addresses and routes)
  + one ``nft -f`` of the agent's ruleset (``GET /v1/firewall/rules``) + one fsync'd write
  of the payload + each daemon the state needs, started after its own checker with the
  configuration the agent rendered (``dnsmasq --test`` then dnsmasq; ``bird -p`` then bird).
  The daemons' config files are written plainly (no fsync): a daemon cannot start without
  them. "Started" means its pid file exists, as the agent waits for.
* +1 FIP = one ``nft -f -`` adding the set/map elements the agent's ruleset gained + one
  ``ip addr add`` per address it gained + one fsync'd write of the payload.

Everything is read back from the agent's namespace (addresses, routes, ruleset, the running
daemons' config files), so a floor follows whatever the agent puts there. Commands run from
this process with the calling thread moved into the namespace (``in_netns``: children
inherit it), as the agent spawns them from inside its own, with no ``ip netns exec`` in the
timing. The parsing is pure and unit-tested (test/unit/test_bench_report.py).
"""
import os
import pathlib
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from astara_netns import in_netns, pid_alive

# Routes the kernel makes by itself (connected prefixes, RAs, redirects): not configured.
KERNEL_PROTOCOLS = {"kernel", "ra", "redirect"}
# dnsmasq options whose value is another file dnsmasq reads.
DNSMASQ_INPUTS = {"conf-file", "dhcp-hostsfile", "addn-hosts", "dhcp-optsfile"}
BIRD_INCLUDE = re.compile(r'^\s*include\s+"([^"]+)"\s*;', re.M)
PIDFILE_TIMEOUT = 10.0


# -- the kernel state, from `ip -j` (pure) ------------------------------------------------

@dataclass(frozen=True, order=True)
class Address:
    dev: str
    cidr: str
    broadcast: Optional[str] = None
    nodad: bool = False

    def command(self, verb="add"):
        words = [verb, self.cidr, "dev", self.dev]
        if self.broadcast and verb == "add":
            words += ["broadcast", self.broadcast]
        if self.nodad and verb == "add":
            words.append("nodad")
        return words


@dataclass(frozen=True)
class KernelState:
    links: frozenset  # (dev, mtu, up) of every link but lo
    addresses: frozenset  # Address; link-local and dynamic (SLAAC, DHCP) ones left out
    routes: frozenset  # `ip route add` arguments of every configured route, one string each

    def batch(self):
        """The ``ip -batch`` text that makes this state on down links of the same names:
        links first (an address needs its link), then addresses (a gateway must be
        reachable), then routes."""
        lines = [f"link set dev {dev} mtu {mtu}{' up' if up else ''}"
                 for dev, mtu, up in sorted(self.links)]
        lines += ["addr " + " ".join(a.command()) for a in
                  sorted(self.addresses, key=lambda a: (":" in a.cidr, a.dev, a.cidr))]
        lines += [f"route add {route}" for route in sorted(self.routes)]
        return "\n".join(lines) + "\n"


def parse_kernel_state(addr_dump, route_dumps):
    """``addr_dump``: ``ip -j addr show``; ``route_dumps``: ``{4: ip -j -4 route show table
    main, 6: the same for -6}``."""
    links, addresses = set(), set()
    for link in addr_dump:
        if link["ifname"] == "lo":
            continue
        links.add((link["ifname"], link["mtu"], "UP" in link.get("flags", ())))
        for info in link.get("addr_info", ()):
            if info.get("scope") == "link" or info.get("dynamic"):
                continue
            addresses.add(Address(link["ifname"], f"{info['local']}/{info['prefixlen']}",
                                  info.get("broadcast"), bool(info.get("nodad"))))
    routes = set()
    for version, dump in route_dumps.items():
        for route in dump:
            if route.get("protocol") in KERNEL_PROTOCOLS:
                continue
            routes.add(_route_arguments(route, version))
    return KernelState(frozenset(links), frozenset(addresses), frozenset(routes))


def _route_arguments(route, version):
    destination = route["dst"]
    if destination == "default":
        destination = "0.0.0.0/0" if version == 4 else "::/0"
    words = [route["type"]] if route.get("type", "unicast") != "unicast" else []
    words.append(destination)
    for key, keyword in (("gateway", "via"), ("dev", "dev"), ("protocol", "proto"),
                         ("metric", "metric"), ("prefsrc", "src")):
        if route.get(key) is not None:
            words += [keyword, str(route[key])]
    if "onlink" in route.get("flags", ()):
        words.append("onlink")
    return " ".join(words)


def read_kernel_state(ns):
    return parse_kernel_state(ns.ip_json("addr", "show"),
                              {4: ns.ip_json("-4", "route", "show", "table", "main"),
                               6: ns.ip_json("-6", "route", "show", "table", "main")})


# -- the ruleset's set elements (pure) ----------------------------------------------------

TABLE_LINE = re.compile(r"^\s*table\s+(\S+)\s+(\S+)\s*\{")
SET_LINE = re.compile(r"^\s*(?:set|map)\s+(\S+)\s*\{")
ELEMENTS = "elements = {"


def parse_ruleset(text):
    """``(skeleton, elements)`` of an ``nft -f`` text: ``elements`` maps ``(family, table,
    set)`` to the element texts of each named set or map; ``skeleton`` is every other line,
    so two rulesets with equal skeletons differ by element changes only."""
    skeleton, elements = [], {}
    table = key = collecting = None
    for line in text.splitlines():
        if collecting is not None:
            head, closed, _ = line.partition("}")
            collecting.append(head)
            if closed:
                elements[key] = _split_elements(collecting)
                collecting = None
            continue
        if match := TABLE_LINE.match(line):
            table = match.groups()
        elif (match := SET_LINE.match(line)) and table is not None:
            key = (*table, match.group(1))
            elements[key] = ()
        elif ELEMENTS in line and key is not None:
            head, closed, _ = line.split(ELEMENTS, 1)[1].partition("}")
            if closed:
                elements[key] = _split_elements([head])
            else:
                collecting = [head]
            continue
        skeleton.append(line)
    return tuple(skeleton), elements


def _split_elements(parts):
    return tuple(e.strip() for e in ",".join(parts).split(",") if e.strip())


def element_script(before, after):
    """The ``nft -f`` text turning ruleset text ``before`` into ``after`` by element changes
    alone (deletes first, so a map key can take a new value); ValueError when anything but
    elements differs."""
    skeleton_before, old = parse_ruleset(before)
    skeleton_after, new = parse_ruleset(after)
    if skeleton_before != skeleton_after:
        raise ValueError("the rulesets differ by more than set elements")
    deletes, adds = [], []
    for (family, table, name), elements in new.items():
        gone = [e for e in old[family, table, name] if e not in elements]
        came = [e for e in elements if e not in old[family, table, name]]
        if gone:
            deletes.append(f"delete element {family} {table} {name} {{ {', '.join(gone)} }}")
        if came:
            adds.append(f"add element {family} {table} {name} {{ {', '.join(came)} }}")
    return "".join(f"{line}\n" for line in deletes + adds)


# -- the daemons the state needs -----------------------------------------------------------

@dataclass(frozen=True)
class DaemonStart:
    """How to start one daemon as the agent runs it: its files (absolute path → text) and
    commands, all under the agent's state directory until ``rebased``."""
    name: str
    files: Mapping
    check: tuple
    start: tuple
    pidfile: str

    def rebased(self, old, new):
        def move(text):
            return text.replace(str(old), str(new))
        return DaemonStart(self.name, {move(p): move(t) for p, t in self.files.items()},
                           tuple(map(move, self.check)), tuple(map(move, self.start)),
                           move(self.pidfile))


def _dnsmasq_options(text):
    for line in text.splitlines():
        key, _, value = line.partition("=")
        yield key.strip(), value.strip()


def dnsmasq_start(conf, read):
    """``conf``: its main config file; ``read(path)``: a file's text."""
    text = read(conf)
    files = {conf: text}
    for key, value in _dnsmasq_options(text):
        if key in DNSMASQ_INPUTS:
            files[value] = read(value)
    pidfile = next((v for k, v in _dnsmasq_options(text) if k == "pid-file"), None)
    if pidfile is None:
        raise ValueError(f"{conf} names no pid-file")
    return DaemonStart("dnsmasq", files, ("dnsmasq", "--test", f"--conf-file={conf}"),
                       ("dnsmasq", f"--conf-file={conf}"), pidfile)


def bird_start(conf, read):
    text = read(conf)
    files = {conf: text}
    files.update({path: read(path) for path in BIRD_INCLUDE.findall(text)})
    directory = os.path.dirname(conf)
    pidfile = os.path.join(directory, "floor-bird.pid")
    return DaemonStart("bird", files, ("bird", "-p", "-c", conf),
                       ("bird", "-c", conf, "-s", os.path.join(directory, "floor-bird.ctl"),
                        "-P", pidfile), pidfile)


def _argument(argv, flag):
    for i, arg in enumerate(argv):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def process_argv(pid):
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None, []
    return exe, [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running_daemons(ns):
    """The daemons running in the agent's namespace, as DaemonStarts, dnsmasq first."""
    found = []
    for pid in ns.pids():
        if not pid_alive(pid):
            continue
        exe, argv = process_argv(pid)
        if exe == "dnsmasq" and (conf := _argument(argv, "--conf-file")):
            found.append(dnsmasq_start(conf, _read))
        elif exe == "bird" and (conf := _argument(argv, "-c")):
            found.append(bird_start(conf, _read))
    return sorted(found, key=lambda daemon: daemon.name != "dnsmasq")


def _read(path):
    return pathlib.Path(path).read_text()


# -- the floor namespace --------------------------------------------------------------------

def run(argv, input=None):
    result = subprocess.run(argv, input=input, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return result


def fsync_write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def wait_for_pidfile(path, timeout=PIDFILE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pathlib.Path(path).read_text().strip():
                return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no pid file {path} after {timeout} s")
        time.sleep(0.001)


class FloorNamespace:
    """A fresh namespace with NICs eth0.. of the given MACs, down, on one bridge."""

    def __init__(self, lab, role, macs):
        self.ns = lab.netns(role)
        self.dir = lab.tmpdir(role)
        bridge = lab.bridge(f"b-{role}")
        for i, mac in enumerate(macs):
            lab.plug(self.ns, f"eth{i}", bridge, mac=mac, up=False)

    def full_apply(self, state, ruleset, payload, daemons=()):
        """Seconds to make ``state`` + ``ruleset``, persist ``payload`` (bytes) and start
        ``daemons`` (DaemonStarts under ``state_dir``, rebased here first)."""
        batch = state.batch().encode()
        with in_netns(self.ns.name):
            started = time.perf_counter()
            run(["ip", "-batch", "-"], input=batch)
            run(["nft", "-f", "-"], input=ruleset.encode())
            fsync_write(self.dir / "config.json", payload)
            for daemon in daemons:
                for path, text in daemon.files.items():
                    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
                    pathlib.Path(path).write_text(text)
                run(daemon.check)
                run(daemon.start)
                wait_for_pidfile(daemon.pidfile)
            return time.perf_counter() - started

    def add(self, script, addresses, payload):
        """Seconds for one element transaction, one ``ip addr add`` per address and the
        fsync'd write of ``payload``."""
        with in_netns(self.ns.name):
            started = time.perf_counter()
            run(["nft", "-f", "-"], input=script.encode())
            for address in addresses:
                run(["ip", "addr", *address.command("add")])
            fsync_write(self.dir / "config.json", payload)
            return time.perf_counter() - started

    def undo(self, script, addresses):
        """Not timed: back to the state before ``add`` (``script`` is the reverse one)."""
        with in_netns(self.ns.name):
            run(["nft", "-f", "-"], input=script.encode())
            for address in addresses:
                run(["ip", "addr", *address.command("del")])

    def state(self):
        return read_kernel_state(self.ns)
