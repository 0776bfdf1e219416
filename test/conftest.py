"""Shared pytest setup: repo root on sys.path, the `netns` marker, the agent's lock, and a
small OpenStack on 127.0.0.1 (`cloud`, `os_settings`) for the contract tests and
test/functional/test_neutron_events.py (the unit tests' `cloud` in test/unit/conftest.py
is the simulated compute instead)."""

import pathlib
import re
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

AGENT_LOCK = REPO_ROOT / "locks" / "agent.txt"
AGENT_DISTRIBUTION = "astara-router"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "netns: real-kernel test in network namespaces (root only; "
        "skipped when `ip netns add` does not work)",
    )


def pinned_versions(text):
    """{normalized name: version} of the "name==version" lines of a lock file, a pip
    freeze or the image's package manifest."""
    pins = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


@pytest.fixture(scope="session")
def agent_lock():
    """{name: version} of locks/agent.txt: the agent's runtime set."""
    return pinned_versions(AGENT_LOCK.read_text())


@pytest.fixture(scope="session")
def dev_lock():
    """{name: version} of locks/dev.txt: the dev venv's set."""
    return pinned_versions((REPO_ROOT / "locks" / "dev.txt").read_text())


@pytest.fixture(scope="session")
def assert_agent_set(agent_lock):
    """assert_agent_set(listing, where): the "name==version" listing holds exactly the
    agent's distribution and locks/agent.txt, nothing more."""
    from astara_router import __version__

    def check(listing, where):
        installed = pinned_versions(listing)
        expected = dict(agent_lock, **{AGENT_DISTRIBUTION: __version__})
        extra = sorted(set(installed) - set(expected))
        missing = sorted(set(expected) - set(installed))
        other = sorted(f"{name} {installed[name]} (lock: {expected[name]})"
                       for name in set(installed) & set(expected)
                       if installed[name] != expected[name])
        assert installed == expected, (
            f"{where} is not {AGENT_DISTRIBUTION} + locks/agent.txt: "
            f"extra {extra}, missing {missing}, other versions {other}")
    return check


@pytest.fixture
def cloud():
    """A small OpenStack on 127.0.0.1 (astara_lab/fakecloud.py) for the real openstacksdk;
    no root, no namespaces."""
    from astara_lab.fakecloud import FakeCloud
    with FakeCloud() as fake:
        yield fake


@pytest.fixture
def os_settings(cloud):
    """The orchestrator's [openstack] settings for ``cloud``."""
    from orchestrator_lite.config import OpenStackSettings
    return OpenStackSettings(auth_url=cloud.auth_url, username="astara", password="secret",
                             project_name="service", image="astara", flavor="astara.small",
                             availability_zone="nova", api_timeout=10)
