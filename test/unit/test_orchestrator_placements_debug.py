"""Placements (per-tenant/per-resource image and driver) and the state-machine debugger,
on the whole orchestrator with simulated appliances (sim_appliances.py; the `orch` and
`cloud` fixtures are in conftest.py). The namespace-driver versions are
test/functional/test_orchestrator_placements_debug.py."""
import threading

import pytest

from orchestrator_lite.api import create_app
from orchestrator_lite.store import StoreError

from sim_appliances import TOKEN, wait_for

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def router(o, rid, tenant):
    s = o.store
    if s.snapshot().get("network", "ext") is None:
        s.create("network", {"id": "ext", "external": True})
        s.create("subnet", {"id": "ext4", "network_id": "ext", "cidr": "198.51.100.0/24",
                            "enable_dhcp": False})
    s.create("network", {"id": f"n-{rid}", "tenant_id": tenant, "mtu": 1450})
    s.create("subnet", {"id": f"s-{rid}", "network_id": f"n-{rid}",
                        "cidr": f"10.{len(s.snapshot().all('router')) + 1}.0.0/24"})
    s.create("router", {"id": rid, "tenant_id": tenant})
    s.set_router_gateway(rid, "ext")
    s.add_router_interface(rid, subnet_id=f"s-{rid}")


def configured(o, rid):
    return o.resource(rid)["state"] == "configured"


def test_tenant_and_resource_placements_choose_the_image(orch, cloud):
    o = orch()
    o.set_placement("tenant", "t-byo", image="/images/tenant-nf")
    o.set_placement("resource", "r-own", image="/images/own-nf")
    for rid, tenant in (("r-default", "t-plain"), ("r-tenant", "t-byo"), ("r-own", "t-byo")):
        router(o, rid, tenant)
    for rid in ("r-default", "r-tenant", "r-own"):
        wait_for(lambda rid=rid: configured(o, rid), what=f"{rid} configured")
    images = {rid: cloud.hints[f"ak-router-{rid}_0"]["image"]
              for rid in ("r-default", "r-tenant", "r-own")}
    assert images == {"r-default": None, "r-tenant": "/images/tenant-nf",
                      "r-own": "/images/own-nf"}
    shown = o.resource("r-tenant")
    assert shown["placement"] == {"driver": "", "image": "/images/tenant-nf",
                                  "source": "tenant"}
    assert shown["instances"][0]["driver"] == "fake"
    assert o.resource("r-default")["placement"]["source"] == "default"
    stored = o.placements()["placements"]
    assert {(p["scope"], p["key"]) for p in stored} == \
        {("tenant", "t-byo"), ("resource", "r-own")}
    # Stored with the desired state: a second orchestrator on the same store sees them.
    o.stop()
    again = orch()
    assert again.placements()["placements"] == stored
    assert again.resource("r-tenant")["placement"] == shown["placement"]
    assert again.resource("r-own")["placement"]["source"] == "resource"


def test_placement_input_errors_are_400_naming_the_field(orch):
    o = orch()
    client = create_app(o, TOKEN).test_client()
    cases = [("/v1/placements/tenant/t1", {"driver": "qemu"}, "driver"),
             ("/v1/placements/project/t1", {"image": "x"}, "scope"),
             ("/v1/placements/tenant/t1", {}, "image"),
             ("/v1/placements/tenant/t1", {"image": 5}, "image")]
    for path, body, field in cases:
        answer = client.put(path, json=body, headers=HEADERS)
        assert answer.status_code == 400, (path, body, answer.get_json())
        assert answer.get_json()["field"] == field
    ok = client.put("/v1/placements/tenant/t1", json={"driver": "fake", "image": "i"},
                    headers=HEADERS)
    assert ok.status_code == 200
    assert client.delete("/v1/placements/tenant/t1", headers=HEADERS).get_json()[
        "placements"] == []


def test_debug_session_traces_the_state_machine_and_keeps_workers_away(orch, cloud):
    o = orch()
    router(o, "r1", "t1")
    wait_for(lambda: configured(o, "r1"), what="r1 configured")
    session = o.debug_session("r1", ["update"], follow=True, timeout=3)
    lines, sent = [], threading.Event()
    for line in session.stream():
        lines.append(line)
        if line["kind"] == "wait" or (line["kind"] == "step" and not sent.is_set()
                                       and line["step"] == "ConfigureInstance"):
            if not sent.is_set():
                sent.set()
                # An operator's update during the session goes to the session.
                o.command("r1", "update")
    kinds = [line["kind"] for line in lines]
    assert kinds[0] == "session" and kinds[-1] == "end"
    events = [(line["action"], line["source"]) for line in lines if line["kind"] == "event"]
    assert events[0] == ("update", "debugger")
    assert ("update", "orchestrator") in events
    steps = [line["step"] for line in lines if line["kind"] == "step"]
    assert steps[:2] == ["CalcAction", "Alive"] and "ConfigureInstance" in steps
    requests = [line["call"] for line in lines if line["kind"] == "request"]
    assert any(call.startswith("driver.list(") for call in requests)
    assert any(".put_config(" in call for call in requests)
    # Dropping the pooled connection at the end of each run is plumbing, not traced.
    assert not [call for call in requests if ".close(" in call]
    answers = [line for line in lines if line["kind"] == "answer" and
               line["call"].endswith(".put_config")]
    assert answers and "error" not in answers[0]
    assert lines[-1]["returned_to_workers"] is True
    assert o.resource("r1")["paused"] is None
    # The workers have it again: a change is configured by them.
    before = cloud.appliances["ak-router-r1_0"].puts
    o.store.create("port", {"network_id": "n-r1", "device_id": "vm9",
                            "device_owner": "compute:nova"})
    wait_for(lambda: cloud.appliances["ak-router-r1_0"].puts > before, what="push after")


def test_debug_session_on_a_paused_resource_leaves_it_paused(orch):
    o = orch()
    router(o, "r2", "t2")
    wait_for(lambda: configured(o, "r2"), what="r2 configured")
    o.command("r2", "debug", "by hand")
    lines = list(o.debug_session("r2", ["poll"], timeout=5).stream())
    assert lines[-1]["kind"] == "end" and lines[-1]["returned_to_workers"] is False
    assert o.resource("r2")["paused"] == "resource debug: by hand"


def test_debug_session_rejects_unknown_actions(orch):
    o = orch()
    router(o, "r3", "t3")
    with pytest.raises(StoreError, match="unknown action"):
        o.debug_session("r3", ["explode"])
