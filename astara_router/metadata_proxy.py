"""The metadata proxy: forwards tenant instances' metadata requests to the orchestrator.

The agent serves it from its own process (``apply/metadata.py``: ``Proxy.serve`` on every
change). The same code runs standalone, for diagnosis, from a configuration file::

    astara-metadata-proxy --config FILE [--pidfile P] [--log L] [--status S] [--foreground]
    astara-metadata-proxy --check --config FILE

One listener per tenant network, each bound to the router's own
address on that network (never 0.0.0.0: the firewall DNATs 169.254.169.254:80 there). A
request is identified by its source address *on that listener's network*; an address no
allocation owns gets a 404 and never reaches the orchestrator. GET, HEAD and POST (with its
body) go to ``http://<orchestrator>:<metadata_port><path>?<query>``; any other method gets
405 and is never forwarded. The upstream request carries only headers the proxy built:
X-Forwarded-For, X-Instance-ID, X-Tenant-ID, X-Neutron-Network-ID and X-Quantum-Network-ID
(a client cannot supply its own; the configuration is refused unless every id is an
identifier) and the client's values of a short allow-list (``PASSED_HEADERS``) that contain
only visible ASCII and spaces. Upstream failures answer 502, upstream
timeouts 504; otherwise the upstream status, content type and body pass through.

A new configuration (the agent's ``serve``, or SIGHUP for the standalone program) swaps
listeners, instance maps and upstream without dropping the listeners that stay; one that
cannot be applied leaves the previous one serving. The standalone program writes a status
file after every load (its PID and the SHA-256 of the configuration it serves). Threads,
no eventlet; its id grammar is the payload schema's.
"""
import argparse
import hashlib
import http.client
import ipaddress
import json
import logging
import logging.handlers
import os
import re
import selectors
import signal
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType

from .model.checks import parse_ip
from .model.schema import ID_RULE, IDENTIFIER, MAX_ID
from .store import atomic_write

LOG = logging.getLogger("astara-metadata-proxy")

FORMAT = 1
MAX_REQUEST_BODY = 1 << 20  # metadata POSTs (passwords, events) are tiny
MAX_RESPONSE_BODY = 16 << 20  # user-data is at most 64 KiB in Nova; be generous
MAX_CONNECTIONS = 256  # per listener: one tenant cannot exhaust the process
CLIENT_TIMEOUT = 60.0  # a client that stops sending mid-request is dropped
JSON = "application/json"
# The only client headers passed on. Everything else is dropped: hop-by-hop ones, Host,
# and any identity header (X-Instance-ID, ...) a client tries to supply itself.
PASSED_HEADERS = ("Content-Type", "Accept", "Accept-Encoding", "User-Agent",
                  "If-None-Match", "If-Modified-Since")
FORWARDED_METHODS = ("GET", "HEAD", "POST")  # what the metadata service needs
# Ids that become header values: the payload schema's identifier grammar.
HEADER_ID = re.compile(f"(?:{IDENTIFIER})")
HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,1024}")  # visible ASCII and space: no CR/LF


# -- configuration (pure) ---------------------------------------------------------------------

class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Upstream:
    address: object  # ipaddress.IPv4Address | IPv6Address
    port: int
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


@dataclass(frozen=True)
class Listener:
    network_id: str
    interface: str
    address: object
    port: int
    # address → device_id. The addresses are parse_ip's, which the agent's model holds
    # already (strings made for the map were 0.3 MB at 5 000 allocations).
    instances: MappingProxyType

    @property
    def key(self):
        return (str(self.address), self.port)


@dataclass(frozen=True)
class ProxyConfig:
    tenant_id: str
    upstream: Upstream
    listeners: tuple


def _require(data, key, kind, where):
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "number"
        raise ConfigError(f"{where}{key}: missing or not a {expected}")
    return value


def _address(text, where):
    try:  # the payload's parser met (and cached) these texts already; as strict
        return parse_ip(text)
    except (TypeError, ValueError):
        pass
    try:  # refused: ipaddress's own message
        return ipaddress.ip_address(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _header_id(value, where):
    if len(value) > MAX_ID or not HEADER_ID.fullmatch(value):
        raise ConfigError(f"{where}: {value[:80]!r} is not {ID_RULE}: it would go into a "
                          f"header")
    return value


def _port(value, where):
    if not 0 < value < 65536:
        raise ConfigError(f"{where}: port {value} out of range")
    return value


def _timeout(value, where):
    if not 0 < value <= 3600:
        raise ConfigError(f"{where}: timeout {value} must be in (0, 3600] seconds")
    return float(value)


def parse_config(text):
    """Validate and parse the configuration file's text (the proxy's own checker: the
    agent runs it on a candidate before swapping it in)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}") from exc
    return parse_config_data(data)


def parse_config_data(data):
    """``parse_config`` of the decoded text. The agent checks the data its text was written
    from (render/metadata.py): the instance map then holds the model's device ids instead
    of a copy of each decoded from the text (0.4 MB at 5 000 allocations), and the text is
    not decoded again."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"not a format {FORMAT} metadata proxy configuration")
    tenant_id = _header_id(_require(data, "tenant_id", str, ""), "tenant_id")
    up = _require(data, "upstream", dict, "")
    upstream = Upstream(
        _address(_require(up, "address", str, "upstream."), "upstream.address"),
        _port(_require(up, "port", int, "upstream."), "upstream.port"),
        _timeout(_require(up, "connect_timeout", (int, float), "upstream."),
                 "upstream.connect_timeout"),
        _timeout(_require(up, "read_timeout", (int, float), "upstream."),
                 "upstream.read_timeout"))
    listeners, seen = [], set()
    for i, item in enumerate(_require(data, "listeners", list, "")):
        where = f"listeners[{i}]."
        instances = {}
        for address, device_id in _require(item, "instances", dict, where).items():
            if not isinstance(device_id, str) or not device_id:
                raise ConfigError(f"{where}instances[{address}]: empty device id")
            instances[_address(address, f"{where}instances")] = _header_id(
                device_id, f"{where}instances[{address}]")
        listener = Listener(_header_id(_require(item, "network_id", str, where),
                                       f"{where}network_id"),
                            _require(item, "interface", str, where),
                            _address(_require(item, "address", str, where), f"{where}address"),
                            _port(_require(item, "port", int, where), f"{where}port"),
                            MappingProxyType(instances))
        if listener.key in seen:
            raise ConfigError(f"{where}: {listener.address}:{listener.port} listed twice")
        seen.add(listener.key)
        listeners.append(listener)
    return ProxyConfig(tenant_id, upstream, tuple(listeners))


def config_digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


# -- request mapping (pure) -------------------------------------------------------------------

def format_host(address):
    """An address as the host part of a URL: IPv6 in brackets, IPv4 as is."""
    address = ipaddress.ip_address(str(address))
    return f"[{address}]" if address.version == 6 else str(address)


def upstream_url(upstream, target):
    """The orchestrator URL for a request target (path plus query, kept verbatim)."""
    if not target.startswith("/"):
        raise ValueError(f"not an origin-form request target: {target!r}")
    return f"http://{format_host(upstream.address)}:{upstream.port}{target}"


def client_address(client_ip):
    """The instance-map key of a client address (IPv4-mapped IPv6 counts as IPv4)."""
    address = ipaddress.ip_address(client_ip)
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address


def client_key(client_ip):
    """A client address as text (X-Forwarded-For)."""
    return client_address(client_ip).compressed


def instance_for(listener, client_ip):
    """The instance (Nova device id) that owns ``client_ip`` on the listener's network,
    or None."""
    try:
        return listener.instances.get(client_address(client_ip))
    except ValueError:
        return None


def forward_headers(tenant_id, listener, client_ip, instance_id, incoming=()):
    """Headers of the upstream request: a few harmless client headers, then the identity
    headers, which only the proxy sets."""
    headers = {}
    for name, value in incoming:
        canonical = next((h for h in PASSED_HEADERS if h.lower() == name.lower()), None)
        if canonical and canonical not in headers and HEADER_VALUE.fullmatch(value):
            headers[canonical] = value
    headers.update({
        "X-Forwarded-For": client_key(client_ip),
        "X-Instance-ID": instance_id,
        "X-Tenant-ID": tenant_id,
        "X-Neutron-Network-ID": listener.network_id,
        "X-Quantum-Network-ID": listener.network_id,
    })
    return headers


def error_body(status, error, message, **details):
    return json.dumps({"error": error, "message": message, "status": status, **details},
                      sort_keys=True).encode() + b"\n"


# -- forwarding ---------------------------------------------------------------------------

class UpstreamError(Exception):
    """The orchestrator could not be reached or answered nonsense (→ 502)."""
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


def forward(upstream, method, target, headers, body):
    """Send one request upstream; return (status, content_type, body)."""
    url = upstream_url(upstream, target)  # also validates the target
    conn = http.client.HTTPConnection(str(upstream.address), upstream.port,
                                      timeout=upstream.connect_timeout)
    try:
        try:
            conn.connect()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"connect to {url}: timed out after "
                                  f"{upstream.connect_timeout:g} s") from exc
        conn.sock.settimeout(upstream.read_timeout)
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE_BODY + 1)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{url}: no answer within {upstream.read_timeout:g} s") \
                from exc
        if len(data) > MAX_RESPONSE_BODY:
            raise UpstreamError(f"{url}: answer larger than {MAX_RESPONSE_BODY} bytes")
        return (response.status, response.getheader("Content-Type", "text/plain"), data)
    except UpstreamError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise UpstreamError(f"{url}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        conn.close()


# -- the server -------------------------------------------------------------------------------

class MetadataHandler(BaseHTTPRequestHandler):
    server_version = "astara-metadata-proxy"
    sys_version = ""
    timeout = CLIENT_TIMEOUT

    def address_string(self):  # no reverse DNS
        return self.client_address[0]

    def log_message(self, fmt, *args):
        LOG.info("%s %s", self.address_string(), fmt % args)

    def log_request(self, code="-", size="-"):
        pass  # one line per request from _proxy, with the instance and the outcome

    def do_GET(self):
        self._proxy()

    do_POST = do_HEAD = do_GET

    def do_PUT(self):
        self._reply(405, JSON, error_body(
            405, "method not allowed", f"the metadata service answers only "
                                       f"{', '.join(FORWARDED_METHODS)}", method=self.command),
                    {"Allow": ", ".join(FORWARDED_METHODS)})
        LOG.info("%s %s %s -> 405 (not forwarded)", self.client_address[0], self.command,
                 self.path)

    do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_PUT

    def _reply(self, status, content_type, body, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return 411, b""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 400, b""
        if length < 0:
            return 400, b""
        if length > MAX_REQUEST_BODY:
            return 413, b""
        return None, self.rfile.read(length) if length else b""

    def _proxy(self):
        started = time.monotonic()
        listener, config = self.server.listener, self.server.proxy.config
        instance = instance_for(listener, self.client_address[0])
        status, content_type, body, note = self._answer(listener, config, instance)
        self._reply(status, content_type, body)
        LOG.info("%s %s %s instance=%s network=%s -> %s in %.3f s%s", self.client_address[0],
                 self.command, self.path, instance or "-", listener.network_id, status,
                 time.monotonic() - started, note)

    def _answer(self, listener, config, instance):
        """(status, content type, body, note for the log) of this request."""
        client_ip = self.client_address[0]
        if instance is None:  # never forwarded: the orchestrator would only refuse it
            return 404, JSON, error_body(
                404, "unknown instance", f"no instance on network {listener.network_id} "
                                         f"has the address {client_ip}",
                address=client_ip, network_id=listener.network_id), ""
        if not self.path.startswith("/"):
            return 400, JSON, error_body(400, "bad request target",
                                         "use a path, not an absolute URL"), ""
        problem, body = self._read_body()
        if problem:
            return problem, JSON, error_body(
                problem, "bad request body", f"send a Content-Length of at most "
                                             f"{MAX_REQUEST_BODY} bytes (no chunked encoding)"), ""
        headers = forward_headers(config.tenant_id, listener, client_ip, instance,
                                  self.headers.items())
        try:
            return (*forward(config.upstream, self.command, self.path, headers, body or None),
                    "")
        except UpstreamError as exc:
            name = "upstream timeout" if exc.status == 504 else "upstream failure"
            return exc.status, JSON, error_body(
                exc.status, name, "the metadata service is not available; try again later"), \
                f" ({exc})"


class ListenerServer(ThreadingHTTPServer):
    """One tenant network's listener. ``listener`` (and the proxy's config) are swapped by
    a single assignment on reload; a request reads each once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, proxy, listener):
        self.proxy = proxy
        self.listener = listener
        self.address_family = (socket.AF_INET6 if listener.address.version == 6
                               else socket.AF_INET)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((str(listener.address), listener.port), MetadataHandler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the address with getfqdn(): seconds per listener
        # when DNS is unreachable (the normal case for a router's tenant address).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.listener.address), self.listener.port

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            LOG.warning("%s:%s: too many connections, dropping one from %s",
                        *self.listener.key, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        # a client that went away mid-answer, mostly: one line, not a traceback on stderr
        LOG.warning("%s: request from %s failed: %s", "%s:%s" % self.listener.key,
                    client_address[0], sys.exc_info()[1])


class Acceptor:
    """One thread accepting the connections of every listener (each request is then
    served in a thread of its own, as ThreadingHTTPServer does). A thread per listener
    meant fifty thread starts on the first apply of a router on fifty networks, and fifty
    threads waking up five times a second. Listeners are added and removed from other
    threads: registration and dispatch share a lock, so a removed listener's socket is
    closed only when no accept can still be on its way."""

    POLL = 0.5  # seconds: how soon the thread notices it is no longer wanted

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.thread = None

    def add(self, server):
        # Non-blocking: a connection gone between select and accept must not hold the
        # thread (and the lock) in accept; ThreadingHTTPServer then just finds none.
        server.socket.setblocking(False)
        with self.lock:
            self.selector.register(server.socket, selectors.EVENT_READ, server)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="metadata-acceptor",
                                               daemon=True)
                self.thread.start()

    def remove(self, server):
        with self.lock:
            self.selector.unregister(server.socket)
            server.server_close()

    def alive(self):
        return self.thread is not None and self.thread.is_alive()

    def _run(self):
        while True:
            ready = self.selector.select(self.POLL)
            with self.lock:
                for key, _ in ready:
                    if self.selector.get_map().get(key.fd) is key:  # not removed meanwhile
                        key.data._handle_request_noblock()  # accept, then a request thread
                if not self.selector.get_map():  # decided under the lock: add() starts anew
                    self.thread = None
                    return


class Proxy:
    """The listener set and the configuration they serve."""

    def __init__(self, config_path=None, status_path=None):
        self.config_path = config_path
        self.status_path = status_path
        self.config = None
        self.text = None  # the configuration served, as given
        self.digest = None  # its SHA-256
        self.attempted = None  # what the last (re)load read
        self.servers = {}  # (address, port) → ListenerServer
        self.acceptor = Acceptor()

    def load(self):
        """(Re)load the configuration file (the standalone program)."""
        with open(self.config_path) as handle:
            self.serve(handle.read())

    def serve(self, text, config=None):
        """Serve this configuration (``config``: ``parse_config(text)`` when the caller
        has it already). Raises on one that cannot be served; the previous one then stays
        in place, untouched."""
        self.attempted = config_digest(text)
        config = config if config is not None else parse_config(text)
        wanted = {listener.key: listener for listener in config.listeners}
        added = {}
        try:
            for key, listener in wanted.items():
                if key not in self.servers:
                    added[key] = ListenerServer(self, listener)
        except OSError as exc:
            for server in added.values():
                server.server_close()
            raise OSError(exc.errno, f"cannot listen on {key[0]}:{key[1]}: "
                                     f"{exc.strerror}") from exc
        self.config = config  # swapped first: kept listeners see the new upstream at once
        for key, server in self.servers.items():
            if key in wanted:
                server.listener = wanted[key]
        for key in [k for k in self.servers if k not in wanted]:
            self.acceptor.remove(self.servers.pop(key))
        for key, server in added.items():
            self.acceptor.add(server)
            self.servers[key] = server
        self.text, self.digest = text, self.attempted
        LOG.info("serving configuration %s: %s", self.digest[:12],
                 ", ".join(f"{a}:{p}" for a, p in sorted(wanted)) or "no listeners")

    def alive(self):
        """The thread accepting the listeners' connections runs (when there are any)."""
        return not self.servers or self.acceptor.alive()

    def write_status(self, error=None):
        status = {"pid": os.getpid(), "config_hash": self.digest, "error": error,
                  "failed_hash": self.attempted if error else None,
                  "listeners": [f"{format_host(a)}:{p}" for a, p in sorted(self.servers)],
                  "loaded_at": time.time()}
        atomic_write(self.status_path, json.dumps(status, sort_keys=True) + "\n", 0o644)

    def reload(self):
        try:
            self.load()
            self.write_status()
        except (OSError, ConfigError) as exc:
            LOG.error("reload failed, still serving %s: %s",
                      (self.digest or "nothing")[:12], exc)
            self.write_status(error=f"reload failed: {exc}")

    def close(self):
        for server in self.servers.values():
            self.acceptor.remove(server)
        self.servers.clear()
        self.config = self.text = self.digest = None


# -- process --------------------------------------------------------------------------------

HANDLED_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def setup_logging(log_path):
    handler = (logging.handlers.WatchedFileHandler(log_path) if log_path
               else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def write_pidfile(path):
    atomic_write(path, f"{os.getpid()}\n", 0o644)


def remove_pidfile(path):
    try:
        with open(path) as handle:
            if handle.read().strip() != str(os.getpid()):
                return  # a successor's
        os.unlink(path)
    except OSError:
        pass


def serve(proxy, pidfile):
    """Run until SIGTERM/SIGINT; SIGHUP reloads. Signals are blocked in every thread and
    taken synchronously here, so a reload never runs inside a request thread."""
    try:
        while True:
            sig = signal.sigwait(HANDLED_SIGNALS)
            if sig == signal.SIGHUP:
                proxy.reload()
            else:
                LOG.info("stopping on signal %d", sig)
                break
    finally:
        proxy.close()
        if pidfile:
            remove_pidfile(pidfile)


def start(args):
    """Load, bind, write status and pid file: once this returns, the proxy answers."""
    proxy = Proxy(args.config, args.status)
    proxy.load()
    proxy.write_status()
    if args.pidfile:
        write_pidfile(args.pidfile)
    return proxy


def daemonize_and_run(args):
    """Double fork. The caller only returns once the daemon listens (exit 0) or failed
    to start (exit 1 with the reason on stderr), so the agent never waits on a guess."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.close(read_end)
        os.waitpid(child, 0)  # the intermediate child: no zombie left behind
        message = b"".join(chunks).decode(errors="replace")
        if message.startswith("ok"):
            return 0
        print(f"astara-metadata-proxy: {message or 'exited before it was ready'}",
              file=sys.stderr)
        return 1
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the caller waits for EOF on its pipes: release them now
        os.dup2(null, fd)
    os.close(null)
    try:
        proxy = start(args)
    except Exception as exc:  # noqa: BLE001 - reported to the waiting parent
        LOG.error("cannot start: %s", exc)
        os.write(write_end, f"cannot start: {exc}".encode())
        os._exit(1)
    os.write(write_end, b"ok\n")
    os.close(write_end)
    try:
        serve(proxy, args.pidfile)
    finally:
        os._exit(0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="astara-metadata-proxy",
                                     description=(__doc__ or " ").splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON configuration (from the agent)")
    parser.add_argument("--pidfile", help="write the daemon's PID here")
    parser.add_argument("--log", help="log file (default: stderr)")
    parser.add_argument("--status", help="status file (default: <config>.status)")
    parser.add_argument("--foreground", action="store_true", help="do not daemonise")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration and exit")
    args = parser.parse_args(argv)
    if args.status is None:
        args.status = f"{args.config}.status"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.check:
        try:
            with open(args.config) as handle:
                parse_config(handle.read())
        except (OSError, ConfigError) as exc:
            print(f"astara-metadata-proxy: {args.config}: {exc}", file=sys.stderr)
            return 1
        return 0
    setup_logging(args.log)
    # Before any thread exists, so the proxy's threads inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    if not args.foreground:
        return daemonize_and_run(args)
    try:
        proxy = start(args)
    except (OSError, ConfigError) as exc:
        print(f"astara-metadata-proxy: cannot start: {exc}", file=sys.stderr)
        return 1
    serve(proxy, args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
