"""Admin HTTP API (Flask, JSON, ``Authorization: Bearer <token>`` on every route but the
banner). Desired state::

  GET|POST            /v1/<kinds>                networks subnets ports routers floatingips
  GET|PUT|PATCH|DELETE /v1/<kinds>/<id>          loadbalancers listeners pools members
                                                 ipsec_site_connections (psk: never shown)
  GET                 /v1/appliance_ports[/<id>] (read-only: the orchestrator's own ports)
  POST                /v1/routers/<id>/interfaces        {subnet_id|port_id, ip_address?}
  DELETE              /v1/routers/<id>/interfaces/<port>
  PUT|DELETE          /v1/routers/<id>/gateway           {network_id, fixed_ips?}

Operations::

  GET  /v1/resources[/<id>]                     state, last error, instances, hashes
  POST /v1/resources/<id>/<rebuild|update|debug|manage|poll>   {reason?}
                                                rebuild: {image?, instance?} too
  POST /v1/upgrades                             {image, max_unavailable?, tenant_id?,
                                                 resources?, unit_timeout?}: a rolling
  GET  /v1/upgrades   DELETE /v1/upgrades       upgrade (rollout.py), its status, stop it
  POST /v1/tenants/<tenant>/<debug|manage>      POST /v1/global/<debug|manage>
  POST /v1/poll                                 GET  /v1/workers
  POST /v1/resources/<id>/debug-session         {actions?, follow?, timeout?}: the state
                                                machine in the foreground, JSON lines
  GET  /v1/placements                           PUT|DELETE /v1/placements/<tenant|resource>/<id>
                                                {driver?, image?}: per-tenant image/driver
  GET  /metrics                                 Prometheus (orchestrator_lite/metrics.py)

One Flask blueprint per route group (banner, operations, router helpers, collections);
the token check and the JSON error handlers are the app's, so they cover every route.
"""
import hmac
import json
import logging

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .store import StoreError
from .store.kinds import PLURALS, shown

LOG = logging.getLogger(__name__)
READ_ONLY = {"appliance_port"}
PUBLIC_PATHS = ("/v1", "/v1/")  # the banner: liveness without a token
MAX_BODY = 1 << 20  # admin objects are small (names and ids are at most 255 characters)


def create_app(orchestrator, token):
    if not token:
        raise ValueError("the admin API needs a token ([api] token)")
    app = Flask("orchestrator_lite")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    require_token(app, token)
    json_errors(app)
    app.register_blueprint(banner_routes(orchestrator))
    # Operations and router helpers before the generic /v1/<plural> collections.
    app.register_blueprint(operation_routes(orchestrator))
    app.register_blueprint(router_routes(orchestrator.store))
    app.register_blueprint(collection_routes(orchestrator.store))
    return app


def require_token(app, token):
    expected = f"Bearer {token}".encode()

    @app.before_request
    def authenticate():
        if request.path in PUBLIC_PATHS:
            return None
        supplied = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            return jsonify(error="Unauthorized", message="a valid bearer token is required"), 401
        return None


def json_errors(app):
    @app.errorhandler(StoreError)
    def store_error(exc):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return jsonify(error=exc.name, message=exc.description), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc):  # a bug or a database outage: log it, leak nothing
        LOG.exception("admin API: %s %s failed", request.method, request.path)
        return jsonify(error="Internal Server Error",
                       message="the orchestrator hit an internal error; see its log"), 500


def body():
    try:
        data = request.get_json(silent=True) if request.data else {}
    except RecursionError:
        raise StoreError("the body nests JSON too deeply") from None
    if data is None:
        raise StoreError("the body must be JSON (Content-Type: application/json)")
    if not isinstance(data, dict):
        raise StoreError("the body must be a JSON object")
    return data


def kind_of(plural):
    kind = PLURALS.get(plural)
    if kind is None:
        raise StoreError(f"unknown collection {plural!r}", status=404)
    return kind


def writable_kind_of(plural):
    kind = kind_of(plural)
    if kind in READ_ONLY:
        raise StoreError(f"{plural} are managed by the orchestrator", status=405)
    return kind


def banner_routes(orchestrator):
    routes = Blueprint("banner", __name__)

    @routes.get("/v1/")
    @routes.get("/v1")
    def banner():
        return jsonify(service="astara-orchestrator", driver=orchestrator.driver.name)

    @routes.get("/metrics")
    def metrics():
        """Prometheus text format (``orchestrator_lite/metrics.py``); token required."""
        return Response(orchestrator.metrics.render(),
                        content_type=orchestrator.metrics.content_type)

    return routes


def operation_routes(orchestrator):
    routes = Blueprint("operations", __name__)

    @routes.get("/v1/resources")
    def list_resources():
        return jsonify(resources=orchestrator.resources())

    @routes.get("/v1/resources/<resource_id>")
    def show_resource(resource_id):
        return jsonify(resource=orchestrator.resource(resource_id))

    @routes.post("/v1/resources/<resource_id>/debug-session")
    def debug_session(resource_id):
        data = body()
        actions = data.get("actions", ["poll"])
        if not isinstance(actions, list):
            raise StoreError("actions must be a list", "actions")
        timeout = data.get("timeout", 120)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not 0 < timeout <= 3600:
            raise StoreError("timeout must be a number of seconds in (0, 3600]", "timeout")
        session = orchestrator.debug_session(resource_id, actions,
                                             bool(data.get("follow")), float(timeout))
        lines = (json.dumps(line) + "\n" for line in session.stream())
        return Response(lines, mimetype="application/x-ndjson")

    @routes.get("/v1/placements")
    def placements():
        return jsonify(orchestrator.placements())

    @routes.put("/v1/placements/<scope>/<key>")
    def set_placement(scope, key):
        data = body()
        return jsonify(orchestrator.set_placement(scope, key, data.get("driver", ""),
                                                  data.get("image", "")))

    @routes.delete("/v1/placements/<scope>/<key>")
    def clear_placement(scope, key):
        return jsonify(orchestrator.clear_placement(scope, key))

    @routes.post("/v1/resources/<resource_id>/<command>")
    def resource_command(resource_id, command):
        data = body()
        return jsonify(orchestrator.command(resource_id, command, data.get("reason", ""),
                                            data.get("image"), data.get("instance")))

    @routes.post("/v1/upgrades")
    def start_upgrade():
        data = body()
        return jsonify(upgrade=orchestrator.start_upgrade(
            data.get("image", ""), data.get("max_unavailable", 1), data.get("tenant_id"),
            data.get("resources"), data.get("unit_timeout"))), 202

    @routes.get("/v1/upgrades")
    def upgrade_status():
        return jsonify(upgrade=orchestrator.upgrade_status())

    @routes.delete("/v1/upgrades")
    def stop_upgrade():
        return jsonify(upgrade=orchestrator.stop_upgrade())

    @routes.post("/v1/tenants/<tenant_id>/<command>")
    def tenant_command(tenant_id, command):
        return jsonify(orchestrator.tenant_command(tenant_id, command,
                                                   body().get("reason", "")))

    @routes.post("/v1/global/<command>")
    def global_command(command):
        return jsonify(orchestrator.global_command(command, body().get("reason", "")))

    @routes.post("/v1/poll")
    def poll():
        return jsonify(orchestrator.poll())

    @routes.get("/v1/workers")
    def workers():
        return jsonify(orchestrator.workers_debug())

    return routes


def router_routes(store):
    routes = Blueprint("routers", __name__)

    @routes.post("/v1/routers/<router_id>/interfaces")
    def add_interface(router_id):
        data = body()
        port = store.add_router_interface(router_id, subnet_id=data.get("subnet_id"),
                                          port_id=data.get("port_id"),
                                          ip_address=data.get("ip_address"),
                                          mac_address=data.get("mac_address"))
        return jsonify(port=port), 201

    @routes.delete("/v1/routers/<router_id>/interfaces/<port_id>")
    def remove_interface(router_id, port_id):
        port = store.snapshot().require("port", port_id)
        if port["device_id"] != router_id:
            raise StoreError(f"port {port_id} is not an interface of router {router_id}",
                             status=404)
        store.delete("port", port_id)
        return "", 204

    @routes.put("/v1/routers/<router_id>/gateway")
    def set_gateway(router_id):
        data = body()
        port = store.set_router_gateway(router_id, data.get("network_id", ""),
                                        data.get("fixed_ips"), data.get("mac_address"))
        return jsonify(port=port)

    @routes.delete("/v1/routers/<router_id>/gateway")
    def clear_gateway(router_id):
        store.clear_router_gateway(router_id)
        return "", 204

    return routes


def collection_routes(store):
    routes = Blueprint("collections", __name__)

    @routes.get("/v1/<plural>")
    def list_objects(plural):
        kind = kind_of(plural)
        return jsonify({plural: [shown(kind, o) for o in store.snapshot().all(kind)]})

    @routes.post("/v1/<plural>")
    def create_object(plural):
        kind = writable_kind_of(plural)
        return jsonify({kind: shown(kind, store.create(kind, body()))}), 201

    @routes.get("/v1/<plural>/<obj_id>")
    def show_object(plural, obj_id):
        kind = kind_of(plural)
        return jsonify({kind: shown(kind, store.snapshot().require(kind, obj_id))})

    @routes.route("/v1/<plural>/<obj_id>", methods=["PUT", "PATCH"])
    def update_object(plural, obj_id):
        kind = writable_kind_of(plural)
        return jsonify({kind: shown(kind, store.update(kind, obj_id, body()))})

    @routes.delete("/v1/<plural>/<obj_id>")
    def delete_object(plural, obj_id):
        kind = writable_kind_of(plural)
        store.delete(kind, obj_id)
        return "", 204

    return routes
