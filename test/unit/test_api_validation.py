"""The API's refusal paths with the real engine: they all happen before anything touches
the kernel, so they run without root or namespaces."""
import gc
import json

import pytest

from astara_lab.appliance import contract_payloads
from astara_router import settings as settings_mod
from astara_router.api import create_app
from werkzeug.test import EnvironBuilder

VALID = contract_payloads("original-orchestrator")
INVALID = contract_payloads("invalid")


def put(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.put("/v1/system/config", data=data, content_type=content_type)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_bodies_get_4xx_json(client, name):
    response = put(client, INVALID[name])
    assert response.status_code in (400, 422)
    assert response.mimetype == "application/json"
    assert response.get_json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          ""])
def test_non_json_is_415(client, content_type):
    response = put(client, json.dumps(VALID["router-basic"]), content_type)
    assert response.status_code == 415 and response.mimetype == "application/json"


@pytest.mark.parametrize("data", [b'{"tenant_id": "abc",', b"\xff\xfe", b""])
def test_malformed_json_is_400(client, data):
    response = put(client, data)
    assert response.status_code == 400
    assert "JSON" in response.get_json()["message"]


def test_loadbalancer_on_a_router_only_appliance_is_400(client):
    response = put(client, VALID["loadbalancer-http"])
    assert response.status_code == 400 and "loadbalancer" in response.get_json()["message"]


def test_nothing_committed_yet(client):
    response = client.get("/v1/system/config")
    assert response.status_code == 200
    assert response.get_json() == {"configuration": {}, "generation": 0, "hash": None}
    assert client.get("/v1/firewall/rules").mimetype == "text/plain"


def test_banner_advertises_version_and_capabilities(client):
    """The original fields stay; the version and capabilities are what an orchestrator
    may rely on (orchestrator_lite/capabilities.py), and every advertised capability
    answers."""
    banner = client.get("/v1/").get_json()
    assert banner["service"] == "Astara appliance API service is active"
    assert banner["state"] and banner["generation"] == 0
    assert banner["enabled_services"] == ["router"]
    assert banner["api_version"] == "1.1"
    assert {"config-hash", "status"} <= set(banner["capabilities"])
    assert client.get("/v1/base/").get_json() == banner
    config = client.get("/v1/system/config")
    assert config.status_code == 200 and "hash" in config.get_json()
    assert client.get("/v1/status/").status_code == 200


def test_errors_leak_nothing(client):
    response = client.delete("/v1/system/config")
    assert response.status_code == 405 and response.mimetype == "application/json"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "wsgi" not in body.lower()


def test_token_is_required_when_configured(tmp_path):
    settings = settings_mod.load(state_dir=str(tmp_path), api_token="s3cret")
    client = create_app(settings).test_client()
    assert client.get("/v1/").status_code == 200
    assert client.get("/v1/system/config").status_code == 401
    ok = client.get("/v1/system/config", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200


def test_settings_file(tmp_path):
    ini = tmp_path / "astara.ini"
    ini.write_text("[DEFAULT]\nstate_dir = /tmp/x\nenabled_services = router, loadbalancer\n"
                   "[api]\nport = 5001\nbind = 198.18.0.1:5001\n[status]\nv4_target = "
                   "198.18.0.254\n")
    settings = settings_mod.load(str(ini), state_dir="/tmp/y")
    assert settings.state_dir == "/tmp/y"  # the command line wins
    assert settings.enabled_services == ("router", "loadbalancer")
    assert settings.port == 5001 and settings.bind == ("198.18.0.1:5001",)
    assert settings.status_v4_target == "198.18.0.254"
    with pytest.raises(ValueError):
        settings_mod.load(state_dir="/tmp/z", enabled_services="router,firewall")


def served(app, body):
    """The status of a PUT of ``body`` served by the WSGI app itself (the test client keeps
    request objects in cycles of its own, which a push would freeze)."""
    environ = EnvironBuilder(path="/v1/system/config", method="PUT", data=body,
                             content_type="application/json").get_environ()
    answer = []
    chunks = app(environ, lambda status, headers, exc_info=None: answer.append(status))
    b"".join(chunks)
    chunks.close()
    return int(answer[0].split()[0])


def test_refused_pushes_leave_no_garbage_frozen(client):
    """A push freezes what it leaves alive (engine.CollectorPause): what a refusal leaves
    (exceptions, tracebacks, Flask's request) must be freed by then, or collectable."""
    app = client.application
    bodies = [json.dumps(body) for body in INVALID.values()] + [b'{"tenant_id": "abc",']
    for body in bodies:  # first answers: imports and caches
        served(app, body)
    gc.unfreeze()
    gc.collect()
    for _ in range(3):
        assert {served(app, body) for body in bodies} <= {400, 422}
    gc.collect()  # the garbage the collector still sees
    gc.unfreeze()
    assert gc.collect() == 0  # none was frozen
