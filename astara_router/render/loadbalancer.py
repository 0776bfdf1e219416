"""nginx configuration of the load balancer (``services.loadbalancer``), pure.

The files, relative to nginx's prefix (``-p``, the agent's ``<state>/nginx/``)::

    nginx.conf            modules, pid, logs, temp paths; http {} and stream {} include the
                          listener files; the status server (digest of this configuration)
    http/<port>.conf      one per HTTP listener: its upstream and its server
    stream/<port>.conf    one per TCP or HTTPS (TLS passthrough) listener

Every path in the text is relative (to the prefix, or to the directory of nginx.conf for
``include``; the status socket to nginx's working directory), so the same files check in a
candidate directory (``nginx -t``) and run in the live one. File names come from the
protocol and port, never from the payload.

What maps to what (README, "Load balancer"):
* HTTP listener → ``http`` server proxying to an ``upstream``; TCP and HTTPS listeners →
  ``stream`` servers (HTTPS is balanced as TLS passthrough: nginx never sees the plain text).
* ROUND_ROBIN → nginx's default (smooth weighted round robin); LEAST_CONNECTIONS →
  ``least_conn``; SOURCE_IP → ``hash $remote_addr consistent`` (not ``ip_hash``: that only
  exists for http and hashes an IPv4 client by its /24, so a whole subnet lands on one
  member; the consistent ketama hash keys on the full address, honours weights and moves
  only the removed member's clients when the pool changes).
* Member weight → ``weight``; every upstream has a shared-memory ``zone`` so all workers
  share connection counts, weights and failure state.
* ``admin_state_up: false`` load balancer, listener, pool or member → left out; weight 0
  (Neutron: "no new connections") → left out. An HTTP listener with no usable member answers
  503; a TCP/HTTPS listener with none does not listen (connections are refused).
* Health monitor → nginx's *passive* checks on the real traffic: ``max_fails`` =
  ``max_retries``, ``fail_timeout`` = ``delay`` (seconds), ``proxy_connect_timeout`` =
  ``timeout``. A member whose connections fail ``max_retries`` times within ``delay`` s is
  skipped for ``delay`` s; nothing probes members in between.
* Session persistence SOURCE_IP → the same consistent hash on the client address (with
  ROUND_ROBIN or SOURCE_IP balancing).

Refused with 422 naming the field (nginx here cannot carry them out): UDP and
TERMINATED_HTTPS listeners or pools (no certificates in the payload), a pool protocol that
does not fit its listener, HTTP_COOKIE/APP_COOKIE persistence and SOURCE_IP persistence
together with LEAST_CONNECTIONS, a health monitor's ``url_path`` other than ``/`` or
``expected_codes`` other than ``200`` (passive checks judge connections, not a probe's
answer), two listeners on one port.

Escaping: nothing from the payload reaches the text except parsed IP addresses (formatted
by ``ipaddress``), integers, and ids that match ``SAFE_ID`` (in comments only).
"""
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

from ..model.errors import FieldError, PayloadError

PATH = "services.loadbalancer"
CONF = "nginx.conf"
PIDFILE = "nginx.pid"
ERROR_LOG = "error.log"
STATUS_SOCKET = "status.sock"  # relative to nginx's working directory (the prefix)
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
HTTP_DIR = "http"
STREAM_DIR = "stream"
TEMP_DIR = "tmp"
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
UPSTREAM_ZONE = "64k"
UPSTREAM_KEEPALIVE = 32  # idle connections per worker kept open to the members (HTTP)
WORKER_CONNECTIONS = 4096

# Listener protocol → the pool protocols that make sense behind it (as Octavia allows them).
POOL_PROTOCOLS = {"HTTP": ("HTTP",), "HTTPS": ("HTTPS", "TCP"), "TCP": ("HTTP", "HTTPS", "TCP")}
ALGORITHM_DIRECTIVE = {"ROUND_ROBIN": None, "LEAST_CONNECTIONS": "least_conn;",
                       "SOURCE_IP": "hash $remote_addr consistent;"}


@dataclass(frozen=True)
class NginxConfig:
    """The rendered tree: ``files`` is ((relative path, text), ...) with nginx.conf first;
    ``digest`` is what the status server answers once nginx runs this configuration;
    ``owners`` maps a listener file to the payload path of its listener (to name the field
    when ``nginx -t`` refuses a line of it)."""
    files: tuple
    digest: str
    owners: tuple = ()

    def contents(self):
        return dict(self.files)

    def owner(self, relative):
        return dict(self.owners).get(relative, "")


def endpoint(address, port):
    """``addr:port``, IPv6 bracketed (the original wrote IPv6 VIPs bare)."""
    address = ipaddress.ip_address(address)
    host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"{host}:{int(port)}"


def comment_id(value):
    """An id fit for a comment line, or a placeholder: only ``SAFE_ID`` text is written."""
    return value if isinstance(value, str) and SAFE_ID.match(value) else "(id not shown)"


# -- refusals --------------------------------------------------------------------------------

def refusals(lb, path=PATH):
    """FieldErrors for what nginx cannot carry out (empty: everything can be)."""
    problems = []
    seen_ports = {}
    for i, listener in enumerate(lb.listeners):
        lpath = f"{path}.listeners[{i}]"
        if listener.protocol not in POOL_PROTOCOLS:
            problems.append(FieldError(f"{lpath}.protocol", f"{listener.protocol} listeners "
                                       "cannot be carried out by this load balancer (nginx: "
                                       "HTTP, HTTPS passthrough and TCP only)"))
        port = listener.protocol_port
        if port in seen_ports:
            problems.append(FieldError(f"{lpath}.protocol_port", f"port {port} is already "
                                       f"used by {seen_ports[port]}"))
        seen_ports.setdefault(port, lpath)
        pool = listener.default_pool
        if pool is not None:
            problems.extend(_pool_refusals(listener, pool, f"{lpath}.default_pool"))
    return problems


def _pool_refusals(listener, pool, ppath):
    problems = []
    allowed = POOL_PROTOCOLS.get(listener.protocol)
    if allowed is not None and pool.protocol not in allowed:
        problems.append(FieldError(f"{ppath}.protocol", f"a {pool.protocol} pool cannot serve "
                                   f"a {listener.protocol} listener (allowed: "
                                   f"{', '.join(allowed)})"))
    persistence = pool.session_persistence
    if persistence is not None and persistence != "SOURCE_IP":
        problems.append(FieldError(f"{ppath}.session_persistence", f"{persistence} "
                                   "persistence cannot be carried out by nginx (open source "
                                   "nginx has no sticky cookies); SOURCE_IP can"))
    elif persistence == "SOURCE_IP" and pool.lb_algorithm == "LEAST_CONNECTIONS":
        problems.append(FieldError(f"{ppath}.session_persistence", "SOURCE_IP persistence "
                                   "hashes the client address, which cannot be combined "
                                   "with LEAST_CONNECTIONS"))
    monitor = pool.healthmonitor
    if monitor is not None:
        if monitor.url_path != "/":
            problems.append(FieldError(f"{ppath}.healthmonitor.url_path", "nginx's checks "
                                       "are passive (the real traffic's connections): no "
                                       f"probe requests {monitor.url_path!r}"))
        if monitor.expected_codes != "200":
            problems.append(FieldError(f"{ppath}.healthmonitor.expected_codes", "nginx's "
                                       "checks are passive (the real traffic's connections): "
                                       f"no probe answer is compared with "
                                       f"{monitor.expected_codes!r}"))
    return problems


# -- rendering -------------------------------------------------------------------------------

def render_nginx(config) -> Optional[NginxConfig]:
    """The nginx tree for ``config``, None when no load balancer runs (nginx is stopped).
    Raises PayloadError (422) naming every field nginx cannot carry out."""
    lb = config.loadbalancer
    if lb is None:
        return None
    problems = refusals(lb)
    if problems:
        raise PayloadError(problems)
    if not lb.admin_state_up:
        return None
    listeners = []
    for i, listener in enumerate(lb.listeners):
        if not listener.admin_state_up:
            continue
        rendered = (_http_listener if listener.protocol == "HTTP" else _stream_listener)(
            lb, listener)
        if rendered is not None:
            listeners.append((rendered[0], rendered[1], f"{PATH}.listeners[{i}]"))
    listeners.sort()
    digest = hashlib.sha256(repr((comment_id(lb.id), [(p, t) for p, t, _ in listeners]))
                            .encode()).hexdigest()[:16]
    files = ((CONF, _main(lb, digest)),) + tuple((p, t) for p, t, _ in listeners)
    return NginxConfig(files, digest, tuple((p, o) for p, _, o in listeners))


def _members(pool):
    """The members that take traffic: pool up, member up, weight > 0."""
    if pool is None or not pool.admin_state_up:
        return ()
    return tuple(m for m in pool.members if m.admin_state_up and m.weight > 0)


def _upstream(name, pool, members, http):
    lines = [f"upstream {name} {{", f"    zone {name} {UPSTREAM_ZONE};"]
    algorithm = pool.lb_algorithm
    if pool.session_persistence == "SOURCE_IP":
        algorithm = "SOURCE_IP"
    if ALGORITHM_DIRECTIVE[algorithm]:
        lines.append(f"    {ALGORITHM_DIRECTIVE[algorithm]}")
    checks = ""
    monitor = pool.healthmonitor
    if monitor is not None:
        checks = f" max_fails={int(monitor.max_retries)} fail_timeout={int(monitor.delay)}s"
    for member in members:
        lines.append(f"    server {endpoint(member.address, member.protocol_port)} "
                     f"weight={int(member.weight)}{checks};  # member "
                     f"{comment_id(member.id)}")
    if http:
        lines.append(f"    keepalive {UPSTREAM_KEEPALIVE};")
    lines.append("}")
    return lines


def _connect_timeout(pool, indent):
    monitor = pool.healthmonitor if pool is not None else None
    if monitor is None:
        return []
    return [f"{indent}proxy_connect_timeout {int(monitor.timeout)}s;"]


def _header(lb, listener):
    return [f"# load balancer {comment_id(lb.id)}, listener {comment_id(listener.id)}: "
            f"{listener.protocol} port {int(listener.protocol_port)}"]


def _http_listener(lb, listener):
    port = int(listener.protocol_port)
    name = f"http_{port}"
    pool = listener.default_pool
    members = _members(pool)
    lines = _header(lb, listener)
    if members:
        lines += _upstream(name, pool, members, http=True)
    lines += ["server {", f"    listen {endpoint(lb.vip_address, port)};"]
    if members:
        lines += ["    location / {",
                  f"        proxy_pass http://{name};",
                  "        proxy_http_version 1.1;",
                  '        proxy_set_header Connection "";',
                  "        proxy_set_header Host $http_host;",
                  "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                  "        proxy_set_header X-Forwarded-Proto $scheme;",
                  *_connect_timeout(pool, "        "),
                  "    }"]
    else:
        lines.append("    return 503;  # no pool, or no member up")
    lines.append("}")
    return f"{HTTP_DIR}/{port}.conf", "\n".join(lines) + "\n"


def _stream_listener(lb, listener):
    port = int(listener.protocol_port)
    name = f"tcp_{port}"
    pool = listener.default_pool
    members = _members(pool)
    if not members:
        return None  # nothing to balance to: the port stays closed
    lines = _header(lb, listener)
    lines += _upstream(name, pool, members, http=False)
    lines += ["server {", f"    listen {endpoint(lb.vip_address, port)};",
              f"    proxy_pass {name};", *_connect_timeout(pool, "    "), "}"]
    return f"{STREAM_DIR}/{port}.conf", "\n".join(lines) + "\n"


def _main(lb, digest):
    return f"""# nginx of load balancer {comment_id(lb.id)}, written by the astara agent.
# Paths are relative to the prefix (-p). The agent starts, reloads and stops this nginx.
load_module {STREAM_MODULE};
pid {PIDFILE};
error_log {ERROR_LOG} warn;
worker_processes auto;
worker_rlimit_nofile {2 * WORKER_CONNECTIONS};
events {{
    worker_connections {WORKER_CONNECTIONS};
}}
http {{
    access_log off;
    server_tokens off;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    client_body_temp_path {TEMP_DIR}/body;
    proxy_temp_path {TEMP_DIR}/proxy;
    fastcgi_temp_path {TEMP_DIR}/fastcgi;
    uwsgi_temp_path {TEMP_DIR}/uwsgi;
    scgi_temp_path {TEMP_DIR}/scgi;
    include {HTTP_DIR}/*.conf;
    # How the agent checks that this configuration runs (a unix socket, on no network).
    server {{
        listen unix:{STATUS_SOCKET};
        default_type text/plain;
        return 200 "{digest}\\n";
    }}
}}
stream {{
    include {STREAM_DIR}/*.conf;
}}
"""
