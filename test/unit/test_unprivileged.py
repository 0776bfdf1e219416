"""astara_lab/unprivileged.py's pure parts: the capability set read from the image unit,
and the mount script that makes paths under unsearchable directories reachable."""
import shutil
import tempfile
from pathlib import Path

import pytest

from astara_lab.unprivileged import reachability_script, unit_capabilities

NOBODY = 65534


def test_the_set_is_the_units_ambient_capabilities_in_its_order(tmp_path):
    unit = tmp_path / "x.service"  # the image unit's own set is pinned in test_image_elements
    unit.write_text("[Unit]\nDescription=x\n[Service]\n# AmbientCapabilities=CAP_SYS_ADMIN\n"
                    "AmbientCapabilities=CAP_NET_RAW cap_net_admin\nUser=nobody\n")
    assert unit_capabilities(unit) == ("net_raw", "net_admin")


def test_unit_without_the_setting_is_an_error(tmp_path):
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    try:
        unit_capabilities(unit)
    except ValueError as exc:
        assert "AmbientCapabilities" in str(exc)
    else:
        raise AssertionError("no error")


@pytest.fixture
def open_dir():
    """A directory whose ancestors anyone can search (pytest's tmp_path is under a 0700
    directory)."""
    path = Path(tempfile.mkdtemp(prefix="astara-unprivileged-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_each_unsearchable_directory_is_covered_once_with_every_needed_child(open_dir):
    closed = open_dir / "closed"
    for child in ("a", "b"):
        (closed / child).mkdir(parents=True)
    closed.chmod(0o700)
    lines = reachability_script([closed / "a" / "x", closed / "b"], "/scratch", NOBODY,
                                NOBODY)
    assert lines == [
        "mkdir -p /scratch/stash0", f"mount --bind {closed}/a /scratch/stash0",
        "mkdir -p /scratch/stash1", f"mount --bind {closed}/b /scratch/stash1",
        f"mount -t tmpfs -o mode=0755,size=64k astara-reach {closed}",
        f"mkdir -p {closed}/a", f"mount --bind /scratch/stash0 {closed}/a",
        f"mkdir -p {closed}/b", f"mount --bind /scratch/stash1 {closed}/b"]
    closed.chmod(0o711)
    assert reachability_script([closed / "a"], "/scratch", NOBODY, NOBODY) == []
