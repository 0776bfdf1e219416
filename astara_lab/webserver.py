"""HTTP servers for labs, tests and benchmarks that never resolve names (a namespace has no
DNS, and http.server would spend seconds per reverse lookup): ``QuietHandler`` and
``make_server`` are the base every test server uses. Run as a program, an echo server that
answers every GET/POST/PUT with JSON describing what it saw (client, path, headers, body).

    python -m astara_lab.webserver --bind 198.51.100.200 --port 80 --name internet
"""
import argparse
import json
import socket
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """No reverse DNS in log lines, and no log lines."""

    def address_string(self):  # the default does a reverse DNS lookup
        return self.client_address[0]

    def log_message(self, fmt, *args):
        pass


class EchoHandler(QuietHandler):
    server_version = "astara-lab-echo"
    protocol_version = "HTTP/1.1"  # keep-alive: a connection can outlive a router failover
    name = "echo"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        payload = json.dumps({"server": self.name, "client": self.client_address[0],
                              "method": self.command, "path": self.path, "body": body,
                              "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # tests open dozens of connections at once

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # no getfqdn()


class QuietServer6(QuietServer):
    address_family = socket.AF_INET6


def make_server(bind, port, handler):
    """A threaded server on ``bind`` (IPv4 or IPv6 literal) and ``port`` (0: any)."""
    return (QuietServer6 if ":" in bind else QuietServer)((bind, port), handler)


def serve(bind, port, name):
    make_server(bind, port, type("Handler", (EchoHandler,), {"name": name})).serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args(argv)
    serve(args.bind, args.port, args.name)


if __name__ == "__main__":
    main()
