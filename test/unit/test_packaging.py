"""The agent's own distribution (astara-router, what the image installs) and the lock files.

The wheel is built from the tree by scripts/build-agent-wheel, as the image build does.
"""
import configparser
import email.parser
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from astara_router import __version__

REPO = pathlib.Path(__file__).resolve().parents[2]
AGENT_SCRIPTS = {
    "astara-router-api": "astara_router.cli.api:main",
    "astara-configure-management": "astara_router.cli.management:main",
    "astara-router-ctl": "astara_router.cli.ctl:main",
    "astara-metadata-proxy": "astara_router.metadata_proxy:main",
    "astara-gratuitous-arp": "astara_router.garp:main",
    "astara-hostname-sync": "astara_router.cli.hostname_sync:main",
}


def requirements(path):
    """{name: Requirement} of a requirements file (comments and blank lines skipped)."""
    reqs = [Requirement(line.split("#", 1)[0].strip())
            for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]
    return {canonicalize_name(req.name): req for req in reqs}


def applies(req):
    """True when a requirement is for this interpreter and no extra is asked for."""
    return req.marker is None or req.marker.evaluate({"extra": ""})


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-wheel")
    result = subprocess.run(
        ["bash", REPO / "scripts" / "build-agent-wheel", out],
        env=dict(os.environ, PYTHON=sys.executable),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    wheels = list(out.glob("*.whl"))
    assert [w.name for w in wheels] == [f"astara_router-{__version__}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as wheel:
        yield wheel


def dist_info(wheel, name):
    return wheel.read(f"astara_router-{__version__}.dist-info/{name}").decode()


def test_agent_wheel_holds_astara_router_and_nothing_else(agent_wheel):
    names = agent_wheel.namelist()
    assert {name.split("/")[0] for name in names} == {
        "astara_router", f"astara_router-{__version__}.dist-info"}
    in_tree = {path.relative_to(REPO).as_posix()
               for path in (REPO / "astara_router").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert {name for name in names if name.endswith(".py")} == in_tree


def test_agent_wheel_declares_the_agent_console_scripts(agent_wheel):
    entry_points = configparser.ConfigParser(interpolation=None)
    entry_points.optionxform = str
    entry_points.read_string(dist_info(agent_wheel, "entry_points.txt"))
    assert entry_points.sections() == ["console_scripts"]
    assert dict(entry_points["console_scripts"]) == AGENT_SCRIPTS
    for target in AGENT_SCRIPTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    # The dev venv's whole-tree distribution (setup.cfg) has the same commands.
    setup_cfg = configparser.ConfigParser(interpolation=None)
    setup_cfg.read(REPO / "setup.cfg")
    tree_scripts = dict(line.replace(" ", "").split("=", 1) for line in setup_cfg.get(
        "options.entry_points", "console_scripts").split("\n") if line.strip())
    assert {name: tree_scripts.get(name) for name in AGENT_SCRIPTS} == AGENT_SCRIPTS


def test_agent_wheel_requires_exactly_requirements_txt(agent_wheel):
    headers = email.parser.Parser().parsestr(dist_info(agent_wheel, "METADATA"))
    assert headers["Name"] == "astara-router"
    declared = {canonicalize_name(r.name): r for r in map(Requirement,
                                                          headers.get_all("Requires-Dist"))}
    wanted = requirements(REPO / "requirements.txt")
    assert {name: str(r.specifier) for name, r in declared.items()} == {
        name: str(r.specifier) for name, r in wanted.items()}
    assert "jinja2" not in wanted  # Flask's own dependency, never imported by us


def test_agent_lock_is_the_closure_of_the_agent_requirements(agent_lock):
    """locks/agent.txt holds what requirements.txt needs, transitively, at versions that
    satisfy every requirement on the way, and nothing else (the metadata of the
    installed distributions says what each needs)."""
    installed = {name: importlib.metadata.version(name) for name in agent_lock
                 if _installed(name)}
    if installed != agent_lock:
        pytest.skip("this venv is not installed from the locks (make lower-bounds?): "
                    f"{sorted(set(agent_lock.items()) - set(installed.items()))}")
    needed, todo = set(), list(requirements(REPO / "requirements.txt").values())
    while todo:
        req = todo.pop()
        if not applies(req):
            continue
        name = canonicalize_name(req.name)
        assert name in agent_lock, f"{req} is needed but not in locks/agent.txt"
        assert req.specifier.contains(agent_lock[name], prereleases=True), (
            f"locks/agent.txt pins {name}=={agent_lock[name]}, which is not {req}")
        if name not in needed:
            needed.add(name)
            todo.extend(map(Requirement, importlib.metadata.requires(name) or ()))
    assert needed == set(agent_lock), (
        f"locks/agent.txt holds more than the agent needs: {set(agent_lock) - needed}")


def _installed(name):
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_dev_lock_has_the_agent_pins_and_every_requirement(agent_lock, dev_lock):
    assert {name: dev_lock.get(name) for name in agent_lock} == agent_lock
    for path in ("requirements.txt", "orchestrator-requirements.txt",
                 "test-requirements.txt"):
        for name, req in requirements(REPO / path).items():
            assert name in dev_lock, f"{req} ({path}) is not in locks/dev.txt: make lock"
            assert req.specifier.contains(dev_lock[name], prereleases=True), (
                f"locks/dev.txt pins {name}=={dev_lock[name]}, not {req} ({path}): make lock")
