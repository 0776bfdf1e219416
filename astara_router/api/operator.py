"""The operator's routes (``astara-router-ctl``) and request ids.

* ``GET  /v1/system/history[?limit=N]``: the last activities (pushes, rollbacks, boot,
  repairs, reverts) with durations, result and error (``history.py``).
* ``GET  /v1/system/generations``: the generations a rollback can go to, newest first.
* ``POST /v1/system/config/diff``: a candidate payload against the running one, without
  applying it: parsed, checked for the management path and planned like a push without
  ``confirm_timeout`` (the same 4xx, a renderer's refusal included; only the daemons'
  checkers do not run), then the difference of the two payloads (secrets redacted on both
  sides) and the subsystems whose plan would change.
* ``POST /v1/system/config/rollback[?confirm_timeout=N]`` ``{"generation": N}`` (default:
  the previous one): that generation's configuration through the whole transaction, as a
  new generation; answered like a push.

Request ids: ``X-Request-Id`` when the caller sends one (the orchestrator does), else a new
``req-<uuid>``; echoed in the response and bound to the log lines of the work it causes.
"""
import difflib
import json

from flask import Blueprint, g, request

from ..engine import redact
from ..errors import ApplyError
from ..logs import REQUEST_ID_HEADER, new_request_id, valid_request_id
from ..model import PayloadError

MAX_HISTORY = 1000


def request_ids(app):
    from . import error_response  # the package's (it imports this module)

    @app.before_request
    def take_request_id():
        supplied = request.headers.get(REQUEST_ID_HEADER)
        if supplied is not None and not valid_request_id(supplied):
            message = (f"{REQUEST_ID_HEADER} must be 1-128 letters, digits and . _ : - "
                       f"(starting with a letter or digit)")
            return error_response(400, "Bad Request", message,
                                  [{"path": REQUEST_ID_HEADER, "message": message}])
        g.request_id = supplied or new_request_id()
        return None

    @app.after_request
    def echo_request_id(response):
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response


def request_id():
    return g.get("request_id")


def pretty(payload):
    return json.dumps(redact(payload), indent=2, sort_keys=True).splitlines()


def payload_diff(running, candidate, running_name, candidate_name):
    """Unified diff lines of two payloads (pretty, sorted keys, secrets redacted)."""
    return list(difflib.unified_diff(pretty(running or {}), pretty(candidate),
                                     running_name, candidate_name, lineterm=""))


def operator_routes(engine):
    from . import (apply_answer, decode_json, error_response, json_response,  # as above
                   refusal, request_path)
    routes = Blueprint("operator", __name__)

    @routes.get("/v1/system/history")
    def history():
        text = request.args.get("limit", "")
        if text and (not text.isdigit() or not 1 <= int(text) <= MAX_HISTORY):
            message = f"limit must be a whole number from 1 to {MAX_HISTORY}"
            return error_response(400, "Bad Request", message,
                                  [{"path": "limit", "message": message}])
        return json_response({"history": engine.history.entries(int(text) if text else None),
                              "generation": engine.committed.generation})

    @routes.get("/v1/system/generations")
    def generations():
        committed = engine.committed.generation
        return json_response({"generation": committed, "generations": [
            {"generation": stored.number, "hash": stored.hash,
             "committed_at": stored.committed_at, "committed": stored.number == committed}
            for stored in engine.store.generations()]})

    @routes.post("/v1/system/config/diff")
    def diff():
        try:  # the same size limit and decoder as a push
            body = decode_json(request.get_data(cache=False))
        except ValueError as exc:
            return error_response(400, "Bad Request", str(exc))
        if not isinstance(body, dict):
            return error_response(400, "Bad Request", "the body must be a JSON object (the "
                                                      "candidate payload)")
        try:
            preview = engine.preview(body, *request_path())
        except (PayloadError, ApplyError) as exc:  # a renderer's refusal is an ApplyError
            return refusal(exc, "diff")
        committed = engine.committed
        return json_response({
            "generation": committed.generation, "running_hash": committed.hash,
            "candidate_hash": preview["hash"], "identical": preview["identical"],
            "subsystems": preview["subsystems"],
            "diff": payload_diff(committed.payload, body, f"generation {committed.generation}",
                                 "candidate")})

    @routes.post("/v1/system/config/rollback")
    def rollback():
        try:
            body = decode_json(request.get_data(cache=False) or b"{}")
        except ValueError as exc:
            return error_response(400, "Bad Request", str(exc))
        number = body.get("generation") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (number is not None and (
                isinstance(number, bool) or not isinstance(number, int) or number < 1)):
            message = 'the body must be {} or {"generation": <a generation number>}'
            return error_response(400, "Bad Request", message,
                                  [{"path": "generation", "message": message}])
        return apply_answer(lambda source, local, confirm_timeout: engine.rollback(
            number, source=source, local=local, confirm_timeout=confirm_timeout,
            request_id=request_id()))

    return routes

