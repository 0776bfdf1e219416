"""Fixtures shared by the unit tests."""
import pytest

from astara_router import settings as settings_mod
from astara_router.api import create_app


@pytest.fixture
def client(tmp_path):
    """The agent's API (Flask test client) on the real engine, state in ``tmp_path``, router
    service only: for the paths that never touch the kernel."""
    settings = settings_mod.load(state_dir=str(tmp_path), enabled_services="router")
    return create_app(settings).test_client()
