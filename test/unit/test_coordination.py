"""ClusterOwnership's bookkeeping on a real tooz backend (its file driver: groups and locks
in a directory of the test's own) and a real store: what it holds follows the resources."""
from orchestrator_lite.config import CoordinationSettings, ManagementSettings
from orchestrator_lite.coordination import ClusterOwnership
from orchestrator_lite.store import Store

from sim_appliances import simple_router, wait_for


class Scheduler:
    """The scheduler's side of the ownership's questions; every automaton has finished."""

    def __init__(self):
        self.delivered = []

    def deliver(self, ref, action, force=False):
        self.delivered.append(ref.key)

    def busy_with(self, key):
        return False

    def forget(self, key, timeout=60.0):
        pass


def test_a_deleted_resource_is_let_go_and_its_lock_forgotten(tmp_path):
    store = Store(str(tmp_path / "s.sqlite"), ManagementSettings().network_id)
    store.ensure_management_network(ManagementSettings())
    simple_router(store)
    settings = CoordinationSettings(backend_url=f"file://{tmp_path / 'tooz'}", heartbeat=0.1)
    ownership = ClusterOwnership(store, "orch-a", settings)
    scheduler = Scheduler()
    ownership.start(scheduler)
    try:
        wait_for(lambda: ownership.status()["owned"] == 1, what="r1 claimed")
        assert scheduler.delivered == [("router", "r1")]
        assert set(ownership._locks) == {("router", "r1")}
        for port in store.snapshot().interface_ports("r1"):
            store.delete("port", port["id"])
        store.delete("router", "r1")
        wait_for(lambda: ownership.status()["owned"] == 0, what="r1 let go")
        wait_for(lambda: not ownership._locks, what="its lock object dropped")
        assert store.resource_rows()[("router", "r1")]["owner"] == ""  # released
    finally:
        ownership.stop()
        store.close()
