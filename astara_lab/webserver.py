"""A tiny HTTP server for labs and tests: answers every GET/POST with JSON describing what
it saw (client address, path, headers, body). No name resolution, ever.

    python -m astara_lab.webserver --bind 198.51.100.200 --port 80 --name internet
"""
import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    server_version = "astara-lab-echo"
    name = "echo"

    def address_string(self):  # the default does a reverse DNS lookup
        return self.client_address[0]

    def log_message(self, fmt, *args):
        pass

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


class DualStackServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = self.server_address[:2]  # no getfqdn()


def serve(bind, port, name):
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    handler = type("Handler", (EchoHandler,), {"name": name})
    server_class = type("Server", (DualStackServer,), {"address_family": family})
    server = server_class((bind, port), handler)
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args(argv)
    serve(args.bind, args.port, args.name)


if __name__ == "__main__":
    main()
