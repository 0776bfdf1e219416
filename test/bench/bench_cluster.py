"""``make bench``: orchestrator clusters — cold start of N routers across 3 orchestrators
beside N on one, takeover after kill -9 and after a clean stop, and CPU per health round
per orchestrator.

Both set-ups run in the same run, each in its own lab (fabric, management bridge, ``ctl``
namespace), with the netns driver and stand-in appliances (test/bench/standin_agent.py:
the agent API the orchestrator uses, real hash semantics, the real epoch fence; 100 real
agents beside 3 orchestrators do not fit a 2-core machine):

* *one*: one orchestrator alone, SQLite store, no coordination (the default deployment);
* *cluster*: 3 orchestrators, PostgreSQL store, redis-server coordination (membership
  and lock timeouts ``--timeout``, rounds every ``--heartbeat``), all started in ``ctl``.

1. *Cold start*: the members run and have formed their ring, every resource is paused
   (``global debug``) while N routers are created through the admin API; t0 = ``global
   manage`` followed by ``poll``; done when every router is ``configured`` (recorded by its
   owner after the push was acknowledged). No appliance exists at t0.
2. *Health CPU*: in steady state, utime+stime of each orchestrator (``/proc/PID/stat``)
   over ``--rounds`` health periods, divided by the periods; beside the same window with
   everything paused (coordination rounds, store watch, no polls): *idle*.
3. *Takeover* (cluster only): kill -9 of one member, then (after it rejoined) SIGTERM of
   another. *Claimed*: every router of the gone member is owned by a live one at a higher
   epoch (the store); *announced*: each of their appliances accepted a push with that new
   epoch (its push log), from which on the gone owner would be refused.

    .venv/bin/python test/bench/bench_cluster.py [--routers 100] [--period 5]
        [--rounds 4] [--timeout 5] [--heartbeat 1] [--output BENCHMARKS.md]

Writes only its own section of BENCHMARKS.md (markdown_sections.py).
"""
import argparse
import os
import pathlib
import signal
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from astara_lab.appliance import controller_node  # noqa: E402
from astara_lab.cluster import (Cluster, populate, push_log, push_violations,  # noqa: E402
                                router_id, router_of)
from astara_lab.leftovers import find_leftovers  # noqa: E402
from astara_lab.peers import eventually  # noqa: E402
from astara_netns import Lab  # noqa: E402
from bench_common import (add_output_option, cpu_seconds, machine_facts,  # noqa: E402
                          machine_line, require_root)
from markdown_sections import write_section  # noqa: E402 (this directory)


def states(cluster, indexes=None):
    """{router: (owner, epoch, state)} from the store (through live members)."""
    stored, _ = cluster.ownership(indexes)
    return stored


def all_configured(cluster, ids, indexes=None):
    rows = states(cluster, indexes)
    return all(rows.get(rid, (None, None, None))[2] == "configured" for rid in ids)


def cold_start(cluster, ids, timeout):
    pids = {name: m.pid for name, m in cluster.members.items()}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    cluster.any_api("POST", "/v1/global/manage")
    cluster.any_api("POST", "/v1/poll")
    eventually(lambda: all_configured(cluster, ids), timeout, "every router configured", 0.5)
    total = time.monotonic() - t0
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    owners = {}
    for owner, _, _ in states(cluster).values():
        owners[owner] = owners.get(owner, 0) + 1
    return {"total": total, "cpu": cpu, "owners": owners}


def health_cpu(cluster, period, rounds):
    """CPU seconds per health period of each member, managed and paused."""
    pids = {name: m.pid for name, m in cluster.members.items()}
    time.sleep(period * 1.5)  # the convergence tail passes
    window = period * rounds

    def measure():
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(window)
        return {name: (cpu_seconds(pid) - before[name]) / rounds
                for name, pid in pids.items()}

    managed = measure()
    cluster.any_api("POST", "/v1/global/debug", {"reason": "benchmark: idle"})
    time.sleep(1.0)
    idle = measure()
    cluster.any_api("POST", "/v1/global/manage")
    return {"managed": managed, "idle": idle}


def announced(cluster, ownership):
    """Every appliance of a router in ``ownership`` accepted a push at its epoch."""
    for name, (_, _, log) in cluster.instances().items():
        if router_of(name) not in ownership:
            continue
        owner, epoch = ownership[router_of(name)]
        if (owner, epoch, True) not in push_log(log):
            return False
    return True


def takeover(cluster, victim, how, timeout):
    index = cluster.index(victim)
    before = {rid: (o, e) for rid, (o, e, _) in states(cluster).items()}
    moved = {rid: e for rid, (o, e) in before.items() if o == victim}
    live = [i for i in cluster.running() if i != index]

    def claimed():
        """{router: (owner, epoch)} of the moved routers once live members own them all
        at higher epochs."""
        now = {rid: (o, e) for rid, (o, e, _) in states(cluster, live).items() if rid in moved}
        if all(o not in (victim, "") and e > moved[rid] for rid, (o, e) in now.items()):
            return now
        return None

    t0 = time.monotonic()
    if how == "kill -9":
        cluster.kill(index)
    else:
        cluster.signal(index, signal.SIGTERM)
    now = eventually(claimed, timeout, f"{victim}'s routers claimed", 0.1)
    claimed_at = time.monotonic() - t0
    eventually(lambda: announced(cluster, now), timeout - claimed_at,
               f"{victim}'s routers announced by their new owners", 0.1)
    announced_at = time.monotonic() - t0
    if how != "kill -9":
        cluster.member(index).stop(timeout=20)  # reap it
    return {"moved": len(moved), "claimed": claimed_at, "announced": announced_at}


def scenario(name, count, backend, args):
    print(f"benchmark: {count} routers, {name} (load {os.getloadavg()[0]:.1f})", flush=True)
    ids = [router_id(i) for i in range(count)]
    result = {"name": name, "count": count}
    with Lab() as lab:
        fabric = lab.fabric()
        lab.bridge("b-mgmt")
        ctl = controller_node(lab, "b-mgmt")
        cluster = Cluster(lab.prefix, fabric.name, ctl, lab.tmpdir("cluster"),
                          count=3 if backend else 1, backend=backend,
                          sections={"health": {"period": args.period}}, standin=True,
                          timeout=args.timeout, heartbeat=args.heartbeat,
                          log_level="WARNING")
        try:
            cluster.start_servers()
            cluster.upgrade_store()
            cluster.start()
            started = time.monotonic()
            cluster.any_api("POST", "/v1/global/debug", {"reason": "benchmark: populating"})
            populate(cluster.any_api, count)
            print(f"  populated in {time.monotonic() - started:.0f}s", flush=True)
            result["cold"] = cold_start(cluster, ids, args.convergence_timeout)
            print(f"  cold start: {result['cold']['total']:.1f}s, owners "
                  f"{result['cold']['owners']}", flush=True)
            result["health"] = health_cpu(cluster, args.period, args.rounds)
            print(f"  health CPU per period: {result['health']}", flush=True)
            if backend:
                result["kill"] = takeover(cluster, "orch-2", "kill -9", 120)
                print(f"  takeover after kill -9: {result['kill']}", flush=True)
                cluster.start(2)
                eventually(lambda: all_configured(cluster, ids) and all(
                    o in ("orch-1", "orch-2", "orch-3") for o, _, _ in
                    states(cluster).values()) and any(
                    o == "orch-2" for o, _, _ in states(cluster).values()),
                    120, "orch-2 back with its share", 0.5)
                # Three coordination rounds of every member before the next takeover.
                rounds = {i: cluster.workers(i)["coordination"]["rounds"]
                          for i in cluster.running()}
                eventually(lambda: all(cluster.workers(i)["coordination"]["rounds"] >= r + 3
                                       for i, r in rounds.items()),
                           120, "three coordination rounds", 0.2)
                result["stop"] = takeover(cluster, "orch-3", "SIGTERM", 120)
                print(f"  takeover after a clean stop: {result['stop']}", flush=True)
                problems = {n: push_violations(push_log(log))
                            for n, (_, _, log) in cluster.instances().items()}
                result["violations"] = sum(len(p) for p in problems.values())
        finally:
            cluster.close()
        prefix = lab.prefix
    result["clean"] = not any(find_leftovers(prefix).values())
    return result


def render(facts, results, args):
    one, cluster = results
    lines = [
        "## Orchestrator cluster: cold start, takeover, health CPU", "",
        f"`make bench` {machine_line(facts)}. Stand-in appliances (test/bench/standin_agent.py, "
        "with the real epoch fence) started by the netns driver, 4 worker threads per "
        f"orchestrator, health period {args.period:g} s. *One*: one orchestrator, SQLite, "
        "no coordination. *Cluster*: 3 orchestrators, PostgreSQL store, redis-server "
        f"coordination, membership/lock timeout {args.timeout:g} s, a coordination round "
        f"every {args.heartbeat:g} s; all in one lab's controller namespace, same run.", "",
        "Cold start: routers created while paused, then `global manage` + `poll`; until "
        "every router is `configured` (the owner recorded it after the appliance "
        "acknowledged the push). CPU = utime+stime of each orchestrator meanwhile.", "",
        "| routers | set-up | all configured | routers per orchestrator | CPU per "
        "orchestrator |",
        "|---|---|---|---|---|"]
    for r in results:
        owners = ", ".join(f"{o}: {n}" for o, n in sorted(r["cold"]["owners"].items()))
        cpu = ", ".join(f"{o}: {c:.1f} s" for o, c in sorted(r["cold"]["cpu"].items()))
        lines.append(f"| {r['count']} | {r['name']} | {r['cold']['total']:.1f} s | {owners} "
                     f"| {cpu} |")
    lines += [
        "", f"Health CPU per health period (= one round: each owned router polled once) and "
        f"per orchestrator, over {args.rounds} periods in steady state; *idle* = the same "
        "window with every router paused (coordination rounds, store watch, lock checks; "
        "no polls).", "",
        "| set-up | orchestrator | routers owned | CPU per round | idle, per period |",
        "|---|---|---|---|---|"]
    for r in results:
        for name in sorted(r["health"]["managed"]):
            lines.append(f"| {r['name']} | {name} | {r['cold']['owners'].get(name, 0)} | "
                         f"{r['health']['managed'][name] * 1000:.0f} ms | "
                         f"{r['health']['idle'][name] * 1000:.0f} ms |")
    lines += [
        "", "Takeover (cluster): *claimed* = every router of the gone member owned by a live "
        "one at a higher epoch; *announced* = each of their appliances accepted a push with "
        "that epoch (from then on the old owner is refused). After kill -9 the others wait "
        "for the member's heartbeat and locks to expire (the timeout); after SIGTERM it "
        "leaves the group and releases its locks. The timeout and the round interval are "
        "beside *claimed*: after kill -9 a claim waits until the member's last heartbeat "
        "is a timeout old (so about the timeout, less up to one round).", "",
        "| how | routers moved | membership/lock timeout | coordination round | claimed "
        "| announced |", "|---|---|---|---|---|---|"]
    for key, how in (("kill", "kill -9"), ("stop", "SIGTERM (clean stop)")):
        t = cluster[key]
        lines.append(f"| {how} | {t['moved']} | {args.timeout:g} s | {args.heartbeat:g} s | "
                     f"{t['claimed']:.1f} s | {t['announced']:.1f} s |")
    lines += ["", f"Push logs of all {cluster['count']} appliances after both takeovers: "
                  f"{cluster['violations']} pushes out of epoch order or from two owners "
                  "in one interval."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=100)
    parser.add_argument("--period", type=float, default=5.0, help="health period (s)")
    parser.add_argument("--rounds", type=int, default=4, help="health periods measured")
    parser.add_argument("--timeout", type=int, default=5,
                        help="tooz membership/lock timeout (whole seconds: tooz reads an int)")
    parser.add_argument("--heartbeat", type=float, default=1.0,
                        help="coordination round interval (s)")
    parser.add_argument("--convergence-timeout", type=float, default=900)
    add_output_option(parser)
    args = parser.parse_args(argv)
    require_root()
    facts = machine_facts()
    results = [scenario("one", args.routers, None, args),
               scenario("cluster", args.routers, "redis", args)]
    text = render(facts, results, args)
    write_section(args.output, "cluster", text)
    print(text)
    if not all(r["clean"] for r in results):
        print("leftovers found: astara-leftovers --remove", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
