"""The appliance's REST API (Flask). Every response body is JSON (errors too), except
``GET /v1/firewall/rules``: the committed ruleset as text/plain, which the original client
uses as its liveness probe. One blueprint per route group (base, firewall, interfaces,
config); the token check and the JSON error handlers are the app's, so they cover every
route."""
import hmac
import json
import logging

import msgspec

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import HTTPException

from ..engine import Engine
from ..errors import ApplyError
from ..model import PayloadError
from ..naming import interface_view, list_nics
from ..status import StatusProber

LOG = logging.getLogger(__name__)
BANNER = "Astara appliance API service is active"
# The banner advertises what this agent offers; an orchestrator uses only what an appliance
# advertises, so appliances of older images keep working during a fleet upgrade. The
# original appliance's API (liveness on /v1/firewall/rules, GET /v1/system/interfaces,
# PUT /v1/system/config) is version 1.0 and advertises nothing.
API_VERSION = "1.1"
CAPABILITIES = (
    "config-hash",  # GET /v1/system/config: generation + hash, ETag, 304 on If-None-Match
    "status",  # GET /v1/status/: reachability of the probe targets
)
PUBLIC_PATHS = ("/v1/", "/v1/base/")  # the banner: no token needed
MAX_BODY = 16 * 1024 * 1024


def json_response(body, status=200, headers=None):
    return Response(json.dumps(body, sort_keys=True) + "\n", status=status,
                    mimetype="application/json", headers=headers)


def error_response(status, error, message, errors=None):
    body = {"error": error, "message": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status)


def create_app(settings, engine=None, prober=None):
    app = Flask("astara_router")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    engine = engine or Engine(settings)
    prober = prober or StatusProber(settings, engine)
    app.extensions["astara"] = {"engine": engine, "prober": prober, "settings": settings}
    if settings.api_token:
        require_token(app, settings.api_token)
    json_errors(app)
    app.register_blueprint(base_routes(settings, engine, prober))
    app.register_blueprint(firewall_routes(engine))
    app.register_blueprint(interface_routes(engine))
    app.register_blueprint(config_routes(engine))
    return app


def require_token(app, token):
    expected = f"Bearer {token}".encode()

    @app.before_request
    def check_token():
        if request.path in PUBLIC_PATHS:
            return None
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), expected):
            return error_response(401, "Unauthorized", "a valid bearer token is required")
        return None


def json_errors(app):
    @app.errorhandler(HTTPException)
    def http_error(exc):
        return error_response(exc.code, exc.name, exc.description)

    @app.errorhandler(Exception)
    def internal_error(exc):  # a real bug: log it, leak nothing
        LOG.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error",
                              "the appliance hit an internal error; see its log")


def base_routes(settings, engine, prober):
    routes = Blueprint("base", __name__)

    @routes.get("/v1/")
    @routes.get("/v1/base/")
    def banner():
        return json_response({"service": BANNER, "state": engine.state,
                              "generation": engine.committed.generation,
                              "enabled_services": list(settings.enabled_services),
                              "api_version": API_VERSION,
                              "capabilities": list(CAPABILITIES)})

    @routes.get("/v1/status/")
    def status():
        result = dict(prober.result)
        result.update(state=engine.state, generation=engine.committed.generation,
                      last_error=engine.last_error)
        return json_response(result)

    return routes


def firewall_routes(engine):
    routes = Blueprint("firewall", __name__)

    @routes.get("/v1/firewall/rules")
    def firewall_rules():  # the original client's liveness probe: answered from memory
        return Response(engine.committed.firewall_text, mimetype="text/plain")

    return routes


def interface_routes(engine):
    routes = Blueprint("interfaces", __name__)

    def live_interfaces():
        nics = list_nics()
        return [interface_view(generic, nic)
                for generic, nic in engine.names.assign(nics).items()]

    @routes.get("/v1/system/interfaces")
    def interfaces():
        return json_response({"interfaces": live_interfaces()})

    @routes.get("/v1/system/interface/<ifname>")
    def interface(ifname):
        for item in live_interfaces():
            if item["ifname"] == ifname:
                return json_response({"interface": item})
        return error_response(404, "Not Found", f"no interface named {ifname!r}")

    return routes


def config_routes(engine):
    routes = Blueprint("config", __name__)

    @routes.get("/v1/system/config")
    def get_config():
        committed = engine.committed
        etag = f'"{committed.hash or "none"}"'
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304, headers={"ETag": etag})
        return Response(committed.view_json, mimetype="application/json",
                        headers={"ETag": etag})

    @routes.put("/v1/system/config")
    def put_config():
        if request.mimetype != "application/json":
            return error_response(415, "Unsupported Media Type",
                                  "the body must be sent as application/json, not "
                                  f"{request.content_type or 'no content type'!r}")
        raw = request.get_data(cache=False)
        try:
            body = msgspec.json.decode(raw or b"")
        except msgspec.DecodeError as exc:
            return error_response(400, "Bad Request", f"the body is not valid JSON: {exc}")
        try:
            outcome = engine.apply(body, raw)
        except (PayloadError, ApplyError) as exc:
            return json_response(exc.to_dict(), exc.status)
        # The generation's view, rendered once, with the change count spliced in front.
        answer = b'{"changes": %d, ' % outcome.changes + outcome.committed.view_json[1:]
        return Response(answer, mimetype="application/json",
                        headers={"ETag": f'"{outcome.committed.hash}"'})

    return routes
