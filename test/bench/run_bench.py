"""``make bench``: apply-time benchmarks of the real agent in namespaces.

For each router: the time of the first PUT (from a booted, unconfigured appliance), of an
identical re-apply, of adding one floating IP, next to the *floor* measured in the same
run — the same addresses and routes loaded with one ``ip -batch`` plus the same ruleset with
one ``nft -f`` into a fresh namespace with the same NICs, i.e. what the kernel needs at the
least. Results (median of --repeat runs) are written as a Markdown table, in this script's
section of BENCHMARKS.md (see markdown_sections.py).

    .venv/bin/python test/bench/run_bench.py [--repeat 3] [--output BENCHMARKS.md]
"""
import argparse
import copy
import datetime
import ipaddress
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from astara_lab.appliance import (Appliance, contract_payloads, controller_node,  # noqa: E402
                                  management_cidr, nic_macs)
from astara_netns import Lab  # noqa: E402
from astara_lab.synthetic import synthetic_router  # noqa: E402
from astara_router.model import parse_payload  # noqa: E402
from astara_router.render.netlink import render_netlink  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)


def scenarios():
    contract = contract_payloads()
    return [("router-basic", contract["router-basic"]),
            ("router-many-fips (30 FIPs, 4 nets)", contract["router-many-fips"]),
            ("synthetic: 1 000 FIPs, 50 nets", synthetic_router(50, 1000)),
            ("synthetic: 5 000 FIPs, 50 nets", synthetic_router(50, 5000))]


def timed_put(client, payload):
    started = time.perf_counter()
    response = client.put_json("/v1/system/config", payload)
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"PUT failed {response.status}: {response.text[:500]}")
    return elapsed, response.json().get("changes")


def rss_kib(appliance):
    """Resident memory of the agent's worker (the biggest process in its session)."""
    best = 0
    for pid in appliance.ns.pids():
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"astara_router.cli.api" in cmdline:
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
    return best


def floor_batch(config, kernel_names):
    """`ip -batch` lines that create the same addresses and routes."""
    plan = render_netlink(config)
    lines = []
    for link in plan.links:
        dev = kernel_names[link.generic]
        for address in sorted(link.addresses, key=lambda a: (a.version, a)):
            lines.append(f"addr add {address} dev {dev}")
    for route in plan.routes:
        via = f" via {route.gateway}" if route.gateway else ""
        dev = f" dev {kernel_names[route.generic]}" if route.generic else ""
        lines.append(f"route add {route.destination}{via}{dev}")
    return "\n".join(lines) + "\n"


def measure_floor(lab, name, payload, ruleset, role):
    ns = lab.netns(role)
    bridge = lab.bridge(f"b-{role}")
    macs = nic_macs(name, payload)
    for i, mac in enumerate(macs):
        lab.plug(ns, f"eth{i}", bridge, mac=mac)
    config = parse_payload(payload, ("router", "loadbalancer"))
    batch = floor_batch(config, {f"ge{i}": f"eth{i}" for i in range(len(macs))})
    tmp = lab.tmpdir(role)
    (tmp / "batch").write_text(batch)
    (tmp / "rules.nft").write_text(ruleset)
    started = time.perf_counter()
    ns.run(["ip", "-batch", str(tmp / "batch")])
    if ruleset.strip():
        ns.run(["nft", "-f", str(tmp / "rules.nft")])
    return time.perf_counter() - started


def run_scenario(name, payload, repeat):
    rows = {"first": [], "same": [], "add_fip": [], "floor": [], "changes": None, "rss": 0}
    for attempt in range(repeat):
        with Lab() as lab:
            mgmt = lab.bridge("b-mgmt")
            ctl = controller_node(lab, mgmt)
            contract_name = name.split()[0]
            appliance = Appliance(lab, "app", nic_macs(contract_name, payload),
                                  management_cidr(payload), mgmt, controller=ctl)
            appliance.configure_management()
            appliance.start()
            client = appliance.client(timeout=600)
            first, changes = timed_put(client, payload)
            rows["first"].append(first)
            rows["changes"] = changes
            rows["same"].append(timed_put(client, payload)[0])
            grown = copy.deepcopy(payload)
            fixed = grown["floating_ips"][0]["fixed_ip"] if grown["floating_ips"] else None
            if fixed:
                grown["floating_ips"].append({"floating_ip": _spare_fip(grown),
                                              "fixed_ip": fixed})
                rows["add_fip"].append(timed_put(client, grown)[0])
            rows["rss"] = max(rows["rss"], rss_kib(appliance))
            ruleset = client.get("/v1/firewall/rules").text
            rows["floor"].append(measure_floor(lab, contract_name, payload, ruleset, "floor"))
        print(f"  {name}: run {attempt + 1}/{repeat} done", flush=True)
    return rows


def _spare_fip(payload):
    used = {f["floating_ip"] for f in payload["floating_ips"]}
    external = next(n for n in payload["networks"] if n["network_type"] == "external")
    subnet = ipaddress.ip_network(external["subnets"][0]["cidr"])
    for host in reversed(list(subnet.hosts())[-300:]):
        if str(host) not in used and str(host) != external["subnets"][0]["gateway_ip"]:
            return str(host)
    raise RuntimeError("no spare floating IP")


def fmt(values):
    if not values:
        return "–"
    return f"{statistics.median(values) * 1000:.0f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--only", help="substring of the scenario names to run")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks need root (network namespaces)", file=sys.stderr)
        return 2
    results = []
    for name, payload in scenarios():
        if args.only and args.only not in name:
            continue
        print(f"benchmark: {name}", flush=True)
        results.append((name, run_scenario(name, payload, args.repeat)))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "## Agent: apply time", "",
        f"`make bench` on {datetime.date.today()}, commit {commit}, {platform.node()}: "
        f"{os.cpu_count()} cores, kernel {platform.release()}, Python "
        f"{platform.python_version()}. Median of {args.repeat} runs, each on a fresh "
        "appliance namespace. Times are PUT round trips through the API on the management "
        "network (validate, apply every subsystem, verify, persist). *Floor* = the same "
        "addresses and routes with one `ip -batch` plus the same ruleset with one `nft -f`, "
        "in a fresh namespace with the same NICs.", "",
        "| router | first apply | floor | identical re-apply | add 1 FIP | changes (first) "
        "| agent RSS |",
        "|---|---|---|---|---|---|---|"]
    for name, rows in results:
        lines.append(f"| {name} | {fmt(rows['first'])} | {fmt(rows['floor'])} | "
                     f"{fmt(rows['same'])} | {fmt(rows['add_fip'])} | {rows['changes']} | "
                     f"{rows['rss'] // 1024} MiB |")
    text = "\n".join(lines) + "\n"
    write_section(args.output, "agent", text)  # only this script's section
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
