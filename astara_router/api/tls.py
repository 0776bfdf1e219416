"""``PUT /v1/system/tls``: the orchestrator renews the API's certificate (README, "Mutual
TLS"). Body ``{"certificate": PEM, "private_key": PEM}``; the files configured in
``[api] certfile/keyfile`` are replaced and, once the answer is sent, the gunicorn master
gets SIGHUP: its new worker serves the new certificate. Only over TLS (a plain-HTTP agent
has no certificate files to renew, and a key must not travel in clear). The answer never
echoes the key."""
from flask import Blueprint, current_app, request

from .. import tls


def tls_routes(settings):
    from . import decode_json, error_response, json_response
    routes = Blueprint("tls", __name__)

    @routes.put("/v1/system/tls")
    def put_tls():
        # Not the scheme alone: gunicorn takes "https" from X-Forwarded-Proto of a
        # loopback client, and a plain-HTTP agent has no files to write.
        if tls.mode(settings) == tls.PLAIN:
            return error_response(409, "Conflict", "the API's certificate is renewed only "
                                  "over TLS, and this API has none ([api] certfile is not "
                                  "set)")
        if request.scheme != "https":  # a key must not travel in clear
            return error_response(409, "Conflict", "the API's certificate is renewed only "
                                  "over TLS; this request came over plain HTTP (the "
                                  "operator socket)")
        try:
            body = decode_json(request.get_data(cache=False))
        except ValueError as exc:
            return error_response(400, "Bad Request", str(exc))
        try:
            tls.install(settings, body)
        except tls.CredentialError as exc:
            return error_response(422, "Unprocessable Entity", str(exc),
                                  [{"path": exc.field, "message": str(exc)}])
        reload = current_app.extensions["astara"].get("reload_server")
        response = json_response({"installed": True, "reloading": reload is not None})
        if reload is not None:
            response.call_on_close(reload)  # after the answer has left
        return response

    return routes
