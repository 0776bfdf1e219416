"""The metadata proxy end to end: a tenant VM → the router's listener → the orchestrator's
metadata endpoint (a recording HTTP server in the ctl namespace)."""
import copy
import http.client
import json
import pathlib
import re
import socket
import threading
import time

import pytest

from astara_lab.appliance import contract_payloads
from astara_netns import in_netns
from astara_lab.peers import MetadataUpstream, eventually
from astara_router.metadata_proxy import Proxy
from astara_lab.topology import RouterTopology

pytestmark = pytest.mark.netns

BASIC = contract_payloads("original-orchestrator")["router-basic"]
TENANT = "baef51913f354071ab020eae853d4ffe"
NETWORK = "cd85ed9c-7580-4882-9f21-c6603b4d90a0"
WEB1 = "e4b010e5-c133-4cdc-85b2-0f3e6e1b95e9"  # the instance owning 10.1.0.8
LISTENER = ("10.1.0.1", 9602)  # ge2's router address, port 9600 + 2
STRANGER = "10.1.0.77"  # on the tenant network, owned by no allocation
READ_TIMEOUT = 1.0  # the agent's [metadata] read_timeout in these tests


def request(ns, method, host, port, path, body=None, headers=None, source=None, timeout=15):
    """One HTTP request made from inside namespace ``ns`` (optionally from ``source``)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    with in_netns(ns.name):
        conn.connect()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


@pytest.fixture
def world(lab):
    topology = RouterTopology(lab, "router-basic", BASIC)
    upstream = MetadataUpstream(topology.ctl)
    upstream.start()
    ini = lab.tmpdir("agent-config") / "agent.ini"
    ini.write_text(f"[metadata]\nconnect_timeout = 2\nread_timeout = {READ_TIMEOUT}\n")
    appliance = topology.appliance
    appliance.configure_management()
    appliance.start(extra_args=["--config-file", str(ini)])
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200, response.text
    yield topology, upstream
    upstream.stop()


def listener_socket(appliance, port=9602):
    """The inode of the socket listening on ``port`` (the proxy runs in the agent's process:
    an unchanged inode means the listener was kept, not re-bound), or None."""
    listening = appliance.ns.run(["ss", "-Hltne", "sport", f"= :{port}"]).stdout
    found = re.findall(r"\bino:(\d+)", listening)
    return found[0] if found else None


def web1(topology):
    return topology.vm_for("10.1.0.8").ns


def test_get_and_post_reach_the_orchestrator_with_the_instance_identity(world):
    topology, upstream = world
    vm = web1(topology)
    status, content_type, body = request(vm, "GET", *LISTENER, "/latest/meta-data/?x=1&y=2",
                                         headers={"X-Instance-ID": "spoofed",
                                                  "X-Tenant-ID": "spoofed"})
    assert status == 200 and content_type == "application/json"
    assert json.loads(body) == {"path": "/latest/meta-data/?x=1&y=2", "instance": WEB1}
    status, _, body = request(vm, "POST", *LISTENER, "/openstack/latest/password",
                              body=b"s3cret", headers={"Content-Type": "text/plain"})
    assert status == 201, body
    get, post = upstream.seen
    assert get["method"] == "GET" and get["body"] == b""
    assert post["method"] == "POST" and post["body"] == b"s3cret"
    assert post["path"] == "/openstack/latest/password"
    assert post["headers"]["Content-Type"] == "text/plain"
    for seen in (get, post):
        headers = seen["headers"]
        assert headers["X-Forwarded-For"] == "10.1.0.8"
        assert headers["X-Instance-ID"] == WEB1  # never the client's own value
        assert headers["X-Tenant-ID"] == TENANT
        assert headers["X-Neutron-Network-ID"] == NETWORK
        assert headers["X-Quantum-Network-ID"] == NETWORK
        # over the management network, from the appliance's management address
        assert seen["client"] == BASIC["networks"][0]["interface"]["addresses"][0] \
            .split("/")[0]


def test_listener_is_bound_to_the_router_address_only(world):
    topology, _ = world
    listening = topology.appliance.ns.run(["ss", "-Hltn", "sport", "= :9602"]).stdout
    assert [line.split()[3] for line in listening.splitlines()] == ["10.1.0.1:9602"]


def test_unknown_source_address_gets_404_and_nothing_reaches_upstream(world):
    topology, upstream = world
    vm = web1(topology)
    vm.ip("addr", "add", f"{STRANGER}/24", "dev", "eth0", "nodad")
    status, content_type, body = request(vm, "GET", *LISTENER, "/latest/meta-data/",
                                         source=STRANGER)
    assert status == 404 and content_type == "application/json"
    assert json.loads(body)["error"] == "unknown instance"
    assert upstream.seen == []


def test_upstream_failures_are_502_and_timeouts_504(world):
    topology, upstream = world
    vm = web1(topology)
    status, _, body = request(vm, "GET", *LISTENER, "/slow")
    assert status == 504, body
    status, _, body = request(vm, "GET", *LISTENER, "/garbage")
    assert status == 502, body
    upstream.stop()  # connection refused from now on
    status, _, body = request(vm, "GET", *LISTENER, "/latest/meta-data/")
    assert status == 502 and json.loads(body)["error"] == "upstream failure"


def test_payload_changes_are_picked_up_without_restarting_the_proxy(world):
    topology, upstream = world
    appliance = topology.appliance
    listener = listener_socket(appliance)
    assert listener is not None
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200 and response.json()["changes"] == 0
    assert listener_socket(appliance) == listener

    changed = copy.deepcopy(BASIC)
    changed["networks"][2]["allocations"].append({
        "device_id": "0f0f0f0f-0000-4000-8000-000000000077", "hostname": "10-1-0-77.local",
        "ip_addresses": {STRANGER: True}, "mac_address": "fa:16:3e:00:00:77"})
    response = appliance.client().put_json("/v1/system/config", changed)
    assert response.status == 200, response.text
    vm = web1(topology)
    vm.ip("addr", "add", f"{STRANGER}/24", "dev", "eth0", "nodad")
    status, _, body = request(vm, "GET", *LISTENER, "/latest/meta-data/", source=STRANGER)
    assert status == 200, body
    assert upstream.seen[-1]["headers"]["X-Instance-ID"] == \
        "0f0f0f0f-0000-4000-8000-000000000077"
    assert listener_socket(appliance) == listener  # swapped in place, never re-bound


def test_no_tenant_network_no_proxy_and_back(world):
    topology, _ = world
    appliance = topology.appliance
    without = copy.deepcopy(BASIC)
    without["networks"] = without["networks"][:2]
    without["floating_ips"] = []
    response = appliance.client().put_json("/v1/system/config", without)
    assert response.status == 200, response.text
    assert listener_socket(appliance) is None
    response = appliance.client().put_json("/v1/system/config", BASIC)
    assert response.status == 200, response.text
    status, _, _ = request(web1(topology), "GET", *LISTENER, "/latest/meta-data/")
    assert status == 200


def test_a_listener_that_cannot_bind_rolls_the_whole_apply_back(world):
    topology, _ = world
    appliance = topology.appliance
    listener = listener_socket(appliance)
    assert listener is not None
    before = appliance.dump()
    # Somebody else already holds the port on the address the next payload moves to.
    with in_netns(appliance.ns.name):
        squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the address does not exist yet
    squatter.bind(("10.1.0.2", 9602))
    squatter.listen()
    try:
        moved = copy.deepcopy(BASIC)
        moved["networks"][2]["interface"]["addresses"] = ["10.1.0.2/24"]
        response = appliance.client().put_json("/v1/system/config", moved)
        assert response.status == 500, response.text
        # The detail goes to the agent's log, not to the client (issue 12, finding 9).
        assert "10.1.0.2:9602" not in response.text
        assert "10.1.0.2:9602" in appliance.log()
    finally:
        squatter.close()
    assert appliance.dump() == before
    assert listener_socket(appliance) == listener
    status, _, _ = request(web1(topology), "GET", *LISTENER, "/latest/meta-data/")
    assert status == 200


def test_instances_reach_the_metadata_address(world):
    topology, upstream = world
    status, _, body = request(web1(topology), "GET", "169.254.169.254", 80,
                              "/latest/meta-data/instance-id")
    assert status == 200, body
    assert upstream.seen[-1]["headers"]["X-Instance-ID"] == WEB1
    assert upstream.seen[-1]["headers"]["X-Forwarded-For"] == "10.1.0.8"


def test_each_request_is_logged_with_its_instance(world):
    topology, _ = world
    request(web1(topology), "GET", *LISTENER, "/latest/meta-data/")
    log = pathlib.Path(topology.appliance.state_dir) / "metadata" / "proxy.log"
    deadline = time.monotonic() + 5
    while "instance=" + WEB1 not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"10.1.0.8 GET /latest/meta-data/ instance={WEB1}" in log.read_text()


def test_only_get_head_and_post_are_forwarded(world):
    """Issue 12, finding 8: a tenant VM PUT a whole configuration through 169.254.169.254
    when the upstream was the agent itself. Other methods now get 405 and never leave."""
    topology, upstream = world
    vm = web1(topology)
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, content_type, body = request(vm, method, *LISTENER, "/v1/system/config",
                                             body=b"{}",
                                             headers={"Content-Type": "application/json"})
        assert status == 405 and content_type == "application/json", (method, body)
        assert json.loads(body)["error"] == "method not allowed"
    assert upstream.seen == []
    status, _, body = request(vm, "HEAD", *LISTENER, "/latest/meta-data/")
    assert status == 200 and body == b""
    assert [seen["method"] for seen in upstream.seen] == ["HEAD"]


def test_client_headers_are_allow_listed(world):
    topology, upstream = world
    status, _, body = request(web1(topology), "GET", *LISTENER, "/latest/meta-data/", headers={
        "Accept": "application/json", "Cookie": "session=1", "Authorization": "Bearer x",
        "X-Forwarded-Host": "evil", "User-Agent": "cloud-init\x7f"})
    assert status == 200, body
    headers = upstream.seen[0]["headers"]
    assert headers["Accept"] == "application/json"
    for dropped in ("Cookie", "Authorization", "X-Forwarded-Host", "User-Agent"):
        assert dropped not in headers


def test_an_upstream_that_is_the_appliance_itself_is_refused(world):
    topology, upstream = world
    appliance = topology.appliance
    body = copy.deepcopy(BASIC)
    own = body["networks"][0]["interface"]["addresses"][0].split("/")[0]
    body["orchestrator"]["address"] = own
    response = appliance.client().put_json("/v1/system/config", body)
    assert response.status == 422, response.text
    assert [e["path"] for e in response.json()["errors"]] == ["orchestrator.address"]
    status, _, _ = request(web1(topology), "GET", *LISTENER, "/latest/meta-data/")
    assert status == 200 and len(upstream.seen) == 1  # still the configured orchestrator


def test_identifiers_with_cr_lf_are_refused_and_metadata_keeps_working(world):
    """Issue 12, finding 7: a device id with CR/LF was accepted, then every metadata request
    502'd (or a folded header reached the upstream)."""
    topology, upstream = world
    appliance = topology.appliance
    for bad in ("vm\r\nX-Tenant-ID: other", "vm\u00e9"):
        body = copy.deepcopy(BASIC)
        body["networks"][2]["allocations"][0]["device_id"] = bad
        response = appliance.client().put_json("/v1/system/config", body)
        assert response.status == 422, response.text
        assert response.json()["errors"][0]["path"].endswith(".device_id")
    status, _, body = request(web1(topology), "GET", *LISTENER, "/latest/meta-data/")
    assert status == 200, body
    assert upstream.seen[0]["headers"]["X-Instance-ID"] == WEB1


def proxy_text(ports):
    """A proxy configuration with one listener per port on the namespace's loopback."""
    return json.dumps({
        "format": 1, "tenant_id": TENANT,
        "upstream": {"address": "127.0.0.2", "port": 9, "connect_timeout": 1,
                     "read_timeout": 1},
        "listeners": [{"network_id": NETWORK, "interface": f"ge{port - 9600}",
                       "address": "127.0.0.1", "port": port, "instances": {}}
                      for port in ports]})


def acceptors():
    return [t for t in threading.enumerate() if t.name == "metadata-acceptor"]


def test_one_thread_accepts_on_every_listener_as_they_come_and_go(lab):
    ns = lab.netns("proxy")
    ns.ip("link", "set", "lo", "up")
    proxy = Proxy()
    with in_netns(ns.name):
        proxy.serve(proxy_text(range(9602, 9612)))
    try:
        assert len(acceptors()) == 1 and proxy.alive()
        for port in (9602, 9611):  # an unknown source: the proxy's own 404
            assert request(ns, "GET", "127.0.0.1", port, "/latest/meta-data/")[0] == 404
        with in_netns(ns.name):
            proxy.serve(proxy_text([9603]))
        with pytest.raises(ConnectionRefusedError):
            request(ns, "GET", "127.0.0.1", 9602, "/")
        assert request(ns, "GET", "127.0.0.1", 9603, "/latest/meta-data/")[0] == 404
        with in_netns(ns.name):
            proxy.serve(proxy_text([]))
        assert eventually(lambda: not acceptors(), 5, "the accepting thread ends")
        with in_netns(ns.name):
            proxy.serve(proxy_text([9604]))
        assert proxy.alive() and len(acceptors()) == 1
        assert request(ns, "GET", "127.0.0.1", 9604, "/latest/meta-data/")[0] == 404
    finally:
        proxy.close()
