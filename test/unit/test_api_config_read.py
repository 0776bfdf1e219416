"""GET /v1/system/config and GET /v1/firewall/rules are answered from the committed
generation's bytes by a WSGI path in front of Flask (api.served_from_bytes); whatever it does
not serve itself (a refused token, a malformed request id, HEAD) is Flask's. Both give the
same answer."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
from werkzeug.test import Client

from astara_router import settings as settings_mod
from astara_router.api import create_app
from astara_router.engine import Committed
from astara_router.logs import REQUEST_ID

BODY = b'{"hostname": "r1", "networks": []}'
RULESET = "table inet astara {\n}\n"


def app_with(tmp_path, **settings):
    app = create_app(settings_mod.load(state_dir=str(tmp_path), enabled_services="router",
                                       **settings))
    engine = app.extensions["astara"]["engine"]
    engine.committed = replace(Committed(), generation=7, raw=BODY, hash="abc123",
                               plans={"firewall": SimpleNamespace(text=lambda: RULESET)})
    return app, engine


def answer(wsgi, path="/v1/system/config", **request):
    response = Client(wsgi).get(path, **request)
    headers = dict(response.headers)
    return response.status_code, headers.pop("X-Request-Id", None), headers, response.data


@pytest.mark.parametrize("headers", [{}, {"If-None-Match": '"abc123"'},
                                     {"If-None-Match": '"other"'}])
def test_the_fast_path_answers_as_flask_does(tmp_path, headers):
    app, engine = app_with(tmp_path)
    fast = answer(app, headers=headers)
    flask = answer(app.wsgi_app.flask, headers=headers)
    assert fast[0] == flask[0] and fast[3] == flask[3]
    assert fast[2]["ETag"] == flask[2]["ETag"] == '"abc123"'
    if fast[0] == 200:
        assert fast[2] == flask[2]
        assert fast[3] == engine.committed.view_json
        assert b'"generation": 7' in fast[3] and BODY in fast[3]
    else:
        assert fast[0] == 304 and fast[3] == b""
    assert REQUEST_ID.fullmatch(fast[1]) and REQUEST_ID.fullmatch(flask[1])


@pytest.mark.parametrize("headers", [{}, {"X-Request-Id": "req-7"}])
def test_the_ruleset_is_answered_as_flask_does(tmp_path, headers):
    app, _ = app_with(tmp_path)
    fast = answer(app, "/v1/firewall/rules", headers=headers)
    flask = answer(app.wsgi_app.flask, "/v1/firewall/rules", headers=headers)
    assert (fast[0], fast[2], fast[3]) == (flask[0], flask[2], flask[3])
    assert fast[1] == flask[1] == "req-7" if headers else REQUEST_ID.fullmatch(fast[1])
    assert fast[0] == 200 and fast[3] == RULESET.encode()
    assert fast[2]["Content-Type"].startswith("text/plain")


def test_a_new_generation_is_served_at_once(tmp_path):
    app, engine = app_with(tmp_path)
    assert answer(app)[2]["ETag"] == '"abc123"'
    engine.committed = replace(Committed(), generation=8, raw=b'{"hostname": "r2"}',
                               hash="def456")
    status, _, headers, body = answer(app, headers={"If-None-Match": '"abc123"'})
    assert (status, headers["ETag"]) == (200, '"def456"')
    assert b'"r2"' in body and b'"generation": 8' in body


def test_the_callers_request_id_is_echoed_and_a_malformed_one_refused(tmp_path):
    app, _ = app_with(tmp_path)
    assert answer(app, headers={"X-Request-Id": "req-orchestrator-42"})[1] == \
        "req-orchestrator-42"
    status, _, _, body = answer(app, headers={"X-Request-Id": "bad id with spaces"})
    assert status == 400 and b"X-Request-Id" in body


@pytest.mark.parametrize("path", ["/v1/system/config", "/v1/firewall/rules"])
def test_the_token_guards_the_fast_path(tmp_path, path):
    app, _ = app_with(tmp_path, api_token="s3cret")
    status, _, _, body = answer(app, path)
    assert status == 401 and b"bearer token" in body
    assert answer(app, path, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert answer(app, path, headers={"Authorization": "Bearer s3cret"})[0] == 200


def test_head_is_answered_by_flask(tmp_path):
    app, _ = app_with(tmp_path)
    response = Client(app).head("/v1/system/config")
    assert response.status_code == 200 and response.headers["ETag"] == '"abc123"'
    assert response.data == b""
