"""Config file parsing and the netns driver's pure parts (instance naming, the mount
namespace check)."""
import re

import pytest

from astara_lab.leftovers import NAME_RE as LEFTOVER_RE
from astara_netns import Lab
from orchestrator_lite import config
from orchestrator_lite.drivers.netns import netns_mounts_hidden, role_candidates

INI = """
[DEFAULT]
host = controller-1
state_dir = {state}

[api]
listen = ::1
port = 44251
token = secret

[management]
prefix = fd12:3456:789a:1::/64
orchestrator_address = fd12:3456:789a:1::2
mtu = 1400

[health]
period = 5
dead_grace = 7.5

[workers]
threads = 2

[netns]
prefix = ast0a1b2c
bridges = net-a=b-a, net-b=b-b
auto_bridges = false

[webhook]
url = http://[fd12:3456:789a:1::9]:8080/hook
"""


def test_load(tmp_path):
    path = tmp_path / "orchestrator.ini"
    path.write_text(INI.format(state=tmp_path))
    s = config.load(str(path))
    assert s.host == "controller-1"
    assert s.database_path == f"{tmp_path}/orchestrator.sqlite"
    assert s.api.token == "secret" and s.api.base_url == "http://[::1]:44251"
    assert s.management.gateway == "fd12:3456:789a:1::1"
    assert s.management.mtu == 1400
    assert s.health.period == 5.0 and s.health.dead_grace == 7.5
    assert s.health.boot_timeout == config.HealthSettings.boot_timeout  # default kept
    assert s.threads == 2
    assert s.netns.bridges == {"net-a": "b-a", "net-b": "b-b"}
    assert s.netns.auto_bridges is False
    assert s.netns.fabric_name == "ast0a1b2c-fab"
    assert s.webhook_url.endswith("/hook")


@pytest.mark.parametrize("section, line, message", [
    ("health", "period = soon", "health.period"),
    ("netns", "auto_bridges = maybe", "netns.auto_bridges"),
    ("management", "prefix = not-a-prefix", "management"),
    ("workers", "threads = 0", "threads"),
    ("compute", "driver = fake", "compute.driver"),
    ("compute", "drivers = netns, fake", "compute.drivers: unknown driver 'fake'"),
    ("qemu", "accel = xen", "qemu.accel must be one of auto, tcg, kvm"),
])
def test_bad_values_name_the_key(tmp_path, section, line, message):
    path = tmp_path / "o.ini"
    path.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(config.ConfigError, match=message):
        config.load(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "nope.ini"))


def test_namespace_names_are_short_readable_and_match_the_lab_pattern():
    roles = list(role_candidates("ak-router-fbf50d45-b64d-4036-804a-b81cad4c7c82_1"))
    assert roles[0] == "rfbf51"
    assert len(set(roles)) == len(roles) > 1  # fallbacks for a prefix collision
    assert next(role_candidates("ak-loadbalancer-961cb534-0a20_0")) == "l961c0"
    assert next(role_candidates("ak-router-my-router_0")).startswith("r")
    for role in roles:
        name = f"ast0a1b2c-{role}"
        assert Lab.ROLE_RE.fullmatch(role)
        assert LEFTOVER_RE.fullmatch(name)
        assert re.fullmatch(r"ast[0-9a-f]{6}-[a-z0-9]{1,6}", name)


def test_mount_namespace_check(tmp_path):
    host = tmp_path / "host"
    host.write_text("42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda "
                    "rw\n")
    under_ip_netns_exec = tmp_path / "child"
    under_ip_netns_exec.write_text("94 60 254:0 /run/netns /run/netns rw,relatime master:1 "
                                   "- ext4 /dev/vda rw\n")
    assert not netns_mounts_hidden(str(host))
    assert netns_mounts_hidden(str(under_ip_netns_exec))
    assert not netns_mounts_hidden(str(tmp_path / "missing"))


def test_example_config_loads():
    example = config.load(str(config.__file__).replace("config.py", "orchestrator.example.ini"))
    assert example.api.token and example.compute_driver == "netns"
