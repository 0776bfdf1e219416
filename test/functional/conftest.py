"""Fixtures for real-kernel tests: a per-test Lab, skipped where impossible."""

import sys

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab import pytest_netns
from astara_lab.pytest_netns import require_netns
from astara_netns import Lab

pytest_runtest_setup = pytest_netns.pytest_runtest_setup  # skips tests marked netns


def fresh_lab():
    """A fresh Lab, closed on teardown even when the test failed."""
    require_netns()
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


lab = pytest.fixture(fresh_lab, name="lab")
module_lab = pytest.fixture(fresh_lab, scope="module", name="module_lab")  # one per module


@pytest.fixture
def appliance(lab):
    """The real agent in a namespace with router-basic's NICs, router-basic applied."""
    body = contract_payloads("original-orchestrator")["router-basic"]
    appliance = contract_appliance(lab, "router-basic", body)
    response = appliance.client().put_json("/v1/system/config", body)
    assert response.status == 200, response.text
    return appliance


@pytest.fixture
def world(request, lab):
    """The orchestrator process with the netns driver in a lab (orchestrator_world.py);
    its appliances are removed and the orchestrator stopped afterwards. Parametrized
    indirectly, the parameter is the orchestrator's [tls] section (plain HTTP without)."""
    # Imported here: test_netns_harness.py runs a copy of this file outside the package.
    from .orchestrator_world import World
    w = World(lab, tls=getattr(request, "param", None))
    try:
        yield w
    finally:
        w.close()


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' case counts (test/functional/fuzzing.py), whatever their result."""
    fuzzing = sys.modules.get(f"{__package__}.fuzzing")  # loaded only where fuzz tests ran
    ran = [tally for tally in getattr(fuzzing, "TALLIES", ()) if tally.cases]
    if ran:
        terminalreporter.section("fuzz cases")
        for tally in ran:
            terminalreporter.write_line(tally.line())
        terminalreporter.write_line(f"in all: {sum(t.cases for t in ran)} cases, "
                                    f"{sum(t.applied for t in ran)} applied")
