"""``make bench``: orchestrator benchmarks — cold-start convergence of N routers and the
orchestrator's CPU per health round in steady state.

Each scenario builds a lab (fabric, management bridge, ``ctl`` namespace) and runs the real
``astara-orchestrator --netns <ctl>`` with the netns driver (every appliance is a namespace
with its NICs on the fabric's bridges):

1. *Populate*: the orchestrator is started paused (``global debug``), N routers are created
   through its admin API — each with a gateway on one shared external network, one tenant
   network/subnet as an interface and one VM port — and it is stopped. The pause flag is
   cleared in the store (the orchestrator is not running then).
2. *Cold start*: t0 = the orchestrator's start; it finds N routers and no appliance. Each
   router counts as converged when the admin API says ``configured`` and its appliance's
   committed hash (``GET /v1/system/config``, asked from ``ctl``) is the desired one
   (polled every 0.5 s). Peak RSS = the orchestrator's VmHWM.
3. *Health CPU*: after the last change, utime+stime of the orchestrator (``/proc/PID/stat``,
   all threads) over ``--rounds`` health periods, divided by the rounds actually done
   (polls counted by an nftables counter of TCP connections from ctl to port 5000, one per
   poll: the client's calls of a poll share a connection); an *idle* rate is measured
   first with every resource paused (the health loop ticks, polls nothing), so the net
   cost of polling N appliances can be told apart. The appliances' generations are checked
   unchanged across the window (nothing was pushed).

The main scenarios call the appliances over plain HTTP (``[tls] enabled = false``).
``--tls N`` adds a comparison, written to its own section: N real agents over plain HTTP,
then directly after it N over mutual TLS (the orchestrator's default). When ``--real``
has N, its plain-HTTP run is the comparison's (not run a second time) and the TLS run
follows it.

Appliances are real agents, or a stand-in (standin_agent.py: the agent API the health
loop and push use, real hash semantics, no dataplane) started by the same netns driver via
a wrapper interpreter (``[netns] python``), so the orchestrator runs exactly the same code.

    .venv/bin/python test/bench/bench_orchestrator.py [--real 20,100] [--standin 100]
        [--tls 20] [--period 5] [--rounds 6] [--output BENCHMARKS.md] [--profile FILE]
        [--keep-logs DIR]

Writes only its own section of BENCHMARKS.md (markdown_sections.py). 100 real agents need
~5 GB of RAM and ~3 minutes on 2 cores; the whole run takes ~12 minutes.
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from astara_lab.appliance import controller_node, tls_client_context  # noqa: E402
from astara_lab.cluster import (populate, router_id, standin_interpreter,  # noqa: E402
                                tenant_network_id)
from astara_lab.leftovers import find_leftovers  # noqa: E402
from astara_netns import Lab, NetnsHTTPClient  # noqa: E402
from astara_lab.orchestrator import OrchestratorProcess, errors_as, write_config  # noqa: E402
from bench_common import (add_output_option, cpu_seconds, machine_facts,  # noqa: E402
                          machine_line, require_root)
from bench_report import Summary  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)
from orchestrator_lite.config import DEFAULT_MGMT_NETWORK_ID  # noqa: E402
from orchestrator_lite.drivers.netns import NetnsDriver  # noqa: E402
from orchestrator_lite.store import Store  # noqa: E402

TOKEN = "bench-token"
API_PORT = 44250
CONNECTIONS_PER_POLL = 1  # orchestrator_lite/client.py: a poll's calls share a connection


class BenchError(RuntimeError):
    pass


class OrchestratorRun:
    """One lab with the orchestrator in its ctl namespace (netns driver)."""

    def __init__(self, lab, agents, period, tls=False):
        self.lab = lab
        self.agents = agents
        self.tls = tls
        self._tls_context = None
        self.fabric = lab.fabric()
        lab.bridge("b-mgmt")
        self.ctl = controller_node(lab, "b-mgmt")
        self.dir = lab.tmpdir("orchestrator")
        self.log = self.dir / "orchestrator.log"
        # None: the driver's default, the real agent.
        python = standin_interpreter(self.dir) if agents == "standin" else None
        self.ini = write_config(self.dir / "orchestrator.ini", {
            "DEFAULT": {"host": "bench", "state_dir": f"{self.dir}/state",
                        "log_level": "INFO"},
            "api": {"listen": "127.0.0.1", "port": API_PORT, "token": TOKEN},
            "health": {"period": period},
            "compute": {"driver": "netns"},
            "tls": {"enabled": "true" if tls else "false"},
            "netns": {"prefix": lab.prefix, "fabric": self.fabric.name,
                      "management_bridge": "b-mgmt", "state_root": f"{self.dir}/appliances",
                      "python": python}})
        self.orchestrator = OrchestratorProcess(self.ctl.name, self.ini, self.log,
                                                api_timeout=60)

    # -- process ---------------------------------------------------------------------------------
    def start(self):
        """Start the server; returns once the admin API answers."""
        with errors_as(BenchError):
            self.orchestrator.start(timeout=30)

    def stop(self):
        self.orchestrator.stop(timeout=20)

    def close(self):
        """Stop the orchestrator, then delete the appliances it left (on purpose: they
        outlive it) before the lab removes the fabric."""
        self.stop()
        driver = NetnsDriver(self.lab.prefix, self.dir / "appliances",
                             fabric=self.fabric.name)
        ids = [instance.id for instance in driver.list("ak-")]

        def delete(instance_id):  # one driver each: a driver serialises its own calls
            NetnsDriver(self.lab.prefix, self.dir / "appliances",
                        fabric=self.fabric.name).delete(instance_id)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(delete, i) for i in ids]:
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001 - clean up the rest anyway
                    print(f"  cleanup: {exc}", file=sys.stderr)

    @property
    def pid(self):
        return self.orchestrator.pid

    def cpu_seconds(self):
        return cpu_seconds(self.pid)

    def peak_rss_mib(self):
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def tail(self):
        return self.orchestrator.tail(4000)

    def check_running(self):
        with errors_as(BenchError):
            self.orchestrator.check_running("convergence")

    # -- admin API -------------------------------------------------------------------------------
    def api(self, method, path, body=None):
        with errors_as(BenchError):
            return self.orchestrator.api(method, path, body)

    def populate(self, count):
        """Create ``count`` routers with the orchestrator paused, then stop it and clear
        the pause so the next start is a cold start with everything to do."""
        self.start()
        self.api("POST", "/v1/global/debug", {"reason": "benchmark: populating"})
        populate(self.api, count)
        for i in range(count):
            self.api("POST", "/v1/ports", {"network_id": tenant_network_id(i),
                                           "device_id": f"vm-{i}",
                                           "device_owner": "compute:nova"})
        self.stop()
        store = Store(str(self.dir / "state" / "orchestrator.sqlite"),
                      DEFAULT_MGMT_NETWORK_ID)
        try:
            store.debug_flags.clear("global", "*")
        finally:
            store.close()

    # -- appliances ------------------------------------------------------------------------------
    def agent(self, instance):
        """An HTTP client for the instance's agent, from ctl (with TLS: the orchestrator's
        client certificate, verifying the instance's name)."""
        if not self.tls:
            return NetnsHTTPClient(self.ctl.name, instance["management_address"], 5000,
                                   timeout=10)
        if self._tls_context is None:
            pki = self.dir / "state" / "pki"
            self._tls_context = tls_client_context(pki / "ca.crt", pki / "client.crt",
                                                   pki / "client.key")
        return NetnsHTTPClient(self.ctl.name, instance["management_address"], 5000,
                               timeout=10, context=self._tls_context,
                               server_name=instance["name"])

    def committed(self, instance):
        """The appliance's committed config view, or None while it does not answer."""
        try:
            response = self.agent(instance).get("/v1/system/config")
        except OSError:
            return None
        return response.json() if response.status == 200 else None

    def in_sync(self, resource_id):
        """True when the resource is configured and every appliance's committed hash is
        the desired one."""
        resource = self.api("GET", f"/v1/resources/{resource_id}")["resource"]
        if resource["state"] != "configured" or not resource["instances"]:
            return False
        for instance in resource["instances"]:
            view = self.committed(instance)
            if view is None or view["hash"] != resource["desired_hash"].get(instance["name"]):
                return False
        return True

    def generations(self):
        """{instance name: committed generation} of every appliance."""
        result = {}
        for row in self.api("GET", "/v1/resources")["resources"]:
            resource = self.api("GET", f"/v1/resources/{row['id']}")["resource"]
            for instance in resource["instances"]:
                view = self.committed(instance)
                result[instance["name"]] = view and view["generation"]
        return result

    def states(self):
        return {r["id"]: r["state"] for r in self.api("GET", "/v1/resources")["resources"]}


def measure_convergence(run, ids, timeout):
    """Cold start: seconds from the orchestrator's start until each router is in sync."""
    t0 = time.monotonic()
    run.start()
    done = {}
    deadline = t0 + timeout
    while len(done) < len(ids):
        run.check_running()
        if time.monotonic() > deadline:
            states = run.states()
            raise BenchError(f"{len(ids) - len(done)} routers not converged after "
                             f"{timeout}s: {sorted(set(states.values()))}\n{run.tail()}")
        states = run.states()
        for rid in ids:
            if rid not in done and states.get(rid) == "configured" and run.in_sync(rid):
                done[rid] = time.monotonic() - t0
        time.sleep(0.5)
    return {"total": max(done.values()), "per_router": sorted(done.values()),
            "rss_mib": run.peak_rss_mib()}


POLL_COUNTER = """
table inet astara_bench {
  counter agent_connections { }
  chain out {
    type filter hook output priority 0; policy accept;
    tcp dport 5000 tcp flags & (syn | ack) == syn counter name "agent_connections"
  }
}
"""


def count_agent_connections(run):
    """TCP connections opened from ctl to appliance agents so far (an nftables counter
    inside the lab's ctl namespace). A steady-state health poll of one appliance opens
    one (CONNECTIONS_PER_POLL): its GET /v1/firewall/rules, /v1/status/ and
    /v1/system/config share it."""
    if not getattr(run, "_counting", False):
        run.ctl.run(["nft", "-f", "-"], input=POLL_COUNTER)
        run._counting = True
    out = run.ctl.run(["nft", "-j", "list", "counter", "inet", "astara_bench",
                       "agent_connections"]).stdout
    return next(item["counter"]["packets"] for item in json.loads(out)["nftables"]
                if "counter" in item)


def measure_health_cpu(run, ids, period, rounds, slice_rounds=2):
    """CPU seconds of the orchestrator per health round, all resources configured.

    Rounds are counted, not assumed: polls = agent connections / CONNECTIONS_PER_POLL,
    rounds = polls / N
    (when the workers cannot keep up, polls coalesce and fewer rounds happen than
    periods pass)."""
    time.sleep(period * 1.5)  # let the convergence tail (polls, timers) pass
    before = run.generations()
    count_agent_connections(run)
    # Idle: every resource paused, so the health loop ticks but polls nothing.
    run.api("POST", "/v1/global/debug", {"reason": "benchmark: idle measurement"})
    time.sleep(1.0)  # polls already queued finish
    idle_window = max(2 * period, 10.0)
    cpu0, conns0 = run.cpu_seconds(), count_agent_connections(run)
    time.sleep(idle_window)
    idle_rate = (run.cpu_seconds() - cpu0) / idle_window
    idle_polls = (count_agent_connections(run) - conns0) / CONNECTIONS_PER_POLL
    run.api("POST", "/v1/global/manage")
    time.sleep(period * 1.2)  # back to the normal rhythm (each resource is due in a period)
    samples = [(time.monotonic(), run.cpu_seconds(), count_agent_connections(run))]
    for _ in range(max(1, rounds // slice_rounds)):
        time.sleep(slice_rounds * period)
        samples.append((time.monotonic(), run.cpu_seconds(), count_agent_connections(run)))
    states = run.states()
    after = run.generations()
    if any(states.get(rid) != "configured" for rid in ids):
        raise BenchError(f"not steady: states {sorted(set(states.values()))}")
    if before != after:
        changed = sorted(k for k in after if before.get(k) != after[k])
        raise BenchError(f"not steady: generations changed on {changed}")
    if idle_polls:
        print(f"  note: {idle_polls:g} polls while paused", flush=True)

    def per_round(a, b):
        rounds_done = (b[2] - a[2]) / CONNECTIONS_PER_POLL / len(ids)
        return (b[1] - a[1]) / rounds_done if rounds_done else float("nan")

    wall = samples[-1][0] - samples[0][0]
    cpu = samples[-1][1] - samples[0][1]
    rounds_done = (samples[-1][2] - samples[0][2]) / CONNECTIONS_PER_POLL / len(ids)
    slices = [per_round(a, b) for a, b in zip(samples, samples[1:])]
    net = (cpu - idle_rate * wall) / rounds_done
    return {"per_round": cpu / rounds_done, "slices": slices, "net_per_round": net,
            "per_poll_ms": net / len(ids) * 1000, "idle_rate": idle_rate,
            "rounds": rounds_done, "nominal_rounds": wall / period, "window": wall,
            "cpu": cpu}


def profile(run, seconds, output):
    """py-spy one stretch of steady state (if py-spy is installed); writes collapsed
    stacks and returns the top own-time functions."""
    spy = os.environ.get("PY_SPY") or "py-spy"
    result = subprocess.run([spy, "record", "--pid", str(run.pid), "--duration",
                             str(int(seconds)), "--rate", "250", "--format", "raw",
                             "--threads", "--idle", "-o", str(output)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return f"py-spy failed: {result.stderr.strip()[-500:]}"
    return summarize_profile(output)


def summarize_profile(path, top=15):
    own, inclusive, total = {}, {}, 0
    for line in pathlib.Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in ("wait (threading", "select (", "poll (",
                                               "_wait_for_tstate_lock", "accept (")):
            continue  # sleeping threads (py-spy --idle samples them)
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"busy samples: {total}", "own time:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {frame}")
    lines.append("inclusive:")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top * 2]:
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def scenario(agents, count, period, rounds, timeout, profile_to=None, keep_logs=None,
             tls=False):
    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    print(f"benchmark: {count} routers, {agents} appliances, "
          f"{'mutual TLS' if tls else 'plain HTTP'} (load {load:.1f})", flush=True)
    ids = [router_id(i) for i in range(count)]
    with Lab() as lab:
        run = OrchestratorRun(lab, agents, period, tls)
        try:
            started = time.monotonic()
            run.populate(count)
            print(f"  populated in {time.monotonic() - started:.1f}s", flush=True)
            convergence = measure_convergence(run, ids, timeout)
            print(f"  converged in {convergence['total']:.1f}s", flush=True)
            first = run.api("GET", f"/v1/resources/{ids[0]}")["resource"]["instances"][0]
            rules = run.agent(first).get("/v1/firewall/rules")
            print(f"  liveness answer (firewall rules): {len(rules.body)} bytes", flush=True)
            health = measure_health_cpu(run, ids, period, rounds)
            print(f"  health: {health['per_round']:.3f} CPU s per round "
                  f"(net {health['net_per_round']:.3f}), idle {health['idle_rate']:.4f}/s, "
                  f"{health['rounds']:.1f} rounds in {health['nominal_rounds']:.1f} periods",
                  flush=True)
            if profile_to:
                print(profile(run, period * 2, profile_to), flush=True)
            rss = run.peak_rss_mib()
        finally:
            run.close()
            if keep_logs:
                target = pathlib.Path(keep_logs) / \
                    f"orchestrator-{agents}-{count}{'-tls' if tls else ''}.log"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(run.log.read_bytes() if run.log.exists() else b"")
        prefix = lab.prefix
    leftovers = find_leftovers(prefix)
    clean = not any(leftovers.values())
    if not clean:
        print(f"  LEFTOVERS of {prefix}: {leftovers}", file=sys.stderr)
    return {"agents": agents, "count": count, "convergence": convergence, "health": health,
            "rss_mib": max(rss, convergence["rss_mib"]), "clean": clean, "load": load,
            "tls": tls}


LABEL = {"real": "real agents", "standin": "stand-ins"}


def label(r, transport=False):
    text = LABEL[r["agents"]]
    return f"{text}, {'mutual TLS' if r['tls'] else 'plain HTTP'}" if transport else text


def convergence_table(results, transport=False):
    lines = ["| routers | appliances | all converged | first router | per router median "
             "| per router max | orchestrator peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        per = Summary.of(r["convergence"]["per_router"])
        lines.append(f"| {r['count']} | {label(r, transport)} "
                     f"| {r['convergence']['total']:.1f} s | {per.low:.1f} s "
                     f"| {per.median:.1f} s | {per.high:.1f} s | {r['rss_mib']:.0f} MiB |")
    return lines


def health_table(results, transport=False):
    lines = ["| appliances | rounds done / periods | CPU per round (range) | net per round "
             "| net per appliance poll | idle | at the default 60 s period "
             "| host load at start |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        h = r["health"]
        at_default = (h["net_per_round"] / 60 + h["idle_rate"]) * 100
        lines.append(
            f"| {r['count']} {label(r, transport)} "
            f"| {h['rounds']:.1f} / {h['nominal_rounds']:.1f} "
            f"| {h['per_round'] * 1000:.0f} ms ({min(h['slices']) * 1000:.0f}–"
            f"{max(h['slices']) * 1000:.0f}) "
            f"| {h['net_per_round'] * 1000:.0f} ms | {h['per_poll_ms']:.1f} ms "
            f"| {h['idle_rate'] * 100:.2f} % of a core "
            f"| {at_default:.2f} % of a core | {r['load']:.1f} |")
    return lines


def render(facts, results, period, rounds):
    lines = [
        "## Orchestrator: cold-start convergence and health-round CPU", "",
        f"`make bench` {machine_line(facts)}. `astara-orchestrator` (netns driver, 4 worker "
        "threads, default timeouts, health period "
        f"{period:g} s) in a lab's ctl namespace. Each router: a gateway on one shared "
        "external network, one tenant network/subnet, one VM port; created through the "
        "admin API *before* the orchestrator starts (populated while paused, then "
        "stopped). Appliances are namespaces with 3 NICs; *real agents* = the real "
        "appliance agent, *stand-ins* = test/bench/standin_agent.py (the agent API the "
        "health loop and push use, real hash semantics, no dataplane), started by the "
        "same driver. Appliances are called over plain HTTP here (`[tls] enabled = "
        "false`); the next section compares mutual TLS.", "",
        "Cold start: from starting the orchestrator until every router is `configured` "
        "and its appliance's committed hash is the desired one (polled every 0.5 s).", "",
        *convergence_table(results),
        "", f"Health CPU: orchestrator utime+stime (all threads) over {rounds} health "
        "periods in steady state (all configured, nothing pushed: every appliance's "
        "generation unchanged), divided by the rounds actually done. A round = every "
        "resource polled once (liveness GET, status GET, desired payload built and hashed, "
        "committed hash checked with If-None-Match); polls are counted as the TCP "
        "connections from ctl to the agents (nftables counter in ctl, one per poll: the "
        "calls of a poll share a connection), so *rounds done / periods* below 100 % means "
        "the 4 workers could not keep up with the period and polls coalesced. Range = per "
        "2-period slice. *Idle* = the same process with every resource paused (health loop "
        "ticking, nothing polled); *net* = per round minus idle; the last column projects "
        "net + idle to the default 60 s period.", "",
        *health_table(results)]
    return "\n".join(lines) + "\n"


def render_tls(facts, results, period, rounds):
    lines = [
        "## Orchestrator: mutual TLS against plain HTTP", "",
        f"`make bench` {machine_line(facts)}. The scenario of the section above with real "
        "agents, run twice in a row: appliances called over plain HTTP (`[tls] enabled = "
        "false`), then over mutual TLS (the default: each agent serves HTTPS requiring the "
        "orchestrator's client certificate, which verifies the instance's name). A poll's "
        "calls share one connection, so one TLS handshake (both ends verify a "
        f"certificate) per appliance per poll. Health period {period:g} s, {rounds} periods "
        "measured, columns as above.", "",
        *convergence_table(results, transport=True), "",
        *health_table(results, transport=True)]
    return "\n".join(lines) + "\n"


def parse_counts(text):
    return [int(x) for x in text.split(",") if x.strip()] if text else []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default="20,100",
                        help="router counts to run with real agents (comma list)")
    parser.add_argument("--tls", default="20",
                        help="routers (comma-separated) of the plain HTTP / mutual TLS "
                        "comparison with real agents (empty: none)")
    parser.add_argument("--standin", default="100",
                        help="router counts to run with stand-in appliances (comma list)")
    parser.add_argument("--period", type=float, default=5.0, help="health period (s)")
    parser.add_argument("--rounds", type=int, default=6, help="health rounds measured")
    parser.add_argument("--timeout", type=float, default=600, help="convergence timeout")
    parser.add_argument("--profile", help="py-spy the biggest scenario's steady state into "
                                          "this file (needs py-spy; $PY_SPY)")
    parser.add_argument("--keep-logs", help="copy each orchestrator log into this dir")
    add_output_option(parser)
    args = parser.parse_args(argv)
    require_root()
    facts = machine_facts()
    results, compared = [], []
    plan = [("real", n) for n in parse_counts(args.real)] + \
        [("standin", n) for n in parse_counts(args.standin)]
    biggest = max(plan, key=lambda p: p[1], default=None)
    tls_counts = parse_counts(args.tls)

    def over_tls(count):
        return scenario("real", count, args.period, args.rounds, args.timeout,
                        keep_logs=args.keep_logs, tls=True)

    for agents, count in plan:
        results.append(scenario(agents, count, args.period, args.rounds, args.timeout,
                                args.profile if (agents, count) == biggest else None,
                                args.keep_logs))
        if agents == "real" and count in tls_counts:  # its TLS twin, back to back
            compared += [results[-1], over_tls(count)]
    for count in tls_counts:
        if ("real", count) not in plan:
            compared += [scenario("real", count, args.period, args.rounds, args.timeout,
                                  keep_logs=args.keep_logs), over_tls(count)]
    if results:
        text = render(facts, results, args.period, args.rounds)
        write_section(args.output, "orchestrator", text)
        print(text)
    if compared:
        text = render_tls(facts, compared, args.period, args.rounds)
        write_section(args.output, "orchestrator-tls", text)
        print(text)
    if not all(r["clean"] for r in results + compared):
        print("leftovers found (see above): astara-leftovers --remove", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
