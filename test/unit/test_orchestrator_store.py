"""Desired-state store: SQLite persistence (WAL, creation order), validation and IPAM, and
the events each change emits — exactly the affected routers/load balancers."""
import sqlite3

import pytest

from orchestrator_lite.config import ManagementSettings
from orchestrator_lite.events import CREATE, DELETE, UPDATE
from orchestrator_lite.store import Conflict, NotFound, Store, StoreError

MGMT = ManagementSettings()


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "orchestrator.sqlite")


@pytest.fixture
def store(path):
    s = Store(path, MGMT.network_id)
    s.ensure_management_network(MGMT)
    events = []
    s.subscribe(events.extend)
    s.events = events
    yield s
    s.close()


def taken(store):
    """Events emitted since the last call, as (kind, id, action)."""
    out = [(e.ref.kind, e.ref.id, e.action) for e in store.events]
    store.events.clear()
    return out


def world(store):
    """Tenant t1: routers ra and rb both on network n1 (rb also on n2), router rc on n3
    only, all with a gateway on the external network ext; load balancer lb1 on n1."""
    store.create("network", {"id": "ext", "external": True})
    store.create("subnet", {"id": "ext4", "network_id": "ext", "cidr": "172.24.4.0/24",
                            "enable_dhcp": False})
    for net, cidr in (("n1", "10.1.0.0/24"), ("n2", "10.2.0.0/24"), ("n3", "10.3.0.0/24")):
        store.create("network", {"id": net, "tenant_id": "t1", "mtu": 1450})
        store.create("subnet", {"id": f"{net}s", "network_id": net, "cidr": cidr})
    for router in ("ra", "rb", "rc"):
        store.create("router", {"id": router, "tenant_id": "t1"})
        store.set_router_gateway(router, "ext")
    store.add_router_interface("ra", subnet_id="n1s")
    store.add_router_interface("rb", subnet_id="n1s", ip_address="10.1.0.2")
    store.add_router_interface("rb", subnet_id="n2s")
    store.add_router_interface("rc", subnet_id="n3s")
    vip = store.create("port", {"id": "vip", "network_id": "n1",
                                "fixed_ips": [{"ip_address": "10.1.0.50"}]})
    store.create("loadbalancer", {"id": "lb1", "tenant_id": "t1", "vip_port_id": vip["id"]})
    store.create("pool", {"id": "p1", "loadbalancer_id": "lb1"})
    store.events.clear()


# -- persistence --------------------------------------------------------------------------------

def test_sqlite_wal_and_reload_keeps_creation_order(path, store):
    world(store)
    store.create("port", {"id": "z-first", "network_id": "n1"})
    store.create("port", {"id": "a-second", "network_id": "n1"})
    store.update("port", "z-first", {"name": "renamed"})  # an update keeps the position
    ids = [p["id"] for p in store.snapshot().ports_on("n1")]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = Store(path, MGMT.network_id)
    assert [p["id"] for p in again.snapshot().ports_on("n1")] == ids
    assert ids[-2:] == ["z-first", "a-second"]
    assert again.snapshot().get("port", "z-first")["name"] == "renamed"
    again.close()


def test_a_failing_subscriber_neither_undoes_the_commit_nor_silences_the_others(store):
    heard = []

    def broken(events):
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(heard.append)  # after the broken one
    store.create("router", {"id": "r1", "tenant_id": "t1"})
    assert store.snapshot().get("router", "r1") is not None
    assert [[(e.ref.id, e.action) for e in events] for events in heard] == [[("r1", CREATE)]]
    store.create("network", {"id": "lonely", "tenant_id": "t1"})  # affects no resource
    assert len(heard) == 1  # no call with an empty list


def test_debug_flags_persist(path, store):
    store.debug_flags.set("tenant", "t1", "maintenance")
    store.close()
    again = Store(path, MGMT.network_id)
    assert again.debug_flags.all()[("tenant", "t1")]["reason"] == "maintenance"
    again.debug_flags.clear("tenant", "t1")
    assert again.debug_flags.all() == {}
    again.close()


def test_management_network_from_config(store):
    snap = store.snapshot()
    assert snap.get("network", MGMT.network_id)["mtu"] == 1450
    subnet = snap.get("subnet", MGMT.subnet_id)
    assert subnet["cidr"] == "fdca:3ba5:a17a:acda::/64"
    assert subnet["gateway_ip"] == "fdca:3ba5:a17a:acda::1"
    assert subnet["ipv6_address_mode"] == "slaac"
    store.ensure_management_network(MGMT)  # idempotent: no change, no event
    assert taken(store) == []
    with pytest.raises(Conflict):
        store.delete("network", MGMT.network_id)


# -- validation and IPAM --------------------------------------------------------------------------

def test_port_addresses_are_allocated_like_neutron(store):
    world(store)
    port = store.create("port", {"network_id": "n1"})
    assert port["fixed_ips"] == [{"subnet_id": "n1s", "ip_address": "10.1.0.3"}]
    assert port["mac_address"].startswith("fa:16:3e:")
    store.create("subnet", {"id": "n1v6", "network_id": "n1", "cidr": "fd00:1::/64",
                            "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac"})
    slaac = store.create("port", {"network_id": "n1", "mac_address": "fa:16:3e:4a:0a:95",
                                  "fixed_ips": [{"subnet_id": "n1v6"}]})
    assert slaac["fixed_ips"][0]["ip_address"] == "fd00:1::f816:3eff:fe4a:a95"


@pytest.mark.parametrize("body, error, status", [
    ({"network_id": "nope"}, "network nope does not exist", 400),
    ({"network_id": "n1", "fixed_ips": [{"ip_address": "10.9.9.9"}]}, "in no subnet", 400),
    ({"network_id": "n1", "fixed_ips": [{"subnet_id": "n2s"}]}, "not on network", 400),
    ({"network_id": "n1", "fixed_ips": [{"ip_address": "10.1.0.1"}]}, "already in use", 409),
    ({"network_id": "n1", "mac_address": "01:00:5e:00:00:01"}, "multicast", 400),
    ({"network_id": "n1", "colour": "blue"}, "unknown port field", 400),
])
def test_port_validation(store, body, error, status):
    world(store)
    with pytest.raises(StoreError, match=error) as info:
        store.create("port", body)
    assert info.value.status == status


def test_duplicate_mac_is_refused(store):
    world(store)
    mac = store.create("port", {"network_id": "n1"})["mac_address"]
    with pytest.raises(Conflict, match="MAC"):
        store.create("port", {"network_id": "n2", "mac_address": mac})


def test_subnet_validation(store):
    world(store)
    with pytest.raises(StoreError, match="not in"):
        store.create("subnet", {"network_id": "n1", "cidr": "10.5.0.0/24",
                                "gateway_ip": "10.6.0.1"})
    with pytest.raises(StoreError, match="cidr"):
        store.create("subnet", {"network_id": "n1", "cidr": "10.5.0.1/24"})
    with pytest.raises(StoreError, match="cannot be changed"):
        store.update("subnet", "n1s", {"cidr": "10.7.0.0/24"})


def test_floating_ip_family_and_uniqueness(store):
    world(store)
    store.create("floatingip", {"router_id": "ra", "floating_ip_address": "172.24.4.100",
                                "fixed_ip_address": "10.1.0.5"})
    with pytest.raises(Conflict):
        store.create("floatingip", {"router_id": "rb", "floating_ip_address": "172.24.4.100",
                                    "fixed_ip_address": "10.1.0.6"})
    with pytest.raises(StoreError, match="same family"):
        store.create("floatingip", {"router_id": "ra", "floating_ip_address": "172.24.4.101",
                                    "fixed_ip_address": "fd00::5"})
    allocated = store.create("floatingip", {"router_id": "ra", "fixed_ip_address": "10.1.0.7"})
    assert allocated["floating_ip_address"].startswith("172.24.4.")


def test_deletes_refuse_dependents_and_cascade(store):
    world(store)
    with pytest.raises(Conflict, match="subnet"):
        store.delete("network", "n1")
    with pytest.raises(Conflict, match="interface port"):
        store.delete("router", "rc")
    port = store.snapshot().interface_ports("rc")[0]
    store.delete("port", port["id"])
    store.delete("router", "rc")  # its gateway port goes with it
    assert all(p["device_id"] != "rc" for p in store.snapshot().all("port"))
    store.create("member", {"pool_id": "p1", "address": "10.1.0.8"})
    store.delete("loadbalancer", "lb1")  # listeners, pools, members go with it
    snap = store.snapshot()
    assert snap.all("pool") == [] and snap.all("member") == []
    with pytest.raises(NotFound):
        store.delete("router", "rc")


# -- events: exactly the affected resources -------------------------------------------------------

def test_router_lifecycle_events(store):
    store.create("router", {"id": "r9", "tenant_id": "t9"})
    assert taken(store) == [("router", "r9", CREATE)]
    store.update("router", "r9", {"name": "edge"})
    assert taken(store) == [("router", "r9", UPDATE)]
    store.update("router", "r9", {"name": "edge"})  # no change, no event
    assert taken(store) == []
    store.delete("router", "r9")
    assert taken(store) == [("router", "r9", DELETE)]


def test_vm_port_updates_every_router_with_an_interface_on_its_network(store):
    world(store)
    store.create("port", {"id": "vm1", "network_id": "n1", "device_owner": "compute:nova"})
    assert sorted(taken(store)) == [("router", "ra", UPDATE), ("router", "rb", UPDATE)]
    store.create("port", {"id": "vm3", "network_id": "n3"})
    assert taken(store) == [("router", "rc", UPDATE)]  # not "the tenant's first router"
    store.delete("port", "vm1")
    assert sorted(taken(store)) == [("router", "ra", UPDATE), ("router", "rb", UPDATE)]


def test_port_on_the_external_network_touches_no_other_router(store):
    world(store)
    store.create("router", {"id": "rd", "tenant_id": "t2"})
    taken(store)
    store.set_router_gateway("rd", "ext")
    assert taken(store) == [("router", "rd", UPDATE)]


def test_new_floating_ip_updates_its_router_only(store):
    world(store)
    fip = store.create("floatingip", {"router_id": "rb", "floating_ip_address": "172.24.4.50",
                                      "fixed_ip_address": "10.2.0.9"})
    assert taken(store) == [("router", "rb", UPDATE)]
    store.update("floatingip", fip["id"], {"router_id": "ra", "fixed_ip_address": "10.1.0.9"})
    assert sorted(taken(store)) == [("router", "ra", UPDATE), ("router", "rb", UPDATE)]


def test_interface_removal_reaches_the_router_that_lost_it(store):
    world(store)
    port = next(p for p in store.snapshot().interface_ports("rb") if p["network_id"] == "n2")
    store.delete("port", port["id"])
    assert taken(store) == [("router", "rb", UPDATE)]


def test_subnet_change_reaches_routers_and_load_balancers_on_the_network(store):
    world(store)
    store.update("subnet", "n1s", {"dns_nameservers": ["192.0.2.53"]})
    assert sorted(taken(store)) == [("loadbalancer", "lb1", UPDATE), ("router", "ra", UPDATE),
                                    ("router", "rb", UPDATE)]
    store.update("subnet", "ext4", {"host_routes": [{"destination": "192.0.2.0/24",
                                                     "nexthop": "172.24.4.254"}]})
    assert sorted(taken(store)) == [("router", "ra", UPDATE), ("router", "rb", UPDATE),
                                    ("router", "rc", UPDATE)]


def test_management_network_change_reaches_everything(store):
    world(store)
    store.update("network", MGMT.network_id, {"mtu": 1400})
    assert sorted(taken(store)) == [("loadbalancer", "lb1", UPDATE), ("router", "ra", UPDATE),
                                    ("router", "rb", UPDATE), ("router", "rc", UPDATE)]


def test_load_balancer_children_update_their_load_balancer(store):
    world(store)
    store.create("listener", {"id": "l1", "loadbalancer_id": "lb1", "default_pool_id": "p1"})
    assert taken(store) == [("loadbalancer", "lb1", UPDATE)]
    store.create("member", {"id": "m1", "pool_id": "p1", "address": "10.1.0.8"})
    assert taken(store) == [("loadbalancer", "lb1", UPDATE)]
    store.update("port", "vip", {"name": "vip-port"})
    # The VIP port is on n1, where ra and rb have interfaces (it is in their allocations).
    assert sorted(taken(store)) == [("loadbalancer", "lb1", UPDATE), ("router", "ra", UPDATE),
                                    ("router", "rb", UPDATE)]


def test_unattached_network_changes_emit_nothing(store):
    store.create("network", {"id": "lonely"})
    store.create("subnet", {"network_id": "lonely", "cidr": "10.99.0.0/24"})
    store.create("port", {"network_id": "lonely"})
    assert taken(store) == []


def test_appliance_ports_emit_nothing(store):
    world(store)
    port = store.create_appliance_port({"resource_kind": "router", "resource_id": "ra",
                                        "instance_name": "ak-router-ra_0", "role": "data",
                                        "network_id": "n1"})
    store.delete_appliance_ports([port])
    assert taken(store) == []


def test_router_delete_with_gateway_emits_one_delete(store):
    world(store)
    port = store.snapshot().interface_ports("rc")[0]
    store.delete("port", port["id"])
    taken(store)
    store.delete("router", "rc")
    assert taken(store) == [("router", "rc", DELETE)]


def test_paused_reason(store):
    world(store)
    ref = store.snapshot().ref("router", "ra")
    assert store.debug_flags.paused_reason(ref) is None
    store.debug_flags.set("tenant", "t1", "upgrade")
    assert store.debug_flags.paused_reason(ref) == "tenant debug: upgrade"
    store.debug_flags.clear("tenant", "t1")
    store.debug_flags.set("resource", "ra")
    assert store.debug_flags.paused_reason(ref) == "resource debug"


def test_ipsec_site_connection_validation_events_and_deletes(store):
    import json

    from orchestrator_lite.api import create_app
    store.create("network", {"id": "ext", "external": True})
    store.create("subnet", {"id": "ext4", "network_id": "ext", "cidr": "198.51.100.0/24"})
    store.create("network", {"id": "net", "tenant_id": "t"})
    store.create("subnet", {"id": "s1", "network_id": "net", "cidr": "10.8.0.0/24"})
    store.create("subnet", {"id": "s2", "network_id": "net", "cidr": "10.9.0.0/24"})
    store.create("router", {"id": "r1", "tenant_id": "t"})
    store.set_router_gateway("r1", "ext")
    store.add_router_interface("r1", subnet_id="s1")
    good = {"id": "c1", "router_id": "r1", "peer_address": "198.51.100.18", "psk": "sekrit",
            "local_subnet_ids": ["s1"], "peer_cidrs": ["192.168.240.0/24"]}
    for changes, field in (({"local_subnet_ids": ["s2"]}, "local_subnet_ids"),
                           ({"peer_cidrs": ["192.168.240.1/24"]}, "peer_cidrs"),
                           ({"psk": ""}, "psk"), ({"peer_address": "nope"}, "peer_address"),
                           ({"ikepolicy": {"bogus": 1}}, "ikepolicy"),
                           ({"id": "a.b"}, "id")):
        with pytest.raises(StoreError) as refused:
            store.create("ipsec_site_connection", dict(good, **changes))
        assert refused.value.field == field, changes
    taken(store)
    created = store.create("ipsec_site_connection", good)
    assert created["peer_id"] == "198.51.100.18" and created["ikepolicy"]["pfs"] == "group5"
    assert taken(store) == [("router", "r1", UPDATE)]
    with pytest.raises(StoreError):
        store.delete("router", "r1")  # still used by the connection
    # the admin API never shows the PSK
    client = create_app(type("O", (), {"store": store})(), "token").test_client()
    headers = {"Authorization": "Bearer token"}
    shown = client.get("/v1/ipsec_site_connections/c1", headers=headers).get_json()
    listed = client.get("/v1/ipsec_site_connections", headers=headers).get_json()
    assert shown["ipsec_site_connection"]["psk"] == "<redacted>"
    assert "sekrit" not in json.dumps(listed) and listed["ipsec_site_connections"]
    assert store.snapshot().get("ipsec_site_connection", "c1")["psk"] == "sekrit"


@pytest.mark.parametrize("destination", [MGMT.orchestrator_address + "/128", MGMT.prefix,
                                         str(next(MGMT.network.subnets(new_prefix=80)))])
def test_a_host_route_covering_the_management_path_is_refused(store, destination):
    """The appliance installs subnet host routes on itself (README, "The management
    path"): one covering the orchestrator's network would cut it off."""
    world(store)
    store.create("subnet", {"id": "n1s6", "network_id": "n1", "cidr": "fd4e:7a31:2c5b:1::/64"})
    with pytest.raises(StoreError) as error:
        store.update("subnet", "n1s6", {"host_routes": [{"destination": destination,
                                                        "nexthop": "fd4e:7a31:2c5b:1::99"}]})
    assert error.value.field == "host_routes"
    assert "management network" in str(error.value)


def test_a_shorter_host_route_around_the_management_network_is_accepted(store):
    world(store)
    store.create("subnet", {"id": "n1s6", "network_id": "n1", "cidr": "fd4e:7a31:2c5b:1::/64"})
    store.update("subnet", "n1s6", {"host_routes": [{"destination": "fdca::/16",
                                                    "nexthop": "fd4e:7a31:2c5b:1::99"}]})


def test_a_rebuilds_image_and_instance_reach_every_store_on_the_database(path, store):
    """``rebuild --image`` goes through the change log to whichever orchestrator owns the
    resource: the command row carries the image and instance, here and in another store
    on the same database (the other member, catching up)."""
    from orchestrator_lite.events import REBUILD, ResourceRef
    other = Store(path, MGMT.network_id)
    seen = []
    other.subscribe(seen.extend)
    ref = ResourceRef("router", "r1")
    store.command(ref, REBUILD, image="v2", instance="ak-router-r1_1")
    store.command(ref, UPDATE, force=True)
    mine = [(e.action, e.image, e.instance, e.force) for e in store.events]
    assert mine == [(REBUILD, "v2", "ak-router-r1_1", False), (UPDATE, None, None, True)]
    other.refresh()
    assert [(e.action, e.image, e.instance, e.force) for e in seen] == mine
    other.close()


@pytest.mark.parametrize("kind, body, field", [
    ("floatingip", {"id": [0]}, "id"),
    ("pool", {"loadbalancer_id": [0]}, "loadbalancer_id"),
    ("subnet", {"network_id": {"a": 1}, "cidr": "198.18.7.0/24"}, "network_id"),
    ("port", {"network_id": 7}, "network_id")])
def test_an_id_that_is_not_a_string_is_a_400_naming_it(store, kind, body, field):
    """Found by the admin API fuzzer: a list or an object where an id goes was looked up
    in the snapshot's dicts as it was (TypeError: unhashable) and answered 500."""
    with pytest.raises(StoreError) as refused:
        store.create(kind, body)
    assert refused.value.status == 400 and refused.value.field == field


def test_a_batch_of_changes_makes_a_new_snapshot_and_leaves_the_old_one():
    """Snapshot.with_changes, as a catch-up or a delete cascade calls it: several changes
    of one kind in a batch, in order (one object written twice, one made and deleted)."""
    from orchestrator_lite.store.kinds import KINDS
    from orchestrator_lite.store.snapshot import Snapshot
    p1, p2, p3 = ({"id": f"p{i}", "name": str(i)} for i in (1, 2, 3))
    net = {"id": "n1"}
    before = Snapshot({kind: {} for kind in KINDS}, "mgmt")
    before = before.with_changes([("port", None, p1), ("network", None, net)])
    after = before.with_changes([
        ("port", None, p2), ("port", p1, {**p1, "name": "one"}), ("port", None, p3),
        ("port", p3, None), ("port", {**p1, "name": "one"}, {**p1, "name": "uno"})])
    assert after.all("port") == [{**p1, "name": "uno"}, p2]
    assert before.all("port") == [p1] and before.get("port", "p2") is None
    assert after.all("network") == before.all("network") == [net]


def test_the_change_log_is_pruned_when_a_write_steps_over_the_mark(path, monkeypatch):
    """Pruning runs every PRUNE_EVERY revisions, also when a multi-row transaction steps
    over the multiple (3-row writes end at 12 and 21, never at 10 or 20)."""
    from orchestrator_lite.store import database
    monkeypatch.setattr(database, "PRUNE_EVERY", 10)
    monkeypatch.setattr(database, "KEEP_CHANGES", 5)
    db = database.Database(path)
    db.upgrade()
    try:
        oldest = []
        for n in range(7):
            with db.writing() as conn:
                last = db.log_changes(conn, [("port", f"p{n}-{i}", "create") for i in range(3)])
            with db.reading() as conn:
                assert db.revision(conn)[0] == last
                oldest.append(db.revision(conn)[1])
        assert oldest == [1, 1, 1, 7, 7, 7, 16]  # pruned below 12 - 5, then below 21 - 5
    finally:
        db.close()
