"""Namespace toolkit: named network namespaces, a bridge "fabric", veth plugs,
processes run inside namespaces, and an HTTP client whose sockets live in a
namespace.

Safety rules this module keeps (see the feasibility notes, "hazards"):

* nothing is ever created in the root network namespace: veths are created
  from inside the fabric namespace with their peer moved straight into the
  target namespace, and bridges live only in the fabric namespace;
* sysctls are written only through ``ip netns exec``;
* every namespace gets an empty ``/etc/netns/<name>/resolv.conf`` so a DHCP
  client run in it cannot rewrite the host's /etc/resolv.conf;
* everything a Lab creates is recorded as soon as it exists, so ``close()``
  also cleans up after a half-failed step.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import http.client
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

log = logging.getLogger(__name__)

NETNS_RUN_DIR = pathlib.Path("/run/netns")
NETNS_ETC_DIR = pathlib.Path("/etc/netns")

# Seconds between SIGTERM and SIGKILL at teardown.
TERM_GRACE = 3.0


class CommandError(subprocess.CalledProcessError):
    """A command failed; str() includes its stderr so test output says why."""

    def __str__(self):
        msg = f"command {self.cmd!r} failed with exit code {self.returncode}"
        err = (self.stderr or "").strip()
        return f"{msg}: {err}" if err else msg


def run(cmd, check=True, input=None):
    """Run cmd (a list), capture text output; raise CommandError if check."""
    proc = subprocess.run(
        [str(c) for c in cmd], input=input, text=True, capture_output=True,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return proc


def _check_name(name):
    # Names end up in paths (/run/netns/<name>, /etc/netns/<name>).
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid namespace name {name!r}")
    return name


def list_netns():
    """Names of all named network namespaces (read-only)."""
    out = run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [e["name"] for e in json.loads(out)] if out else []


def netns_pids(name):
    """PIDs of processes whose network namespace is <name>."""
    res = run(["ip", "netns", "pids", name], check=False)
    if res.returncode != 0:
        return []
    return [int(p) for p in res.stdout.split()]


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_exit(pid, timeout, alive=None, interval=0.05):
    """Wait up to ``timeout`` seconds for ``pid`` to end; True when it has. ``alive``: how
    to tell it still runs (default ``pid_alive``; a child's ``poll() is None`` reaps it)."""
    alive = alive or (lambda: pid_alive(pid))
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        time.sleep(interval)
    return not alive()


def terminate(pid, grace=TERM_GRACE, alive=None, group=False, first=signal.SIGTERM):
    """Send ``first`` (SIGTERM) to ``pid``, SIGKILL it if it still runs after ``grace``
    seconds. ``alive``: how to tell it still runs (default ``pid_alive``; a child's
    ``poll() is None`` reaps it). ``group``: signal ``pid``'s process group instead (a
    process started in a session of its own, with the children it runs)."""
    alive = alive or (lambda: pid_alive(pid))
    if not pid or not alive():
        return
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, first)
    if not wait_exit(pid, grace, alive, interval=0.1):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)


def kill_netns_processes(names, grace=TERM_GRACE):
    """SIGTERM, then SIGKILL after `grace` s, every process inside the named
    namespaces. Returns the PIDs that were signalled."""
    signalled = set()

    def remaining():
        return {p for n in names for p in netns_pids(n)}

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = remaining()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        signalled |= pids
        deadline = time.monotonic() + wait
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.05)
    left = remaining()
    if left:
        log.warning("processes still inside %s: %s", names, sorted(left))
    return signalled


class Netns:
    """A named network namespace (/run/netns/<name>)."""

    def __init__(self, name, role=None):
        self.name = _check_name(name)
        self.role = role or name

    def __repr__(self):
        return f"Netns({self.name!r})"

    def run(self, cmd, check=True, input=None):
        """Run cmd inside the namespace via `ip netns exec`."""
        return run(["ip", "netns", "exec", self.name, *cmd], check=check, input=input)

    def ip(self, *args, check=True):
        """`ip -n <name> args...`; returns stdout."""
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def ip_json(self, *args):
        """`ip -j -n <name> args...` parsed as JSON ([] when empty)."""
        out = run(["ip", "-j", "-n", self.name, *args]).stdout.strip()
        return json.loads(out) if out else []

    def exists(self):
        return (NETNS_RUN_DIR / self.name).exists()

    def pids(self):
        return netns_pids(self.name)

    def sysctl(self, key, value):
        """Set a sysctl inside this namespace only (/proc/sys/net is per-netns
        for the process that opens it)."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), path])

    def link_names(self):
        return [link["ifname"] for link in self.ip_json("link", "show")]


class Lab:
    """One lab / test run: namespaces, a bridge fabric, processes, temp dirs.

    Use as a context manager or call close(); close() also runs at exit.
    """

    PREFIX_RE = re.compile(r"ast[0-9a-f]{6}")
    ROLE_RE = re.compile(r"[a-z0-9]{1,6}")
    FABRIC_ROLE = "fab"

    def __init__(self, prefix=None):
        self.prefix = prefix or self.new_prefix()
        self._lock = threading.RLock()
        self._namespaces = {}  # role -> Netns, in creation order
        self._etc_dirs = []  # /etc/netns/<name> dirs we created
        self._procs = []  # (Popen, new_session)
        self._bridges = []
        self._veth_seq = 0
        self._tmp_root = None
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def new_prefix(cls):
        return "ast" + secrets.token_hex(3)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"Lab({self.prefix!r})"

    @property
    def namespaces(self):
        return list(self._namespaces.values())

    # -- namespaces -------------------------------------------------------

    def netns(self, role, forwarding=False):
        """Create namespace <prefix>-<role> with lo up and a private resolv.conf."""
        if not self.ROLE_RE.fullmatch(role):
            raise ValueError(f"role must match {self.ROLE_RE.pattern}: {role!r}")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self} is closed")
            if role in self._namespaces:
                raise ValueError(f"{self}: namespace role {role!r} exists")
            ns = Netns(f"{self.prefix}-{role}", role=role)
            # A clash with an existing name fails here, before we record it,
            # so close() never deletes somebody else's namespace.
            run(["ip", "netns", "add", ns.name])
            self._namespaces[role] = ns
        # Before anything runs inside: hide the host's resolv.conf (hazard 1).
        etc = NETNS_ETC_DIR / ns.name
        etc.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._etc_dirs.append(etc)
        (etc / "resolv.conf").touch()
        ns.ip("link", "set", "lo", "up")
        if forwarding:
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.ipv6.conf.all.forwarding", 1)
        return ns

    def fabric(self):
        """The namespace holding this lab's bridges (created on first use)."""
        with self._lock:
            ns = self._namespaces.get(self.FABRIC_ROLE)
            return ns if ns else self.netns(self.FABRIC_ROLE)

    def bridge(self, name):
        """A bridge inside the fabric namespace, up, multicast snooping off
        (snooping would drop IPv6 ND/RA multicast without an MLD querier)."""
        fab = self.fabric()
        fab.ip("link", "add", name, "type", "bridge", "mcast_snooping", "0")
        with self._lock:
            self._bridges.append(name)
        fab.ip("link", "set", name, "up")
        return name

    def plug(self, ns, ifname, bridge, mac=None, mtu=None, up=True):
        """Connect `ifname` in `ns` to `bridge`; return the fabric-side name.

        The pair is created inside the fabric namespace with its peer put
        straight into `ns`, so the root namespace never sees either end.
        """
        fab = self.fabric()
        if ns.name == fab.name:
            raise ValueError("cannot plug the fabric into itself")
        with self._lock:
            self._veth_seq += 1
            # "v<seq>-" is unique per lab; the rest is only a hint for humans.
            fab_end = f"v{self._veth_seq}-{ns.role}-{ifname}"[:15]
        fab.ip("link", "add", fab_end, "type", "veth",
               "peer", "name", ifname, "netns", ns.name)
        if mac:
            ns.ip("link", "set", ifname, "address", mac)
        if mtu:
            # Both ends: a veth drops frames larger than the receiver's MTU.
            ns.ip("link", "set", ifname, "mtu", str(mtu))
            fab.ip("link", "set", fab_end, "mtu", str(mtu))
        fab.ip("link", "set", fab_end, "master", bridge, "up")
        if up:
            ns.ip("link", "set", ifname, "up")
        return fab_end

    # -- processes and files ----------------------------------------------

    def spawn(self, ns, cmd, env=None, log_path=None, new_session=True):
        """Start cmd inside ns (`ip netns exec` execs it, so the PID is cmd's).

        env: extra variables added to os.environ. Output goes to log_path
        (appended) or is discarded. With new_session the whole process group
        is killed at close(); without it only the PID (the group is ours).
        """
        full_env = dict(os.environ, **env) if env else None
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self} is closed")
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns.name, *map(str, cmd)],
                    env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=new_session,
                )
                self._procs.append((proc, new_session))
        finally:
            if log_path:
                out.close()
        return proc

    def tmpdir(self, name):
        """A scratch directory <lab temp root>/<name>, removed at close()."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"invalid tmpdir name {name!r}")
        with self._lock:
            if self._tmp_root is None:
                self._tmp_root = pathlib.Path(
                    tempfile.mkdtemp(prefix=f"{self.prefix}-lab-"))
            path = self._tmp_root / name
        path.mkdir(exist_ok=True)
        return path

    # -- teardown ---------------------------------------------------------

    def close(self):
        """Kill processes, delete namespaces (fabric last) and dirs.

        Idempotent; never raises (problems are logged).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        for step in (self._stop_processes, self._delete_namespaces,
                     self._remove_dirs):
            try:
                step()
            except Exception:  # noqa: BLE001 - teardown must go on
                log.exception("%s: cleanup step %s failed", self, step.__name__)

    def _signal_proc(self, proc, new_session, sig):
        # A PID/PGID is only reused after its leader is reaped; Popen reaps
        # only in poll()/wait(), so returncode None means the ID is still ours.
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if new_session:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)

    @staticmethod
    def _exited(proc):
        """True if proc has exited, without reaping it (keeps its PGID reserved)."""
        if proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, proc.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _stop_processes(self):
        procs = list(self._procs)
        names = [ns.name for ns in self._namespaces.values()]
        for proc, new_session in procs:
            self._signal_proc(proc, new_session, signal.SIGTERM)
        for name in names:
            for pid in netns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while time.monotonic() < deadline:
            if all(self._exited(p) for p, _ in procs) and not any(
                    netns_pids(n) for n in names):
                break
            time.sleep(0.05)
        # SIGKILL whatever is left: stragglers in the process groups (the
        # leaders are still unreaped, so the group IDs are still ours) ...
        for proc, new_session in procs:
            self._signal_proc(proc, new_session, signal.SIGKILL)
        for proc, _ in procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.warning("%s: pid %s did not exit", self, proc.pid)
        # ... and anything else still inside our namespaces (e.g. daemons
        # that left the process group with setsid).
        kill_netns_processes(names, grace=0.5)

    def _delete_namespaces(self):
        namespaces = list(self._namespaces.values())
        # The fabric goes last: its bridges are what the others are plugged into.
        namespaces.sort(key=lambda ns: ns.role == self.FABRIC_ROLE)
        for ns in namespaces:
            res = run(["ip", "netns", "del", ns.name], check=False)
            if res.returncode != 0 and ns.exists():
                log.warning("%s: cannot delete netns %s: %s",
                            self, ns.name, res.stderr.strip())

    def _remove_dirs(self):
        for path in self._etc_dirs:
            shutil.rmtree(path, ignore_errors=True)
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)


# -- sockets inside a namespace -------------------------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name):
    """Switch only the calling thread into /run/netns/<name> for the block.

    Sockets created inside keep that namespace after the block. Threads
    already running are unaffected (setns acts on the calling thread), but
    threads started inside the block inherit the namespace.
    """
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_RUN_DIR / _check_name(name),
                         os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(orig)
            except OSError as exc:
                # Leaving the thread in the wrong namespace is never OK.
                raise RuntimeError(f"cannot return from netns {name}: {exc}") from exc
    finally:
        os.close(orig)


def wait_for_tcp(netns_name, host, port, timeout=10.0):
    """Poll until a TCP connect to host:port succeeds inside the namespace."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            with in_netns(netns_name):
                sock = socket.create_connection((host, port), timeout=1.0)
            sock.close()
            return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no TCP connect to {host}:{port} in {netns_name} "
                f"within {timeout}s: {last}")
        time.sleep(0.1)


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)


class _NetnsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, netns_name, host, port, timeout, context=None, server_name=None):
        super().__init__(host, port, timeout=timeout)
        self._netns_name = netns_name
        self._context = context
        self._server_name = server_name

    def connect(self):
        # Only socket creation needs the namespace; it sticks to the socket.
        with in_netns(self._netns_name):
            self.sock = socket.create_connection(
                (self.host, self.port), self.timeout, self.source_address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._context is not None:
            self.sock = self._context.wrap_socket(
                self.sock, server_hostname=self._server_name or self.host)


class NetnsHTTPClient:
    """Tiny HTTP client whose TCP connections are made inside a namespace.

    host is a literal address (IPv6 without brackets). A new connection per
    request keeps it stateless, hence thread-safe. With an ``ssl.SSLContext``
    as ``context`` it speaks HTTPS, verifying ``server_name`` (default: host).
    """

    def __init__(self, netns_name, host, port, timeout=10, context=None,
                 server_name=None):
        self.netns_name = _check_name(netns_name)
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout = timeout
        self.context = context
        self.server_name = server_name

    def request(self, method, path, body=None, headers=None):
        conn = _NetnsHTTPConnection(self.netns_name, self.host, self.port,
                                    self.timeout, self.context, self.server_name)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path):
        return self.request("GET", path)

    def put_json(self, path, obj):
        return self.put_raw(path, json.dumps(obj).encode(), "application/json")

    def put_raw(self, path, data, content_type):
        return self.request("PUT", path, body=data,
                            headers={"Content-Type": content_type})


def netns_unavailable_reason():
    """None if we can create network namespaces here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not installed"
    # A name of the lab pattern, so astara-leftovers would catch a leak.
    name = f"{Lab.new_prefix()}-probe"
    res = run(["ip", "netns", "add", name], check=False)
    if res.returncode != 0:
        return f"`ip netns add` does not work: {res.stderr.strip()}"
    run(["ip", "netns", "del", name], check=False)
    return None
