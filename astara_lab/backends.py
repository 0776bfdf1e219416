"""Members for load-balancer tests, the lab and the benchmarks: servers in namespaces that
say who they are.

* ``HttpBackend``: a threaded HTTP server of this process, its socket made inside a
  namespace. ``GET /`` answers the backend's name; ``GET /stream?bytes=N&delay=S`` sends N
  bytes in 64 KiB chunks with S seconds between them (a long response to reload under).
  ``hits`` counts the requests it served; ``stop()`` closes the socket (connections to it
  are then refused).
* ``TcpBackend``: answers every connection with its name and a newline, then each line
  with its name again.
* ``NginxBackend``: an nginx process (own prefix in a scratch directory) answering its name:
  a backend fast enough that a benchmark measures the load balancer, not the backend.
"""
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse

from astara_netns import in_netns, wait_for_tcp

from .webserver import QuietHandler, make_server

CHUNK = 64 * 1024


class NameHandler(QuietHandler):
    """HTTP/1.0: one request per connection, so a stopped backend refuses at once."""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        self.server.hits += 1
        if url.path == "/stream":
            query = urllib.parse.parse_qs(url.query)
            self._stream(int(query.get("bytes", ["0"])[0]),
                         float(query.get("delay", ["0"])[0]))
            return
        body = f"{self.server.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, size, delay):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        sent = 0
        while sent < size:
            part = min(CHUNK, size - sent)
            self.wfile.write(b"x" * part)
            sent += part
            if delay:
                time.sleep(delay)


class _Backend:
    """A server of this process whose socket lives in ``ns``, served by a thread."""

    def __init__(self, ns, address, port, name):
        with in_netns(ns.name):
            self.server = self.make(str(address), port)
        self.server.name = name
        self.server.hits = 0
        self.name = name
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def hits(self):
        return self.server.hits

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class HttpBackend(_Backend):
    @staticmethod
    def make(address, port):
        return make_server(address, port, NameHandler)


class _TcpNameHandler(socketserver.BaseRequestHandler):
    def handle(self):
        answer = f"{self.server.name}\n".encode()
        self.server.hits += 1
        try:
            self.request.sendall(answer)
            with self.request.makefile("rb") as lines:
                for _ in lines:
                    self.request.sendall(answer)
        except OSError:
            pass


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


class TcpBackend(_Backend):
    @staticmethod
    def make(address, port):
        return (_TcpServer6 if ":" in address else _TcpServer)((address, port), _TcpNameHandler)


def http_get(ns, address, port, path="/", timeout=5):
    """(status, body) of one GET over a new connection made inside ``ns``."""
    host = f"[{address}]" if ":" in str(address) else str(address)
    with in_netns(ns.name):
        sock = socket.create_connection((str(address), port), timeout=timeout)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def tcp_name(ns, address, port, timeout=5, source=None):
    """The first line a TCP member sends, over a new connection from ``ns``."""
    with in_netns(ns.name):
        sock = socket.create_connection((str(address), port), timeout=timeout,
                                        source_address=(str(source), 0) if source else None)
    with sock, sock.makefile("rb") as lines:
        return lines.readline().decode().strip()


NGINX_BACKEND_CONF = """pid nginx.pid;
error_log error.log warn;
worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path tmp;
    proxy_temp_path tmp;
    fastcgi_temp_path tmp;
    uwsgi_temp_path tmp;
    scgi_temp_path tmp;
    server {{
        listen {listen};
        keepalive_requests 100000;
        location / {{ default_type text/plain; return 200 "{name}\\n"; }}
    }}
}}
"""


class NginxBackend:
    """nginx in ``ns`` answering ``name`` on address:port; a child of ``lab`` (killed with
    it), in the foreground."""

    def __init__(self, lab, ns, address, port, name):
        self.directory = lab.tmpdir(f"backend-{name}")
        listen = f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
        (self.directory / "nginx.conf").write_text(
            NGINX_BACKEND_CONF.format(listen=listen, name=name))
        argv = ["nginx", "-p", f"{self.directory}/", "-c", self.directory / "nginx.conf",
                "-e", self.directory / "error.log", "-g", "daemon off;"]
        subprocess.run(["ip", "netns", "exec", ns.name, *map(str, argv), "-t", "-q"],
                       check=True, capture_output=True)
        self.proc = lab.spawn(ns, argv, log_path=self.directory / "stdout.log")
        wait_for_tcp(ns.name, str(address), port)
