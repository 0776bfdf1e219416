"""Checks of the diskimage-builder elements that need no image build.

- the ``astara`` element expands (with an OS element) to the elements it needs;
- ``dib-lint`` passes on ``diskimage-builder/elements``;
- every systemd unit shipped by an element starts a console script that the
  agent's distribution declares, from the image's venv, and is enabled at build time;
- static defaults and package lists agree with the rest of the repository, and every
  package the image keeps is on the element README's allow-list (with its reason); the
  built image itself is checked against that list in test/image/test_image_packages.py.
"""

import configparser
import fnmatch
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from astara_lab.image import ASTARA_ELEMENT, allowed_packages, parse_unit, runtime_packages

REPO = pathlib.Path(__file__).resolve().parents[2]
DIB_DIR = REPO / "diskimage-builder"
ELEMENTS_DIR = DIB_DIR / "elements"
VENV_IN_IMAGE = "/opt/astara/bin/"

# What scripts/install-deps installs for the tests and the lab, not for the appliance: the
# image does not hold them.
TEST_ONLY_PACKAGES = {
    "udhcpc", "isc-dhcp-client", "ndisc6",  # the tenant VMs' DHCP and RA clients
    "wrk", "strace",  # the load-balancer benchmark's load, the disk-full test's tracer
    "rabbitmq-server",  # the broker the Neutron event tests start
    "curl",  # the lab's hints: the load balancer, an appliance's mutual-TLS API
    "redis-server", "etcd-server", "postgresql",  # orchestrator clusters' servers
}


def console_scripts():
    """{name: "module:function"} of the agent's distribution, the one the image installs
    (packaging/astara-router/pyproject.toml)."""
    with open(REPO / "packaging" / "astara-router" / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


def unit_files():
    return sorted(
        p for p in ELEMENTS_DIR.rglob("*")
        if p.is_file() and p.suffix in (".service", ".socket", ".timer", ".path")
    )


def element_scripts():
    """Executable hook scripts of every element (install.d, extra-data.d, ...)."""
    for path in sorted(ELEMENTS_DIR.glob("*/*.d/*")):
        if path.is_file() and path.parent.name != "environment.d":
            yield path


def install_deps_packages():
    """Every package of every ``DEB_PACKAGES=`` line of scripts/install-deps (the list is
    built up over several lines; ``$DEB_PACKAGES`` is the list so far)."""
    text = (REPO / "scripts" / "install-deps").read_text()
    lines = re.findall(r'^DEB_PACKAGES="([^"]*)"', text, re.M)
    assert lines, "DEB_PACKAGES not found in scripts/install-deps"
    packages = {word for line in lines for word in line.split()} - {"$DEB_PACKAGES"}
    strange = sorted(p for p in packages if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p))
    assert not strange, "not Debian package names: %s" % strange
    return packages


# --- (a) element expansion -------------------------------------------------

def test_astara_element_expands():
    element_dependencies = pytest.importorskip(
        "diskimage_builder.element_dependencies")
    import diskimage_builder.paths

    paths = ":".join([str(ELEMENTS_DIR),
                      diskimage_builder.paths.get_path("elements")])
    expanded = dict(element_dependencies.get_elements(
        ["debian-minimal", "astara"], paths=paths))

    expected = {
        "astara", "debian-minimal", "package-installs", "install-static", "manifests",
        "dib-init-system", "openssh-server", "runtime-ssh-host-keys",
        "cloud-init", "cloud-init-datasources",
    }
    missing = expected - set(expanded)
    assert not missing, "not in the expansion: %s" % sorted(missing)
    assert pathlib.Path(expanded["astara"]) == ASTARA_ELEMENT.resolve()
    assert "vm" not in expanded, "vm needs device-mapper, which CI lacks"


def test_astara_element_needs_an_os_element():
    element_dependencies = pytest.importorskip(
        "diskimage_builder.element_dependencies")
    import diskimage_builder.paths

    paths = ":".join([str(ELEMENTS_DIR),
                      diskimage_builder.paths.get_path("elements")])
    with pytest.raises(element_dependencies.MissingOSException):
        element_dependencies.get_elements(["astara"], paths=paths)


def test_element_deps_sorted_and_exist():
    deps = [line.strip() for line in
            (ASTARA_ELEMENT / "element-deps").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert deps == sorted(deps)
    assert "vm" not in deps


# --- (b) dib-lint ----------------------------------------------------------

def test_dib_lint_passes():
    bindir = os.path.dirname(sys.executable)
    dib_lint = shutil.which("dib-lint", path=os.pathsep.join(
        [bindir, os.environ.get("PATH", "")]))
    if not dib_lint:
        pytest.skip("dib-lint not found (pip install diskimage-builder)")
    env = dict(os.environ)
    # dib-lint calls "python" (needs PyYAML) and flake8: use this venv's.
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["ELEMENTS_DIR"] = "elements"
    env["LIB_DIR"] = "elements"
    result = subprocess.run(
        [dib_lint], cwd=DIB_DIR, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout


def test_hook_scripts_follow_dib_conventions():
    """What dib-lint checks, without dib-lint (runs everywhere)."""
    scripts = list(element_scripts())
    assert scripts, "no hook scripts found"
    for path in scripts:
        text = path.read_text()
        lines = text.splitlines()
        name = path.relative_to(ELEMENTS_DIR)
        assert lines[0] == "#!/bin/bash", name
        assert os.access(path, os.X_OK), "%s is not executable" % name
        assert 'if [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then' in lines, name
        assert "set -eu" in lines, name
        assert "set -o pipefail" in lines, name
        assert text.endswith("\n"), name
        assert "\t" not in text, name
    for path in ELEMENTS_DIR.glob("*/environment.d/*"):
        assert not os.access(path, os.X_OK), path
        assert "set -x" not in path.read_text(), path


# --- (c) systemd units -----------------------------------------------------

def test_agent_distribution_declares_console_scripts():
    scripts = console_scripts()
    assert scripts["astara-router-api"] == "astara_router.cli.api:main"
    assert scripts["astara-configure-management"] == \
        "astara_router.cli.management:main"


def test_units_start_declared_console_scripts():
    units = unit_files()
    names = {p.name for p in units}
    assert "astara-router-api.service" in names, names
    declared = console_scripts()
    for path in units:
        if path.suffix != ".service":
            continue
        unit = parse_unit(path)
        assert unit.has_section("Service"), path
        exec_start = unit.get("Service", "ExecStart", fallback="")
        argv = shlex.split(exec_start.lstrip("@-:+!"))
        assert argv, "%s has no ExecStart" % path
        binary = argv[0]
        assert binary.startswith(VENV_IN_IMAGE), (path, binary)
        script = binary[len(VENV_IN_IMAGE):]
        assert script in declared, (
            "%s starts %s, which the agent's distribution does not declare" % (path, script))


def test_router_api_unit():
    unit = parse_unit(
        ASTARA_ELEMENT / "init-scripts" / "systemd" / "astara-router-api.service")
    assert unit.get("Service", "ExecStart") == (
        "/opt/astara/bin/astara-router-api "
        "--config-file /etc/astara/astara.ini")
    assert unit.get("Service", "Restart") == "always"
    assert unit.get("Install", "WantedBy") == "multi-user.target"


def test_units_are_enabled():
    hooks = "\n".join(p.read_text() for p in element_scripts())
    for path in unit_files():
        unit = parse_unit(path)
        if not unit.has_option("Install", "WantedBy"):
            continue
        assert re.search(r"systemctl enable .*\b%s\b" % re.escape(path.name),
                         hooks), "%s is never enabled" % path.name


# --- static defaults and package lists -------------------------------------

def test_default_agent_config():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ASTARA_ELEMENT / "static" / "etc" / "astara" / "astara.ini")
    assert cfg.get("DEFAULT", "state_dir") == "/var/lib/astara"
    assert cfg.get("DEFAULT", "enabled_services") == "router"
    assert cfg.getint("api", "port") == 5000


def test_image_packages_match_install_deps():
    packages = set(yaml.safe_load(
        (ASTARA_ELEMENT / "package-installs.yaml").read_text()))
    wanted = (install_deps_packages() - TEST_ONLY_PACKAGES) | {
        "python3-venv", "openssh-server"}
    missing = wanted - packages
    assert not missing, "missing in package-installs.yaml: %s" % sorted(missing)
    assert not packages & TEST_ONLY_PACKAGES


def test_allow_list_parses_its_section_only():
    text = ("intro ``nope``\n\n.. allowed-packages\n\n- ``bash``, ``linux-image-*-cloud-amd64``:"
            " why\n- ``libc6``,\n  ``zlib1g``: why ``x`` too\n\nNext\n----\n\n- ``after``: no\n")
    assert allowed_packages(text) == {"bash", "linux-image-*-cloud-amd64", "libc6", "zlib1g"}
    with pytest.raises(ValueError, match="no reason"):
        allowed_packages(".. allowed-packages\n\n- ``bash``\n")


def test_every_runtime_package_is_allowed():
    allowed = allowed_packages((ASTARA_ELEMENT / "README.rst").read_text())
    missing = {p for p in runtime_packages() if not any(fnmatch.fnmatchcase(p, a)
                                                        for a in allowed)}
    assert not missing, f"package-installs.yaml installs {sorted(missing)}, which the " \
                        "README's allow-list does not explain"


# --- least privilege (README, "Least privilege") ---------------------------------------

AGENT_CAPABILITIES = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
SUDOERS = ASTARA_ELEMENT / "static" / "etc" / "sudoers.d" / "99-astara-diagnosis"
CLOUD_INIT_SUDOERS = "90-cloud-init-users"  # where cloud-init writes users' sudo rules
CLOUD_INIT_GRANT = "astara ALL=(ALL) NOPASSWD:ALL"  # the original orchestrator's user data


def test_agent_unit_runs_unprivileged_with_the_network_capabilities_only():
    service = dict(parse_unit(
        ASTARA_ELEMENT / "init-scripts" / "systemd" / "astara-router-api.service")["Service"])
    assert (service["User"], service["Group"]) == ("astara-agent", "astara-agent")
    assert set(service["AmbientCapabilities"].split()) == AGENT_CAPABILITIES
    assert set(service["CapabilityBoundingSet"].split()) == AGENT_CAPABILITIES
    assert service["NoNewPrivileges"] == "yes"
    assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("astara", "0700")
    # the only step run as root ("+") gives the boot data's TLS files to the agent
    assert service["ExecStartPre"].startswith("+/bin/sh -c ")
    assert "chown -R astara-agent:astara-agent /etc/astara/tls" in service["ExecStartPre"]
    assert not service["ExecStart"].startswith(("+", "!"))
    hooks = (ASTARA_ELEMENT / "install.d" / "60-astara-agent").read_text()
    assert re.search(r"useradd --system .*\n? *--shell /usr/sbin/nologin .*astara-agent", hooks)
    assert "install -d -m 0700 -o astara-agent -g astara-agent /var/lib/astara" in hooks


def test_what_the_unprivileged_agent_cannot_do_is_set_up_by_the_image():
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ASTARA_ELEMENT / "static" / "etc" / "astara" / "astara.ini")
    etc_dir = ini.get("DEFAULT", "etc_dir")
    assert etc_dir.startswith(ini.get("DEFAULT", "state_dir") + "/")
    assert ini.get("vpn", "ipsec_backend") == "kernel"
    systemd = ASTARA_ELEMENT / "init-scripts" / "systemd"
    path_unit = parse_unit(systemd / "astara-hostname.path")
    assert path_unit.get("Path", "PathChanged") == f"{etc_dir}/hostname"
    helper = parse_unit(systemd / "astara-hostname.service")
    assert helper.get("Service", "ExecStart").startswith(
        "/opt/astara/bin/astara-hostname-sync --config-file /etc/astara/astara.ini")
    assert not helper.has_option("Service", "User")  # root: sethostname, /etc
    tmpfiles = (ASTARA_ELEMENT / "static" / "etc" / "tmpfiles.d" / "astara.conf").read_text()
    assert "f /run/charon.pid 0644 astara-agent astara-agent -" in tmpfiles.splitlines()


def sudoers_rules(text):
    """``[(user, runas, allowed, [command patterns])]`` of a sudoers text in file order:
    the small subset 99-astara-diagnosis uses (Cmnd_Alias, NOPASSWD/NOEXEC tags, !ALL)."""
    text = re.sub(r"\\\n\s*", " ", text)
    aliases, rules = {}, []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("Cmnd_Alias "):
            name, _, commands = line[len("Cmnd_Alias "):].partition("=")
            aliases[name.strip()] = [c.strip() for c in commands.split(",")]
            continue
        match = re.fullmatch(r"(\S+) ALL=\(([^)]*)\) ((?:[A-Z]+: ?)*)(!?)(\S+)", line)
        assert match, f"not understood: {line}"
        user, runas, _tags, negated, command = match.groups()
        commands = aliases.get(command, [command])
        rules.append((user, runas, not negated, commands))
    return rules


def sudo_allows(rules, user, runas, command):
    """sudo's decision: the last rule that matches user, run-as user and command wins. A
    command without arguments in a rule allows it with any arguments."""
    decision = False
    for rule_user, rule_runas, allowed, patterns in rules:
        runas_users = {part.split(":")[0] for part in rule_runas.split(",")}
        if rule_user != user or not ({"ALL", runas} & runas_users):
            continue
        if any(p == "ALL" or fnmatch.fnmatchcase(command, p) or (
                " " not in p and command.startswith(p + " ")) for p in patterns):
            decision = allowed
    return decision


def test_astara_sudo_is_diagnosis_only_whatever_the_user_data_grants():
    assert SUDOERS.name > CLOUD_INIT_SUDOERS and "." not in SUDOERS.name  # read, and last
    text = SUDOERS.read_text()
    visudo = shutil.which("visudo") or ("/usr/sbin/visudo" if os.path.exists(
        "/usr/sbin/visudo") else None)
    if visudo:
        result = subprocess.run([visudo, "--check", "--file", str(SUDOERS)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    for granted in ("", CLOUD_INIT_GRANT + "\n"):
        rules = sudoers_rules(granted + text)
        for command in ("/usr/sbin/nft list ruleset", "/usr/sbin/conntrack -L",
                        "/usr/bin/ip xfrm state", "/usr/bin/ss -tulpen"):
            assert sudo_allows(rules, "astara", "root", command), command
        for arguments in ("config", "--json health", "history", "diff -"):
            assert sudo_allows(rules, "astara", "astara-agent",
                               "/usr/local/bin/astara-router-ctl " + arguments), arguments
        # --url would send the agent's API token elsewhere; rollback/confirm administer
        for arguments in ("--url http://127.0.0.1:9 config", "config --url x", "rollback",
                          "--json rollback 3", "confirm", "diff /etc/shadow", ""):
            assert not sudo_allows(rules, "astara", "astara-agent",
                                   f"/usr/local/bin/astara-router-ctl {arguments}".strip()), \
                arguments
        for command in ("/bin/bash", "/usr/sbin/nft flush ruleset",
                        "/usr/sbin/nft list ruleset ; flush ruleset", "/usr/bin/ss -K",
                        "/usr/bin/ip link set eth0 down", "/usr/bin/journalctl",
                        "/usr/bin/tee /etc/sudoers", "/usr/local/bin/astara-router-ctl"):
            assert not sudo_allows(rules, "astara", "root", command), command
        assert not sudo_allows(rules, "astara", "astara-agent", "/bin/sh")
    # without our file the user data's grant is everything: the check can fail
    assert sudo_allows(sudoers_rules(CLOUD_INIT_GRANT), "astara", "root", "/bin/bash")
    # and a bare command in a rule is any arguments, as in sudo: the model cannot miss one
    assert sudo_allows(sudoers_rules("astara ALL=(root) /usr/bin/ss\n"), "astara", "root",
                       "/usr/bin/ss -K")
