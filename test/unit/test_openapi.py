"""GET /v1/openapi.json: a valid OpenAPI 3.1 document listing every route the app serves,
with the request body of PUT /v1/system/config being the payload schema that validates."""
import json
import os
import pathlib
import subprocess
import sys

import jsonschema
import msgspec
import pytest
import schemathesis

from astara_lab.appliance import contract_payloads
from astara_router import settings as settings_mod
from astara_router.api import create_app
from astara_router.api.openapi import OPERATIONS, documented_routes, openapi_path
from astara_router.model.schema import Payload


def validate(document):
    """Against the OpenAPI 3.1 meta-schema (schemathesis' own check, jsonschema-rs):
    raises ValidationError naming what is wrong."""
    schemathesis.openapi.from_dict(document).validate()


def app_for(tmp_path, **options):
    return create_app(settings_mod.load(state_dir=str(tmp_path), enabled_services="router",
                                        **options))


@pytest.fixture
def app(tmp_path):
    return app_for(tmp_path)


def document_of(app, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = app.test_client().get("/v1/openapi.json", headers=headers)
    assert response.status_code == 200, response.text
    assert response.mimetype == "application/json"
    return response.get_json()


def test_the_document_is_valid_openapi(app):
    document = document_of(app)
    assert document["openapi"].startswith("3.1")
    validate(document)
    broken = document_of(app)
    del broken["paths"]["/v1/"]["get"]["responses"]["200"]["description"]
    with pytest.raises(Exception, match="description"):  # the check can fail
        validate(broken)


def test_every_registered_route_and_method_is_listed(app):
    document = document_of(app)
    served = {(openapi_path(rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    listed = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == listed
    assert ("/v1/system/interface/{ifname}", "get") in listed
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "200" in operation["responses"], f"{method} {path}"


def test_a_route_nobody_described_fails_the_document(app):
    @app.get("/v1/undocumented")
    def undocumented():
        return "", 204

    assert ("/v1/undocumented", "GET") in documented_routes(app)
    response = app.test_client().get("/v1/openapi.json")
    assert response.status_code == 500  # the table must grow with the routes


def test_every_described_operation_is_served(app):
    assert set(OPERATIONS) == documented_routes(app)


def test_every_operation_documents_the_414_of_a_request_line_too_long(app):
    """gunicorn refuses a request line over its limit before the app answers (the live
    agent's 414 is test_fuzz_agent's); every operation documents that 414 (schemathesis
    drew such a query string, and an undocumented status failed the run)."""
    document = document_of(app)
    assert all("414" in operation["responses"] for operations in document["paths"].values()
               for operation in operations.values())


def test_put_body_is_the_validating_schema(app):
    document = document_of(app)
    put = document["paths"]["/v1/system/config"]["put"]
    ref = put["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    payload_schema = document["components"]["schemas"][name]
    _, expected = msgspec.json.schema_components([Payload],
                                                 ref_template="#/components/schemas/{name}")
    assert payload_schema == expected["Payload"]
    assert {"400", "415", "422", "500", "507"} <= set(put["responses"])
    assert put["parameters"][0]["name"] == "confirm_timeout"
    # The document's schema accepts what the agent accepts and refuses what it refuses.
    resolver_root = {"components": document["components"], **payload_schema}
    validator = jsonschema.Draft202012Validator(resolver_root)
    for name, body in contract_payloads("original-orchestrator").items():
        assert not list(validator.iter_errors(body)), name
    assert list(validator.iter_errors({"hostname": "x"}))  # tenant_id missing


def test_token_protected_routes_say_so(tmp_path):
    app = app_for(tmp_path, api_token="s3cret")
    assert app.test_client().get("/v1/openapi.json").status_code == 401
    document = document_of(app, token="s3cret")
    validate(document)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    config = document["paths"]["/v1/system/config"]["get"]
    assert config["security"] == [{"bearer": []}] and "401" in config["responses"]
    banner = document["paths"]["/v1/"]["get"]
    assert "security" not in banner and "401" not in banner["responses"]


def conforms(document, path, method, response):
    """The validation errors of ``response`` against what ``document`` says ``method path``
    answers with its status (a served field the document lacks is one)."""
    answer = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({"components": document["components"],
                                                 **schema})
    return [error.message for error in validator.iter_errors(response.get_json())]


def test_the_answers_are_what_the_document_describes(app):
    """Every body a field the document lacks fails (additionalProperties: false): the
    banner's api_version and capabilities, the status, the committed configuration, the
    history, the generations, a confirmation, a refused push and a stale epoch's 409."""
    document = document_of(app)
    client = app.test_client()
    invalid = contract_payloads("invalid")
    checked = {("/v1/", "get"): client.get("/v1/"),
               ("/v1/base/", "get"): client.get("/v1/base/"),
               ("/v1/status/", "get"): client.get("/v1/status/"),
               ("/v1/system/config", "get"): client.get("/v1/system/config")}
    pushed = [client.put("/v1/system/config", data=json.dumps(invalid[name]),
                         content_type="application/json", headers={"X-Astara-Epoch": epoch})
              for name, epoch in ((sorted(invalid)[0], "5"), (sorted(invalid)[0], "4"))]
    assert [response.status_code for response in pushed] == [422, 409]
    checked.update({
        ("/v1/system/config", "put"): pushed[0],
        ("/v1/system/config", "put", 409): pushed[1],
        ("/v1/system/history", "get"): client.get("/v1/system/history"),
        ("/v1/system/generations", "get"): client.get("/v1/system/generations"),
        ("/v1/system/config/confirm", "post"): client.post("/v1/system/config/confirm"),
        ("/v1/openapi.json", "get"): client.get("/v1/openapi.json")})
    for (path, method, *_), response in checked.items():
        assert conforms(document, path, method, response) == [], (path, method)
    banner = client.get("/v1/")
    assert {"api_version", "capabilities"} <= set(banner.get_json())
    served_more = banner.get_json() | {"undescribed": 1}
    banner.set_data(json.dumps(served_more))
    assert conforms(document, "/v1/", "get", banner)  # the check can fail


def test_the_document_is_the_same_without_docstrings(tmp_path):
    """The agent runs under -OO (cli/api.py: no docstrings in memory), where msgspec would
    describe no schema: the document it serves there is the one served here."""
    code = ("import json, sys\n"
            "from astara_router import settings\n"
            "from astara_router.api import create_app\n"
            "app = create_app(settings.load(state_dir=sys.argv[1], enabled_services='router'))\n"
            "document = app.test_client().get('/v1/openapi.json').get_json()\n"
            "print(sys.flags.optimize, json.dumps(document, sort_keys=True))\n")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-OO", "-c", code, str(tmp_path / "state")],
                         env=env, capture_output=True, text=True, check=True).stdout
    optimize, served = out.split(" ", 1)
    assert optimize == "2"
    assert json.loads(served) == document_of(app_for(tmp_path))
