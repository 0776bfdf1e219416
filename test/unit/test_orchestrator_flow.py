"""The whole orchestrator (store, events, scheduler, automata, instance managers, builder,
HTTP client, health monitor, admin API, astara-ctl) against simulated appliances: the fake
compute driver's instances are real HTTP servers on 127.0.0.1 that validate payloads with
the agent's own parser and report a committed hash the way the agent does (sim_appliances.py;
the `cloud` and `orch` fixtures are in conftest.py). No namespaces; the real agent in
namespaces is test/functional/test_orchestrator_netns.py."""
import contextlib
import io
import json
import ssl
import threading
import time

import pytest
from werkzeug.serving import make_server

from astara_lab.webserver import QuietHandler
from orchestrator_lite import state as st
from orchestrator_lite.api import create_app
from orchestrator_lite.cli import ctl
from orchestrator_lite.drivers.base import ACTIVE, ERROR
from orchestrator_lite.events import CREATE
from orchestrator_lite.pki import DAY
from orchestrator_lite.service import Orchestrator

from sim_appliances import (FAST, TOKEN, SimCloud, backdated_ca, desired_hash, make_settings,
                            simple_router, started_orchestrators, state_of, wait_for)


def polls_pass(o, resource_id, count=3):
    """Wait until ``count`` more health polls were handled by the resource's state machine:
    what a parked resource does with them is then observable, not a guess about time."""
    start = o.resource(resource_id)["automaton"]["polls"]
    wait_for(lambda: o.resource(resource_id)["automaton"]["polls"] >= start + count,
             what=f"{count} polls of {resource_id}")


def polls_sent(o, resource_id, count=3):
    """Wait until the health monitor sent ``count`` more polls for a (paused) resource."""
    key = ("router", resource_id)
    start = o.health.polls_sent[key]
    wait_for(lambda: o.health.polls_sent[key] >= start + count,
             what=f"{count} polls sent for {resource_id}")


def test_router_is_booted_configured_and_repaired(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured")
    appliance = cloud.appliances["ak-router-r1_0"]
    assert {appliance.hash} == set(desired_hash(o, "r1").values())
    payload = appliance.payload
    assert [n["network_type"] for n in payload["networks"]] == [
        "management", "external", "internal"]
    assert payload["networks"][0]["interface"]["ifname"] == "ge0"
    assert payload["hostname"] == "ak-t1"

    # A change to the desired state is pushed (exactly this router's event).
    puts = appliance.puts
    o.store.create("floatingip", {"router_id": "r1", "floating_ip_address": "172.24.4.50",
                                  "fixed_ip_address": "10.1.0.10"})
    wait_for(lambda: appliance.payload["floating_ips"] == [
        {"floating_ip": "172.24.4.50", "fixed_ip": "10.1.0.10"}], what="fip pushed")
    assert appliance.puts == puts + 1

    # Drift: the config was changed behind the orchestrator's back -> re-pushed by a poll.
    good = appliance.hash
    appliance.commit(dict(appliance.payload, floating_ips=[]))
    wait_for(lambda: appliance.hash == good, what="drift repaired")

    # Rebooted unconfigured (generation 0, hash null) -> configured again, same instance.
    appliance.wipe()
    wait_for(lambda: appliance.hash == good, what="re-configured after wipe")
    assert [c for c in cloud.calls if c[0] == "create"] == [("create", "ak-router-r1_0")]


def test_dead_appliance_is_rebuilt_after_the_grace_period(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    cloud.appliances["ak-router-r1_0"].alive = False
    wait_for(lambda: len([c for c in cloud.calls if c[0] == "create"]) == 2, what="rebuilt")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured again")
    fresh = cloud.appliances["ak-router-r1_0"]
    assert fresh.alive and fresh.hash in desired_hash(o, "r1").values()


def test_broken_instance_is_replaced(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    instance = cloud.list("ak-router-r1_")[0]
    cloud.set_status(instance.id, ERROR)
    wait_for(lambda: any(i.status == ACTIVE and i.id != instance.id
                         for i in cloud.list("ak-router-r1_")), what="replaced")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)


def test_refused_payload_parks_in_error_without_reboot_until_fixed(orch, cloud):
    o = orch()
    simple_router(o.store, tenant="bad_tenant")  # hostname ak-bad_tenant is not RFC 1123
    wait_for(lambda: state_of(o, "r1") == st.ERROR, what="error")
    row = next(r for r in o.resources() if r["id"] == "r1")
    assert "hostname" in row["last_error"] and "422" in row["last_error"]
    polls_pass(o, "r1")  # polls do not retry a refused payload nor reboot
    assert [c[0] for c in cloud.calls].count("create") == 1
    assert "delete" not in [c[0] for c in cloud.calls]
    assert cloud.appliances["ak-router-r1_0"].puts == 1
    # Fixing the desired state clears the error and configures the same appliance.
    o.store.update("router", "r1", {"tenant_id": "goodtenant"})
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="fixed")
    assert [c[0] for c in cloud.calls].count("create") == 1


class CallLog:
    """A client factory over ``cloud``'s whose clients log each call ``(method, path)``
    and each ``close`` (which drops the pooled connection) in ``calls``."""

    def __init__(self, cloud):
        self.cloud, self.calls = cloud, []

    def __call__(self, instance):
        client = self.cloud.client_factory(instance)
        send, close = client._send, client.close

        def logged_send(method, path, *args, **kwargs):
            self.calls.append((method, path))
            return send(method, path, *args, **kwargs)

        def logged_close():
            self.calls.append("close")
            close()

        client._send, client.close = logged_send, logged_close
        return client


def test_a_run_closes_its_connection_once_after_the_push(tmp_path, cloud):
    """A run's poll and the push after it share the connection, which the run closes when
    it ends: kept, it would sit in CLOSE_WAIT until the next poll (the agent drops an
    idle one after 2 s)."""
    log = CallLog(cloud)
    with started_orchestrators() as start:
        o = start(make_settings(tmp_path, period=60.0), driver=cloud, client_factory=log)
        simple_router(o.store)
        wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured")
        wait_for(lambda: log.calls[-1] == "close", what="the boot's connection closed")
        mark = len(log.calls)
        o.store.create("floatingip", {"router_id": "r1", "floating_ip_address": "172.24.4.50",
                                      "fixed_ip_address": "10.1.0.10"})
        wait_for(lambda: ("PUT", "/v1/system/config") in log.calls[mark:] and
                 log.calls[-1] == "close", what="pushed, then closed")
        run = log.calls[mark:]
        assert run[0] == ("GET", "/v1/firewall/rules")  # the observation comes first
        assert run.count("close") == 1  # poll and push: one connection


def test_transient_push_failures_are_retried(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    appliance = cloud.appliances["ak-router-r1_0"]
    appliance.fail_puts = 2  # one client call (2 attempts) fails, the retry succeeds
    o.store.update("subnet", "sub1", {"dns_nameservers": ["192.0.2.53"]})
    wait_for(lambda: appliance.payload["networks"][2]["subnets"][0]["dns_nameservers"] ==
             ["192.0.2.53"], what="pushed after retry")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured")
    assert appliance.puts >= 3  # two refused attempts, then the retry


def test_restarted_orchestrator_adopts_without_reboot_or_push(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    appliance = cloud.appliances["ak-router-r1_0"]
    puts, calls = appliance.puts, list(cloud.calls)
    o.stop()
    again = orch()
    wait_for(lambda: state_of(again, "r1") == st.CONFIGURED, what="adopted")
    assert cloud.calls == calls  # no create, no delete
    assert appliance.puts == puts  # in sync: nothing pushed


def presented(appliance, since=0):
    """The client certificates (DER) the appliance's requests came with."""
    return {ssl.PEM_cert_to_DER_cert(pem) for _, pem, _ in appliance.requests[since:] if pem}


def test_the_client_certificate_is_renewed_while_nothing_boots(tmp_path):
    """Mutual TLS with a stable fleet: no boot, no restart, and the CA's clock moves into
    the renewal window of every certificate. The orchestrator re-issues its own client
    certificate and its next handshakes present it; the appliance's is pushed anew."""
    # 25 days back: the certificates issued before and after the jump are valid now.
    ca, clock = backdated_ca(tmp_path / "pki")
    cloud = SimCloud(certificates=ca)
    try:
        with started_orchestrators() as start:
            o = start(make_settings(tmp_path), driver=cloud,
                      client_factory=cloud.client_factory, certificates=ca)
            simple_router(o.store)
            wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured")
            appliance = cloud.appliances["ak-router-r1_0"]
            first = ssl.PEM_cert_to_DER_cert(ca.client_cert_file.read_text())
            assert presented(appliance) == {first}
            assert appliance.renewals == []
            mark = len(appliance.requests)

            clock.now += 21 * DAY  # 9 days left of 30: inside the 10-day window
            renewed = wait_for(lambda: (pem := ssl.PEM_cert_to_DER_cert(
                ca.client_cert_file.read_text())) != first and pem, what="client renewed")
            wait_for(lambda: renewed in presented(appliance, mark),
                     what="the renewed client certificate presented")
            wait_for(lambda: appliance.renewals, what="the appliance's certificate renewed")
            polls_pass(o, "r1")
            assert presented(appliance, len(appliance.requests) - 3) == {renewed}
            assert state_of(o, "r1") == st.CONFIGURED
            assert [c for c in cloud.calls if c[0] == "create"] == [("create", "ak-router-r1_0")]
    finally:
        cloud.shutdown()


def test_new_network_is_hot_plugged(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    before = len(cloud.calls)
    o.store.create("network", {"id": "net2", "tenant_id": "t1"})
    o.store.create("subnet", {"id": "sub2", "network_id": "net2", "cidr": "10.2.0.0/24"})
    o.store.add_router_interface("r1", subnet_id="sub2")
    appliance = cloud.appliances["ak-router-r1_0"]
    wait_for(lambda: len(appliance.payload["networks"]) == 4, what="replugged")
    assert appliance.payload["networks"][3]["interface"]["ifname"] == "ge3"
    assert [c[0] for c in cloud.calls[before:]] == ["attach"]  # hot-plug, no reboot


def test_ha_router_gets_two_instances_with_peers(orch, cloud):
    o = orch()
    simple_router(o.store, ha=True)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    first, second = (cloud.appliances[f"ak-router-r1_{n}"] for n in (0, 1))
    addresses = [p.payload["networks"][0]["interface"]["addresses"][0].split("/")[0]
                 for p in (first, second)]
    assert first.payload["ha_config"] == {"peers": [addresses[1]], "priority": 100}
    assert second.payload["ha_config"] == {"peers": [addresses[0]], "priority": 50}
    # One server group for the pair, named as the OpenStack driver drops it (its contract
    # test): the instance names without _<n>
    assert [cloud.hints[f"ak-router-r1_{n}"]["server_group"] for n in (0, 1)] == \
        ["ak-router-r1"] * 2
    # Losing one member: degraded, only the missing one is booted again.
    cloud.appliances["ak-router-r1_1"].alive = False
    wait_for(lambda: [c[0] for c in cloud.calls].count("create") == 3, what="member rebuilt")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    assert cloud.appliances["ak-router-r1_0"] is first


def test_load_balancer(orch, cloud):
    o = orch()
    store = o.store
    store.create("network", {"id": "web", "tenant_id": "t1"})
    store.create("subnet", {"id": "websub", "network_id": "web", "cidr": "10.70.0.0/24"})
    vip = store.create("port", {"network_id": "web", "fixed_ips": [{"ip_address": "10.70.0.20"}],
                                "device_owner": "neutron:LOADBALANCERV2"})
    store.create("loadbalancer", {"id": "lb1", "tenant_id": "t1", "vip_port_id": vip["id"]})
    pool = store.create("pool", {"loadbalancer_id": "lb1", "name": "web-pool"})
    store.create("listener", {"loadbalancer_id": "lb1", "default_pool_id": pool["id"]})
    store.create("member", {"pool_id": pool["id"], "address": "10.70.0.11"})
    wait_for(lambda: state_of(o, "lb1") == st.CONFIGURED)
    payload = cloud.appliances["ak-loadbalancer-lb1_0"].payload
    assert [n["network_type"] for n in payload["networks"]] == ["loadbalancer", "management"]
    members = payload["services"]["loadbalancer"]["listeners"][0]["default_pool"]["members"]
    assert [m["address"] for m in members] == ["10.70.0.11"]


def test_delete_removes_the_appliance(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    store = o.store
    for port in store.snapshot().interface_ports("r1"):
        store.delete("port", port["id"])
    store.delete("router", "r1")
    wait_for(lambda: not cloud.list("ak-router-r1_"), what="instance deleted")
    wait_for(lambda: all(r["id"] != "r1" for r in o.resources()), what="forgotten")
    assert store.snapshot().appliance_ports("r1") == []
    # Its ownership row and claim go too: they do not grow with every router ever made.
    wait_for(lambda: ("router", "r1") not in store.resource_rows(), what="row deleted")
    assert o.ownership.status()["owned"] == 0


def test_a_deleted_resource_made_again_keeps_its_claim(orch):
    """The record after a delete's run keeps the ownership row and claim while actions for
    the id made again are queued: the fresh automaton for them acts with that claim (a
    forgotten one would be fenced, logged as a second orchestrator on the store)."""
    o = orch(period=60.0)
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    o.command("r1", "debug")  # the workers leave it alone: the test runs the record
    automaton = o.scheduler.automaton(("router", "r1"))
    claim = automaton.claim
    for port in o.store.snapshot().interface_ports("r1"):
        o.store.delete("port", port["id"])
    o.store.delete("router", "r1")
    automaton.deleted = True  # how its delete run ends
    automaton.send(CREATE)  # the id made again, queued behind the delete
    o._record_state(automaton)
    assert ("router", "r1") in o.store.resource_rows()
    assert o.ownership.owns(automaton.ref) is claim
    automaton.queue.clear()  # nothing follows: the row and claim go
    o._record_state(automaton)
    assert ("router", "r1") not in o.store.resource_rows()
    assert o.ownership.status()["owned"] == 0


def test_orphan_instances_are_deleted(orch, cloud):
    cloud.create("ak-router-ghost_0", [], "fdca:3ba5:a17a:acda::77/64")
    orch()
    wait_for(lambda: not cloud.list("ak-router-ghost_"), what="orphan swept")


def test_boot_failures_park_in_error_until_manage(orch, cloud):
    o = orch()
    cloud.fail_create = "no capacity"
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.ERROR, what="boot error")
    row = o.resource("r1")
    assert "3 boot attempts failed" in row["last_error"] and "no capacity" in row["last_error"]
    attempts = [c[0] for c in cloud.calls].count("create")
    # The cool-down ends (the automaton's own clock), then polls come: none clears it.
    since = o.scheduler.automaton(("router", "r1")).error.since
    wait_for(lambda: time.monotonic() - since > FAST.error_cooldown, what="cool-down over")
    polls_pass(o, "r1")
    assert [c[0] for c in cloud.calls].count("create") == attempts == 3
    cloud.fail_create = None
    o.command("r1", "manage")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="managed")


def test_debug_pauses_and_manage_resumes(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    appliance = cloud.appliances["ak-router-r1_0"]
    wait_for(o.scheduler.idle, what="idle")  # an action in flight finishes even if paused
    o.command("r1", "debug", "hands off")
    wait_for(o.scheduler.idle, what="idle")  # a poll delivered just before the pause
    handled = o.resource("r1")["automaton"]["polls"]
    sent = o.workers_debug()["polls_sent"].get("router r1", 0)  # none before the first
    o.store.create("floatingip", {"router_id": "r1", "floating_ip_address": "172.24.4.60",
                                  "fixed_ip_address": "10.1.0.10"})
    polls_sent(o, "r1")
    assert appliance.payload["floating_ips"] == []  # paused: not pushed
    # /v1/workers shows the polls sent while paused; the state machine handled none
    assert o.workers_debug()["polls_sent"]["router r1"] >= sent + 3
    assert o.resource("r1")["automaton"]["polls"] == handled
    assert o.resource("r1")["paused"] == "resource debug: hands off"
    o.command("r1", "manage")
    wait_for(lambda: appliance.payload["floating_ips"] != [], what="resumed")


# -- admin API and astara-ctl ------------------------------------------------------------------

@pytest.fixture
def api(orch):
    o = orch()
    server = make_server("127.0.0.1", 0, create_app(o, TOKEN), threaded=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield o, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run_ctl(url, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = ctl.main(["--url", url, "--token", TOKEN, *argv])
    return code, out.getvalue()


def test_api_requires_the_token(api):
    import requests
    o, url = api
    assert requests.get(f"{url}/v1/routers").status_code == 401
    assert requests.get(f"{url}/v1/routers",
                        headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = requests.get(f"{url}/v1/routers", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"routers": []}
    bad = requests.post(f"{url}/v1/ports", json={"network_id": "nope"},
                        headers={"Authorization": f"Bearer {TOKEN}"})
    assert bad.status_code == 400 and "does not exist" in bad.json()["message"]


def test_a_500_never_shows_the_exception(api, monkeypatch):
    import requests
    o, url = api

    def broken():
        raise RuntimeError("password=hunter2 at /var/lib/secret")

    monkeypatch.setattr(o, "resources", broken)
    answer = requests.get(f"{url}/v1/resources", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 500
    assert "hunter2" not in answer.text and "secret" not in answer.text
    assert answer.json()["error"] == "Internal Server Error"


def test_ctl_builds_a_router_and_shows_its_state(api, cloud):
    o, url = api
    assert run_ctl(url, "network", "create", "id=net1", "mtu=1450", "tenant_id=t1")[0] == 0
    assert run_ctl(url, "subnet", "create", "id=sub1", "network_id=net1",
                   "cidr=10.1.0.0/24")[0] == 0
    assert run_ctl(url, "router", "create", "id=r1", "tenant_id=t1")[0] == 0
    code, out = run_ctl(url, "router", "add-interface", "r1", "sub1")
    assert code == 0 and json.loads(out)["fixed_ips"][0]["ip_address"] == "10.1.0.1"
    assert run_ctl(url, "port", "create", "network_id=net1", "device_id=vm1",
                   'fixed_ips=[{"ip_address": "10.1.0.10"}]')[0] == 0
    def pushed_with_the_vm():  # configured *after* the VM port's update was pushed
        appliance = cloud.appliances.get("ak-router-r1_0")
        return state_of(o, "r1") == st.CONFIGURED and appliance and appliance.payload and \
            "10.1.0.10" in json.dumps(appliance.payload["networks"])

    wait_for(pushed_with_the_vm)
    code, out = run_ctl(url, "resource", "list")
    assert code == 0 and "r1" in out and "configured" in out
    code, out = run_ctl(url, "browse", "--once")
    assert code == 0 and "configured: 1" in out and "r1" in out
    code, out = run_ctl(url, "resource", "show", "r1")
    shown = json.loads(out)
    assert shown["state"] == "configured" and shown["instances"][0]["alive"]
    assert cloud.appliances["ak-router-r1_0"].hash in shown["desired_hash"].values()
    puts = cloud.appliances["ak-router-r1_0"].puts
    assert run_ctl(url, "router", "update", "r1")[0] == 0  # forced re-push
    wait_for(lambda: cloud.appliances["ak-router-r1_0"].puts == puts + 1, what="forced push")
    code, out = run_ctl(url, "workers", "debug")
    assert code == 0 and json.loads(out)["threads"] == 3
    assert run_ctl(url, "poll")[0] == 0
    code, out = run_ctl(url, "router", "rebuild", "r1")
    assert code == 0
    wait_for(lambda: [c[0] for c in cloud.calls].count("create") == 2, what="rebuilt")
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED)
    assert run_ctl(url, "tenant", "debug", "t1", "--reason", "x")[0] == 0
    assert o.resource("r1")["paused"] == "tenant debug: x"
    assert run_ctl(url, "tenant", "manage", "t1")[0] == 0
    assert o.resource("r1")["paused"] is None
    code, out = run_ctl(url, "ssh", "r1")
    assert code == 1  # the fake driver offers no shell


def test_ctl_reports_errors(api):
    o, url = api
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, _ = run_ctl(url, "router", "show", "nope")
    assert code == 1 and "404" in err.getvalue()


def test_ctl_reads_url_and_token_from_the_ini(tmp_path, api, monkeypatch):
    o, url = api
    host, port = url.rsplit(":", 1)
    ini = tmp_path / "orchestrator.ini"
    ini.write_text(f"[api]\nlisten = 127.0.0.1\nport = {port}\ntoken = {TOKEN}\n")
    monkeypatch.setenv("ASTARA_CTL_CONFIG", str(ini))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ctl.main(["resource", "list"]) == 0
    assert "ID" in out.getvalue()


def test_webhook_receives_each_transition(tmp_path, cloud):
    import http.server

    received = []

    class Hook(QuietHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    settings = make_settings(tmp_path)
    settings = type(settings)(**{**settings.__dict__,
                                 "webhook_url": f"http://127.0.0.1:{server.server_port}/"})
    o = Orchestrator(settings, driver=cloud, client_factory=cloud.client_factory)
    o.start()
    try:
        simple_router(o.store)
        wait_for(lambda: any(b["state"] == st.CONFIGURED for b in received), what="hook")
    finally:
        o.stop()
        server.shutdown()
        server.server_close()
    first = received[0]
    assert first["resource"] == {"kind": "router", "id": "r1", "tenant_id": "t1"}
    assert (first["previous_state"], first["state"]) == (st.DOWN, st.BOOTING)
    states = [b["state"] for b in received]
    assert states[-1] == st.CONFIGURED and all("time" in b for b in received)
