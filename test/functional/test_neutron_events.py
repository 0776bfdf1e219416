"""Neutron's notifications through a real RabbitMQ (Debian's rabbitmq-server, started here
with its own node name, HOME/cookie, data dir, ports and epmd on 127.0.0.1; stopped by PID
afterwards). The orchestrator runs in OpenStack mode (desired state from a small OpenStack
on loopback, events from the broker) with simulated appliances, so what is tested is the
event path: notification -> object by id -> the right router -> its payload."""
import contextlib
import json
import pathlib

import kombu
import pytest

from astara_lab import broker as rabbit
from astara_lab import scrape
from astara_lab.scrape import orchestrator_exposition
from astara_netns import pid_alive
from orchestrator_lite.config import ApiSettings, NeutronSettings, Settings

import neutron_topologies as topo
from sim_appliances import FAST, SimCloud, started_orchestrators, wait_for

pytestmark = pytest.mark.skipif(rabbit.available() is not None,
                                reason=str(rabbit.available()))


def _read(path):
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = rabbit.Broker(tmp_path_factory.mktemp("rabbitmq"))
    b.start()
    yield b
    epmd = b._epmd.pid
    b.remove()
    # Nothing of it is left: no VM with its node name, not its epmd.
    assert not pid_alive(epmd)
    left = [p for p in pathlib.Path("/proc").glob("[0-9]*/cmdline")
            if _read(p) and b.node.encode() in _read(p)]
    assert left == [], left


@pytest.fixture
def orchestrator(tmp_path, cloud, os_settings, broker):
    sims = SimCloud()
    with started_orchestrators() as start_orchestrator:
        def start(topology, queue="", host="controller-1"):
            topology.load_into(cloud)
            settings = Settings(host=host, state_dir=str(tmp_path / f"state-{host}"),
                                api=ApiSettings(token="t"), threads=3, health=FAST,
                                openstack=os_settings,
                                neutron=NeutronSettings(desired_state=True,
                                                        resync_period=3600,
                                                        events_url=broker.url, queue=queue))
            o = start_orchestrator(settings, driver=sims, client_factory=sims.client_factory)
            assert o.neutron_events.connected.wait(20), "listener never connected"
            return o

        start.sims = sims
        yield start
    sims.shutdown()


def appliance_of(sims, rid):
    return sims.appliances.get(f"ak-router-{rid}_0")


def metric(o, name):
    """A sample of the orchestrator's GET /metrics (0 when absent)."""
    return scrape.metric(orchestrator_exposition(o, "t"), name)


def configured(o, rid):
    return o.resource(rid)["state"] == "configured"


def test_notifications_move_the_right_router(orchestrator, cloud, broker):
    basic, (_, rid) = topo.router_basic()
    nogw, (_, other) = topo.router_no_gateway()
    # Another consumer of Neutron's notifications (ceilometer's queue) must lose nothing.
    with kombu.Connection(broker.url) as conn:
        exchange = kombu.Exchange("neutron", type="topic", durable=False)
        bystander = kombu.Queue("notifications.info", exchange=exchange,
                                routing_key="notifications.info", durable=False)
        l3 = kombu.Queue("test-q-l3-plugin", exchange=exchange, routing_key="q-l3-plugin",
                         durable=False)
        bystander(conn.channel()).declare()
        l3(conn.channel()).declare()
    o = orchestrator(basic.merge(nogw))
    sims = orchestrator.sims
    wait_for(lambda: configured(o, rid) and configured(o, other), timeout=20,
             what="both routers configured")
    untouched = appliance_of(sims, other).puts
    publisher = rabbit.Publisher(broker.url)
    try:
        # The floating IP moves from web-1 to web-2: only router-basic changes.
        fip = dict(cloud.floatingips[basic.objects["floatingips"][0]["id"]])
        web2 = next(p for p in cloud.ports.values() if p["mac_address"] == "fa:16:3e:10:9f:9b")
        fip.update(fixed_ip_address="10.1.0.12", port_id=web2["id"])
        cloud.add("floatingip", fip)
        publisher.publish("floatingip.update.end", {"floatingip": fip})
        wait_for(lambda: appliance_of(sims, rid).payload["floating_ips"] ==
                 [{"floating_ip": "172.24.4.228", "fixed_ip": "10.1.0.12"}], timeout=10,
                 what="floating IP moved on router-basic")
        # A new VM port on router-no-gateway's frontend network (re-read from Neutron).
        vm = {"id": "b0b0b0b0-0000-4000-8000-000000000001", "name": "fe-2",
              "network_id": "47dcb695-c668-47de-bcde-d939761d62dd",
              "tenant_id": "c0a081079dfa4a078c0f0152f38c832e", "mac_address":
              "fa:16:3e:94:ac:b5", "fixed_ips": [{"subnet_id":
                                                  "105de5fb-8742-456e-9298-9f4a60ecd4a9",
                                                  "ip_address": "192.168.50.11"}],
              "device_id": "c0c0c0c0-0000-4000-8000-000000000001",
              "device_owner": "compute:nova", "admin_state_up": True, "status": "ACTIVE"}
        cloud.add("port", vm)
        publisher.publish("port.create.end", {"port": {"id": vm["id"]}})
        wait_for(lambda: "192.168.50.11" in str(appliance_of(sims, other).payload),
                 timeout=10, what="new VM in router-no-gateway's allocations")
        assert "192.168.50.11" not in str(appliance_of(sims, rid).payload)
        assert appliance_of(sims, other).puts == untouched + 1
        # The router is deleted in Neutron: its appliance goes.
        with cloud.lock:
            for port_id in [p["id"] for p in cloud.ports.values() if p["device_id"] == other]:
                del cloud.ports[port_id]
            del cloud.routers[other]
        for port_id in [p["id"] for p in nogw.objects["ports"] if p["device_id"] == other]:
            publisher.publish("port.delete.end", {"port_id": port_id})
        publisher.publish("router.delete.end", {"router_id": other})
        wait_for(lambda: appliance_of(sims, other) is None, timeout=10,
                 what="router-no-gateway's appliance deleted")
        assert configured(o, rid)
    finally:
        publisher.close()
    assert o.neutron_events.received >= 5
    with kombu.Connection(broker.url) as conn:
        _, bystander_count, _ = bystander(conn.channel()).queue_declare(passive=True)
        assert bystander_count == o.neutron_events.received
        # The floating IP status went to Neutron's L3 plugin RPC (what the L3 agent does).
        casts = []
        with conn.Consumer(l3, callbacks=[lambda body, m: (casts.append(body), m.ack())],
                           accept=["json"]):
            with contextlib.suppress(TimeoutError, OSError):
                while True:
                    conn.drain_events(timeout=1)
    messages = [json.loads(c["oslo.message"]) for c in casts]
    statuses = [m["args"] for m in messages if m["method"] == "update_floatingip_statuses"]
    fip_id = basic.objects["floatingips"][0]["id"]
    assert {"router_id": rid, "fip_statuses": {fip_id: "ACTIVE"}} in statuses


def test_a_burst_of_1000_events_is_one_push_per_router_per_batch(orchestrator, cloud, broker):
    """1000 notifications, 50 per router, as fast as one publisher sends them: the listener
    applies them in batches (the stream quiet for 50 ms, or a second after a batch's
    first), and each batch costs a router at most one push, however many of its
    notifications it held. How many batches a burst makes depends on how fast the machine
    delivers it (a loaded 2-core runner took more than two), so the bound is counted in
    batches, not a fixed number; the time and pushes are measured in make bench."""
    topology, routers = topo.many_routers(20)
    routers = [rid for rid, _, _ in routers]
    o = orchestrator(topology)
    sims = orchestrator.sims
    wait_for(lambda: all(configured(o, r) for r in routers), timeout=60,
             what="20 routers configured")
    before = {r: appliance_of(sims, r).puts for r in routers}
    batches_before = metric(o, "astara_orchestrator_notification_batches_total")
    fips = {f["router_id"]: f for f in topology.objects["floatingips"]}
    publisher = rabbit.Publisher(broker.url)
    try:
        for i in range(1000):
            rid = routers[i % 20]
            k = routers.index(rid) + 1
            fip = dict(fips[rid], fixed_ip_address=f"10.100.{k}.{10 + (i // 20) % 2}")
            publisher.publish("floatingip.update.end", {"floatingip": fip})
    finally:
        publisher.close()
    # Event i for router k toggles between .10 and .11; the last (i // 20 = 49) says .11.
    wait_for(lambda: all(appliance_of(sims, r).payload["floating_ips"][0]["fixed_ip"] ==
                         f"10.100.{k}.11" for k, r in enumerate(routers, start=1)),
             timeout=30, what="every router at its last floating IP")
    wait_for(lambda: metric(o, "astara_orchestrator_notifications_total") >= 1000 and
             o.scheduler.idle(), what="the burst consumed")
    pushes = {r: appliance_of(sims, r).puts - before[r] for r in routers}
    batches = metric(o, "astara_orchestrator_notification_batches_total") - batches_before
    assert batches < 50, f"{batches} batches: the notifications were not batched"
    assert all(1 <= n <= batches for n in pushes.values()), (pushes, batches)


def test_a_restarted_broker_is_reconnected_to(orchestrator, cloud, broker):
    basic, (_, rid) = topo.router_basic()
    o = orchestrator(basic)
    sims = orchestrator.sims
    wait_for(lambda: configured(o, rid), timeout=20, what="router configured")
    connections = metric(o, "astara_orchestrator_broker_connections_total")
    assert metric(o, "astara_orchestrator_broker_connected") == 1
    broker.restart()
    wait_for(lambda: metric(o, "astara_orchestrator_broker_connections_total") > connections
             and metric(o, "astara_orchestrator_broker_connected") == 1, timeout=60,
             what="listener reconnected (its metrics say so)")
    fip = dict(cloud.floatingips[basic.objects["floatingips"][0]["id"]])
    fip.update(fixed_ip_address="10.1.0.12")
    cloud.add("floatingip", fip)
    publisher = rabbit.Publisher(broker.url)
    try:
        publisher.publish("floatingip.update.end", {"floatingip": fip})
    finally:
        publisher.close()
    wait_for(lambda: appliance_of(sims, rid).payload["floating_ips"][0]["fixed_ip"] ==
             "10.1.0.12", timeout=10, what="event after the restart applied")


def test_every_orchestrator_has_its_own_queue(orchestrator, cloud, broker):
    basic, (_, rid) = topo.router_basic()
    a = orchestrator(basic, host="node-a")
    b = orchestrator(basic, host="node-b")
    assert a.neutron_events.queue.name == "astara-orchestrator.node-a"
    assert b.neutron_events.queue.name == "astara-orchestrator.node-b"
    publisher = rabbit.Publisher(broker.url)
    try:
        publisher.publish("router.update.end", {"router": {"id": rid}})
    finally:
        publisher.close()
    wait_for(lambda: a.neutron_events.received >= 1 and b.neutron_events.received >= 1,
             what="both members saw the event")
    with kombu.Connection(broker.url) as conn:  # each queue handed its copy out
        for listener in (a.neutron_events, b.neutron_events):
            _, waiting, consumers = listener.queue(conn.channel()).queue_declare(passive=True)
            assert (waiting, consumers) == (0, 1)
