"""Fleet upgrades with the netns driver and real agents (an image is the Python interpreter
of a virtualenv whose agent runs, recorded with each instance): ``astara-ctl router rebuild
--image`` moves one router, then ``astara-ctl upgrade start --wait`` moves a router and an
HA pair onto another image while a sampler watches the appliances: at most one is missing
at any time, and an HA member is always up. The QEMU driver does the same with real
images in test/e2e/test_lab_qemu.py."""
import threading

import pytest

from orchestrator_lite.drivers.base import ACTIVE
from orchestrator_lite.drivers.netns import NetnsDriver

from .orchestrator_world import build_router, in_sync, make_image

pytestmark = pytest.mark.netns

SINGLE = "a1f0c3a1-7d2b-4c1e-9a8f-0b1c2d3e4f60"
PAIR = "b2f0c3a1-7d2b-4c1e-9a8f-0b1c2d3e4f61"


class Sampler:
    """Lists the appliances every 0.1 s (the driver's records, read afresh, and whether
    each agent runs): the most missing at once, and whether the pair ever had none."""

    def __init__(self, world, expected):
        self.world = world
        self.expected = expected  # {resource id: instances it should have}
        self.max_missing = 0
        self.worst = None  # what was up when the most were missing
        self.pair_empty = False
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            driver = NetnsDriver(self.world.lab.prefix, self.world.dir / "appliances",
                                 fabric=self.world.fabric.name)
            missing, seen = 0, {}
            for resource_id, count in self.expected.items():
                listed = driver.list(f"ak-router-{resource_id}_")
                seen[resource_id] = [(i.name, i.status) for i in listed]
                up = [i for i in listed if i.status == ACTIVE]
                missing += max(0, count - len(up))
                if resource_id == PAIR and not up:
                    self.pair_empty = True
            if missing > self.max_missing:
                self.max_missing, self.worst = missing, seen
            self.samples += 1
            self._stop.wait(0.1)  # a stop ends the wait at once

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def images(resource):
    return sorted(i["details"]["image"] for i in resource["instances"])


def test_rebuild_and_rolling_upgrade_onto_another_image(world):
    v2 = str(make_image(world.dir / "images" / "v2"))
    v3 = str(make_image(world.dir / "images" / "v3"))
    build_router(world, SINGLE, "tenant1")
    build_router(world, PAIR, "tenant2")
    world.ctl_json("router", "set", PAIR, "ha=true")
    world.wait_for(lambda: in_sync(world, SINGLE), 60, "router configured")
    pair = world.wait_for(lambda: (r := in_sync(world, PAIR)) and
                          len(r["instances"]) == 2 and r, 90, "HA pair configured")
    [default] = set(images(pair))  # the driver's own interpreter
    assert default not in (v2, v3)

    # One resource onto another image: a new appliance, recorded with the image.
    before = world.resource(SINGLE)["instances"][0]["details"]["agent_pid"]
    refused = world.run_ctl("router", "rebuild", SINGLE, "--image", "v2")
    assert refused.returncode == 1 and "not an executable Python interpreter" in \
        refused.stderr, refused.stderr
    world.ctl_json("router", "rebuild", SINGLE, "--image", v2)
    single = world.wait_for(
        lambda: (r := in_sync(world, SINGLE)) and images(r) == [v2] and r, 60,
        "rebuilt onto v2")
    assert single["instances"][0]["details"]["agent_pid"] != before

    # The fleet onto v3, one appliance at a time; HA members one after the other.
    with Sampler(world, {SINGLE: 1, PAIR: 2}) as sampler:
        result = world.run_ctl("upgrade", "start", "--image", v3, "--max-unavailable", "1",
                               "--wait", "--interval", "0.5")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{world.tail()}"
    assert "finished" in result.stdout
    status = world.ctl_json("upgrade", "status", "--json")
    assert status["state"] == "finished" and status["counts"] == {"done": 2}, status
    assert images(world.wait_for(lambda: in_sync(world, SINGLE), 30, "single")) == [v3]
    assert images(world.wait_for(lambda: in_sync(world, PAIR), 30, "pair")) == [v3, v3]
    assert sampler.samples > 10
    assert sampler.max_missing == 1, \
        f"the bound is one appliance down at a time: {sampler.worst}\n{world.tail()}"
    assert not sampler.pair_empty, "both HA members were down at once"
