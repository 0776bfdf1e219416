"""Fixtures shared by the unit tests. For the whole-orchestrator tests
(test_orchestrator_flow.py and its neighbours): ``cloud`` is the simulated compute
(sim_appliances.SimCloud; it stands in for test/conftest.py's FakeCloud `cloud` here) and
``orch(**health)`` starts an orchestrator on it, on the test's own state directory,
stopped afterwards."""
import pytest

from astara_router import settings as settings_mod
from astara_router.api import create_app

from sim_appliances import SimCloud, make_settings, started_orchestrators


@pytest.fixture
def client(tmp_path):
    """The agent's API (Flask test client) on the real engine, state in ``tmp_path``, router
    service only: for the paths that never touch the kernel."""
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    return create_app(settings).test_client()


@pytest.fixture
def cloud():
    cloud = SimCloud()
    yield cloud
    cloud.shutdown()


@pytest.fixture
def orch(tmp_path, cloud):
    with started_orchestrators() as start:
        yield lambda **health: start(make_settings(tmp_path, **health), driver=cloud,
                                     client_factory=cloud.client_factory)
