"""``astara-lab up --orchestrators 3``: the lab's cloud driven by three orchestrators on a
PostgreSQL store and redis-server that the lab starts in its controller namespace; every
self-check row passes, ``status`` shows which orchestrator owns the router, and ``down``
stops the servers with the rest."""
import pytest

from astara_lab import lab as astara_lab
from astara_lab.pytest_netns import require_netns
from astara_lab.services import cluster_unavailable
from astara_netns import pid_alive

from .lab_helpers import E2E_HEALTH


@pytest.fixture(scope="module")
def cluster_lab(tmp_path_factory):
    require_netns()
    reason = cluster_unavailable("redis")
    if reason:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("astara-lab-cluster") / "lab.json"
    try:
        state = astara_lab.up(path, health=E2E_HEALTH, orchestrators=3,
                              progress=astara_lab.Progress(live=False))
        yield path, state
    finally:
        astara_lab.down(path, quiet=True)


def test_three_orchestrators_pass_every_row_and_show_the_owner(cluster_lab):
    path, state = cluster_lab
    assert [m["identity"] for m in state["cluster"]["members"]] == ["orch-1", "orch-2",
                                                                    "orch-3"]
    rows, resources = astara_lab.status(path, patience=30)
    assert all(row.ok for row in rows), astara_lab.format_table(rows)
    routers = [r for r in resources if r["kind"] == "router"]
    assert routers  # the lab's main router and the VPN branch's
    router_row = next(row for row in rows if row.key == "router")
    for router in routers:
        assert router["owner"] in {"orch-1", "orch-2", "orch-3"}
        assert router["state"] == "configured"
        assert f"{router['id']}: configured by {router['owner']}" in router_row.detail


def test_down_stops_the_cluster_servers(cluster_lab):
    path, state = cluster_lab
    pids = [state["cluster"][name]["pid"] for name in ("postgres", "redis")]
    pids += [m["pid"] for m in state["cluster"]["members"]]
    assert all(pid_alive(pid) for pid in pids)
    assert astara_lab.down(path, quiet=True)
    assert not any(pid_alive(pid) for pid in pids)
    assert astara_lab.load_state(path) is None
