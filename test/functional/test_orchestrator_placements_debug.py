"""Placements (a tenant's own image) and ``astara-ctl debug-resource`` with the netns
driver: real orchestrator process, real agents in namespaces, driven by astara-ctl. For the
netns driver an image is the Python interpreter whose astara_router runs as the agent."""
import pathlib

import pytest

from .orchestrator_world import build_router, in_sync, make_image

pytestmark = pytest.mark.netns

OWN = "7a11ce00-1b2c-4d3e-8f90-a1b2c3d4e5f6"
PLAIN = "9b0b0000-1b2c-4d3e-8f90-a1b2c3d4e5f7"


def cmdline(pid):
    return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def test_a_tenant_boots_its_own_image(world):
    image = make_image(world.dir / "images" / "tenant-nf")
    world.ctl_json("placement", "set", "tenant", "byo-tenant", f"image={image}")
    refused = world.run_ctl("placement", "set", "tenant", "x", "driver=qemu")
    assert refused.returncode == 1 and "driver 'qemu' is not enabled" in refused.stderr
    build_router(world, OWN, "byo-tenant")
    build_router(world, PLAIN, "plain-tenant")
    own = world.wait_for(lambda: in_sync(world, OWN), 60, "byo router configured")
    plain = world.wait_for(lambda: in_sync(world, PLAIN), 60, "plain router configured")
    assert own["placement"] == {"driver": "", "image": str(image), "source": "tenant"}
    assert plain["placement"]["source"] == "default"
    own_details, plain_details = own["instances"][0]["details"], plain["instances"][0]["details"]
    assert own_details["image"] == str(image)
    assert str(image).encode() in cmdline(own_details["agent_pid"])
    assert str(image).encode() not in cmdline(plain_details["agent_pid"])
    assert own["instances"][0]["driver"] == plain["instances"][0]["driver"] == "netns"
    listed = world.ctl_json("placement", "list")
    assert [(p["scope"], p["key"], p["image"]) for p in listed["placements"]] == \
        [("tenant", "byo-tenant", str(image))]


def test_debug_resource_runs_the_state_machine_in_the_foreground(world):
    build_router(world, OWN, "debug-tenant")
    resource = world.wait_for(lambda: in_sync(world, OWN), 60, "router configured")
    pid = resource["instances"][0]["details"]["agent_pid"]
    result = world.run_ctl("debug-resource", OWN, "--action", "update", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    kinds = [line.split()[1] for line in lines]
    assert kinds[0] == "session" and kinds[-1] == "end"
    text = result.stdout
    assert "update (from debugger)" in text
    assert "CalcAction [configured] -> Alive" in text
    assert "ConfigureInstance [configured] -> CalcAction" in text
    assert f"driver.list('ak-router-{OWN}_')" in text
    assert ".put_config(" in text and "put_config -> " in text
    assert "returned_to_workers=True" in lines[-1]
    after = world.wait_for(lambda: in_sync(world, OWN), 30, "configured after the session")
    assert after["paused"] is None
    assert after["instances"][0]["details"]["agent_pid"] == pid  # debugged, not rebooted
    missing = world.run_ctl("debug-resource", "no-such-router")
    assert missing.returncode == 1 and "404" in missing.stderr
