"""Shared pytest setup: repo root on sys.path, the `netns` marker."""

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "netns: real-kernel test in network namespaces (root only; "
        "skipped when `ip netns add` does not work)",
    )
