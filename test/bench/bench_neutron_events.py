"""``make bench``: event-to-configured latency of Neutron notifications through RabbitMQ.

A lab (fabric, management bridge, ``ctl`` namespace at fdca:3ba5:a17a:acda::2); inside
``ctl`` (this script re-executes itself there with ``--inner``, entering the namespace
with setns like ``astara-orchestrator --netns``): a private RabbitMQ (astara_lab/broker.py),
a small OpenStack on loopback holding N routers as Neutron objects (astara_lab/fakecloud.py),
and the orchestrator in OpenStack mode — desired state from Neutron, events from the
broker — with the netns driver, so every appliance is a real agent in a namespace.

Measured, per sample, from just before the notification is published to the moment the
appliance's committed configuration (``GET /v1/system/config``, polled every 5 ms) shows
the change:

* ``floatingip.update.end``: a router's floating IP moves to its other VM (the payload
  carries the object);
* ``port.update.end``: a VM port on a router's network gets another address (the
  orchestrator re-reads the port from Neutron, then pushes the new allocations).

And a burst: 1 000 floating IP notifications spread over the N routers, as fast as one
publisher sends them: time until every router has its last state, and the pushes each
appliance received (its generation count).

    .venv/bin/python test/bench/bench_neutron_events.py [--routers 5] [--samples 20]
        [--output BENCHMARKS.md]

Writes only its own section of BENCHMARKS.md (markdown_sections.py). ~1-2 minutes.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test" / "contract"))

from bench_common import (add_output_option, machine_facts, machine_line,  # noqa: E402
                          require_root)
from bench_report import Summary, percentile  # noqa: E402
from markdown_sections import write_section  # noqa: E402 (this directory)
import neutron_topologies as topo  # noqa: E402 (test/contract)


def inner(args):
    """Runs inside the ctl namespace: broker, fake cloud, orchestrator, measurements."""
    from orchestrator_lite.cli.server import enter_netns
    enter_netns(args.netns)
    import requests

    from astara_lab import broker as rabbit
    from astara_lab.fakecloud import FakeCloud
    from astara_lab.peers import eventually
    from orchestrator_lite.config import (ApiSettings, HealthSettings, ManagementSettings,
                                          NetnsSettings, NeutronSettings,
                                          OpenStackSettings, Settings, TlsSettings)
    from orchestrator_lite.service import Orchestrator

    work = pathlib.Path(args.workdir)
    broker = rabbit.Broker(work / "rabbitmq").start()
    cloud = FakeCloud().serve()
    orchestrator = None
    try:
        topology, routers = topo.many_routers(args.routers)
        topology.load_into(cloud)
        settings = Settings(
            host="bench", state_dir=str(work / "state"), api=ApiSettings(token="t"),
            threads=4, health=HealthSettings(period=60, boot_check_interval=0.3),
            management=ManagementSettings(mtu=1450),
            compute_driver="netns",
            netns=NetnsSettings(prefix=args.prefix, fabric=f"{args.prefix}-fab",
                                management_bridge="b-mgmt",
                                state_root=str(work / "appliances")),
            openstack=OpenStackSettings(auth_url=cloud.auth_url, username="astara",
                                        password="secret", project_name="service"),
            neutron=NeutronSettings(desired_state=True, resync_period=3600,
                                    events_url=broker.url, status=False),
            tls=TlsSettings(enabled=False))  # it reads the agents over plain HTTP
        orchestrator = Orchestrator(settings)
        started = time.monotonic()
        orchestrator.start()
        session = requests.Session()
        session.trust_env = False

        eventually(lambda: all(orchestrator.resource(r)["state"] == "configured"
                               for r, _, _ in routers), 300, "every router configured",
                   interval=0.2)
        boot = time.monotonic() - started
        addresses = {rid: orchestrator.resource(rid)["instances"][0]["management_address"]
                     for rid, _, _ in routers}

        def config(rid):
            return session.get(f"http://[{addresses[rid]}]:5000/v1/system/config",
                               timeout=2).json()

        def wait_until(rid, check, limit=30):
            eventually(lambda: check(config(rid)["configuration"]), limit,
                       f"{rid}: the change configured", interval=0.005)

        publisher = rabbit.Publisher(broker.url)
        fips = {f["router_id"]: f for f in topology.objects["floatingips"]}
        vm_ports = {rid: next(p for p in topology.objects["ports"]
                              if p["device_id"] == f"vm-{k}b") for rid, k, _ in routers}
        results = {"floatingip.update.end": [], "port.update.end": []}
        for i in range(args.samples):
            rid, k, sub = routers[i % len(routers)]
            fixed = f"10.100.{k}.{11 if config(rid)['configuration']['floating_ips'][0]['fixed_ip'].endswith('.10') else 10}"  # noqa: E501
            fip = dict(fips[rid], fixed_ip_address=fixed)
            cloud.add("floatingip", fip)
            t0 = time.monotonic()
            publisher.publish("floatingip.update.end", {"floatingip": fip})
            wait_until(rid, lambda c: c["floating_ips"][0]["fixed_ip"] == fixed)
            results["floatingip.update.end"].append(time.monotonic() - t0)
            fips[rid] = fip
            port = dict(vm_ports[rid], fixed_ips=[{"subnet_id": sub,
                                                   "ip_address": f"10.100.{k}.{50 + i}"}])
            cloud.add("port", port)
            t0 = time.monotonic()
            publisher.publish("port.update.end", {"port": {"id": port["id"]}})
            wait_until(rid, lambda c, ip=f"10.100.{k}.{50 + i}": ip in json.dumps(c))
            results["port.update.end"].append(time.monotonic() - t0)
        # The burst.
        generations = {rid: config(rid)["generation"] for rid, _, _ in routers}
        last = {}
        t0 = time.monotonic()
        for i in range(1000):
            rid, k, _ = routers[i % len(routers)]
            fip = dict(fips[rid], fixed_ip_address=f"10.100.{k}.{10 + (i // len(routers)) % 2}")
            publisher.publish("floatingip.update.end", {"floatingip": fip})
            last[rid] = fip
        published = time.monotonic() - t0
        for rid, fip in last.items():
            cloud.add("floatingip", fip)
            wait_until(rid, lambda c, f=fip: c["floating_ips"][0]["fixed_ip"] ==
                       f["fixed_ip_address"], 60)
        burst = time.monotonic() - t0
        pushes = [config(rid)["generation"] - generations[rid] for rid, _, _ in routers]
        publisher.close()
        print(json.dumps({"latency": results, "boot": boot, "burst": burst,
                          "published": published, "pushes": pushes,
                          "quiet": orchestrator.neutron_events.quiet}))
    finally:
        if orchestrator is not None:
            orchestrator.stop()
        cloud.close()
        broker.stop()


def ms(values):
    """Median, p90 (nearest rank, like every benchmark's percentiles) and max."""
    s = Summary.of(values)
    return tuple(f"{v * 1000:.0f} ms" for v in (s.median, percentile(values, 90), s.high))


def outer(args, facts):
    from astara_lab.appliance import controller_node
    from astara_lab.cluster import delete_appliances
    from astara_netns import Lab

    with Lab() as lab:
        fabric = lab.fabric()
        lab.bridge("b-mgmt")
        ctl = controller_node(lab, "b-mgmt")
        work = pathlib.Path(tempfile.mkdtemp(prefix="astara-bench-events-"))
        try:
            run = subprocess.run(
                [sys.executable, __file__, "--inner", "--netns", ctl.name, "--prefix",
                 lab.prefix, "--workdir", str(work), "--routers", str(args.routers),
                 "--samples", str(args.samples)], capture_output=True, text=True,
                timeout=900)
            if run.returncode != 0:
                raise SystemExit(f"inner run failed:\n{run.stderr[-4000:]}")
            data = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            delete_appliances(lab.prefix, work / "appliances", fabric.name)
            shutil.rmtree(work, ignore_errors=True)
    rows = [f"| {kind} | {len(values)} | " + " | ".join(ms(values)) + " |"
            for kind, values in data["latency"].items()]
    pushes = data["pushes"]
    body = "\n".join([
        "## Neutron events through RabbitMQ (event-to-configured latency)",
        "",
        f"`make bench` {machine_line(facts)}. {args.routers} routers (real agents in "
        "namespaces, netns driver), desired state from a small OpenStack on loopback, "
        "events through a private rabbitmq-server; `test/bench/bench_neutron_events.py`.",
        "From just before the notification is published until the appliance's committed "
        "configuration shows the change (p90: nearest rank); includes the listener's quiet "
        f"window ({data['quiet'] * 1000:.0f} ms), the config push and the agent's apply.",
        "",
        "| notification | samples | median | p90 | max |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Burst: 1 000 `floatingip.update.end` over {args.routers} routers, published in "
        f"{data['published']:.2f} s; every router at its last state after "
        f"{data['burst']:.2f} s; pushes per appliance {min(pushes)}–{max(pushes)}.",
        f"Cold start before the measurement: {args.routers} routers configured in "
        f"{data['boot']:.1f} s.",
    ])
    write_section(args.output, "neutron-events", body)
    print(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20)
    add_output_option(parser)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
    else:
        require_root()
        outer(args, machine_facts())


if __name__ == "__main__":
    main()
