"""A light stand-in for the appliance agent, for orchestrator benchmarks with more
appliances than real agents can boot on a small machine (bench_orchestrator.py).

It answers exactly the agent API the orchestrator's health loop and config push use, with
the real semantics, and nothing else (no dataplane):

* ``GET /v1/status/``: always ready; ``POST /v1/system/config/confirm``: nothing awaits
  (``?confirm_timeout=N`` on a PUT is accepted: the stand-in never reverts)
* ``GET /v1/firewall/rules``: 200, a plain-text ruleset of a real appliance's size
  (the liveness probe);
* ``GET /v1/system/interfaces``: the namespace's ``ethN`` as ``geN`` with their MACs,
  read live like the agent does;
* ``GET /v1/system/config``: ``{configuration, generation, hash}``, ETag = the hash, 304 on a
  matching ``If-None-Match``;
* ``PUT /v1/system/config``: application/json only; the hash is
  ``astara_router.store.payload_hash`` (what the orchestrator compares); the generation
  only moves when the hash changes, as with the real engine; the ownership epoch fence
  (``astara_router.fencing``) and the push log line are the real agent's.

The netns driver starts it in place of the agent through a wrapper "interpreter"
(``[netns] python``): its command line keeps ``-m astara_router.cli.api ...`` so the
driver's liveness check of the agent process still recognises it. Stdlib, msgspec and the
agent's light modules (banner constants, store, fencing, history, logs; no flask): ~15 MB
and a few ms of CPU to start.
"""
import argparse
import json
import os
import sys
import threading
import time

from astara_lab.webserver import QuietHandler, make_server
from astara_router import API_VERSION, BANNER, CAPABILITIES, logs
from astara_router.fencing import (EPOCH_HEADER, ORCHESTRATOR_HEADER, EpochFence, StaleEpoch,
                                   parse_epoch, push_sender)
from astara_router.history import History
from astara_router.store import payload_hash

# A real router-basic appliance serves ~3-4 KB of nftables ruleset here.
RULES = "".join(f"table inet astara_{n} {{\n  chain c {{ type filter hook forward priority 0; "
                f"ct state established,related accept; }}\n}}\n" for n in range(32))


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.generation = 0
        self.payload = None
        self.hash = None

    def view(self):
        return {"configuration": self.payload or {}, "generation": self.generation,
                "hash": self.hash}


def interfaces():
    result = []
    names = sorted((n for n in os.listdir("/sys/class/net") if n.startswith("eth")),
                   key=lambda n: int(n[3:]) if n[3:].isdigit() else 1 << 30)
    for name in names:
        base = f"/sys/class/net/{name}"
        with open(f"{base}/address") as f:
            mac = f.read().strip()
        with open(f"{base}/mtu") as f:
            mtu = int(f.read())
        with open(f"{base}/operstate") as f:
            up = f.read().strip() != "down"
        result.append({"ifname": "ge" + name[3:], "lladdr": mac, "addresses": [], "mtu": mtu,
                       "state": "up" if up else "down", "description": "", "groups": [],
                       "media": None, "kernel_name": name})
    return result


def log(message):
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')},{int(time.time() * 1000) % 1000:03d} "
          f"{os.getpid()} INFO standin: {message}", flush=True)


def make_handler(state, fence):
    history = History()

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def send(self, status, body=b"", ctype="application/json", headers=()):
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            if status != 304:
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status != 304:
                self.wfile.write(body)

        def json(self, status, obj, headers=()):
            self.send(status, (json.dumps(obj, sort_keys=True) + "\n").encode(),
                      headers=headers)

        def do_GET(self):
            if self.path in ("/v1/", "/v1/base/"):
                with state.lock:
                    self.json(200, {"service": BANNER, "state": "ready",
                                    "generation": state.generation,
                                    "enabled_services": ["router", "loadbalancer"],
                                    "api_version": API_VERSION,
                                    "capabilities": list(CAPABILITIES)})
            elif self.path == "/v1/status/":  # always healthy: no daemons to supervise
                with state.lock:
                    self.json(200, {"state": "ready", "generation": state.generation,
                                    "reasons": [], "last_error": None,
                                    "awaiting_confirmation": None})
            elif self.path == "/v1/firewall/rules":
                self.send(200, RULES.encode(), "text/plain; charset=utf-8")
            elif self.path == "/v1/system/interfaces":
                self.json(200, {"interfaces": interfaces()})
            elif self.path == "/v1/system/config":
                with state.lock:
                    etag = f'"{state.hash or "none"}"'
                    if self.headers.get("If-None-Match") == etag:
                        self.send(304, headers=[("ETag", etag)])
                    else:
                        self.json(200, state.view(), headers=[("ETag", etag)])
            else:
                self.json(404, {"error": "Not Found", "message": self.path})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path != "/v1/system/config/confirm":
                return self.json(404, {"error": "Not Found", "message": self.path})
            with state.lock:
                self.json(200, {"confirmed": None, "generation": state.generation})

        def do_PUT(self):
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            # ?confirm_timeout=N: a stand-in's generation never reverts (confirmed at once)
            if self.path.split("?", 1)[0] != "/v1/system/config":
                return self.json(404, {"error": "Not Found", "message": self.path})
            if self.headers.get_content_type() != "application/json":
                return self.json(415, {"error": "Unsupported Media Type",
                                       "message": "the body must be application/json"})
            try:
                body = json.loads(data or b"")
            except ValueError as exc:
                return self.json(400, {"error": "Bad Request", "message": str(exc)})
            if not isinstance(body, dict):
                return self.json(422, {"error": "Unprocessable Entity",
                                       "message": "the payload must be a JSON object"})
            orchestrator = self.headers.get(ORCHESTRATOR_HEADER, "")[:255]
            try:
                epoch = parse_epoch(self.headers.get(EPOCH_HEADER))
            except ValueError as exc:
                return self.json(400, {"error": "Bad Request", "message": str(exc)})
            digest = payload_hash(body)
            sender = push_sender(orchestrator, epoch)
            try:
                # The same fence and log lines as the real agent (astara_router.api): the
                # push's one line from its activity (history.py).
                with fence.admitted(epoch, orchestrator), state.lock, \
                        history.activity("push", None, state.generation, sender) as activity:
                    changed = digest != state.hash
                    if changed:
                        state.generation += 1
                        state.payload, state.hash = body, digest
                    history.transaction(changed, {}, state.generation)
                    activity.finish(state.generation, 1 if changed else 0)
                    view = dict(state.view(), changes=1 if changed else 0)
            except StaleEpoch as exc:
                log(f"config push {sender} refused: {exc}")
                return self.json(409, exc.to_dict())
            self.json(200, view, headers=[("ETag", f'"{digest}"')])

    return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", dest="module")  # the agent's argv, kept for the driver
    parser.add_argument("--state-dir")
    parser.add_argument("--enabled-services")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    state_dir = args.state_dir or "."
    os.makedirs(state_dir, exist_ok=True)
    logs.configure(stream=sys.stdout)
    server = make_server("::", args.port, make_handler(State(), EpochFence(state_dir)))
    print(f"stand-in agent on [::]:{args.port} (pid {os.getpid()})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
