"""Transaction guarantees of the real agent: idempotence, rollback, crash safety, boot
re-apply and readers that never wait for the writer."""
import concurrent.futures
import copy
import signal
import threading
import time

import pytest

from astara_lab.appliance import contract_appliance, contract_payloads

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]


@pytest.fixture
def appliance(lab):
    appliance = contract_appliance(lab, "router-basic", BASIC)
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200, response.text
    return appliance


class NetlinkWatcher:
    """``ip monitor`` in the appliance namespace: every link/address/route change."""

    def __init__(self, lab, appliance, name="monitor"):
        self.path = lab.tmpdir(name) / "events.log"
        self.proc = lab.spawn(appliance.ns, ["ip", "monitor", "link", "address", "route"],
                              log_path=self.path)
        time.sleep(0.3)  # let it subscribe before anything happens

    def lines(self):
        return [line for line in self.path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines()):
                return
            time.sleep(0.005)
        raise TimeoutError(f"netlink events never matched; saw {self.lines()[-5:]}")

    def stop(self):
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(5)
        return self.lines()


def with_many_fips(payload, count):
    """``payload`` plus ``count`` floating IPs from 198.18.0.0/16 (an extra range routed to
    the gateway): a slow apply, to act during."""
    heavy = copy.deepcopy(payload)
    heavy["floating_ips"] = heavy["floating_ips"] + [
        {"floating_ip": f"198.18.{i // 250}.{i % 250 + 1}", "fixed_ip": "10.1.0.12"}
        for i in range(count)]
    return heavy


def wait_for_dad(appliance, timeout=10):
    """Links brought up by the first apply get link-local addresses a moment later (DAD);
    let the kernel finish so its events are not mistaken for the agent's."""
    deadline = time.monotonic() + timeout
    while appliance.ns.ip("-6", "addr", "show", "tentative").strip():
        assert time.monotonic() < deadline, "DAD never finished"
        time.sleep(0.1)


def test_identical_put_makes_no_netlink_change(lab, appliance):
    wait_for_dad(appliance)
    before = appliance.dump()
    watcher = NetlinkWatcher(lab, appliance)
    response = appliance.client().put_json("/v1/system/config", BASIC)
    events = watcher.stop()
    assert response.status == 200
    assert response.json()["changes"] == 0 and response.json()["generation"] == 1
    assert events == []
    assert appliance.dump() == before


def test_failed_late_step_rolls_back_everything(lab, appliance):
    before = appliance.dump()
    broken = copy.deepcopy(BASIC)
    broken["networks"][2]["interface"]["addresses"] = ["10.1.0.2/24"]  # applied first...
    broken["networks"][2]["interface"]["mtu"] = 1400
    broken["floating_ips"].append({"floating_ip": "172.24.4.229", "fixed_ip": "10.1.0.12"})
    broken["static_routes"] = [["198.19.50.0/24", "198.19.99.1"]]  # ...this fails later
    response = appliance.client().put_json("/v1/system/config", broken)
    assert response.status == 422, response.text
    assert "static_routes[0]" in response.json()["message"]
    assert "unreachable" in response.json()["message"].lower()
    assert appliance.dump() == before
    config = appliance.client().get("/v1/system/config").json()
    assert config["generation"] == 1 and config["configuration"] == BASIC
    again = appliance.client().put_json("/v1/system/config", BASIC)
    assert again.json()["changes"] == 0


def test_kill_during_apply_restores_last_committed_generation(lab, appliance):
    before = appliance.dump()
    heavy = with_many_fips(BASIC, 3000)
    watcher = NetlinkWatcher(lab, appliance)
    client = appliance.client(timeout=5)
    sender = threading.Thread(target=lambda: _swallow(client.put_json,
                                                      "/v1/system/config", heavy))
    sender.start()
    watcher.wait_for(lambda lines: sum("198.18." in line for line in lines) >= 50)
    appliance.stop(signal.SIGKILL)
    sender.join(10)
    assert appliance.dump() != before  # the kill really landed mid-apply
    appliance.start()
    config = appliance.client().get("/v1/system/config").json()
    assert config["generation"] == 1 and config["configuration"] == BASIC
    assert appliance.dump() == before


def test_boot_reapplies_persisted_config(lab, appliance):
    before = appliance.dump()
    appliance.stop()
    for ifname in ("eth1", "eth2"):  # a reboot loses everything but the boot-time mgmt
        appliance.ns.ip("addr", "flush", "dev", ifname)
    assert appliance.dump() != before
    appliance.start()
    assert appliance.dump() == before
    assert appliance.client().get("/v1/system/config").json()["generation"] == 1


def test_reads_never_wait_for_an_apply(lab, appliance):
    heavy = with_many_fips(BASIC, 3000)
    watcher = NetlinkWatcher(lab, appliance)
    client = appliance.client(timeout=60)
    put_result = {}

    def put():
        put_result["response"] = client.put_json("/v1/system/config", heavy)
        put_result["done"] = time.monotonic()

    writer = threading.Thread(target=put)
    writer.start()
    watcher.wait_for(lambda lines: any("198.18." in line for line in lines))

    def get(path):
        response = client.get(path)
        return response, time.monotonic()

    paths = ["/v1/system/config", "/v1/firewall/rules", "/v1/status/"] * 17
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(get, paths[:50]))
    writer.join(60)
    watcher.stop()
    assert put_result["response"].status == 200, put_result["response"].text
    assert all(response.status == 200 for response, _ in results)
    configs = [r.json() for r, _ in results if r.headers["Content-Type"] == "application/json"
               and "configuration" in r.json()]
    # Served from the committed snapshot while the writer held the lock:
    assert configs and all(c["generation"] == 1 for c in configs)
    assert all(finished < put_result["done"] for _, finished in results)
    assert client.get("/v1/system/config").json()["generation"] == 2


def _swallow(func, *args):
    try:
        func(*args)
    except OSError:
        pass
