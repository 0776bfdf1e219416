"""The GET floor and memory peer of the agent benchmark: a bare Flask app under gunicorn
with the agent's worker class (one ``gthread`` worker: gunicorn's own, as the agent's)
and thread count, answering
``GET /<name>`` with a constant body of the size given for that name.

    python test/bench/bare_app.py --bind ADDR:PORT --threads 8 --run-dir DIR \
        --body rules=61234 --body config=251000

``BareApp`` starts it in a namespace (the agent's, so both are measured from the same
place); ``KeepAliveReader`` is the reader thread used on both: one persistent HTTP/1.1
connection, one request per tick, latency per request.
"""
import argparse
import http.client
import os
import socket
import sys
import threading
import time

from flask import Flask, Response
from gunicorn.app.base import BaseApplication


def create_app(sizes):
    app = Flask("bare")
    bodies = {name: b"x" * size for name, size in sizes.items()}

    @app.get("/<name>")
    def body(name):
        if name not in bodies:
            return Response(b"", status=404)
        return Response(bodies[name], mimetype="application/octet-stream")

    return app


class BareApplication(BaseApplication):
    def __init__(self, app, bind, threads, run_dir):
        self.app, self.bind, self.threads, self.run_dir = app, bind, threads, run_dir
        super().__init__()

    def load_config(self):
        for key, value in {
                "bind": [self.bind], "workers": 1, "worker_class": "gthread",
                "threads": self.threads, "accesslog": None, "errorlog": "-",
                "pidfile": os.path.join(self.run_dir, "bare.pid"),
                "worker_tmp_dir": self.run_dir,
                "control_socket": os.path.join(self.run_dir, "gunicorn.ctl"),
                "control_socket_mode": 0o600}.items():
            self.cfg.set(key, value)

    def load(self):
        return self.app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--body", action="append", default=[], help="NAME=SIZE")
    args = parser.parse_args(argv)
    sizes = {name: int(size) for name, size in (b.split("=", 1) for b in args.body)}
    BareApplication(create_app(sizes), args.bind, args.threads, args.run_dir).run()
    return 0


# -- used by run_bench.py (not by the app process) ------------------------------------------

class BareApp:
    """The bare app running in ``ns`` on ``host``:``port``; ``proc.pid`` leads its session
    (gunicorn master and worker)."""

    def __init__(self, lab, ns, host, port, threads, sizes, role="bare"):
        from astara_netns import wait_for_tcp
        self.ns, self.host, self.port = ns, host, port
        run_dir = lab.tmpdir(role)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.proc = lab.spawn(ns, [sys.executable, os.path.abspath(__file__), "--bind", bind,
                                   "--threads", threads, "--run-dir", run_dir,
                                   *[f"--body={n}={s}" for n, s in sizes.items()]],
                              log_path=run_dir / "bare.log")
        wait_for_tcp(ns.name, host, port, timeout=30)


class NetnsKeepAlive(http.client.HTTPConnection):
    """An HTTP/1.1 connection whose socket is made inside a namespace and kept open."""

    def __init__(self, netns_name, host, port, timeout=60):
        super().__init__(host, port, timeout=timeout)
        self.netns_name = netns_name

    def connect(self):
        from astara_netns import in_netns
        with in_netns(self.netns_name):
            self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class KeepAliveReader(threading.Thread):
    """GET ``path`` every ``interval`` seconds until ``stop`` is set; ``samples`` holds
    each request's seconds (a request the server made us reconnect for counts the
    reconnection too, as a client would see it)."""

    def __init__(self, netns_name, host, port, path, interval, stop):
        super().__init__(daemon=True)
        self.connection = NetnsKeepAlive(netns_name, host, port)
        self.path, self.interval, self.stop = path, interval, stop
        self.samples, self.reconnects, self.error = [], 0, None

    def get(self):
        for attempt in (1, 2):
            try:
                self.connection.request("GET", self.path)
                response = self.connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {self.path}: HTTP {response.status}")
                return
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.reconnects += 1
                if attempt == 2:
                    raise

    def run(self):
        tick = time.perf_counter()
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                self.get()
                self.samples.append(time.perf_counter() - started)
                tick = max(tick + self.interval, time.perf_counter())
                self.stop.wait(max(0.0, tick - time.perf_counter()))
        except Exception as exc:  # noqa: BLE001 - reported by the bench, not lost in a thread
            self.error = exc
        finally:
            self.connection.close()


if __name__ == "__main__":
    sys.exit(main())
