"""One store shared by several orchestrators: two ``Store`` objects on one database stand
for two processes. On SQLite (a file) and on a real PostgreSQL server started for these
tests (its own data directory and port on loopback, run as ``postgres``, stopped after).

What a cluster relies on: a write validates against what the others committed (catch-up
under the writer lock), the others learn of it with its events (polling or
LISTEN/NOTIFY), commands and debug flags reach every member, and ownership claims fence
a former owner's writes in their transaction.
"""
import os
import stat
import threading

import pytest

from astara_lab.peers import eventually
from astara_lab.services import PostgresServer, cluster_unavailable, free_port
from astara_netns import Lab
from orchestrator_lite.config import ManagementSettings
from orchestrator_lite.events import CREATE, POLL, REBUILD, UPDATE, ResourceRef
from orchestrator_lite.store import Conflict, Fenced, SchemaError, Store
from orchestrator_lite.store.database import Database

MGMT = ManagementSettings()


@pytest.fixture(scope="module")
def postgres():
    reason = cluster_unavailable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's basetemp: every pytest session that starts (other suites on this
    # machine) chmods /tmp/pytest-of-root back to 0700, and the postgres user could no
    # longer reach its data directory. A lab's scratch directory is ours alone.
    lab = Lab()
    try:
        server = PostgresServer(lab.tmpdir("postgres"), free_port())
        server.start(timeout=60)
        try:
            yield server
        finally:
            server.stop()
    finally:
        lab.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def connection(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/orchestrator.sqlite"
    server = request.getfixturevalue("postgres")
    # A fresh database per test: drop everything the previous test made.
    database = Database(server.url)
    with database.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    database.close()
    Database(server.url).upgrade()
    return server.url


@pytest.fixture
def pair(connection):
    """Two stores on one database, each recording the events it publishes."""
    stores = []
    for _ in range(2):
        store = Store(connection, MGMT.network_id, upgrade=True)
        store.events = []
        store.subscribe(store.events.extend)
        stores.append(store)
    stores[0].ensure_management_network(MGMT)
    try:
        yield stores
    finally:
        for store in stores:
            store.close()


def taken(store):
    out = [(e.ref.kind if e.ref else "*", e.ref.id if e.ref else "*", e.action)
           for e in store.events]
    store.events.clear()
    return out


def router_world(store):
    store.create("network", {"id": "n1", "tenant_id": "t1"})
    store.create("subnet", {"id": "s1", "network_id": "n1", "cidr": "10.1.0.0/24"})
    store.create("router", {"id": "r1", "tenant_id": "t1"})
    store.add_router_interface("r1", subnet_id="s1")


def test_a_write_reaches_the_other_process_with_its_events(pair):
    a, b = pair
    router_world(a)
    taken(a)
    assert b.snapshot().get("router", "r1") is None
    b.refresh()
    assert b.snapshot().get("router", "r1")["tenant_id"] == "t1"
    assert ("router", "r1", CREATE) in taken(b)
    a.create("port", {"network_id": "n1", "device_id": "vm1",
                      "device_owner": "compute:nova"})
    b.refresh()
    assert taken(b) == [("router", "r1", UPDATE)]  # allocations changed
    assert b.revision == a.revision


def test_a_write_validates_against_what_the_other_committed(pair):
    a, b = pair
    router_world(a)
    # b has not caught up, yet its write sees a's port at 10.1.0.10 (the catch-up runs
    # under the writer lock, before validation).
    a.create("port", {"id": "p1", "network_id": "n1",
                      "fixed_ips": [{"ip_address": "10.1.0.10"}]})
    with pytest.raises(Conflict, match="10.1.0.10 is already in use"):
        b.create("port", {"id": "p2", "network_id": "n1",
                          "fixed_ips": [{"ip_address": "10.1.0.10"}]})
    assert b.snapshot().get("port", "p1") is not None


def test_concurrent_writers_never_hand_out_one_address_twice(pair):
    a, b = pair
    router_world(a)
    b.refresh()
    errors = []

    def create_ports(store, tag):
        for n in range(15):
            try:
                store.create("port", {"id": f"{tag}{n}", "network_id": "n1"})
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=create_ports, args=(s, t)) for s, t in
               ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    a.refresh()
    addresses = [i["ip_address"] for p in a.snapshot().ports_on("n1") for i in p["fixed_ips"]]
    assert len(addresses) == 31 and len(set(addresses)) == 31  # 30 ports + the interface
    macs = [p["mac_address"] for p in a.snapshot().all("port")]
    assert len(set(macs)) == len(macs)


def test_deleted_and_recreated_object_keeps_creation_order_everywhere(pair):
    a, b = pair
    router_world(a)
    for name in ("p1", "p2", "p3"):
        a.create("port", {"id": name, "network_id": "n1"})
    a.delete("port", "p1")
    a.create("port", {"id": "p1", "network_id": "n1"})  # now the newest
    b.refresh()
    order = [p["id"] for p in b.snapshot().ports_on("n1")]
    assert order == [p["id"] for p in a.snapshot().ports_on("n1")]
    assert order[-1] == "p1"


def test_commands_and_debug_flags_reach_every_member(pair):
    a, b = pair
    router_world(a)
    b.refresh()
    taken(a), taken(b)
    ref = a.snapshot().ref("router", "r1")
    a.command(ref, REBUILD)
    a.broadcast(POLL)
    assert taken(a) == [("router", "r1", REBUILD), ("*", "*", POLL)]
    b.refresh()
    events = list(b.events)
    assert [(e.ref and e.ref.id, e.action) for e in events] == [("r1", REBUILD), (None, POLL)]
    b.events.clear()
    a.command(ref, UPDATE, force=True)
    b.refresh()
    assert [(e.action, e.force) for e in b.events] == [(UPDATE, True)]
    a.debug_flags.set("tenant", "t1", "maintenance")
    assert b.debug_flags.paused_reason(ref) is None
    b.refresh()
    assert b.debug_flags.paused_reason(ref) == "tenant debug: maintenance"
    b.debug_flags.clear("tenant", "t1")
    a.refresh()
    assert a.debug_flags.all() == {}


def test_placements_reach_every_member(pair):
    a, b = pair
    ref = ResourceRef("router", "r1", "t1")
    a.placements.set("tenant", "t1", image="tenant-image")
    a.placements.set("resource", "r1", driver="openstack")
    assert b.placements.resolve(ref).source == "default"
    b.refresh()
    assert b.placements.resolve(ref).as_dict() == {
        "driver": "openstack", "image": "tenant-image", "source": "resource"}
    b.placements.clear("resource", "r1")
    a.refresh()
    assert [(p["scope"], p["key"]) for p in a.placements.all()] == [("tenant", "t1")]


def test_watch_catches_up_in_the_background(pair):
    a, b = pair
    b.watch(interval=0.1)
    router_world(a)
    eventually(lambda: b.snapshot().get("router", "r1"), 20, "r1 seen by the other store",
               interval=0.05)


def test_a_new_claim_fences_the_former_owner(pair):
    a, b = pair
    router_world(a)
    b.refresh()
    ref = ResourceRef("router", "r1", "t1")
    old = a.claim(ref, "orch-a")
    new = b.claim(ref, "orch-b")
    assert new.epoch == old.epoch + 1
    port = {"resource_kind": "router", "resource_id": "r1", "instance_name": "ak-router-r1_0",
            "role": "mgt", "network_id": MGMT.network_id, "fixed_ips": []}
    with pytest.raises(Fenced, match="owned by orch-b"):
        a.create_appliance_port(port, claim=old)
    with pytest.raises(Fenced):
        a.record_state(old, "configured", None)
    with pytest.raises(Fenced):
        a.raise_epoch(old, 100)
    assert a.snapshot().appliance_ports("r1") == []
    made = b.create_appliance_port(port, claim=new)
    b.record_state(new, "configured", None)
    rows = a.resource_rows()
    assert rows[("router", "r1")]["owner"] == "orch-b"
    assert rows[("router", "r1")]["state"] == "configured"
    # The owner may move above an epoch an appliance remembers from an earlier store.
    b.raise_epoch(new, 41)
    assert new.epoch == 42
    a.refresh()
    assert a.snapshot().get("appliance_port", made["id"]) is not None
    b.release(new)
    assert b.resource_rows()[("router", "r1")]["owner"] == ""


def test_a_stale_lease_fences_before_touching_the_database(pair):
    a, _ = pair
    router_world(a)
    fresh = [True]
    claim = a.claim(ResourceRef("router", "r1", "t1"), "orch-a",
                    lease_ok=lambda: fresh[0])
    a.record_state(claim, "up", None)
    fresh[0] = False
    with pytest.raises(Fenced, match="lease"):
        a.record_state(claim, "configured", None)


def test_sqlite_file_and_state_dir_are_private(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state/db.sqlite", MGMT.network_id)
    store.ensure_management_network(MGMT)
    store.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for name in os.listdir(tmp_path / "state"):
        assert stat.S_IMODE((tmp_path / "state" / name).stat().st_mode) == 0o600, name


def test_a_database_of_the_hand_written_schema_is_upgraded_in_place(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # what the store made before Alembic
        conn.executescript("""
            CREATE TABLE objects (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
                id TEXT NOT NULL, body TEXT NOT NULL, UNIQUE (kind, id));
            CREATE TABLE debug (scope TEXT NOT NULL, key TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '', since REAL NOT NULL,
                PRIMARY KEY (scope, key));
            INSERT INTO objects (kind, id, body) VALUES
                ('network', 'n1', '{"id": "n1", "tenant_id": "", "name": "", "mtu": 1500,
                                    "external": false}');
            INSERT INTO debug VALUES ('global', '*', 'old flag', 1.0);
            CREATE TABLE placements (scope TEXT NOT NULL, key TEXT NOT NULL,
                driver TEXT NOT NULL DEFAULT '', image TEXT NOT NULL DEFAULT '',
                since REAL NOT NULL, PRIMARY KEY (scope, key));
            INSERT INTO placements VALUES ('tenant', 't1', 'netns', 'old-image', 2.0);
        """)
    store = Store(str(path), MGMT.network_id)
    assert store.snapshot().get("network", "n1")["mtu"] == 1500
    assert store.debug_flags.all()[("global", "*")]["reason"] == "old flag"
    assert store.placements.all() == [{"scope": "tenant", "key": "t1", "driver": "netns",
                                       "image": "old-image", "since": 2.0}]
    store.close()
    current, head = Database(str(path)).revisions()
    assert current == head


def test_postgresql_store_refuses_to_start_on_an_outdated_schema(postgres):
    database = Database(postgres.url)
    with database.engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    database.close()
    with pytest.raises(SchemaError, match="astara-orchestrator db upgrade"):
        Store(postgres.url, MGMT.network_id)
    Database(postgres.url).upgrade()
    Store(postgres.url, MGMT.network_id).close()


def test_tenant_images_of_the_first_migration_become_placements(tmp_path):
    from alembic import command
    database = Database(str(tmp_path / "db.sqlite"))
    with database.writing() as conn:
        command.upgrade(database._alembic(conn), "0001")
        conn.exec_driver_sql("INSERT INTO tenant_images VALUES ('t1', 'router', 'img', 3.0)")
    database.close()
    store = Store(str(tmp_path / "db.sqlite"), MGMT.network_id)
    assert store.placements.resolve(ResourceRef("router", "r1", "t1")).image == "img"
    store.close()
    database = Database(str(tmp_path / "db.sqlite"))
    with database.reading() as conn:
        tables = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type='table'").scalars().all()
    database.close()
    assert "tenant_images" not in tables and "placements" in tables
