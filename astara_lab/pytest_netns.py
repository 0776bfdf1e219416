"""The namespace skip the test suites share (test/functional's and test/e2e's conftest
import it): a test that needs network namespaces is skipped, never failed, where they
cannot be created. Imports pytest, so only tests load it."""
import pytest

from astara_netns import netns_unavailable_reason

_UNSET = object()
_reason = _UNSET  # probed once per session


def require_netns():
    """Skip (never fail) the calling test unless namespaces can be created."""
    global _reason
    if _reason is _UNSET:
        _reason = netns_unavailable_reason()
    if _reason:
        pytest.skip(f"network namespaces unavailable: {_reason}")


def pytest_runtest_setup(item):
    """The hook a conftest imports: tests marked ``netns`` need namespaces."""
    if item.get_closest_marker("netns"):
        require_netns()
