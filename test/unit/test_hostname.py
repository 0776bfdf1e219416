"""Host name files (pure rendering), the model's refusal of anything that is not an RFC 1123
name, and an applier that writes files only when they change and never runs a program."""
import ast
import copy
import inspect
import ipaddress
import os
import subprocess

import pytest

from astara_lab.appliance import contract_payloads
from astara_router import settings as settings_mod
from astara_router.apply import hostname as hostname_mod
from astara_router.apply.hostname import HostnameSubsystem, default_etc_dir, is_real_vm
from astara_router.model import PayloadError, parse_payload
from astara_router.render.hostname import render_hostname_file, render_hosts

BASIC = contract_payloads("original-orchestrator")["router-basic"]
NAME = "ak-baef51913f354071ab020eae853d4ffe"


def test_hosts_file_with_the_management_address():
    address = ipaddress.ip_address("fdca:3ba5:a17a:acda:f816:3eff:fe67:416c")
    assert render_hosts(NAME, address) == (
        "127.0.0.1  localhost\n"
        "::1  localhost ip6-localhost ip6-loopback\n"
        f"fdca:3ba5:a17a:acda:f816:3eff:fe67:416c  {NAME}\n")
    assert render_hosts("lb-1", ipaddress.ip_address("192.168.0.5")).endswith(
        "\n192.168.0.5  lb-1\n")


def test_hosts_file_without_a_management_address_still_resolves_the_name():
    assert render_hosts("r1", None).splitlines()[-1] == "127.0.1.1  r1"


def test_hosts_file_refuses_a_management_address_that_is_not_one_address():
    with pytest.raises(ValueError):
        render_hosts("r1", "10.0.0.1  r1\n198.51.100.9  mirror.debian.org")


def test_hostname_file():
    assert render_hostname_file(NAME) == NAME + "\n"


INJECTIONS = ["ak-x\n", "evil\n10.0.0.1  bank.example", "a b", "a\tb", "-lead", "trail-",
              "a..b", "", "x" * 64, "ünïcode", "semi;colon", "$(reboot)"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_the_model_refuses_what_is_not_a_host_name(name):
    body = dict(copy.deepcopy(BASIC), hostname=name)
    with pytest.raises(PayloadError) as error:
        parse_payload(body, ("router",))
    assert "hostname" in str(error.value)


@pytest.mark.parametrize("name", INJECTIONS)
def test_the_renderer_escapes_nothing_it_refuses(name):
    with pytest.raises(ValueError):
        render_hosts(name, None)
    with pytest.raises(ValueError):
        render_hostname_file(name)


def test_the_applier_runs_no_program():
    tree = ast.parse(inspect.getsource(hostname_mod))
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    called = {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name)}
    assert "subprocess" not in imported and "run_checked" not in imported
    assert not called & {"os.system", "os.popen", "os.execv", "os.execvp", "os.spawnv",
                         "os.posix_spawn", "os.posix_spawnp"}


@pytest.fixture
def files_only(tmp_path, monkeypatch):
    """The applier with its files in tmp_path; the kernel host name is never ours in a
    unit test, and starting any program fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the hostname applier started a program: {args}")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "system", refuse)
    settings = settings_mod.Settings(state_dir=str(tmp_path), etc_dir=str(tmp_path / "etc"))
    subsystem = HostnameSubsystem(settings)
    subsystem.set_kernel = False
    return subsystem, tmp_path / "etc"


def test_apply_writes_only_what_changed_and_restore_puts_it_back(files_only):
    subsystem, etc = files_only

    def apply(payload):
        plan = subsystem.plan(parse_payload(payload, ("router",)), {})
        snapshot = subsystem.capture(None, plan, None)
        changes = subsystem.apply(None, plan, None, snapshot)
        subsystem.verify(None, plan, None, changes)
        return snapshot, changes

    first, changes = apply(BASIC)
    assert changes == 2
    assert (etc / "hostname").read_text() == NAME + "\n"
    mtimes = {p.name: p.stat().st_mtime_ns for p in etc.iterdir()}
    assert apply(BASIC)[1] == 0
    assert {p.name: p.stat().st_mtime_ns for p in etc.iterdir()} == mtimes

    assert apply(dict(BASIC, hostname="r2"))[1] == 2
    subsystem.restore(None, first, 2)
    assert sorted(os.listdir(etc)) == []  # there were no files before


def test_etc_dir_setting(tmp_path):
    ini = tmp_path / "agent.ini"
    ini.write_text("[DEFAULT]\netc_dir = /srv/appliance/etc\n")
    assert settings_mod.load(str(ini)).etc_dir == "/srv/appliance/etc"
    assert default_etc_dir(settings_mod.Settings(etc_dir="/x")) == "/x"
    default = settings_mod.Settings(state_dir=str(tmp_path))
    assert default_etc_dir(default) == ("/etc" if is_real_vm() else str(tmp_path / "etc"))
