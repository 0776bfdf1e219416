"""Load on the live agent: 1 000 pushes alternating between two contract payloads while the
orchestrator's health poll (its own client: liveness, then status) runs 20 times a second.
No poll may fail — an error answer, or no answer within the orchestrator's own poll timeout
([appliance] alive_timeout: the client gives up after it and reports the appliance not alive,
or no status) — and in the end the committed configuration and the kernel state are those
of the last push."""
import copy
import threading
import time

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_netns import in_netns
from orchestrator_lite.client import ApplianceClient
from orchestrator_lite.config import ApplianceSettings

from .fuzzing import GENERATION_RECORDS, kernel_state, state_difference

pytestmark = pytest.mark.netns

PUSHES = 1000
POLL_INTERVAL = 1 / 20  # 20 polls a second
CONTRACT = contract_payloads("original-orchestrator")
FIRST = CONTRACT["router-basic"]


def on_this_appliance(name):
    """Contract body ``name`` with router-basic's management network and orchestrator: the
    same appliance, a different dataplane (a push may not move the management path)."""
    body = copy.deepcopy(CONTRACT[name])
    body["networks"] = [copy.deepcopy(FIRST["networks"][0])] + [
        n for n in body["networks"] if n.get("network_type") != "management"]
    body["orchestrator"] = copy.deepcopy(FIRST["orchestrator"])
    return body


SECOND = on_this_appliance("router-no-gateway")


class HealthPoller(threading.Thread):
    """The orchestrator's health poll from the controller namespace, on a fixed schedule,
    recording every failed poll."""

    def __init__(self, ctl, address, settings):
        super().__init__(name="health-poller", daemon=True)
        self.ctl = ctl
        self.client = ApplianceClient.from_settings(address, settings)
        self.stopping = threading.Event()
        self.polls = 0
        self.failures = []

    def run(self):
        with in_netns(self.ctl):  # this thread's sockets are the controller's
            start = time.monotonic()
            while not self.stopping.is_set():
                alive = self.client.is_alive()
                status = self.client.status()
                self.polls += 1
                if not alive or status.get("state") != "ready":
                    self.failures.append(f"poll {self.polls}: alive={alive} "
                                         f"state={status.get('state')}")
                next_at = start + self.polls * POLL_INTERVAL
                self.stopping.wait(max(0.0, next_at - time.monotonic()))


def test_pushes_under_health_polls(lab):
    appliance = contract_appliance(lab, "router-basic", FIRST)
    client = appliance.client(timeout=60)
    expected = {}
    for name, body in (("first", FIRST), ("second", SECOND)):  # each one's kernel state
        response = client.put_json("/v1/system/config", body)
        assert response.status == 200, response.text
        expected[name] = kernel_state(appliance)
    assert state_difference(expected["first"], expected["second"],
                            ignore=GENERATION_RECORDS)  # two different dataplanes

    poller = HealthPoller(appliance.controller.name, str(appliance.mgmt.ip),
                          ApplianceSettings())
    poller.start()
    try:
        for push in range(PUSHES):
            body = FIRST if push % 2 == 0 else SECOND
            response = client.put_json("/v1/system/config", body)
            assert response.status == 200, f"push {push}: {response.text}\n{appliance.log()}"
    finally:
        poller.stopping.set()
        poller.join(30)
    last = SECOND if PUSHES % 2 == 0 else FIRST
    assert poller.polls > 0
    assert not poller.failures, f"{len(poller.failures)} of {poller.polls} polls failed: " \
                                f"{poller.failures[:10]}"
    committed = client.get("/v1/system/config").json()
    assert committed["configuration"] == last
    assert committed["generation"] == 2 + PUSHES
    assert not state_difference(expected["second" if last is SECOND else "first"],
                                kernel_state(appliance), ignore=GENERATION_RECORDS)
