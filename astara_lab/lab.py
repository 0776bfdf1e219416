"""``astara-lab up|status|down``: a small cloud on one machine, entirely in namespaces.

``up`` builds the fabric, the management network with the orchestrator's node, the
"internet" namespace with a web server, tenant VMs, and one router appliance running the
real agent; pushes the router's configuration; then runs a self-check and prints what
works. ``status`` re-runs the self-check; ``down`` removes everything ``up`` made.
"""
import argparse
import atexit
import json
import os
import pathlib
import subprocess
import sys
import time

from .appliance import API_PORT, contract_payloads
from .leftovers import find_leftovers, remove_leftovers
from .netns import Lab, NetnsHTTPClient, run
from .topology import PUBLIC_V4, RouterTopology

STATE_FILE = pathlib.Path(os.environ.get("ASTARA_LAB_STATE", "/run/astara-lab/lab.json"))
PAYLOAD = "router-basic"
WEB_PORT = 80


class Progress:
    def __init__(self):
        self.started = time.monotonic()

    def step(self, text):
        print(f"  [{time.monotonic() - self.started:5.1f}s] {text}", flush=True)


def load_state():
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def up(args):
    if load_state():
        print(f"a lab is already up (state in {STATE_FILE}); run `astara-lab down` first",
              file=sys.stderr)
        return 1
    progress = Progress()
    print("astara-lab: building a small cloud out of network namespaces")
    lab = Lab()
    try:
        state = build(lab, progress)
    except BaseException:
        lab.close()
        raise
    atexit.unregister(lab.close)  # the lab outlives this command; `down` removes it
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=1))
    progress.step("self-check")
    rows = self_check(state)
    print_table(rows)
    print_hints(state)
    return 0 if all(ok for _, ok, _ in rows) else 1


def build(lab, progress):
    payload = contract_payloads()[PAYLOAD]
    progress.step(f"topology for {PAYLOAD}: fabric, management, internet, VMs")
    topo = RouterTopology(lab, PAYLOAD, payload)
    py = sys.executable
    logs = lab.tmpdir("logs")
    lab.spawn(topo.inet, [py, "-m", "astara_lab.webserver", "--bind", PUBLIC_V4, "--port",
                          str(WEB_PORT), "--name", "internet"], log_path=logs / "inet-web.log")
    for vm in topo.vms:
        lab.spawn(vm.ns, [py, "-m", "astara_lab.webserver", "--bind", "0.0.0.0", "--port",
                          str(WEB_PORT), "--name", vm.ns.role], log_path=logs / "vm-web.log")
    progress.step("appliance boots: management address, agent API")
    topo.appliance.configure_management()
    topo.appliance.start()
    progress.step("orchestrator pushes the router configuration")
    response = topo.appliance.client().put_json("/v1/system/config", payload)
    if response.status != 200:
        raise RuntimeError(f"the appliance refused the config: {response.text}")
    fips = {f["fixed_ip"]: f["floating_ip"] for f in payload.get("floating_ips", [])}
    return {
        "prefix": lab.prefix, "payload": PAYLOAD, "created": time.time(),
        "appliance": topo.appliance.ns.name, "controller": topo.ctl.name,
        "internet": topo.inet.name, "mgmt_address": str(topo.appliance.mgmt.ip),
        "external_v4": str(topo.external_address(4).ip),
        "agent_log": str(topo.appliance.log_path),
        "vms": [{"ns": vm.ns.name, "ipv4": [str(a) for a in vm.addresses(4)],
                 "gateway": vm.network["subnets"][0]["gateway_ip"],
                 "floating_ip": next((fips[str(a)] for a in vm.addresses(4)
                                      if str(a) in fips), None)} for vm in topo.vms],
    }


# -- self-check --------------------------------------------------------------------------------

def ping(ns, address):
    return run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "2", address],
               check=False).returncode == 0


def http_client_address(ns, address, port=WEB_PORT):
    """Who the web server at address saw us as (None when unreachable)."""
    try:
        return NetnsHTTPClient(ns, address, port, timeout=3).get("/").json()["client"]
    except (OSError, ValueError, KeyError):
        return None


def self_check(state):
    rows = []

    def row(name, ok, detail=""):
        rows.append((name, bool(ok), detail))

    api = NetnsHTTPClient(state["controller"], state["mgmt_address"], API_PORT, timeout=5)
    try:
        config = api.get("/v1/system/config").json()
        row("appliance API on the management network", True,
            f"[{state['mgmt_address']}]:{API_PORT}")
        row("configuration committed", config["generation"] >= 1,
            f"generation {config['generation']}")
    except (OSError, ValueError) as exc:
        row("appliance API on the management network", False, str(exc))
    vm = state["vms"][0]
    row("VM reaches its router", ping(vm["ns"], vm["gateway"]), f"{vm['ns']} → {vm['gateway']}")
    row("internet reaches the router", ping(state["internet"], state["external_v4"]),
        state["external_v4"])
    seen = http_client_address(vm["ns"], PUBLIC_V4)
    row("VM → internet, SNAT to the router", seen == state["external_v4"],
        f"internet saw {seen}")
    with_fip = next((v for v in state["vms"] if v["floating_ip"]), None)
    if with_fip:
        seen = http_client_address(state["internet"], with_fip["floating_ip"])
        row("internet → floating IP → VM", seen == PUBLIC_V4,
            f"{with_fip['floating_ip']} → {with_fip['ipv4'][0]}, VM saw {seen}")
    return rows


def print_table(rows):
    width = max(len(name) for name, _, _ in rows)
    print()
    for name, ok, detail in rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    print(f"\n  {sum(ok for _, ok, _ in rows)}/{len(rows)} checks pass\n")


def print_hints(state):
    print("Explore:")
    print(f"  ip netns exec {state['appliance']} ip addr          # the router's interfaces")
    print(f"  ip netns exec {state['appliance']} nft list ruleset # its firewall")
    print(f"  ip netns exec {state['vms'][0]['ns']} bash         # a shell on a tenant VM")
    print(f"  less {state['agent_log']}   # the agent's log")
    print("  astara-lab status | astara-lab down")


def status(args):
    state = load_state()
    if not state:
        print("no lab is up", file=sys.stderr)
        return 1
    rows = self_check(state)
    print_table(rows)
    return 0 if all(ok for _, ok, _ in rows) else 1


def down(args):
    state = load_state()
    if not state:
        print("no lab is up")
        return 0
    remove_leftovers(find_leftovers(state["prefix"]))
    STATE_FILE.unlink(missing_ok=True)
    print("lab removed")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="astara-lab", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "status", "down"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("astara-lab needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    return {"up": up, "status": status, "down": down}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
