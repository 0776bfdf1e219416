"""The OpenAPI 3.1 description of the agent API (``GET /v1/openapi.json``).

Generated, not written: the paths come from the Flask app's own URL map and the bodies from
msgspec structs, the request body from the very :class:`~astara_router.model.schema.Payload`
that validates ``PUT /v1/system/config``. Each route says here what it answers
(``OPERATIONS``); a route missing from that table makes the document fail to build, so the
description cannot silently fall behind the routes (test/unit/test_openapi.py).
"""
import ast
import inspect
import logging
import re
import sys
from typing import Annotated, Any, Optional

import msgspec
import msgspec.inspect
from msgspec import Meta

from .. import __version__
from ..engine import MAX_CONFIRM_TIMEOUT
from ..fencing import EPOCH_HEADER, ORCHESTRATOR_HEADER
from ..model.schema import ID_RULE, Payload
from .operator import MAX_HISTORY

LOG = logging.getLogger(__name__)
OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{name}"
UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}  # Flask adds them to every route


# -- response bodies --------------------------------------------------------------------------
class Response(msgspec.Struct, forbid_unknown_fields=True):
    """Every answer's body: a field the agent serves but this module does not describe
    makes the answer fail the document (``additionalProperties: false``), which the fuzzer's
    response_schema_conformance and test_openapi.py check."""


class FieldProblem(Response):
    """One refused field: its JSON path in the body (empty: the body as a whole)."""

    path: Optional[str]
    message: str


class ErrorBody(Response, omit_defaults=True):
    """Every error answer: a title, the reason, and for refused bodies each field."""

    error: str
    message: str
    errors: list[FieldProblem] = []


class Banner(Response):
    """The service, its state and generation, and what this agent offers (``api_version``,
    ``capabilities``: an orchestrator uses only what an appliance advertises)."""

    service: str
    state: str
    generation: int
    enabled_services: list[str]
    api_version: str
    capabilities: list[str]


class StaleEpochError(ErrorBody, kw_only=True):
    """A push whose X-Astara-Epoch is older than one accepted: which one, and from whom."""

    accepted_epoch: int
    accepted_from: Optional[str]


class Status(Response):
    """``state``: booting, ready or degraded (``reasons``: what is down now)."""

    state: str
    generation: int
    last_error: Optional[str]
    reasons: list[str]
    repairs: dict[str, int]
    awaiting_confirmation: Optional[int]  # the generation that reverts unless confirmed
    v4: bool
    v6: bool
    targets: dict[str, str]
    checked_at: Optional[float]


class InterfaceView(Response):
    """A NIC under its generic name (the original client's shape)."""

    ifname: str
    lladdr: Optional[str]
    addresses: list[str]
    mtu: Optional[int]
    state: str
    description: str
    groups: list[Any]
    media: Optional[str]
    kernel_name: str


class Interfaces(Response):
    interfaces: list[InterfaceView]


class OneInterface(Response):
    interface: InterfaceView


class CommittedConfig(Response):
    """The committed generation: the payload as pushed (secrets redacted; ``{}`` before the
    first push), its generation and its hash."""

    configuration: dict[str, Any]
    generation: int
    hash: Optional[str]


class AppliedConfig(CommittedConfig):
    """The new committed generation and how many kernel/daemon changes made it."""

    changes: int


class Confirmation(Response):
    """``confirmed``: the generation kept, or null when none awaited confirmation."""

    confirmed: Optional[int]
    generation: int


class History(Response):
    """The last activities (pushes, rollbacks, boot, repairs, reverts), newest last."""

    history: list[dict[str, Any]]
    generation: int


class KeptGeneration(Response):
    generation: int
    hash: Optional[str]
    committed_at: Optional[float]
    committed: bool


class Generations(Response):
    """The generations a rollback can go to, newest first."""

    generation: int
    generations: list[KeptGeneration]


class ConfigDiff(Response):
    """A candidate against the running payload: a unified diff (secrets redacted) and the
    subsystems whose plan would change."""

    generation: int
    running_hash: Optional[str]
    candidate_hash: str
    identical: bool
    subsystems: list[str]
    diff: list[str]


class RollbackTarget(msgspec.Struct, omit_defaults=True):
    """The generation to go back to (default: the previous one)."""

    generation: Optional[Annotated[int, Meta(ge=1)]] = None


class TlsCredentials(msgspec.Struct):
    """A renewed certificate of the API and its key, both PEM."""

    certificate: str
    private_key: str


class TlsInstalled(Response):
    """The files are replaced; ``reloading``: the server reloads to serve them."""

    installed: bool
    reloading: bool


class OpenApiDocument(Response):
    """This document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]


SCHEMA_TYPES = (Payload, ErrorBody, StaleEpochError, Banner, Status, Interfaces, OneInterface,
                CommittedConfig, AppliedConfig, Confirmation, History, Generations,
                ConfigDiff, RollbackTarget, TlsCredentials, TlsInstalled, OpenApiDocument)


# -- what each route answers ------------------------------------------------------------------
def _json(type_name, description):
    return {"description": description, "content": {
        "application/json": {"schema": {"$ref": REF_TEMPLATE.format(name=type_name)}}}}


def _text(description):
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}}}


def _error(description):
    return _json("ErrorBody", description)


CONFIRM_TIMEOUT = {
    "name": "confirm_timeout", "in": "query", "required": False,
    "description": "commit-confirm: revert to the previous generation after this many "
                   "seconds unless POST /v1/system/config/confirm arrives",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_CONFIRM_TIMEOUT}}
PUSH_ERRORS = {
    "400": _error("not JSON, a bad confirm_timeout or X-Astara-Epoch, or a service this "
                  "appliance does not run"),
    "409": _json("StaleEpochError", "X-Astara-Epoch is older than one already accepted "
                                    "(another orchestrator owns this appliance)"),
    "413": _error("the body is larger than the agent accepts"),
    "422": _error("refused: a field's grammar or meaning (its JSON path named), the "
                  "management path, or what the kernel or a daemon cannot do; nothing "
                  "changed"),
    "500": _error("the appliance failed; the previous generation is in place"),
    "507": _error("the state directory is full; the previous generation is in place")}
IFNAME = {"name": "ifname", "in": "path", "required": True,
          "description": "a generic interface name (geN)", "schema": {"type": "string"}}

# (Flask rule, method) -> the operation (without the error answers every route shares).
OPERATIONS = {
    ("/v1/", "GET"): {
        "summary": "Banner: the service, its state and generation (no token needed)",
        "responses": {"200": _json("Banner", "the banner")}},
    ("/v1/base/", "GET"): {
        "summary": "The banner again, under the original client's path",
        "responses": {"200": _json("Banner", "the banner")}},
    ("/v1/openapi.json", "GET"): {
        "summary": "This description of the API",
        "responses": {"200": _json("OpenApiDocument", "an OpenAPI 3.1 document")}},
    ("/metrics", "GET"): {
        "summary": "Prometheus metrics (text exposition format)",
        "responses": {"200": _text("the metrics")}},
    ("/v1/status/", "GET"): {
        "summary": "Health: booting, ready or degraded, with the reasons",
        "responses": {"200": _json("Status", "the appliance's health")}},
    ("/v1/firewall/rules", "GET"): {
        "summary": "The committed nftables ruleset (the original client's liveness probe)",
        "responses": {"200": _text("the ruleset as nft reads it; empty before a push")}},
    ("/v1/system/interfaces", "GET"): {
        "summary": "The NICs under their generic names",
        "responses": {"200": _json("Interfaces", "every NIC")}},
    ("/v1/system/interface/<ifname>", "GET"): {
        "summary": "One NIC by its generic name",
        "parameters": [IFNAME],
        "responses": {"200": _json("OneInterface", "the NIC"),
                      "404": _error("no NIC of that name")}},
    ("/v1/system/config", "GET"): {
        "summary": "The committed configuration and its generation",
        "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                        "description": "the ETag of a configuration already known",
                        "schema": {"type": "string"}}],
        "responses": {"200": _json("CommittedConfig", "the committed generation"),
                      "304": {"description": "If-None-Match names the committed hash"}}},
    ("/v1/system/config", "PUT"): {
        "summary": "Apply a whole configuration as one transaction",
        "parameters": [CONFIRM_TIMEOUT, {
            "name": EPOCH_HEADER, "in": "header", "required": False,
            "description": "the pushing orchestrator's epoch; older ones are refused",
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}, {
            "name": ORCHESTRATOR_HEADER, "in": "header", "required": False,
            "description": "the pushing orchestrator's name, for the log",
            "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF_TEMPLATE.format(name="Payload")}}}},
        "responses": {"200": _json("AppliedConfig", "applied and committed"),
                      "415": _error("not sent as application/json"), **PUSH_ERRORS}},
    ("/v1/system/config/rollback", "POST"): {
        "summary": "Apply a kept generation again, as a new generation (answered like a "
                   "push)",
        "parameters": [CONFIRM_TIMEOUT],
        "requestBody": {"required": False, "content": {"application/json": {
            "schema": {"$ref": REF_TEMPLATE.format(name="RollbackTarget")}}}},
        "responses": {"200": _json("AppliedConfig", "applied and committed"),
                      "404": _error("that generation is not kept"), **PUSH_ERRORS}},
    ("/v1/system/config/diff", "POST"): {
        "summary": "A candidate payload against the running one, validated but not applied",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF_TEMPLATE.format(name="Payload")}}}},
        "responses": {"200": _json("ConfigDiff", "the difference"),
                      "400": _error("not a JSON object"),
                      "413": _error("the body is larger than the agent accepts"),
                      "422": _error("the candidate is refused as a push would be")}},
    ("/v1/system/history", "GET"): {
        "summary": "The last activities with their durations, results and errors",
        "parameters": [{"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1,
                                   "maximum": MAX_HISTORY}}],
        "responses": {"200": _json("History", "the history"),
                      "400": _error("a bad limit")}},
    ("/v1/system/generations", "GET"): {
        "summary": "The generations kept for a rollback",
        "responses": {"200": _json("Generations", "the kept generations")}},
    ("/v1/system/config/confirm", "POST"): {
        "summary": "Keep the generation pushed with confirm_timeout (no-op when none "
                   "awaits)",
        "responses": {"200": _json("Confirmation", "which generation was confirmed")}},
    ("/v1/system/tls", "PUT"): {
        "summary": "Renew the API's certificate (only over TLS; the key is never echoed)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": REF_TEMPLATE.format(name="TlsCredentials")}}}},
        "responses": {"200": _json("TlsInstalled", "installed"),
                      "400": _error("the body is not JSON"),
                      "409": _error("not over TLS (a plain-HTTP API, the operator "
                                    "socket): a certificate is renewed only over TLS"),
                      "422": _error("not a certificate and key that belong together")}},
}

SHARED_ERRORS = {"405": "the method is not allowed on this path",
                 "400": "a bad X-Request-Id header"}
TOKEN_ERROR = "401"
# gunicorn answers it itself, before the app (its limit_request_line, 4094 bytes), in HTML.
URI_TOO_LONG = {"description": "the request line (path and query) is longer than the "
                               "server reads",
                "content": {"text/html": {"schema": {"type": "string"}}}}


def openapi_path(rule):
    """Flask's ``/a/<name>`` as OpenAPI's ``/a/{name}`` (converters dropped)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def documented_routes(app):
    """``{(rule, method)}`` of every route the app serves, less HEAD/OPTIONS and Flask's
    static files."""
    return {(rule.rule, method) for rule in app.url_map.iter_rules()
            if rule.endpoint != "static"
            for method in rule.methods - UNDOCUMENTED_METHODS}


def _schema_classes(types):
    """Every class the schemas of ``types`` are made from (structs, enums...)."""
    found, seen, todo = set(), set(), list(msgspec.inspect.multi_type_info(types))
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, (list, tuple)):
            todo.extend(node)
        elif isinstance(node, msgspec.Struct):  # msgspec.inspect's Type and Field nodes
            todo.extend(getattr(node, name) for name in node.__struct_fields__)
        elif isinstance(node, type):
            found.add(node)
    return found


def with_docstrings(types):
    """The agent runs without docstrings (-OO: cli/api.py), and msgspec describes a schema
    with its class's docstring: under -OO, give the classes of ``types`` their docstrings
    back from their modules' sources (as the compiler would have kept them), so the
    document is the same as without -OO (test_openapi.py compares the two)."""
    if sys.flags.optimize < 2:
        return
    modules = {sys.modules[cls.__module__] for cls in _schema_classes(types)}
    for module in modules - {sys.modules["builtins"]}:
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):  # no source installed: served without descriptions
            LOG.warning("no source for %s: its schemas are served without descriptions",
                        module.__name__)
            continue
        for node in ast.walk(ast.parse(source)):
            cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if (isinstance(cls, type) and cls.__module__ == module.__name__
                    and cls.__doc__ is None):
                cls.__doc__ = ast.get_docstring(node, clean=False)


def openapi_document(app, token_required=False, public_paths=()):
    """The OpenAPI 3.1 document of ``app``; KeyError naming a route ``OPERATIONS`` lacks."""
    with_docstrings(SCHEMA_TYPES)
    _, schemas = msgspec.json.schema_components(SCHEMA_TYPES, ref_template=REF_TEMPLATE)
    paths = {}
    for rule, method in sorted(documented_routes(app)):
        try:
            operation = dict(OPERATIONS[rule, method])
        except KeyError:
            raise KeyError(f"{method} {rule} is not described in OPERATIONS") from None
        responses = dict(operation["responses"])
        for code, text in SHARED_ERRORS.items():
            responses.setdefault(code, _error(text))
        responses.setdefault("414", URI_TOO_LONG)
        if token_required and rule not in public_paths:
            responses[TOKEN_ERROR] = _error("no valid bearer token")
            operation["security"] = [{"bearer": []}]
        operation["responses"] = dict(sorted(responses.items()))
        operation["operationId"] = f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', rule)}"
        paths.setdefault(openapi_path(rule), {})[method.lower()] = operation
    components = {"schemas": schemas}
    if token_required:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Astara appliance agent", "version": __version__,
                 "description": "The agent of an Astara router/load-balancer appliance. "
                                "Ids are " + ID_RULE + "."},
        "paths": paths, "components": components}
