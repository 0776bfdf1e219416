"""/v1/status/ probes the committed config's gateways in the background."""
import time

import pytest

from astara_lab.appliance import contract_payloads
from astara_lab.topology import RouterTopology

pytestmark = pytest.mark.netns


def wait_status(client, predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        status = client.get("/v1/status/").json()
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_status_follows_gateway_reachability(lab):
    payload = contract_payloads()["router-basic"]
    topo = RouterTopology(lab, "router-basic", payload)
    ini = lab.tmpdir("conf") / "astara.ini"
    ini.write_text("[status]\ninterval = 0.3\nv6_target = 2001:db8:ffff::1\n")
    topo.appliance.configure_management()
    topo.appliance.start(["--config-file", str(ini)])
    client = topo.appliance.client()
    assert client.put_json("/v1/system/config", payload).status == 200
    status = wait_status(client, lambda s: s["v4"])
    assert status["v4"] is True and status["targets"]["v4"] == "172.24.4.1"
    assert status["v6"] is False and status["targets"]["v6"] == "2001:db8:ffff::1"
    topo.inet.ip("link", "set", "eth0", "down")  # the upstream goes away
    status = wait_status(client, lambda s: not s["v4"])
    assert status["v4"] is False
