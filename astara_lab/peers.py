"""The things a router talks to, made of real programs in namespaces: DHCP clients of the
tenant VMs, the upstream BGP speaker, the orchestrator's metadata endpoint, TCP peers that
report who they see. One implementation, shared by the lab and the tests.

* ``udhcpc`` / ``dhclient``: one DHCP exchange with a *private* script (never the system's,
  which would rewrite /etc/resolv.conf); ``udhcpc(..., configure=True)`` also puts the
  lease on the VM's eth0 (address + default route, nothing else).
* ``PeerBird``: BIRD 2 in the foreground (so whoever spawned it can kill it), its config,
  socket and log under a scratch directory; accepts what the appliance announces,
  announces nothing, optionally installs what it learned in its namespace's kernel.
* ``MetadataUpstream``: the orchestrator's metadata endpoint; answers
  ``{"path", "instance"}`` (instance = the ``X-Instance-ID`` the proxy added) and records
  what it saw. In a test thread (``start()``) or as a process::

      python -m astara_lab.peers metadata --bind fdca:3ba5:a17a:acda::2 --port 9697

* ``PeerServer`` / ``Connection``: a line-based TCP server in a namespace that answers each
  line with the address it sees the client as, and its client.
* ``NtpServer``: an SNTP server (RFC 4330, stratum 2, this host's clock) that VM appliances
  synchronise with (``[appliance] ntp_servers``); records the clients it answered.
  In a test thread (``start()``) or ``python -m astara_lab.peers ntp --bind ADDR``.
"""
import argparse
import collections
import contextlib
import ipaddress
import json
import os
import pathlib
import random
import re
import socket
import struct
import subprocess
import threading
import time

from astara_netns import in_netns
from .webserver import QuietHandler, make_server

DEFAULT_ORCHESTRATOR_ADDRESS = "fdca:3ba5:a17a:acda::2"
METADATA_PORT = 9697
DHCLIENT_DEFAULTS = pathlib.Path("/var/lib/dhcp")


def eventually(check, timeout, what, interval=0.2):
    """Poll ``check`` (returns a truthy value, or raises AssertionError or
    CalledProcessError while not there yet) until it passes; its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            last = f"{what}: got {result!r}"
        except (AssertionError, subprocess.CalledProcessError) as exc:
            last = f"{what}: {exc}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {last}")
        time.sleep(interval)


# -- DHCP clients -----------------------------------------------------------------------------

UDHCPC_SCRIPT = """#!/bin/sh
# Private udhcpc script: records the offer{configures}; never touches resolv.conf.
case "$1" in
bound|renew)
    for key in ip subnet router dns staticroutes mtu hostname; do
        eval "echo $key=\\$$key"
    done > "{out}"
{apply}    ;;
esac
exit 0
"""
UDHCPC_APPLY = """    ip -4 addr flush dev "$interface" scope global
    ip addr add "$ip/$mask" dev "$interface"
    [ -z "$router" ] || ip -4 route replace default via "${router%% *}" dev "$interface"
"""
DHCLIENT_SCRIPT = """#!/bin/sh
# Records the lease; configures nothing.
case "$reason" in BOUND|BOUND6|RENEW6) env | grep '^new_' | sort > "{out}" ;; esac
exit 0
"""
DHCLIENT_CONF = """option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name-servers, host-name,
        interface-mtu, rfc3442-classless-static-routes, dhcp6.name-servers;
"""


def _scratch(workspace, name):
    """A fresh scratch dir from ``workspace`` (anything with ``tmpdir(name)``, e.g. a Lab)."""
    return workspace.tmpdir(f"{name}-{random.getrandbits(32):08x}")


def _lease(path):
    if not path.exists():
        return None
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def udhcpc_script(out, configure=False):
    """The private udhcpc script (pure): record the offer in ``out``; with ``configure``
    also put it on the interface."""
    return UDHCPC_SCRIPT.replace("{out}", str(out)).replace(
        "{configures}", " and configures the interface" if configure else "").replace(
        "{apply}", UDHCPC_APPLY if configure else "")


def udhcpc(workspace, ns, tries=5, configure=False, ifname="eth0"):
    """One DHCPv4 exchange with busybox udhcpc inside ``ns``: the offered options
    (ip, subnet, router, dns, staticroutes, mtu, hostname), or None. With
    ``configure`` the script also sets the address and default route on ``ifname``."""
    work = _scratch(workspace, f"udhcpc-{ns.role}")
    out, script = work / "offer", work / "script"
    script.write_text(udhcpc_script(out, configure))
    script.chmod(0o755)
    ns.run(["timeout", "60", "udhcpc", "-i", ifname, "-n", "-q", "-t", str(tries), "-T", "1",
            "-O", "staticroutes", "-O", "mtu", "-s", script], check=False)
    return _lease(out)


def dhclient(workspace, ns, family, *options):
    """One exchange with ISC dhclient (-4 or -6) inside ``ns``; the new_* variables, or
    None. Lease, pid and DUID files live in a scratch dir."""
    work = _scratch(workspace, f"dhclient-{ns.role}")
    out, script, conf = work / "lease", work / "script", work / "dhclient.conf"
    script.write_text(DHCLIENT_SCRIPT.format(out=out))
    script.chmod(0o755)
    conf.write_text(DHCLIENT_CONF)
    before = set(os.listdir(DHCLIENT_DEFAULTS)) if DHCLIENT_DEFAULTS.is_dir() else set()
    try:
        ns.run(["timeout", "60", "dhclient", f"-{family}", *options, "-1", "-cf", conf,
                "-sf", script, "-lf", work / "leases", "-pf", work / "pid",
                "-df", work / "duid", "eth0"], check=False)
    finally:  # dhclient may still drop default files next to the host's: not ours to keep
        if DHCLIENT_DEFAULTS.is_dir():
            for name in set(os.listdir(DHCLIENT_DEFAULTS)) - before:
                if name.startswith("dhclient"):
                    (DHCLIENT_DEFAULTS / name).unlink(missing_ok=True)
    return _lease(out)


# -- BGP peer ---------------------------------------------------------------------------------

def birdc(socket_path, *command, timeout=10):
    result = subprocess.run(["birdc", "-s", str(socket_path), *command], capture_output=True,
                            text=True, timeout=timeout, check=True)
    return result.stdout


def protocols(socket_path):
    """{name: (state, since, info)} from ``birdc show protocols``."""
    found = {}
    for line in birdc(socket_path, "show", "protocols").splitlines()[2:]:
        parts = line.split(None, 5)
        if len(parts) >= 5:
            found[parts[0]] = (parts[3], parts[4], parts[5] if len(parts) > 5 else "")
    return found


def bgp_session(socket_path):
    """(name, since) of the single established BGP session, or None. ``since`` to the
    second: BIRD converts its monotonic clock to wall time on each query, so the
    milliseconds it prints can move by one while the session stays up (a session that went
    down and up again takes seconds: its connect retry)."""
    bgp = {name: value for name, value in protocols(socket_path).items()
           if value[2].startswith("Established")}
    if len(bgp) != 1:
        return None
    name, (_, since, _) = next(iter(bgp.items()))
    return name, since.split(".")[0]


def learned_prefixes(socket_path, protocol):
    text = birdc(socket_path, "show", "route", "protocol", protocol)
    return {m.group(1) for m in re.finditer(r"^([0-9a-f:.]+/\d+)\s", text, re.MULTILINE)}


def peer_bird_config(directory, neighbor, interface="eth0", local_as=64512,
                     neighbor_as=64512, router_id="198.51.100.1", kernel_export=False):
    """bird.conf of the upstream peer (pure). ``kernel_export``: install the learned
    routes in the peer's namespace (so the upstream can route back to the tenants)."""
    kernel = "protocol kernel {\n    ipv6 { export all; };\n}\n" if kernel_export else ""
    return f"""log "{directory}/bird.log" all;
router id {router_id};
protocol device {{ scan time 10; }}
{kernel}protocol bgp appliance {{
    local as {local_as};
    neighbor {neighbor} as {neighbor_as};
    interface "{interface}";
    direct;
    connect retry time 5;
    ipv6 {{ import all; export none; gateway direct; }};
}}
"""


class PeerBird:
    """The upstream router's BGP speaker: BIRD in ``ns``, in the foreground, spawned by
    ``lab`` (so the lab kills it), peering with the appliance's external IPv6 address
    ``neighbor``. Protocol name ``appliance``."""

    PROTOCOL = "appliance"

    def __init__(self, lab, ns, neighbor, interface="eth0", kernel_export=False,
                 directory=None, wait=True, **options):
        self.directory = pathlib.Path(directory or lab.tmpdir("peer-bird"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket = self.directory / "bird.ctl"
        self.conf = self.directory / "bird.conf"
        self.conf.write_text(peer_bird_config(self.directory, neighbor, interface,
                                              kernel_export=kernel_export, **options))
        subprocess.run(["bird", "-p", "-c", self.conf], check=True)
        self.proc = lab.spawn(ns, ["bird", "-f", "-c", self.conf, "-s", self.socket,
                                   "-P", self.directory / "bird.pid"],
                              log_path=self.directory / "stdout.log")
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=10):
        eventually(lambda: "up and running" in birdc(self.socket, "show", "status"), timeout,
                   "peer bird control socket")

    def learned(self):
        return learned_prefixes(self.socket, self.PROTOCOL)


# -- metadata upstream ------------------------------------------------------------------------

class MetadataHandler(QuietHandler):
    """Records every request in ``server.seen``, answers ``{"path", "instance"}`` as JSON.
    Paths starting /slow answer after ``slow_seconds``, /garbage with a non-HTTP line (to
    test the proxy's error handling)."""

    slow_seconds = 3.0

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append({"method": self.command, "path": self.path,
                                 "headers": dict(self.headers.items()), "body": body,
                                 "client": self.client_address[0]})
        if self.path.startswith("/slow"):
            time.sleep(self.slow_seconds)
        if self.path.startswith("/garbage"):
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            return
        answer = json.dumps({"path": self.path, "instance": self.headers["X-Instance-ID"]})
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.encode())

    do_POST = do_PUT = do_HEAD = do_GET


def _metadata_server(address, port):
    server = make_server(address, port, MetadataHandler)
    server.seen = []
    return server


class MetadataUpstream:
    """The orchestrator's metadata endpoint in namespace ``ns`` (a Netns), served by a
    thread of this process; ``seen`` lists the requests."""

    def __init__(self, ns, address=DEFAULT_ORCHESTRATOR_ADDRESS, port=METADATA_PORT):
        self.ns = ns
        self.address = address
        self.port = port
        self.seen = []
        self.server = None

    def start(self):
        with in_netns(self.ns.name):
            self.server = _metadata_server(self.address, self.port)
        self.server.seen = self.seen
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# -- TCP peers that report what they see ------------------------------------------------------

def _plain(peer):
    address = ipaddress.ip_address(peer.split("%")[0])
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address


class PeerServer:
    """Listens inside ``ns`` (a Netns) and answers each line with the client's address."""

    def __init__(self, ns, port=7000, bind="::"):
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        with in_netns(ns.name):
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((bind, port))
        self.sock.listen(64)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn, peer[0]), daemon=True).start()

    @staticmethod
    def _serve(conn, peer):
        address = _plain(peer)
        try:
            with conn.makefile("rb") as lines:
                for _ in lines:
                    conn.sendall(f"{address}\n".encode())
        except OSError:
            pass

    def close(self):
        for sock in [self.sock, *self.conns]:
            try:
                sock.close()
            except OSError:
                pass


class Connection:
    """A client TCP connection made from inside ``ns``; ``ask()`` returns the address the
    PeerServer saw."""

    def __init__(self, ns, host, port=7000, timeout=5, source=None):
        with in_netns(ns.name):
            self.sock = socket.create_connection(
                (str(host), port), timeout=timeout,
                source_address=(str(source), 0) if source else None)
        self.lines = self.sock.makefile("rb")

    def ask(self):
        self.sock.sendall(b"?\n")
        line = self.lines.readline()
        if not line:
            raise ConnectionError("closed by the peer")
        return line.decode().strip()

    def close(self):
        self.lines.close()
        self.sock.close()


# -- NTP --------------------------------------------------------------------------------------

NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01
NTP_PACKET = struct.Struct("!BBbbII4sQQQQ")


def ntp_timestamp(seconds):
    """Unix seconds as the 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    return int((seconds + NTP_EPOCH_OFFSET) * 2**32)


def sntp_reply(request, received, now=time.time):
    """The server reply to a client request (bytes), or None for anything else."""
    if len(request) < NTP_PACKET.size:
        return None
    first, *_rest, transmit = NTP_PACKET.unpack_from(request)
    version, mode = (first >> 3) & 0x7, first & 0x7
    if mode != 3 or version not in (3, 4):  # only client requests
        return None
    return NTP_PACKET.pack(
        (0 << 6) | (version << 3) | 4,  # no leap warning, the client's version, server
        2, request[2], -20,  # stratum 2, the client's poll, ~1 us precision
        0, 1 << 4,  # root delay 0, root dispersion ~0.25 ms (16.16 fixed point)
        b"LOCL", ntp_timestamp(now()),  # reference id and time
        transmit, ntp_timestamp(received), ntp_timestamp(now()))


class NtpServer:
    """SNTP on ``address``:``port`` (UDP), inside namespace ``ns`` (a Netns; None: this
    process's); ``clients`` lists the latest addresses it answered, in order."""

    def __init__(self, address=DEFAULT_ORCHESTRATOR_ADDRESS, port=123, ns=None):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with in_netns(ns.name) if ns else contextlib.nullcontext():
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.clients = collections.deque(maxlen=1000)

    def start(self):
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def serve(self):
        while True:
            try:
                request, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = sntp_reply(request, time.time())
            if reply is not None:
                self.sock.sendto(reply, peer)
                self.clients.append(peer[0])

    def stop(self):
        self.sock.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m astara_lab.peers",
                                     description="run a lab peer in the foreground")
    sub = parser.add_subparsers(dest="peer", required=True)
    metadata = sub.add_parser("metadata", help="the orchestrator's metadata endpoint")
    metadata.add_argument("--bind", default=DEFAULT_ORCHESTRATOR_ADDRESS)
    metadata.add_argument("--port", type=int, default=METADATA_PORT)
    ntp = sub.add_parser("ntp", help="an SNTP server (this host's clock)")
    ntp.add_argument("--bind", default=DEFAULT_ORCHESTRATOR_ADDRESS)
    ntp.add_argument("--port", type=int, default=123)
    args = parser.parse_args(argv)
    if args.peer == "ntp":
        NtpServer(args.bind, args.port).serve()
        return
    server = _metadata_server(args.bind, args.port)
    server.seen = collections.deque(maxlen=100)  # long-lived: keep only the latest
    server.serve_forever()


if __name__ == "__main__":
    main()
