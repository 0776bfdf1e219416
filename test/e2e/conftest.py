"""End-to-end tests on a whole lab, through astara_lab.lab's in-process API.

The skip logic (root, working ``ip netns add``) is the functional tests' own: the same
``require_netns`` and the same hook for the ``netns`` marker (astara_lab.pytest_netns).
"""
import pytest

from astara_lab import lab as astara_lab
from astara_lab import pytest_netns
from astara_lab.pytest_netns import require_netns

from .lab_helpers import E2E_HEALTH

pytest_runtest_setup = pytest_netns.pytest_runtest_setup  # skips tests marked netns


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
