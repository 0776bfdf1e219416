"""``make bench``: the load balancer — requests per second through the appliance's nginx
beside the same backends reached directly, and member changes applied while 100 client
connections are busy (failed requests counted).

One appliance namespace runs the real agent with ``loadbalancer-http`` (VIP 10.70.0.20:80,
round robin over 10.70.0.11 and .12); the members are nginx processes answering their name
(fast, so the load balancer is what is measured), in a "web" namespace on the same bridge;
wrk runs in a "client" namespace there. Every run is bounded in time (wrk ``-d``).

* *direct*: one wrk per backend at the same time, half the connections each; the sum.
* *through the load balancer*: two wrk on the VIP at the same time, the same connections.
* *member changes under load*: 100 keep-alive connections stay busy on the VIP while the
  agent gets a PUT every 0.5 s that swaps the pool between {.11}, {.12} and {.11, .12}
  (each one an ``nginx -t`` + SIGHUP reload): once with a Python client that retries what
  the server never read, as HTTP clients do (its failures are the result), once with wrk,
  which never retries (its socket errors are that race).

    .venv/bin/python test/bench/bench_loadbalancer.py [--seconds 8] [--output BENCHMARKS.md]
"""
import argparse
import asyncio
import copy
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from astara_lab.appliance import contract_appliance, contract_payloads  # noqa: E402
from astara_lab.backends import NginxBackend, http_get  # noqa: E402
from astara_lab.peers import eventually  # noqa: E402
from astara_netns import Lab, in_netns  # noqa: E402
from bench_common import (add_output_option, machine_facts, machine_line,  # noqa: E402
                          require_root)
from bench_report import Summary  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)

NAME = "loadbalancer-http"
VIP = "10.70.0.20"
MEMBERS = ("10.70.0.11", "10.70.0.12")
CONNECTIONS = 64
RELOAD_CONNECTIONS = 100
CHANGE_INTERVAL = 0.5


class WrkResult:
    def __init__(self, output):
        self.output = output
        self.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
        self.requests = int(re.search(r"(\d+) requests in", output).group(1))
        socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                                  r"timeout (\d+)", output)
        self.socket_errors = sum(map(int, socket_errors.groups())) if socket_errors else 0
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        self.non_2xx = int(non_2xx.group(1)) if non_2xx else 0
        latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", output, re.M))
        self.p50, self.p99 = latency.get("50", "?"), latency.get("99", "?")


def wrk(ns, url, connections, seconds, threads=1):
    return subprocess.Popen(["ip", "netns", "exec", ns.name, "wrk", "--latency",
                             f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout",
                             "5s", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, seconds):
    out, _ = proc.communicate(timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {out}")
    return WrkResult(out)


class KeepAliveClients:
    """``count`` keep-alive HTTP/1.1 connections, each sending GETs back to back, from a
    thread of this process (sockets made in ``ns``). A request on a *reused* connection
    that the server closes before answering a single byte is retried on a new connection,
    as HTTP clients do (RFC 9112 9.3.1: the server never read it; nginx's old workers close
    idle keep-alive connections when they are told to shut down gracefully). Everything
    else is a failure: a refused or reset new connection, a cut or non-200 answer."""

    def __init__(self, ns, host, count):
        self.ns, self.host, self.count = ns, host, count
        self.ok = self.retried = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    def start(self):
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join(30)

    async def _connect(self):
        with in_netns(self.ns.name):
            sock = socket.create_connection((self.host, 80), timeout=5)
        sock.setblocking(False)
        return await asyncio.open_connection(sock=sock)

    async def _one(self):
        request = f"GET / HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        reader = writer = None
        reused = False
        while not self.stop.is_set():
            if writer is None:
                try:
                    reader, writer = await self._connect()
                except OSError:
                    self.failed += 1
                    await asyncio.sleep(0.01)
                    continue
                reused = False
            try:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
                await asyncio.wait_for(reader.readexactly(length), 5)
                if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                    self.failed += 1
                else:
                    self.ok += 1
                reused = True
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                partial = getattr(exc, "partial", b"")
                if reused and not partial:
                    self.retried += 1  # closed idle keep-alive: never read by the server
                else:
                    self.failed += 1
                writer.close()
                writer = None
            except (OSError, asyncio.TimeoutError, AttributeError):
                self.failed += 1
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def _main(self):
        await asyncio.gather(*(self._one() for _ in range(self.count)))


def put(app, payload):
    started = time.monotonic()
    response = app.client().put_json("/v1/system/config", payload)
    if response.status != 200:
        raise RuntimeError(f"PUT refused: {response.status} {response.text}")
    return time.monotonic() - started


def run(seconds):
    lab = Lab()
    try:
        payload = copy.deepcopy(contract_payloads()[NAME])
        app = contract_appliance(lab, NAME, payload, enabled_services=("loadbalancer",))
        web, client = lab.netns("web"), lab.netns("client")
        lab.plug(web, "eth0", "b-app-1")
        lab.plug(client, "eth0", "b-app-1")
        client.ip("addr", "add", "10.70.0.99/24", "dev", "eth0", "nodad")
        for address in MEMBERS:
            web.ip("addr", "add", f"{address}/24", "dev", "eth0", "nodad")
            NginxBackend(lab, web, address, 80, address)
        first_apply = put(app, payload)
        eventually(lambda: http_get(client, VIP, 80)[0] == 200, 10, "the VIP answers")

        # Two wrk processes either way (one per backend / both on the VIP), so the load
        # generator gets the same share of the cores in both runs.
        direct = [wrk(client, f"http://{address}/", CONNECTIONS // 2, seconds)
                  for address in MEMBERS]
        direct = [finish(proc, seconds) for proc in direct]
        through = [wrk(client, f"http://{VIP}/", CONNECTIONS // 2, seconds) for _ in MEMBERS]
        through = [finish(proc, seconds) for proc in through]

        pool = payload["services"]["loadbalancer"]["listeners"][0]["default_pool"]
        both = copy.deepcopy(pool["members"])
        variants = [both[:1], both[1:], both]
        def changes_meanwhile():
            time.sleep(1)  # every connection open and busy
            times = []
            deadline = time.monotonic() + seconds - 2
            while time.monotonic() < deadline:
                pool["members"] = copy.deepcopy(variants[len(times) % len(variants)])
                times.append(put(app, payload))
                time.sleep(CHANGE_INTERVAL)
            return times

        loaded = wrk(client, f"http://{VIP}/", RELOAD_CONNECTIONS, seconds)
        wrk_changes = changes_meanwhile()
        under_load = finish(loaded, seconds)
        clients = KeepAliveClients(client, VIP, RELOAD_CONNECTIONS)
        started = time.monotonic()
        clients.start()
        change_times = changes_meanwhile()
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        clients.finish()
        clients.seconds = time.monotonic() - started
        return {"direct": direct, "through": through, "under_load": under_load,
                "wrk_changes": wrk_changes, "clients": clients, "changes": change_times,
                "first_apply": first_apply}
    finally:
        lab.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    add_output_option(parser)
    args = parser.parse_args(argv)
    require_root()
    facts = machine_facts()
    result = run(args.seconds)
    direct, through, loaded = result["direct"], result["through"], result["under_load"]
    direct_rps = sum(r.rps for r in direct)
    through_rps = sum(r.rps for r in through)
    changes, clients = result["changes"], result["clients"]
    put_times = Summary.of(changes)
    failed = clients.failed
    if failed == 0 and loaded.non_2xx == 0:
        verdict = "No request that nginx read failed or was cut."
    else:
        verdict = (f"Beyond that race, {failed} requests of the retrying clients failed (a "
                   "refused or reset new connection, a cut or non-200 answer) and wrk got "
                   f"{loaded.non_2xx} non-2xx responses.")
    lines = [
        "## Load balancer: requests per second, member changes under load", "",
        f"`make bench` {machine_line(facts)}, nginx {nginx_version()}. The appliance runs "
        f"the real agent with `{NAME}` (HTTP :80, round robin over 2 members); members are "
        "nginx processes answering their name, in a namespace on the same bridge; the load "
        "generator is wrk (two processes of 1 thread, keep-alive, "
        f"{args.seconds} s per run) in a third namespace. Everything shares the same "
        f"{facts['cores']} cores, so the direct figure is the ceiling the machine allows.",
        "",
        "| path | connections | requests/s | p50 | p99 | failed |",
        "|---|---|---|---|---|---|",
        f"| the 2 backends directly (one wrk each, summed) | {CONNECTIONS} | "
        f"{direct_rps:,.0f} | {direct[0].p50} / {direct[1].p50} | "
        f"{direct[0].p99} / {direct[1].p99} | "
        f"{sum(r.non_2xx + r.socket_errors for r in direct)} |",
        f"| through the load balancer (two wrk on the VIP, summed) | {CONNECTIONS} | "
        f"{through_rps:,.0f} ({through_rps / direct_rps:.0%} of direct) | "
        f"{through[0].p50} / {through[1].p50} | {through[0].p99} / {through[1].p99} | "
        f"{sum(r.non_2xx + r.socket_errors for r in through)} |",
        "",
        f"Member changes under load: {RELOAD_CONNECTIONS} keep-alive connections send GETs "
        f"back to back to the VIP while the agent gets a PUT every {CHANGE_INTERVAL} s "
        "swapping the pool between {.11}, {.12} and {.11, .12}. Each PUT is `nginx -t` on "
        "a candidate tree, the files swapped, SIGHUP (graceful: the old workers finish "
        "the requests they have read) and the new configuration's digest confirmed.",
        "",
        "| client | member changes | requests | failed | retried on a new connection |",
        "|---|---|---|---|---|",
        f"| HTTP/1.1 clients that retry a request the server never read (RFC 9112 9.3.1) | "
        f"{len(changes)} | {clients.ok:,} ({clients.ok / clients.seconds:,.0f}/s) | "
        f"**{clients.failed}** | {clients.retried} |",
        f"| wrk (never retries) | {len(result['wrk_changes'])} | {loaded.requests:,} | "
        f"{loaded.non_2xx} non-2xx, {loaded.socket_errors} socket errors | — |",
        "",
        "The retried requests (and wrk's socket errors) are the keep-alive race every "
        "graceful nginx reload has: an old worker closes its *idle* keep-alive connections "
        "at once, and a request the client sent at that moment is never read; HTTP clients "
        f"resend it on a new connection. {verdict} "
        f"PUT round trip under load: median {put_times.median * 1000:.0f} ms, max "
        f"{put_times.high * 1000:.0f} ms (first apply, nginx started: "
        f"{result['first_apply'] * 1000:.0f} ms).",
    ]
    text = "\n".join(lines) + "\n"
    write_section(args.output, "loadbalancer", text)  # only this script's section
    print(text)
    return 0 if failed == 0 else 1


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\S+)", out)
    return match.group(1) if match else "?"


if __name__ == "__main__":
    sys.exit(main())
