"""astara-hostname-sync, the image's root helper for the host name: it takes one checked
host name from the unprivileged agent's file and renders /etc's files itself."""
import json
import pathlib

import pytest

from astara_router import settings as settings_mod
from astara_router.cli.hostname_sync import sync
from astara_router.cli.management import read_management


class FakeKernel:
    def __init__(self, name):
        self.name = name

    def gethostname(self):
        return self.name

    def sethostname(self, name):
        self.name = name


@pytest.fixture
def dirs(tmp_path):
    state, target = tmp_path / "state", tmp_path / "etc"
    (state / "etc").mkdir(parents=True)
    target.mkdir()
    (state / "management.json").write_text(json.dumps({"address": "fdca::5"}))
    settings = settings_mod.Settings(state_dir=str(state), etc_dir=str(state / "etc"))
    return settings, state / "etc" / "hostname", target


def test_the_name_is_set_and_etc_rendered_once(dirs):
    settings, wanted, target = dirs
    wanted.write_text("router-7.example\n")
    kernel = FakeKernel("debian")
    assert sync(settings, str(target), kernel) == 3
    assert kernel.name == "router-7.example"
    assert (target / "hostname").read_text() == "router-7.example\n"
    assert (target / "hosts").read_text().splitlines()[-1] == "fdca::5  router-7.example"
    assert sync(settings, str(target), kernel) == 0


def test_a_management_address_that_is_not_one_address_is_not_written(dirs):
    settings, wanted, target = dirs
    (pathlib.Path(settings.state_dir) / "management.json").write_text(
        json.dumps({"address": "fdca::5  router\n198.51.100.9  mirror.debian.org"}))
    wanted.write_text("router\n")
    assert sync(settings, str(target), FakeKernel("debian")) == 3
    hosts = (target / "hosts").read_text().splitlines()
    assert hosts[-1] == "127.0.1.1  router" and len(hosts) == 3
    assert "mirror" not in (target / "hosts").read_text()


@pytest.mark.parametrize("text", ["pwned\n10.0.0.1 evil\n", "a b\n", "x" * 65 + "\n",
                                  "-bad\n", "router\n\n", ""])
def test_anything_but_one_host_name_is_refused(dirs, text):
    settings, wanted, target = dirs
    wanted.write_text(text)
    kernel = FakeKernel("debian")
    with pytest.raises(ValueError):
        sync(settings, str(target), kernel)
    assert kernel.name == "debian" and not list(target.iterdir())


def test_no_file_no_change_and_etc_itself_is_refused(dirs):
    settings, _, target = dirs
    assert sync(settings, str(target), FakeKernel("debian")) == 0
    with pytest.raises(ValueError, match="etc_dir"):
        sync(settings_mod.Settings(etc_dir=str(target)), str(target), FakeKernel("d"))


RECORDED = {"address": "fdca::5", "kernel_name": "eth0"}


@pytest.mark.parametrize("text, record", [
    ('{"address": "fdca:0::5", "kernel_name": "eth0"}', RECORDED),
    ('{"address": "fdca::5 x", "kernel_name": "eth0"}', {}),
    ('{"kernel_name": "eth0"}', {}), ('["fdca::5"]', {}), ("{", {}), (None, {})])
def test_the_management_record_is_read_only_with_one_address(tmp_path, text, record):
    if text is not None:
        (tmp_path / "management.json").write_text(text)
    assert read_management(str(tmp_path)) == record
