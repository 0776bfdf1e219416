"""End-to-end tests on a whole lab, through astara_lab.lab's in-process API.

The skip logic (root, working ``ip netns add``) is the functional tests' own: the same
``require_netns`` and the same hook for the ``netns`` marker.
"""
import pytest

from functional import conftest as functional

from astara_lab import lab as astara_lab

require_netns = functional.require_netns
pytest_runtest_setup = functional.pytest_runtest_setup  # skips tests marked netns


@pytest.fixture(scope="module")
def lab_state_file(tmp_path_factory):
    """A state file of our own: never the user's /run/astara-lab/lab.json."""
    return tmp_path_factory.mktemp("astara-lab") / "lab.json"


@pytest.fixture(scope="module")
def up_lab(lab_state_file):
    """``astara-lab up`` once for the module; ``down`` at the end, also after a failure."""
    require_netns()
    try:
        yield astara_lab.up(lab_state_file, health=E2E_HEALTH,
                            progress=astara_lab.Progress(live=False))
    finally:
        astara_lab.down(lab_state_file, quiet=True)


# Faster than the lab's default so the tests react quickly; the tests never assert times.
E2E_HEALTH = {"period": 3, "dead_grace": 5, "error_cooldown": 5}
