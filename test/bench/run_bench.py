"""``make bench``: the real agent against its floors, as issue 8 asks — every figure beside
its floor (or peer) measured in the same run, interleaved (A B A B ...), median of
``--repeat`` runs with min–max, in ONE table with the goal and whether it is met.

Scenarios (``--only SUBSTRING`` picks by name, case-insensitively):

  router-basic cold apply   first PUT of router-basic on a freshly started agent with no
                            state; PSS of the agent, idle, afterwards
  full apply 1000 FIPs      first PUT of the synthetic 1 000 FIPs / 50 networks router
  full apply 5000 FIPs      the same with 5 000 FIPs; PSS with 5 000 FIPs
  add 1 FIP (1000)          PUT with one more FIP on a router with 1 000
  identical re-apply (1000) the same bytes again: time, kernel changes, daemon restarts
  GET config idle (1000)    GET /v1/system/config p50 with nothing else going on
  GET during applies (1000) GET /v1/firewall/rules and /v1/system/config p50/p99 while a
                            writer PUTs two payloads in a loop

Each apply run is a fresh lab (agent namespace, orchestrator namespace "ctl", floor
namespace with the same NICs); the 1 000-FIP scenarios share one agent loaded once. The
floors are in agent_floor.py, the GET floor and memory peer (a bare gunicorn+Flask app) in
bare_app.py, the statistics and the table in bench_report.py. Writes the "agent" section
of BENCHMARKS.md (markdown_sections.py) after a full run; a ``--quick`` or ``--only`` run
only prints its table unless ``--output`` is given.

    .venv/bin/python test/bench/run_bench.py [--repeat 5] [--only SUBSTRING] [--quick]
        [--get-seconds 20] [--output BENCHMARKS.md]
"""
import argparse
import copy
import ipaddress
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from astara_lab.appliance import (Appliance, contract_payloads, controller_node,  # noqa: E402
                                  management_cidr, nic_macs)
from astara_lab.monitors import NetlinkMonitor, NftMonitor  # noqa: E402
from astara_lab.synthetic import synthetic_router  # noqa: E402
from astara_netns import Lab, pid_alive  # noqa: E402
from astara_router.settings import Settings  # noqa: E402 (the agent's default thread count)

from agent_floor import (FloorNamespace, element_script, process_argv,  # noqa: E402
                         read_kernel_state, running_daemons)
from bare_app import BareApp, KeepAliveReader  # noqa: E402
from bench_common import (BENCHMARKS, CLK_TCK, cpu_seconds, machine_facts,  # noqa: E402
                          machine_line, require_root, stat_fields)
from bench_report import (Goal, markdown_table, measured_row, percentile,  # noqa: E402
                          ratio_goal)
from markdown_sections import write_section  # noqa: E402

BARE_PORT = 5001  # the bare app, in the agent's namespace next to the agent's 5000
# One round of GETs during applies: ~1 000 requests a reader, so its p99 is the 10th-slowest
# answer. Rounds of 6 s (~300 requests, the p99 their 3rd-slowest) swung the per-round ratio
# 0.7-4.5x against the bare app read at the same time.
GET_SECONDS = 20.0
NETWORKS = 50


@dataclass(frozen=True)
class Options:
    repeat: int
    get_seconds: float  # one round of GETs during applies (GET_SECONDS)
    idle_seconds: float  # one round of idle GETs
    interval: float = 0.02  # each reader: one request per interval


# -- the agent's processes -------------------------------------------------------------------

def python_processes(ns):
    """``{pid: (session, command)}`` of the Python processes in a namespace."""
    found = {}
    for pid in ns.pids():
        if not pid_alive(pid):
            continue
        exe, argv = process_argv(pid)
        try:
            session = os.getsid(pid)
        except OSError:
            continue
        if exe and exe.startswith("python"):
            found[pid] = (session, " ".join(os.path.basename(a) for a in argv[:3]))
    return found


def own_processes(ns, bare_session=None):
    """``{pid: command}`` of the agent's own processes: every Python process in its
    namespace (gunicorn master and workers, the metadata proxy when it is a separate
    process) but the bare app's — not dnsmasq, BIRD or the tools the agent runs."""
    return {pid: command for pid, (session, command) in python_processes(ns).items()
            if session != bare_session}


def pss_bytes(pids):
    total = 0
    for pid in pids:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def wait_idle(pids_of, window=0.1, timeout=5.0):
    """Until the processes used at most one clock tick of CPU over ``window`` (announcements
    and other work after an answer are over); False when that never happened."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(*pids_of(), skip_gone=True)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_seconds(*pids_of(), skip_gone=True)
        if now - before < 1.5 / CLK_TCK:  # one tick at the most
            return True
        before = now
    return False


def long_lived(ns, exclude):
    """``{pid: command}`` of every process in the namespace but ``exclude`` (the bench's own
    monitors and bare app): the daemons and the agent."""
    found = {}
    for pid in ns.pids():
        if pid in exclude or not pid_alive(pid):
            continue
        try:
            if os.getsid(pid) in exclude:
                continue
        except OSError:
            continue
        exe, argv = process_argv(pid)
        found[pid] = " ".join([exe or "?", *argv[1:3]])
    return found


# -- one agent in one lab --------------------------------------------------------------------

class AgentLab:
    """Management bridge, the orchestrator's namespace, a floor namespace with the agent's
    NICs and a freshly started agent with no configuration."""

    def __init__(self, lab, name, payload):
        self.lab = lab
        mgmt = lab.bridge("b-mgmt")
        ctl = controller_node(lab, mgmt)
        macs = nic_macs(name, payload)
        self.appliance = Appliance(lab, "app", macs, management_cidr(payload), mgmt,
                                   controller=ctl)
        self.floor = FloorNamespace(lab, "floor", macs)
        self.appliance.configure_management()
        self.appliance.start()
        self.client = self.appliance.client(timeout=600)
        self.host = str(self.appliance.mgmt.ip)
        self.bare = None
        self.settle()

    @property
    def ns(self):
        return self.appliance.ns

    def own_pids(self):
        return own_processes(self.ns, self.bare.proc.pid if self.bare else None)

    def settle(self):
        if not wait_idle(self.own_pids):
            print("    (the agent did not go idle within 5 s)", flush=True)

    def put(self, body):
        """Seconds for one PUT round trip of ``body`` (bytes), from the orchestrator's
        namespace."""
        started = time.perf_counter()
        response = self.client.put_raw("/v1/system/config", body, "application/json")
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"PUT: HTTP {response.status}: {response.text[:500]}")
        return elapsed

    def get(self, path):
        response = self.client.get(path)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return response.body

    def floor_inputs(self):
        """What the floor rebuilds: the agent's kernel state, ruleset and daemons."""
        daemons = [d.rebased(self.appliance.state_dir, self.floor.dir / "state")
                   for d in running_daemons(self.ns)]
        return read_kernel_state(self.ns), self.get("/v1/firewall/rules").decode(), daemons

    def full_floor(self, payload_bytes):
        state, ruleset, daemons = self.floor_inputs()
        seconds = self.floor.full_apply(state, ruleset, payload_bytes, daemons)
        made = self.floor.state()
        if made != state:
            raise RuntimeError(f"the floor made another state than the agent's: "
                               f"missing {sorted(state.addresses - made.addresses)[:3]} "
                               f"{sorted(state.routes - made.routes)[:3]}, extra "
                               f"{sorted(made.addresses - state.addresses)[:3]} "
                               f"{sorted(made.routes - state.routes)[:3]}")
        return seconds, [d.name for d in daemons]

    def start_bare(self, sizes):
        self.bare = BareApp(self.lab, self.ns, self.host, BARE_PORT, Settings().threads, sizes)

    def memory(self):
        """(agent PSS, bare app PSS, {process: PSS} of the agent's), sampled together once
        the agent is idle."""
        self.settle()
        agent = {pid: self.process_name(pid, command)
                 for pid, command in self.own_pids().items()}
        bare = [pid for pid, (session, _) in python_processes(self.ns).items()
                if session == self.bare.proc.pid]
        each = {}
        for pid, name in agent.items():
            each[name] = each.get(name, 0) + pss_bytes([pid])
        return sum(each.values()), pss_bytes(bare), each

    def process_name(self, pid, command):
        """The master, its worker, else the process's own name (comm): a process the worker
        starts (e.g. one that applies) is counted apart from the worker."""
        if "metadata" in command:
            return "metadata proxy"
        if pid == self.appliance.proc.pid:
            return "gunicorn master"
        if int(stat_fields(pid)[1]) == self.appliance.proc.pid:  # its parent
            return "gunicorn worker"
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip() or command

    def stop(self):
        """SIGQUIT, gunicorn's quick shutdown (SIGTERM waits for the graceful timeout and
        the lab's teardown would wait for it), then SIGKILL: saves seconds per lab."""
        for proc in (self.appliance.proc, self.bare.proc if self.bare else None):
            if proc is None or proc.poll() is not None:
                continue
            for sig in (signal.SIGQUIT, signal.SIGKILL):
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(3)
                    break
                except subprocess.TimeoutExpired:
                    continue


def as_bytes(payload):
    return json.dumps(payload).encode()  # what NetnsHTTPClient.put_json sends


# -- scenarios: full applies -----------------------------------------------------------------

def apply_pairs(name, payload, opts, results, key, memory_key=None):
    """``repeat`` runs, each on a fresh lab: the agent's first PUT (A), then the floor (B);
    with ``memory_key`` the PSS of the agent and of the bare app afterwards."""
    body = as_bytes(payload)
    for run in range(opts.repeat):
        with Lab() as lab:
            agent = AgentLab(lab, name, payload)
            try:
                a = agent.put(body)
                agent.settle()
                b, daemons = agent.full_floor(body)
                results.pair(key, a, b)
                line = (f"agent {a * 1000:.0f} ms, floor {b * 1000:.1f} ms "
                        f"(daemons: {', '.join(daemons) or 'none'})")
                if memory_key:
                    agent.start_bare({"rules": 1})
                    mine, bare, each = agent.memory()
                    results.pair(memory_key, mine, bare)
                    for process, pss in each.items():
                        results.add(f"{memory_key}/{process}", pss)
                    line += (f"; PSS {mine / 1e6:.1f} MB ("
                             + ", ".join(f"{n} {v / 1e6:.1f}" for n, v in each.items())
                             + f"), bare app {bare / 1e6:.1f} MB")
            finally:
                agent.stop()
        print(f"  run {run + 1}/{opts.repeat}: {line}", flush=True)


def cold_basic(opts, results):
    apply_pairs("router-basic", contract_payloads()["router-basic"], opts, results,
                "basic", "pss_basic")


def full_1000(opts, results):
    apply_pairs("synthetic", synthetic_router(NETWORKS, 1000), opts, results, "full_1000")


def full_5000(opts, results):
    apply_pairs("synthetic", synthetic_router(NETWORKS, 5000), opts, results, "full_5000",
                "pss_5000")


# -- scenarios on one agent with 1 000 FIPs --------------------------------------------------

def steady_payloads():
    """The 1 000-FIP router on 50 networks of 21 VMs, so 50 VMs have no FIP yet, and the
    same with one more FIP for one of them (a new FIP changes two map elements and one
    address, no DHCP reservation)."""
    base = synthetic_router(NETWORKS, 1000, vms_per_network=21)
    used_fixed = {f["fixed_ip"] for f in base["floating_ips"]}
    used_floating = {f["floating_ip"] for f in base["floating_ips"]}
    fixed = next(address for network in base["networks"]
                 for allocation in network.get("allocations", ())
                 for address in allocation["ip_addresses"] if address not in used_fixed)
    external = next(n for n in base["networks"] if n["network_type"] == "external")
    subnet = ipaddress.ip_network(external["subnets"][0]["cidr"])
    floating = next(str(a) for a in subnet.hosts()
                    if a.packed[2] >= 200 and a.packed[3] and str(a) not in used_floating)
    grown = copy.deepcopy(base)
    grown["floating_ips"].append({"floating_ip": floating, "fixed_ip": fixed})
    return base, grown


class Steady:
    """One lab whose agent holds the 1 000-FIP router, with the floor namespace holding
    the same state (made once, untimed) and the bare app next to the agent."""

    def __init__(self, lab):
        self.base, self.grown = steady_payloads()
        self.base_bytes, self.grown_bytes = as_bytes(self.base), as_bytes(self.grown)
        self.agent = AgentLab(lab, "synthetic", self.base)
        self.agent.put(self.base_bytes)
        self.agent.settle()
        self.agent.full_floor(self.base_bytes)
        self.sizes = {"rules": len(self.agent.get("/v1/firewall/rules")),
                      "config": len(self.agent.get("/v1/system/config"))}
        self.agent.start_bare(self.sizes)
        self.agent.settle()


def add_fip(opts, results, steady):
    agent = steady.agent
    before_rules = agent.get("/v1/firewall/rules").decode()
    before = read_kernel_state(agent.ns)
    script = undo = added = None
    for run in range(opts.repeat):
        a = agent.put(steady.grown_bytes)
        if script is None:
            after_rules = agent.get("/v1/firewall/rules").decode()
            after = read_kernel_state(agent.ns)
            if before.routes != after.routes or before.addresses - after.addresses:
                raise RuntimeError("adding a FIP changed routes or removed addresses")
            script = element_script(before_rules, after_rules)
            undo = element_script(after_rules, before_rules)
            added = sorted(after.addresses - before.addresses)
            print(f"    the agent's change: {script.strip()!r}; ip addr add "
                  f"{', '.join(a.cidr for a in added)}", flush=True)
        agent.put(steady.base_bytes)  # back to 1 000 (not timed)
        agent.settle()
        b = agent.floor.add(script, added, steady.grown_bytes)
        agent.floor.undo(undo, added)
        results.pair("add_fip", a, b)
        print(f"  run {run + 1}/{opts.repeat}: agent {a * 1000:.1f} ms, floor {b * 1000:.1f} ms",
              flush=True)


def wait_quiet(monitor, quiet=1.0, timeout=15.0):
    """Until ``monitor`` logged nothing new for ``quiet`` seconds (DAD ending etc.)."""
    deadline = time.monotonic() + timeout
    count, since = len(monitor.lines()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(monitor.lines())
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    print("    (the kernel did not go quiet before the re-applies)", flush=True)


def identical_reapply(opts, results, steady):
    agent, lab = steady.agent, steady.agent.lab
    agent.put(steady.base_bytes)  # the bytes re-applied below are the last ones applied
    netlink = NetlinkMonitor(lab, agent.ns, name="nlmon")
    nft = NftMonitor(lab, agent.ns, name="nftmon")
    bench_pids = {netlink.proc.pid, nft.proc.pid, agent.bare.proc.pid}
    wait_quiet(netlink)
    agent.settle()
    for run in range(opts.repeat):
        netlink.sync()
        nft.sync()
        seen = len(netlink.lines()), len(nft.lines())
        pids = long_lived(agent.ns, bench_pids)
        seconds = agent.put(steady.base_bytes)
        netlink.sync()
        nft.sync()
        events = netlink.lines()[seen[0]:], nft.lines()[seen[1]:]
        after = long_lived(agent.ns, bench_pids)
        restarts = max(len(pids.keys() - after.keys()), len(after.keys() - pids.keys()))
        results.add("reapply", seconds)
        results.add("reapply_netlink", len(events[0]))
        results.add("reapply_nft", len(events[1]))
        results.add("reapply_restarts", restarts)
        print(f"  run {run + 1}/{opts.repeat}: {seconds * 1000:.1f} ms, "
              f"{len(events[0])} netlink + {len(events[1])} nft events, "
              f"{restarts} restarts", flush=True)
        for line in (*events[0][:5], *events[1][:5]):
            print(f"    event: {line}", flush=True)
        if restarts:
            print(f"    processes before {pids}, after {after}", flush=True)
    netlink.stop()
    nft.stop()


def read_round(steady, agent_path, bare_path, seconds, interval, writer=False):
    """One round: a reader on the agent and one on the bare app (same rate, same time),
    with a writer PUTting the two 1 000-FIP payloads alternately when asked."""
    agent = steady.agent
    stop = threading.Event()
    readers = [KeepAliveReader(agent.ns.name, agent.host, port, path, interval, stop)
               for port, path in ((5000, agent_path), (BARE_PORT, bare_path))]
    applies = []

    def write():
        bodies = (steady.grown_bytes, steady.base_bytes)
        while not stop.is_set():
            applies.append(agent.put(bodies[len(applies) % 2]))
        if len(applies) % 2:
            agent.put(steady.base_bytes)  # leave the router at 1 000 FIPs

    threads = readers + ([threading.Thread(target=write, daemon=True)] if writer else [])
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(120)
    for reader in readers:
        if reader.error is not None:
            raise RuntimeError(f"reader {reader.path}: {reader.error}")
    return readers[0].samples, readers[1].samples, applies


def get_idle(opts, results, steady):
    for run in range(opts.repeat):
        steady.agent.settle()
        mine, bare, _ = read_round(steady, "/v1/system/config", "/config",
                                   opts.idle_seconds, opts.interval)
        results.pair("config_idle_p50", percentile(mine, 50), percentile(bare, 50))
        print(f"  run {run + 1}/{opts.repeat}: GET config p50 {percentile(mine, 50) * 1000:.2f} ms"
              f" ({len(mine)} requests), bare {percentile(bare, 50) * 1000:.2f} ms", flush=True)


def get_during_applies(opts, results, steady):
    for name, agent_path, bare_path in (("rules", "/v1/firewall/rules", "/rules"),
                                        ("config", "/v1/system/config", "/config")):
        for run in range(opts.repeat):
            steady.agent.settle()
            mine, bare, applies = read_round(steady, agent_path, bare_path,
                                             opts.get_seconds, opts.interval, writer=True)
            for p in (50, 99):
                results.pair(f"{name}_p{p}", percentile(mine, p), percentile(bare, p))
            print(f"  {name} run {run + 1}/{opts.repeat}: p50/p99 "
                  f"{percentile(mine, 50) * 1000:.1f}/{percentile(mine, 99) * 1000:.1f} ms "
                  f"({len(mine)} requests), bare {percentile(bare, 50) * 1000:.1f}/"
                  f"{percentile(bare, 99) * 1000:.1f} ms ({len(bare)}); {len(applies)} applies",
                  flush=True)


# -- results and the table -------------------------------------------------------------------

class Results:
    def __init__(self):
        self.values, self.floors = {}, {}

    def add(self, key, value):
        self.values.setdefault(key, []).append(value)

    def pair(self, key, value, floor):
        self.add(key, value)
        self.floors.setdefault(key, []).append(floor)

    def row(self, key, metric, unit, goal=None):
        if key not in self.values:
            return None
        return measured_row(metric, unit, self.values[key], self.floors.get(key), goal)


# (key, metric, unit, goal), in table order
ROWS = (
    ("basic", "router-basic: first apply, cold agent", "seconds", ratio_goal(3)),
    ("full_1000", "full apply, 1 000 FIPs / 50 networks", "seconds", ratio_goal(2)),
    ("full_5000", "full apply, 5 000 FIPs / 50 networks", "seconds", ratio_goal(1.3)),
    ("add_fip", "add 1 FIP to a router with 1 000", "seconds", ratio_goal(2)),
    ("reapply", "identical re-apply, 1 000 FIPs", "seconds", Goal("≤ 10 ms", max_value=0.010)),
    ("reapply_netlink", "identical re-apply: netlink events", "count",
     Goal("0 in every run", max_value=0, every_run=True)),
    ("reapply_nft", "identical re-apply: nft events", "count",
     Goal("0 in every run", max_value=0, every_run=True)),
    ("reapply_restarts", "identical re-apply: daemon restarts", "count",
     Goal("0 in every run", max_value=0, every_run=True)),
    ("rules_p99", "GET /v1/firewall/rules p99 during applies", "seconds",
     ratio_goal(1.5, "bare app")),
    ("rules_p50", "GET /v1/firewall/rules p50 during applies", "seconds", None),
    ("config_p99", "GET /v1/system/config p99 during applies", "seconds",
     ratio_goal(1.5, "bare app")),
    ("config_p50", "GET /v1/system/config p50 during applies", "seconds", None),
    ("config_idle_p50", "GET /v1/system/config p50 idle, 1 000 FIPs", "seconds",
     Goal("≤ 2 ms", max_value=0.002)),
    ("pss_basic", "PSS of the agent's processes, idle after router-basic", "bytes", None),
    ("pss_5000", "PSS of the agent's processes, 5 000 FIPs", "bytes",
     Goal("≤ 60 MB", max_value=60e6)),
)


def table_rows(results):
    rows = [results.row(*spec) for spec in ROWS]
    return [row for row in rows if row is not None]


# -- the run ---------------------------------------------------------------------------------

SCENARIOS = (
    ("router-basic cold apply", cold_basic, False),
    ("full apply 1000 FIPs", full_1000, False),
    ("full apply 5000 FIPs", full_5000, False),
    ("add 1 FIP (1000)", add_fip, True),
    ("identical re-apply (1000)", identical_reapply, True),
    ("GET config idle (1000)", get_idle, True),
    ("GET during applies (1000)", get_during_applies, True),
)


def memory_breakdown(results):
    """``gunicorn master 20.1 MB, ...`` (medians) per memory scenario that ran."""
    parts = []
    for key, label in (("pss_basic", "idle after router-basic"), ("pss_5000", "5 000 FIPs")):
        each = [f"{name.split('/', 1)[1]} {statistics.median(values) / 1e6:.1f} MB"
                for name, values in results.values.items() if name.startswith(f"{key}/")]
        if each:
            parts.append(f"{label}: {', '.join(each)}")
    return "; ".join(parts)


def section(facts, results, opts, minutes):
    def load(values):
        return " / ".join(f"{v:.2f}" for v in values)
    breakdown = memory_breakdown(results)
    return "\n".join([
        "## Agent: applies, reads and memory against their floors", "",
        f"`make bench` (test/bench/run_bench.py) {machine_line(facts)}; load "
        f"average (1/5/15 min) {load(facts['load'])} at the start, {load(os.getloadavg())} at "
        f"the end (the machine is shared); the run took {minutes:.1f} min. "
        f"{opts.repeat} runs of each figure, the floor or peer measured in the same run, "
        "interleaved with the agent.", "",
        markdown_table(table_rows(results)), "",
        "- **Applies**: round trip of `PUT /v1/system/config` from the orchestrator's "
        "namespace over the management network. router-basic and the full applies: each run "
        "is a fresh lab and a freshly started agent with no configuration (A), then the "
        "floor (B) in a fresh namespace with the same NICs: one `ip -batch` (links up with "
        "their MTU, the same addresses and routes, read back from the agent's namespace) + "
        "one `nft -f` of the agent's `GET /v1/firewall/rules` + one fsync'd write of the "
        "payload + `dnsmasq --test` then dnsmasq (and `bird -p` then bird when the agent "
        "runs BIRD) with the agent's rendered files, until their pid files exist. The "
        "floor's kernel state is checked equal to the agent's after each run.",
        "- **+1 FIP**: the 1 000-FIP router on 50 networks of 21 VMs (50 VMs without a FIP), "
        "PUT with one more FIP for one of those VMs (A), back to 1 000 untimed, then the "
        "floor (B) in a namespace holding the same state: one `nft -f -` adding the elements "
        "the agent's ruleset gained (two map elements) + one `ip addr add` + one fsync'd "
        "write of the payload. The same router serves the rows below.",
        "- **Identical re-apply**: the bytes last applied, PUT again. Kernel changes are the "
        "lines of `ip -o monitor link address route` and `nft monitor ruleset` in the agent's "
        "namespace during the PUT; restarts compare the PIDs of every process there (dnsmasq, "
        "metadata proxy, BIRD if any, the agent's own) before and after.",
        f"- **GET**: a reader thread on the agent and one on the bare app — a bare Flask app "
        f"under gunicorn with the agent's worker class (gthread, 1 worker: gunicorn's own, "
        f"as the agent's, whose worker answers these reads while its master applies) and "
        f"thread count "
        f"({Settings().threads}), in the agent's namespace, returning a body of the same size "
        f"— at the same time, each on one keep-alive HTTP/1.1 connection, one request every "
        f"{opts.interval * 1000:.0f} ms; during applies a writer PUTs the 1 000- and 1 001-FIP "
        f"payloads alternately without pause. Rounds of {opts.get_seconds:g} s (idle: "
        f"{opts.idle_seconds:g} s); p50/p99 per round (nearest rank): during applies about "
        f"{opts.get_seconds / opts.interval:.0f} requests a reader, so the p99 is about the "
        f"{opts.get_seconds / opts.interval / 100:.0f}th-slowest answer (rounds of 6 s, whose "
        f"p99 was the 3rd-slowest, swung 0.7–4.5× between rounds).",
        "- **PSS**: sum of `Pss` in /proc/PID/smaps_rollup over the agent's own processes "
        "(every Python process in its namespace but the bare app's: gunicorn master and "
        "worker, a process either starts counted under its own name; the engine and the "
        "metadata proxy are threads of the master; not dnsmasq or BIRD) beside the bare "
        "app's master and worker, sampled together once the agent is idle; MB = 10⁶ bytes."
        + (f" Per process (median), {breakdown}." if breakdown else ""),
        "- **ratio** = median of the per-run ratios; **met** = that median (or the median "
        "value, for absolute goals; every run, for counts) meets the goal of issue 8.",
    ]) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="scenarios: " + "; ".join(name for name, _, _ in SCENARIOS))
    parser.add_argument("--repeat", type=int, help="runs of each figure (default 5; "
                                                   "--quick: 2)")
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    parser.add_argument("--quick", action="store_true",
                        help="fewer and shorter runs, for a smoke test")
    parser.add_argument("--get-seconds", type=float,
                        help=f"one round of GETs during applies (default {GET_SECONDS:g}; "
                             "--quick: 2)")
    parser.add_argument("--output", help="Markdown file to write the section to (default: "
                                         "BENCHMARKS.md after a full run, none otherwise)")
    args = parser.parse_args(argv)
    require_root()
    repeat = args.repeat or (2 if args.quick else 5)
    opts = Options(repeat=max(repeat, 1),
                   get_seconds=args.get_seconds or (2.0 if args.quick else GET_SECONDS),
                   idle_seconds=1.0 if args.quick else 2.0)
    chosen = [(name, run, steady) for name, run, steady in SCENARIOS
              if not args.only or args.only.lower() in name.lower()]
    if not chosen:
        parser.error(f"no scenario matches {args.only!r}")
    output = args.output or (None if args.quick or args.only else BENCHMARKS)
    facts = machine_facts()
    started = time.monotonic()
    results = Results()
    for name, run, _ in (c for c in chosen if not c[2]):
        print(f"benchmark: {name}", flush=True)
        run(opts, results)
    steady_ones = [c for c in chosen if c[2]]
    if steady_ones:
        with Lab() as lab:
            print("setting up the agent with 1 000 FIPs", flush=True)
            steady = Steady(lab)
            try:
                for name, run, _ in steady_ones:
                    print(f"benchmark: {name}", flush=True)
                    run(opts, results, steady)
            finally:
                steady.agent.stop()
    text = section(facts, results, opts, (time.monotonic() - started) / 60)
    print(text)
    if output:
        write_section(output, "agent", text)  # only this script's section
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
