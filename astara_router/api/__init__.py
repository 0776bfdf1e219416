"""The appliance's REST API (Flask). Every response body is JSON (errors too), except
``GET /v1/firewall/rules``: the committed ruleset as text/plain, which the original client
uses as its liveness probe. One blueprint per route group (base, firewall, interfaces,
config, openapi); the token check and the JSON error handlers are the app's, so they cover
every route."""
import ipaddress
import json
import logging

import msgspec

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from .. import API_VERSION, BANNER, CAPABILITIES
from ..engine import MAX_CONFIRM_TIMEOUT, PAUSE_COLLECTOR, Engine
from ..errors import ApplyError
from ..fencing import (EPOCH_HEADER, ORCHESTRATOR_HEADER, EpochFence, StaleEpoch,
                       parse_epoch, push_sender)
from ..model import PayloadError
from ..naming import interface_view
from ..relay import (CONFIG_PATH, LOCAL_ADDRESS, MAX_BODY, RULES_PATH, bearer_check,
                     bytes_answer, config_answer, rules_answer)
from ..status import StatusProber
from .operator import operator_routes, request_id, request_ids

LOG = logging.getLogger(__name__)
PUBLIC_PATHS = ("/v1/", "/v1/base/")  # the banner: no token needed


def _address(text):
    """An IP address from the WSGI environment (peer or listener), or None."""
    try:
        return ipaddress.ip_address((text or "").split("%")[0].strip("[]"))
    except ValueError:
        return None


def local_address(environ):
    """The address the request arrived on, from the connection itself (gunicorn's socket;
    SERVER_NAME follows the client's Host header), or None."""
    if LOCAL_ADDRESS in environ:  # relayed by the worker (relay.py)
        return _address(environ[LOCAL_ADDRESS])
    sock = environ.get("gunicorn.socket")
    try:
        return _address(sock.getsockname()[0]) if sock is not None else None
    except (OSError, IndexError, TypeError):
        return None


def request_path():
    """The current request's management path: the peer's address and the address it
    arrived on (either None when unknown, as on the operator socket)."""
    return _address(request.remote_addr), local_address(request.environ)


def confirm_timeout_of(args):
    """``?confirm_timeout=N`` (whole seconds, 1..MAX_CONFIRM_TIMEOUT) or None; ValueError
    with the reason otherwise."""
    text = args.get("confirm_timeout")
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_CONFIRM_TIMEOUT:
        raise ValueError(f"confirm_timeout must be a whole number of seconds from 1 to "
                         f"{MAX_CONFIRM_TIMEOUT}, not {text[:40]!r}")
    return int(text)


def json_response(body, status=200, headers=None):
    return Response(json.dumps(body, sort_keys=True) + "\n", status=status,
                    mimetype="application/json", headers=headers)


def error_response(status, error, message, errors=None):
    body = {"error": error, "message": message}
    if errors is not None:
        body["errors"] = errors
    return json_response(body, status)


def decode_json(raw, decode=msgspec.json.decode):
    """A request body's JSON, or ValueError saying why not (not JSON, not UTF-8, a lone
    surrogate, or nested deeper than the decoder recurses)."""
    try:
        return decode(raw or b"")
    except msgspec.DecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("the body nests JSON too deeply") from None


def request_body():
    """The request's bytes. With a Content-Length within ``MAX_BODY``, read from the
    server's input in one call (gunicorn stops at the length): werkzeug's stream reads
    64 KiB at a time, each read copying what gunicorn holds beyond it again (a 250 KB
    body: 0.25 ms against 0.09 read at once). Else werkzeug's (chunked bodies, a 413)."""
    length = request.content_length
    if length is None or length > MAX_BODY:
        return request.get_data(cache=False)
    raw = request.environ["wsgi.input"].read(length)
    if len(raw) != length:
        raise ClientDisconnected()
    return raw


def create_app(settings, engine=None, prober=None):
    app = Flask("astara_router")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    engine = engine or Engine(settings)
    prober = prober or StatusProber(settings, engine)
    app.extensions["astara"] = {"engine": engine, "prober": prober, "settings": settings}
    if settings.api_token:
        require_token(app, settings.api_token)
    json_errors(app)
    request_ids(app)
    app.register_blueprint(base_routes(settings, engine, prober))
    app.register_blueprint(firewall_routes(engine))
    app.register_blueprint(interface_routes(engine))
    app.register_blueprint(config_routes(engine, EpochFence(settings.state_dir)))
    from .tls import tls_routes
    app.register_blueprint(tls_routes(settings))
    app.register_blueprint(operator_routes(engine))
    app.register_blueprint(openapi_routes(settings))
    app.wsgi_app = served_from_bytes(app.wsgi_app, engine, settings.api_token)
    return app


def openapi_routes(settings):
    routes = Blueprint("openapi", __name__)
    document = []  # built on first use, from the app's routes as registered

    @routes.get("/v1/openapi.json")
    def openapi():
        if not document:
            from .openapi import openapi_document  # on first use: msgspec.inspect and the
            # schema walk stay out of a worker nobody asks (0.2 MB)
            document.append(json_response(openapi_document(
                current_app, bool(settings.api_token), PUBLIC_PATHS)).get_data())
        return Response(document[0], mimetype="application/json")

    return routes


def require_token(app, token):
    authorized = bearer_check(token)

    @app.before_request
    def check_token():
        if request.path in PUBLIC_PATHS:
            return None
        if not authorized(request.headers.get("Authorization", "")):
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

    @routes.get("/metrics")
    def metrics():
        """Prometheus text format (``astara_router/metrics.py``)."""
        return Response(engine.metrics.render(engine.committed.generation),
                        content_type=engine.metrics.content_type)

    @routes.get("/v1/status/")
    def status():
        """``state``: booting, ready or degraded (``reasons`` says what is down now,
        ``last_error`` what failed last); ``repairs``: the supervisor's, by reason."""
        result = dict(prober.result)
        reasons = engine.unhealthy()
        state = "degraded" if reasons and engine.state == "ready" else engine.state
        result.update(state=state, generation=engine.committed.generation,
                      last_error=engine.last_error or ("; ".join(reasons) or None),
                      reasons=reasons, repairs=dict(engine.repairs),
                      awaiting_confirmation=engine.awaiting_confirmation)
        return json_response(result)

    return routes


def firewall_routes(engine):
    routes = Blueprint("firewall", __name__)

    @routes.get(RULES_PATH)
    def firewall_rules():  # the original client's liveness probe: answered from memory
        # (HEAD, and GETs the WSGI fast path hands over: served_from_bytes)
        status, headers, body = rules_answer(engine.committed)
        return Response(body, status=status, headers=headers)

    return routes


def interface_routes(engine):
    routes = Blueprint("interfaces", __name__)

    def live_interfaces():
        return [interface_view(generic, nic) for generic, nic in engine.interfaces().items()]

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


def refusal(exc, work="apply"):
    """The answer to a PayloadError or ApplyError: the caller's problem (below 500) or a
    full disk (507) as it is; the appliance's own failure without its detail (paths of the
    state directory, a daemon's or nft's output), which goes to the log."""
    if exc.status < 500 or exc.status == 507:
        return json_response(exc.to_dict(), exc.status)
    LOG.error("%s failed (%s): %s", work, exc.status, exc)
    return error_response(exc.status, "The configuration could not be applied; the "
                          "previous one is still in place",
                          "the appliance failed to apply it; see its log")


def apply_answer(run, sender=None):
    """Answer a push (or a rollback): ``run(source, local, confirm_timeout)`` applies, with
    the request's management path — where it came from and where it arrived — and its
    ``?confirm_timeout``. What the engine runs is logged once, by its activity
    (history.py); ``sender`` (fencing.push_sender) names a push the epoch fence refuses
    before that."""
    try:
        confirm_timeout = confirm_timeout_of(request.args)
    except ValueError as exc:
        return error_response(400, "Bad Request", str(exc),
                              [{"path": "confirm_timeout", "message": str(exc)}])
    try:
        outcome = run(*request_path(), confirm_timeout)
    except StaleEpoch as exc:
        LOG.warning("config push %s refused: %s", sender, exc)
        return json_response(exc.to_dict(), 409)
    except (PayloadError, ApplyError) as exc:
        return refusal(exc)
    answer = outcome.committed.answer(outcome.changes)  # the view, the count spliced in
    response = Response(answer, mimetype="application/json",
                        headers={"ETag": f'"{outcome.committed.hash}"',
                                 "Content-Length": str(sum(map(len, answer)))})
    # Announcements and the like start once the answer is sent (not competing with it).
    response.call_on_close(outcome.background.start)
    return response


def served_from_bytes(flask_app, engine, token):
    """WSGI in front of Flask: a plain GET of a path in ``relay.BYTES_ANSWERS``
    (authorized, no request id or a valid one) is answered from the committed bytes
    without Flask's request context, routing and hooks (~50 µs a request). Everything
    else, refusals included, is Flask's. The agent's worker answers these reads itself
    (``relay.Front``); this serves them where the app runs alone (tests, the operator's
    socket)."""
    authorized = bearer_check(token)

    def app(environ, start_response):
        answered = bytes_answer(environ, start_response, engine.committed, authorized)
        return answered if answered is not None else flask_app(environ, start_response)

    app.flask = flask_app
    return app


def config_routes(engine, fence):
    routes = Blueprint("config", __name__)

    @routes.get(CONFIG_PATH)
    def get_config():  # HEAD, and GETs the WSGI fast path hands over (served_from_bytes)
        status, headers, body = config_answer(engine.committed,
                                              request.headers.get("If-None-Match"))
        return Response(body, status=status, headers=headers)

    @routes.put("/v1/system/config")
    def put_config():
        if request.mimetype != "application/json":
            return error_response(415, "Unsupported Media Type",
                                  "the body must be sent as application/json, not "
                                  f"{request.content_type or 'no content type'!r}")
        orchestrator = request.headers.get(ORCHESTRATOR_HEADER, "")[:255]
        try:
            epoch = parse_epoch(request.headers.get(EPOCH_HEADER))
        except ValueError as exc:
            return error_response(400, "Bad Request", str(exc))
        # The decoded body is the push's too: no collection walks it while it is built
        # (engine.CollectorPause; the engine's own pause nests in this one).
        with PAUSE_COLLECTOR:
            raw = request_body()
            body = None  # the bytes of the last push again: JSON, decoded only if need be
            if not engine.pushed_before(raw):
                try:
                    body = decode_json(raw)
                except ValueError as exc:
                    return error_response(400, "Bad Request", str(exc))

            sender = push_sender(orchestrator, epoch)

            def run(source, local, confirm_timeout):
                with fence.admitted(epoch, orchestrator):
                    return engine.apply(body, raw, source=source, local=local,
                                        confirm_timeout=confirm_timeout,
                                        request_id=request_id(), detail=sender,
                                        defer_background=True)

            return apply_answer(run, sender)

    @routes.post("/v1/system/config/confirm")
    def confirm_config():
        """Keep the generation pushed with ?confirm_timeout (a no-op when none awaits)."""
        confirmed = engine.confirm()
        return json_response({"confirmed": confirmed,
                              "generation": engine.committed.generation})

    return routes
