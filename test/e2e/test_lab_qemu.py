"""The lab with ``--driver qemu``: the router is a VM of ``out/astara.qcow2`` booted by the
orchestrator's QEMU driver. Every row of the self-check passes; a restarted orchestrator
adopts the running VM without rebooting or re-configuring it; ``astara-ctl ssh`` logs in
as ``astara``; ``astara-ctl debug-resource`` runs the router's state machine in the
foreground against the VM; a tenant's own image (a placement) and ``router rebuild --image``
each boot the router as a VM of that image; a rolling upgrade moves the router onto another
image (a copy of the image, so another image id) and every row passes again; ``down`` leaves no process, tap,
overlay or socket.

Long (several VM boots under TCG emulation) and it needs the built image: ``make test``
leaves this file out and ``make test-qemu-lab`` runs it, after building the image if needed.
"""
import pathlib
import shutil
import sys

import pytest

from astara_lab import lab as astara_lab
from astara_lab.image import outputs
from astara_lab.leftovers import find_leftovers
from astara_netns import Netns, list_netns, pid_alive
from astara_lab.peers import eventually
from astara_lab.pytest_netns import require_netns
from orchestrator_lite.rollout import in_sync

from .lab_helpers import E2E_HEALTH

pytestmark = [pytest.mark.netns]
ROUTER = "demo-router"


@pytest.fixture(scope="module")
def qemu_lab(tmp_path_factory):
    require_netns()
    state_file = tmp_path_factory.mktemp("astara-lab-qemu") / "lab.json"
    progress = astara_lab.Progress(live=False)
    try:
        state = astara_lab.up(state_file, health=E2E_HEALTH, progress=progress,
                              driver="qemu")
        yield state, state_file, progress
    finally:
        astara_lab.down(state_file, quiet=True)


def instance_of(state):
    [instance] = astara_lab.admin_api(state).resource(ROUTER)["instances"]
    return instance


def astara_ctl(state, *args):
    ctl = Netns(state["namespaces"]["ctl"])
    return ctl.run([str(pathlib.Path(sys.executable).parent / "astara-ctl"), "--config",
                    state["orchestrator"]["config"], *args], check=False)


def test_every_row_passes_with_the_router_as_a_vm(qemu_lab, capsys):
    state, _, progress = qemu_lab
    rows = astara_lab.self_check(state, patience=180)
    with capsys.disabled():
        print(f"\nQEMU lab up in {progress.elapsed():.0f}s\n" +
              astara_lab.format_table(rows) + "\n" +
              astara_lab.format_timings(state["timings"]))
    assert all(r.ok for r in rows), astara_lab.format_table(rows)
    instance = instance_of(state)
    assert instance["details"]["accel"] in ("tcg", "kvm")
    assert pid_alive(instance["details"]["pid"])
    assert f"{ROUTER}_boot_to_configured" in state["timings"]


def test_restarted_orchestrator_adopts_the_running_vm(qemu_lab):
    state, state_file, _ = qemu_lab
    before = instance_of(state)
    api = astara_lab.admin_api(state)
    astara_lab.restart_orchestrator(state, state_file)
    resource = eventually(lambda: (r := api.resource(ROUTER)) and in_sync(r)
                          and r, 120, "adopted and in sync", interval=1)
    [after] = resource["instances"]
    assert after["details"]["pid"] == before["details"]["pid"], "the VM was replaced"
    assert after["id"] == before["id"]
    agent = astara_lab.agent_client(state, after, timeout=30).get("/v1/system/config").json()
    assert agent["hash"] == after["committed_hash"]
    assert resource["automaton"]["boot_attempts"] == 0


def test_astara_ctl_ssh_logs_in_as_astara(qemu_lab):
    state, _, _ = qemu_lab
    shown = astara_ctl(state, "ssh", ROUTER)  # no terminal: prints the command
    assert shown.returncode == 0, shown.stderr
    command = shown.stdout.split()
    assert command[0] == "ssh" and command[-1].startswith("astara@")
    ctl = Netns(state["namespaces"]["ctl"])
    result = ctl.run([*command, "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                      "id", "-un"], check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "astara"


def test_new_network_is_hot_plugged_into_the_vm(qemu_lab):
    """An interface on a new network: the orchestrator hot-plugs a NIC into the running VM
    (QMP), configures it, and unplugs it when the interface goes; the VM stays."""
    state, _, _ = qemu_lab
    api = astara_lab.admin_api(state)
    before = instance_of(state)
    nics = len(before["nics"])
    api.call("POST", "/v1/networks", {"id": "extra", "tenant_id": "demo", "mtu": 1450})
    api.call("POST", "/v1/subnets", {"id": "extra-v4", "network_id": "extra",
                                     "cidr": "10.9.0.0/24", "gateway_ip": "10.9.0.1"})
    port = api.call("POST", f"/v1/routers/{ROUTER}/interfaces",
                    {"subnet_id": "extra-v4"})["port"]

    def nics_in_sync(count):
        resource = api.resource(ROUTER)
        return in_sync(resource) and \
            len(resource["instances"][0]["nics"]) == count and resource
    resource = eventually(lambda: nics_in_sync(nics + 1), 300, "hot-plugged and configured",
                          interval=2)
    [after] = resource["instances"]
    assert after["details"]["pid"] == before["details"]["pid"]
    agent = astara_lab.agent_client(state, after, timeout=30).get(
        "/v1/system/interfaces").json()
    assert any("10.9.0.1/24" in i["addresses"] for i in agent["interfaces"])
    api.call("DELETE", f"/v1/routers/{ROUTER}/interfaces/{port['id']}")
    eventually(lambda: nics_in_sync(nics), 300, "unplugged and configured", interval=2)
    assert instance_of(state)["details"]["pid"] == before["details"]["pid"]
    api.call("DELETE", "/v1/subnets/extra-v4")
    api.call("DELETE", "/v1/networks/extra")


def image_copy(state, name):
    """A copy of the built image (qcow2, kernel, initramfs): another image to boot."""
    directory = pathlib.Path(state["tmp_root"]) / name
    directory.mkdir(exist_ok=True)
    for path in list(outputs().values())[:3]:
        shutil.copy(path, directory / path.name)
    return str(directory / outputs()["qcow2"].name)


def test_debug_resource_drives_the_vm_in_the_foreground(qemu_lab):
    state, _, _ = qemu_lab
    before = instance_of(state)
    result = astara_ctl(state, "debug-resource", ROUTER, "--action", "update",
                        "--timeout", "120")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[0].split()[1] == "session" and lines[-1].split()[1] == "end", result.stdout
    assert "update (from debugger)" in result.stdout
    assert f"driver.list('ak-router-{ROUTER}_')" in result.stdout
    assert ".put_config(" in result.stdout and "put_config -> " in result.stdout
    assert "returned_to_workers=True" in lines[-1]
    api = astara_lab.admin_api(state)
    resource = eventually(lambda: (r := api.resource(ROUTER)) and in_sync(r) and r, 120,
                          "configured after the session", interval=1)
    assert resource["paused"] is None
    assert resource["instances"][0]["details"]["pid"] == before["details"]["pid"]


def test_tenant_image_and_rebuild_boot_those_images(qemu_lab):
    """BYONF: a placement gives the lab's tenant its own image, and a rebuild boots the
    router as a VM of it; then ``rebuild --image`` boots a third image for this router."""
    state, _, _ = qemu_lab
    api = astara_lab.admin_api(state)
    first = instance_of(state)
    own = image_copy(state, "image-tenant")
    try:
        placed = astara_ctl(state, "placement", "set", "tenant", "demo", f"image={own}")
        assert placed.returncode == 0, placed.stderr
        rebuilt = astara_ctl(state, "router", "rebuild", ROUTER)
        assert rebuilt.returncode == 0, rebuilt.stderr

        def booted(image):
            resource = api.resource(ROUTER)
            return in_sync(resource) and \
                resource["instances"][0]["details"]["image"] == image and resource
        resource = eventually(lambda: booted(own), 420, "rebuilt onto the tenant's image",
                              interval=2)
        assert resource["placement"] == {"driver": "", "image": own, "source": "tenant"}
        second = resource["instances"][0]
        assert second["details"]["pid"] != first["details"]["pid"]
        assert not pid_alive(first["details"]["pid"])

        third_image = image_copy(state, "image-rebuild")
        rebuilt = astara_ctl(state, "router", "rebuild", ROUTER, "--image", third_image)
        assert rebuilt.returncode == 0, rebuilt.stderr
        third = eventually(lambda: booted(third_image), 420, "rebuilt onto --image",
                           interval=2)["instances"][0]
        assert third["details"]["pid"] != second["details"]["pid"]
        assert third["details"]["image_id"] not in (first["details"]["image_id"],
                                                    second["details"]["image_id"])
    finally:
        astara_ctl(state, "placement", "clear", "tenant", "demo")
    rows = astara_lab.self_check(state, patience=180)
    assert all(r.ok for r in rows), astara_lab.format_table(rows)


def test_rolling_upgrade_onto_another_image(qemu_lab):
    state, _, _ = qemu_lab
    before = instance_of(state)
    image = image_copy(state, "image-v2")
    result = astara_ctl(state, "upgrade", "start", "--image", image, "--wait",
                        "--interval", "5")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n" \
        f"{astara_lab.orchestrator(state).tail(4000)}"
    after = instance_of(state)  # a new VM (ids are derived from the name: same id)
    assert after["details"]["image"] == image
    assert after["details"]["image_id"] != before["details"]["image_id"]
    assert after["details"]["pid"] != before["details"]["pid"]
    assert not pid_alive(before["details"]["pid"])
    rows = astara_lab.self_check(state, patience=180)
    assert all(r.ok for r in rows), astara_lab.format_table(rows)


def test_down_leaves_nothing(qemu_lab):
    state, state_file, _ = qemu_lab
    instance = instance_of(state)
    pid = instance["details"]["pid"]
    directory = pathlib.Path(state["orchestrator"]["dir"]) / "qemu"
    astara_lab.down(state_file, quiet=True)
    assert not pid_alive(pid)
    assert not directory.exists()
    assert not [n for n in list_netns() if n.startswith(state["prefix"])]
    leftovers = find_leftovers(state["prefix"])
    assert leftovers == {"namespaces": {}, "etc_dirs": [], "tmp_dirs": []}
