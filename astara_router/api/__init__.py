"""The appliance's REST API (Flask). JSON everywhere, except the two plain-text endpoints
the original client reads as text (banner and firewall rules)."""
import hmac
import json
import logging

from flask import Flask, Response, request
from pyroute2 import IPRoute
from werkzeug.exceptions import HTTPException

from ..engine import Engine
from ..errors import ApplyError
from ..model import PayloadError
from ..naming import interface_view, list_nics
from ..status import StatusProber

LOG = logging.getLogger(__name__)
BANNER = "Astara appliance API service is active"
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

    @app.before_request
    def check_token():
        if not settings.api_token or request.path in ("/v1/", "/v1/base/"):
            return None
        supplied = request.headers.get("Authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {settings.api_token}".encode()):
            return error_response(401, "Unauthorized", "a valid bearer token is required")
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return error_response(exc.code, exc.name, exc.description)

    @app.errorhandler(Exception)
    def internal_error(exc):  # a real bug: log it, leak nothing
        LOG.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal Server Error",
                              "the appliance hit an internal error; see its log")

    # -- base ------------------------------------------------------------------------------
    @app.get("/v1/")
    @app.get("/v1/base/")
    def banner():
        return json_response({"service": BANNER, "state": engine.state,
                              "generation": engine.committed.generation,
                              "enabled_services": list(settings.enabled_services)})

    @app.get("/v1/status/")
    def status():
        result = dict(prober.result)
        result.update(state=engine.state, generation=engine.committed.generation,
                      last_error=engine.last_error)
        return json_response(result)

    # -- firewall ----------------------------------------------------------------------------
    @app.get("/v1/firewall/rules")
    def firewall_rules():  # the original client's liveness probe: answered from memory
        return Response(engine.committed.firewall_text, mimetype="text/plain")

    # -- system ------------------------------------------------------------------------------
    def live_interfaces():
        with IPRoute() as ipr:
            nics = list_nics(ipr)
        return [interface_view(generic, nic)
                for generic, nic in engine.names.assign(nics).items()]

    @app.get("/v1/system/interfaces")
    def interfaces():
        return json_response({"interfaces": live_interfaces()})

    @app.get("/v1/system/interface/<ifname>")
    def interface(ifname):
        for item in live_interfaces():
            if item["ifname"] == ifname:
                return json_response({"interface": item})
        return error_response(404, "Not Found", f"no interface named {ifname!r}")

    @app.get("/v1/system/config")
    def get_config():
        committed = engine.committed
        etag = f'"{committed.hash or "none"}"'
        if request.headers.get("If-None-Match") == etag:
            return Response(status=304, headers={"ETag": etag})
        return Response(committed.view_json, mimetype="application/json",
                        headers={"ETag": etag})

    @app.put("/v1/system/config")
    def put_config():
        if request.mimetype != "application/json":
            return error_response(415, "Unsupported Media Type",
                                  "the body must be sent as application/json, not "
                                  f"{request.content_type or 'no content type'!r}")
        raw = request.get_data(cache=False)
        try:
            body = json.loads(raw or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, "Bad Request", f"the body is not valid JSON: {exc}")
        try:
            outcome = engine.apply(body, raw)
        except (PayloadError, ApplyError) as exc:
            return json_response(exc.to_dict(), exc.status)
        # The generation's view, rendered once, with the change count spliced in front.
        answer = b'{"changes": %d, ' % outcome.changes + outcome.committed.view_json[1:]
        return Response(answer, mimetype="application/json",
                        headers={"ETag": f'"{outcome.committed.hash}"'})

    return app
