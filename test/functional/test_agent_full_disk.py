"""The transaction is whole when the state directory fills up (issue 12, finding 4): the
real agent runs with a small tmpfs over its state directory, mounted in a private mount
namespace (nothing on the host's mounts changes); the fault comes from outside the
product: a filler file, or strace injecting ENOSPC into the commit's sync."""
import copy
import json
import os
import pathlib
import subprocess

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab.peers import eventually

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]
TMPFS_SIZE = 4 << 20


def with_fips(count):
    body = copy.deepcopy(BASIC)
    body["floating_ips"] = body["floating_ips"] + [
        {"floating_ip": f"198.18.{i // 250}.{i % 250 + 1}", "fixed_ip": "10.1.0.12"}
        for i in range(count)]
    return body


def _generation(appliance):
    config = appliance.client().get("/v1/system/config").json()
    return config["generation"], config["configuration"]


class TmpfsState:
    """A process holding a private mount namespace (inside the appliance's network
    namespace) with a tmpfs over the agent's state directory, seeded with its files. The
    agent is started inside it with ``nsenter``, so a restart finds the same tmpfs."""

    def __init__(self, lab, appliance):
        self.appliance = appliance
        state = str(appliance.state_dir)
        seed = str(lab.tmpdir("state-seed"))
        self.proc = lab.spawn(appliance.ns, [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            'cp -a "$1/." "$2" && mount -t tmpfs -o size=$3,mode=0700 tmpfs "$1" '
            '&& cp -a "$2/." "$1" && touch "$1/.seeded" && exec sleep 3600',
            "sh", state, seed, str(TMPFS_SIZE)])
        self.root = pathlib.Path(f"/proc/{self.proc.pid}/root") / state.lstrip("/")
        eventually(self._seeded, 10, "the tmpfs seeded", 0.05)
        self.filler = self.root / "filler"

    def _seeded(self):
        if self.proc.poll() is not None:  # not an AssertionError: eventually() would retry
            raise RuntimeError(f"the tmpfs holder exited with {self.proc.returncode}")
        return (self.root / ".seeded").exists()

    def wrapper(self):
        return ("nsenter", f"--mount=/proc/{self.proc.pid}/ns/mnt", "--")

    def leave_free(self, keep):
        """Fill the tmpfs so that about ``keep`` bytes stay free."""
        if self.filler.exists():
            self.filler.unlink()
        stats = os.statvfs(self.root)
        size = stats.f_bavail * stats.f_frsize - keep
        if size > 0:
            fd = os.open(self.filler, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)


@pytest.fixture
def appliance(lab):
    appliance = contract_appliance(lab, "router-basic", BASIC)
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200, response.text
    appliance.stop()
    return appliance


def test_a_full_state_directory_refuses_early_and_keeps_the_generation(lab, appliance):
    tmpfs = TmpfsState(lab, appliance)
    appliance.start(wrapper=tmpfs.wrapper())
    expected_generation, expected_config = _generation(appliance)
    expected_dump = appliance.dump()
    outcomes = []
    for level, keep in enumerate((0, 8 << 10, 64 << 10, 200 << 10, 280 << 10, 320 << 10,
                                  512 << 10, 1 << 20)):
        tmpfs.leave_free(keep)
        body = with_fips(200 + level)  # about 15 kB of JSON: 300 kB needed with the reserve
        response = appliance.client().put_json("/v1/system/config", body)
        outcomes.append(response.status)
        if response.status == 200:
            expected_generation, expected_config = expected_generation + 1, body
            expected_dump = appliance.dump()
            assert f"{body['floating_ips'][-1]['floating_ip']}/32" in str(expected_dump)
        else:
            assert response.status == 507, response.text
            assert "state directory is full" in response.json()["message"]
            assert appliance.dump() == expected_dump  # the kernel runs the old generation
        assert _generation(appliance) == (expected_generation, expected_config)
    assert 507 in outcomes and 200 in outcomes, outcomes  # both paths were exercised
    tmpfs.leave_free(0)
    appliance.stop()
    appliance.start(wrapper=tmpfs.wrapper())
    assert _generation(appliance) == (expected_generation, expected_config)
    assert appliance.dump() == expected_dump


def _traced(pid):
    """Whether strace has attached to every thread of ``pid``."""
    tracers = [line for task in pathlib.Path(f"/proc/{pid}/task").iterdir()
               for line in (task / "status").read_text().splitlines()
               if line.startswith("TracerPid:")]
    return bool(tracers) and all(line.split()[1] != "0" for line in tracers)


def test_a_failed_commit_rolls_the_kernel_back(lab, appliance):
    """Space for the pre-check, but persisting fails: strace, attached to the running
    agent, makes fsync and fdatasync fail with ENOSPC (the commit's fdatasync is the only
    durable write of a floating-IP change). The kernel goes back to the previous
    generation, and a restart comes back on it: the record the failed commit wrote in
    place is not taken for a committed generation."""
    appliance.start()
    before = appliance.dump()
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null",
                               "-e", "trace=fsync,fdatasync",
                               "-e", "inject=fsync,fdatasync:error=ENOSPC",
                               "-p", str(appliance.proc.pid)])  # the master: the engine's
    try:
        master = appliance.proc.pid
        eventually(lambda: _traced(master), 10, "strace attached to every thread", 0.05)
        response = appliance.client().put_json("/v1/system/config", with_fips(20))
    finally:
        tracer.terminate()
        tracer.wait(10)
    assert response.status == 507, response.text
    assert "state directory is full" in response.json()["message"]
    assert appliance.dump() == before
    assert _generation(appliance) == (1, BASIC)
    appliance.stop()
    appliance.start()
    assert _generation(appliance) == (1, BASIC)
    assert appliance.dump() == before


def test_a_full_state_directory_refuses_a_new_ownership_epoch_with_507(lab, appliance):
    """The epoch fence persists a newer epoch before the apply: a full state directory
    is the same clear 507 there (never a 500), and nothing was accepted."""
    tmpfs = TmpfsState(lab, appliance)
    appliance.start(wrapper=tmpfs.wrapper())
    expected = _generation(appliance)

    def push(epoch):
        return appliance.client().request(
            "PUT", "/v1/system/config", body=json.dumps(with_fips(1)).encode(),
            headers={"Content-Type": "application/json", "X-Astara-Epoch": str(epoch),
                     "X-Astara-Orchestrator": "orch-1"})
    tmpfs.leave_free(0)
    response = push(5)
    assert response.status == 507, response.text
    assert "ownership epoch cannot be persisted" in response.json()["message"]
    assert _generation(appliance) == expected
    tmpfs.leave_free(1 << 20)
    assert push(5).status == 200
    assert push(4).status == 409  # the epoch written once there was room is the fence's
