"""Ownership fencing on the real agent: a push with an older ``X-Astara-Epoch`` than one
the appliance accepted is refused (409, nothing applied), the highest epoch survives an
agent restart, a push without the header (the original orchestrator) is accepted, and
every push is logged with the orchestrator that sent it."""
import copy
import json
import re

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads
from astara_lab.cluster import push_log

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]


def push(appliance, payload, epoch=None, orchestrator=None):
    headers = {"Content-Type": "application/json"}
    if epoch is not None:
        headers["X-Astara-Epoch"] = str(epoch)
    if orchestrator:
        headers["X-Astara-Orchestrator"] = orchestrator
    return appliance.client().request("PUT", "/v1/system/config",
                                      body=json.dumps(payload).encode(), headers=headers)


def test_an_older_epoch_is_refused_also_after_a_restart(lab):
    appliance = contract_appliance(lab, "router-basic", BASIC)
    assert push(appliance, BASIC, 5, "orch-b").status == 200
    changed = copy.deepcopy(BASIC)
    changed["floating_ips"] = []
    stale = push(appliance, changed, 4, "orch-a")
    assert stale.status == 409
    body = stale.json()
    assert body["accepted_epoch"] == 5 and body["accepted_from"] == "orch-b"
    assert "epoch 4 is older than epoch 5" in body["message"]
    assert appliance.client().get("/v1/system/config").json()["generation"] == 1

    appliance.stop()
    appliance.start()
    assert push(appliance, changed, 4, "orch-a").status == 409
    assert push(appliance, changed, 6, "orch-a").status == 200  # the new owner
    assert push(appliance, BASIC, 5, "orch-b").status == 409  # the old one, now stale
    assert push(appliance, BASIC).status == 200  # no header: the original client
    assert push(appliance, BASIC, "x1").status == 400

    log = appliance.log_path.read_text()
    # Each push the agent took: its one summary line, naming the sender (history.py).
    assert re.search(r"push: applied in .* \(from orchestrator=orch-b epoch=5\)", log)
    assert "config push from orchestrator=orch-a epoch=4 refused" in log
    assert re.search(r"push: applied in .* \(from orchestrator=orch-a epoch=6\)", log)
    # What the cluster tests read (the push without headers names no sender).
    assert push_log(appliance.log_path) == [
        ("orch-b", 5, True), ("orch-a", 4, False), ("orch-a", 4, False), ("orch-a", 6, True),
        ("orch-b", 5, False)]
