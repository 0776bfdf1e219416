"""Each test's call outcome on its node (``rep_call``), so fixtures can keep diagnostics
of failed tests (the VM's serial console)."""
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
