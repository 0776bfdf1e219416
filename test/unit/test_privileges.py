"""astara_router/privileges.py: what the agent may do is read from its own capability set,
not from its uid. A process started with one capability dropped from its bounding set (root
in a container without it) must take the unprivileged way."""
import os
import pathlib
import subprocess
import sys

import pytest

from astara_router.privileges import CAPABILITY_BITS, capability_mask

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTIFY_FIFO = ("import sys; from astara_router import settings; "
               "from astara_router.apply.ha import HaSubsystem; "
               "print(HaSubsystem(settings.Settings(state_dir=sys.argv[1])).options.notify_fifo)")


def notify_fifo_chosen(tmp_path, *prefix):
    result = subprocess.run([*prefix, sys.executable, "-c", NOTIFY_FIFO, str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout.strip() == "True"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping a capability needs root")
def test_root_without_cap_setgid_has_the_agent_run_keepalived_notify_script(tmp_path):
    assert not notify_fifo_chosen(tmp_path)  # root with CAP_SETGID: keepalived runs it
    assert notify_fifo_chosen(tmp_path, "setpriv", "--bounding-set=-setgid")


@pytest.mark.skipif(os.geteuid() != 0, reason="setting the bounding set needs root")
@pytest.mark.parametrize("name", sorted(CAPABILITY_BITS))
def test_each_bit_is_the_kernels(name):
    """setpriv names the capability, the kernel shows its bit in CapBnd."""
    status = subprocess.run(["setpriv", f"--bounding-set=-all,+{name}", "cat",
                             "/proc/self/status"], capture_output=True, text=True,
                            check=True).stdout
    shown = next(int(line.split()[1], 16) for line in status.splitlines()
                 if line.startswith("CapBnd:"))
    assert shown == capability_mask([name]) == 1 << CAPABILITY_BITS[name]
