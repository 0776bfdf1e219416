"""``make bench``: the lab — time from the start of ``astara-lab up`` until every row of its
self-check is green, split into the phases ``up`` goes through.

Each run is a whole ``astara-lab up`` (in process, with its own state file, the lab's
default health settings) followed by the self-check, retried row by row until each passes
(BGP and SLAAC converge on their own time), then ``astara-lab down``. Results (median,
min and max of --repeat runs) go to this script's section of BENCHMARKS.md (see
markdown_sections.py); the other benchmarks' sections are left alone.

    .venv/bin/python test/bench/bench_lab.py [--repeat 3] [--output BENCHMARKS.md]
"""
import argparse
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from astara_lab import lab as astara_lab  # noqa: E402
from bench_common import (add_output_option, machine_facts, machine_line,  # noqa: E402
                          require_root)
from bench_report import Summary  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)

# (label, step prefix that ends the phase); the first phase starts at 0.
PHASES = (
    ("namespaces, internet, VMs, metadata upstream", "orchestrator:"),
    ("orchestrator start (admin API answers)", "desired state:"),
    ("desired state through the admin API", "orchestrator boots"),
    ("router (demo, branch, HA pair) and load-balancer appliances booted and configured",
     "VMs:"),
    ("VMs: DHCP leases, router solicitations", "self-check"),
)
PATIENCE = 120  # seconds a row may take to turn green


def green_lab(patience=PATIENCE, driver="netns"):
    """One whole ``astara-lab up`` (``driver``: how it boots its VM resources), its
    self-check until every row is green, ``down``: (state, rows, seconds until green,
    the progress marks)."""
    progress = astara_lab.QuietProgress()
    with tempfile.TemporaryDirectory(prefix=f"astara-bench-lab-{driver}-") as tmp:
        state_file = pathlib.Path(tmp) / "lab.json"
        try:
            state = astara_lab.up(state_file, progress=progress, driver=driver)
            progress.step("self-check")
            rows = astara_lab.self_check(state, patience=patience)
            green = progress.elapsed()
        finally:
            astara_lab.down(state_file, quiet=True)
    failed = [r.name for r in rows if not r.ok]
    if failed:
        raise RuntimeError(f"rows still failing after {patience}s: {', '.join(failed)}")
    return state, rows, green, progress.marks


def one_run():
    _, rows, green, marks = green_lab()
    times, start = {}, 0.0
    for label, next_step in PHASES:
        end = next(t for t, step in marks if step.startswith(next_step))
        times[label] = end - start
        start = end
    times["self-check until every row is green"] = green - start
    times["total: `astara-lab up` start → all rows green"] = green
    return times, len(rows)


def fmt(values):
    s = Summary.of(values)
    return f"{s.median:.1f} s | {s.low:.1f} s | {s.high:.1f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    add_output_option(parser)
    args = parser.parse_args(argv)
    require_root()
    facts = machine_facts()
    runs, rows = [], 0
    for attempt in range(args.repeat):
        times, rows = one_run()
        runs.append(times)
        print(f"  lab: run {attempt + 1}/{args.repeat}: all {rows} rows green after "
              f"{times['total: `astara-lab up` start → all rows green']:.1f} s", flush=True)
    lines = [
        "## Lab: `astara-lab up` until every check is green", "",
        f"`make bench` {machine_line(facts)}. {args.repeat} runs of the whole `astara-lab up` "
        f"(fabric, internet with BGP peer, 4 VMs, orchestrator, a router and a load-balancer "
        f"appliance booted by the netns driver and configured through the admin API), then "
        f"its self-check ({rows} rows: router, DHCP, SNAT, floating IP, metadata, RA, BGP, "
        f"IPv6, load balancing), each row "
        "retried until it passes; then `astara-lab down`.", "",
        "| phase | median | min | max |",
        "|---|---|---|---|"]
    for label in runs[0]:
        lines.append(f"| {label} | {fmt([run[label] for run in runs])} |")
    text = "\n".join(lines) + "\n"
    write_section(args.output, "lab", text)  # only this script's section
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
