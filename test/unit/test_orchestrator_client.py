"""Appliance client against a real HTTP server on the loopback (http.server in a thread):
paths, header, timeouts, retries with back-off on 5xx/connection errors, no retry on 4xx,
the agent's JSON error surfaced, bracketed IPv6 hosts; the connections it opens, over plain
HTTP and mutual TLS (the server counts what it accepts)."""
import http.server
import json
import socket
import ssl
import threading
import time

import pytest

from astara_lab.webserver import QuietHandler
from orchestrator_lite.client import (ApplianceClient, ApplianceRejected, ApplianceUnavailable,
                                      base_url)
from orchestrator_lite.pki import DAY

from sim_appliances import backdated_ca, server_context


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()  # one call per accepted connection
        peer = self.connection.getpeercert(binary_form=True) \
            if isinstance(self.connection, ssl.SSLSocket) else None
        self.server.connections.append((self.client_address[1], peer))

    def _answer(self):
        server = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server.requests.append((self.command, self.path, dict(self.headers), body))
        script = server.script.get((self.command, self.path), [])
        status, payload, delay = script.pop(0) if len(script) > 1 else \
            (script[0] if script else (404, {"error": "Not Found", "message": "no"}, 0))
        if delay:
            time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _answer


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.script, self.requests = {}, []
        self.connections = []  # (client port, client certificate DER or None) accepted


def serving(srv):
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return srv


@pytest.fixture
def server():
    srv = serving(Server(("127.0.0.1", 0), Handler))
    yield srv
    srv.shutdown()
    srv.server_close()


NAME = "ak-router-r1_0"


@pytest.fixture
def tls_server(tmp_path):
    """The server over mutual TLS with a certificate for NAME, and the CA (its clock 25
    days back: certificates issued before and after a 21-day jump are valid now)."""
    ca, clock = backdated_ca(tmp_path / "pki")
    srv = Server(("127.0.0.1", 0), Handler)
    srv.socket = server_context(ca.issue(NAME), tmp_path).wrap_socket(srv.socket,
                                                                       server_side=True)
    serving(srv)
    yield srv, ca, clock
    srv.shutdown()
    srv.server_close()


def client_for(server, **kwargs):
    sleeps = []
    kwargs.setdefault("attempts", 3)
    client = ApplianceClient("127.0.0.1", server.server_address[1], sleep=sleeps.append,
                             **kwargs)
    return client, sleeps


def test_urls_bracket_ipv6():
    assert base_url("fdca:3ba5:a17a:acda::5", 5000) == "http://[fdca:3ba5:a17a:acda::5]:5000"
    assert base_url("[fdca::5]", 5000) == "http://[fdca::5]:5000"
    assert base_url("192.0.2.1", 5000) == "http://192.0.2.1:5000"
    assert base_url("appliance.local", 5001) == "http://appliance.local:5001"


def test_is_alive(server):
    client, _ = client_for(server)
    server.script[("GET", "/v1/firewall/rules")] = [(200, b"table inet filter {}", 0)]
    assert client.is_alive()
    server.script[("GET", "/v1/firewall/rules")] = [(503, {}, 0)]
    assert not client.is_alive()
    assert [r[1] for r in server.requests] == ["/v1/firewall/rules"] * 2  # one try each


def test_is_alive_times_out(server):
    client, _ = client_for(server, alive_timeout=0.2)
    server.script[("GET", "/v1/firewall/rules")] = [(200, b"", 1.0)]
    assert not client.is_alive()


def test_interfaces_map_mac_to_generic_name(server):
    client, _ = client_for(server)
    server.script[("GET", "/v1/system/interfaces")] = [(200, {"interfaces": [
        {"ifname": "ge0", "lladdr": "FA:16:3E:67:41:6C"},
        {"ifname": "ge1", "lladdr": "fa:16:3e:59:11:a7", "mtu": 1500}]}, 0)]
    assert client.get_interfaces() == {"fa:16:3e:67:41:6c": "ge0", "fa:16:3e:59:11:a7": "ge1"}


def test_put_config_sends_the_original_header(server):
    client, _ = client_for(server)
    server.script[("PUT", "/v1/system/config")] = [(200, {"generation": 1, "hash": "h"}, 0)]
    assert client.put_config({"hostname": "ak-x"}) == {"generation": 1, "hash": "h"}
    method, path, headers, body = server.requests[0]
    assert headers["Content-type"] == "application/json"
    assert json.loads(body) == {"hostname": "ak-x"}
    assert "Authorization" not in headers


def test_commit_confirm_pushes_with_a_timeout_and_confirms(server):
    client, _ = client_for(server, confirm_timeout=60)
    server.script[("PUT", "/v1/system/config?confirm_timeout=60")] = [
        (200, {"generation": 2, "hash": "h"}, 0)]
    server.script[("POST", "/v1/system/config/confirm")] = [(200, {"confirmed": 2}, 0)]
    assert client.put_config({"hostname": "ak-x"})["generation"] == 2
    assert [(m, p) for m, p, _, _ in server.requests] == [
        ("PUT", "/v1/system/config?confirm_timeout=60"),
        ("POST", "/v1/system/config/confirm")]


def test_an_original_appliance_without_commit_confirm_is_still_configured(server):
    """Its agent ignores the query and has no confirm route (404): nothing to confirm."""
    client, _ = client_for(server, confirm_timeout=60)
    server.script[("PUT", "/v1/system/config?confirm_timeout=60")] = [
        (200, {"generation": 2, "hash": "h"}, 0)]
    assert client.put_config({})["generation"] == 2
    assert client.confirm() is False


def test_bearer_token_when_configured(server):
    client, _ = client_for(server, token="s3cret")
    server.script[("GET", "/v1/firewall/rules")] = [(200, b"", 0)]
    client.is_alive()
    assert server.requests[0][2]["Authorization"] == "Bearer s3cret"


def test_5xx_is_retried_with_backoff_then_succeeds(server):
    client, sleeps = client_for(server, backoff_base=1.0, backoff_cap=8.0)
    server.script[("PUT", "/v1/system/config")] = [
        (500, {"error": "Internal Server Error", "message": "dnsmasq died"}, 0),
        (503, b"busy", 0),
        (200, {"generation": 2}, 0)]
    assert client.put_config({})["generation"] == 2
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # exponential, jittered


def test_5xx_exhausted_is_unavailable_with_the_message(server):
    client, sleeps = client_for(server)
    server.script[("PUT", "/v1/system/config")] = [
        (500, {"error": "Internal Server Error", "message": "verify failed"}, 0)]
    with pytest.raises(ApplianceUnavailable, match="verify failed"):
        client.put_config({})
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_4xx_is_not_retried_and_carries_the_agent_message(server):
    client, sleeps = client_for(server)
    server.script[("PUT", "/v1/system/config")] = [(422, {
        "error": "The configuration is not valid",
        "message": "hostname: 'ak-bad_tenant' is not a valid host name",
        "errors": [{"path": "hostname", "message": "'ak-bad_tenant' is not a valid host "
                                                   "name"}]}, 0)]
    with pytest.raises(ApplianceRejected) as info:
        client.put_config({})
    assert info.value.status == 422
    assert "ak-bad_tenant" in info.value.message and "422" in info.value.message
    assert len(server.requests) == 1 and sleeps == []


def test_connection_refused_is_retried_then_unavailable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    sleeps = []
    client = ApplianceClient("127.0.0.1", port, attempts=3, sleep=sleeps.append)
    with pytest.raises(ApplianceUnavailable, match="after 3 attempts"):
        client.get_interfaces()
    assert len(sleeps) == 2
    assert not client.is_alive()


def test_timeout_is_retried(server):
    client, sleeps = client_for(server, timeout=0.2)
    server.script[("GET", "/v1/system/interfaces")] = [
        (200, {"interfaces": []}, 0.6), (200, {"interfaces": [
            {"ifname": "ge0", "lladdr": "fa:16:3e:00:00:01"}]}, 0)]
    assert client.get_interfaces() == {"fa:16:3e:00:00:01": "ge0"}
    assert len(sleeps) == 1


def test_committed_hash_and_if_none_match(server):
    client, _ = client_for(server)
    server.script[("GET", "/v1/system/config")] = [
        (200, {"configuration": {}, "generation": 0, "hash": None}, 0),
        (304, b"", 0)]
    assert client.committed() == (0, None)
    assert client.committed(if_none_match="abc") == (None, "abc")
    assert server.requests[1][2]["If-None-Match"] == '"abc"'


def test_ipv6_loopback_server():
    class Server6(Server):
        address_family = socket.AF_INET6

    try:
        srv = Server6(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    srv.script = {("GET", "/v1/firewall/rules"): [(200, b"", 0)]}
    serving(srv)
    try:
        assert ApplianceClient("::1", srv.server_address[1]).is_alive()
    finally:
        srv.shutdown()
        srv.server_close()


def test_status_reads_the_appliances_own_health(server):
    client, _ = client_for(server)
    server.script[("GET", "/v1/status/")] = [(200, {
        "state": "degraded", "reasons": ["dhcp is down"], "last_error": "dhcp is down",
        "repairs": {"dhcp is down": 2}}, 0)]
    status = client.status()
    assert status["state"] == "degraded" and status["reasons"] == ["dhcp is down"]
    assert [r[1] for r in server.requests] == ["/v1/status/"]


def script_a_poll(server):
    server.script[("GET", "/v1/firewall/rules")] = [(200, b"", 0)]
    server.script[("GET", "/v1/status/")] = [(200, {"state": "ready"}, 0)]
    server.script[("GET", "/v1/system/config")] = [(304, b"", 0)]


def poll(client):
    return client.is_alive(), client.status(), client.committed(if_none_match="h")


def test_a_polls_calls_share_one_connection(server):
    client, _ = client_for(server)
    script_a_poll(server)
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    assert len(server.requests) == 3 and len(server.connections) == 1
    client.close()  # what the end of an automaton run does
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    assert len(server.requests) == 6 and len(server.connections) == 2


def test_over_tls_one_handshake_serves_until_the_client_certificate_is_renewed(tls_server):
    server, ca, clock = tls_server
    client, _ = client_for(server, tls=ca.client_tls(), server_name=NAME)
    script_a_poll(server)

    def client_certificate():
        return ssl.PEM_cert_to_DER_cert(ca.client_cert_file.read_text())

    first = client_certificate()
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    assert [cert for _, cert in server.connections] == [first]
    clock.now += 21 * DAY  # the client certificate falls due: re-issued, new handshake
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    renewed = client_certificate()
    assert renewed != first
    assert [cert for _, cert in server.connections] == [first, renewed]
    assert len(server.requests) == 9


def test_over_tls_only_the_orchestrators_ca_is_trusted(tls_server):
    """requests would load its public CA bundle into the client's context on every new
    connection; the appliance's certificate must chain to our CA alone."""
    server, ca, _ = tls_server
    tls = ca.client_tls()
    client, _ = client_for(server, tls=tls, server_name=NAME)
    script_a_poll(server)
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    client.close()
    assert poll(client) == (True, {"state": "ready"}, (None, "h"))
    assert len(server.connections) == 2
    assert tls.context().cert_store_stats()["x509_ca"] == 1
