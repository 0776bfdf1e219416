"""The operator's socket: the same API, plain HTTP, on a Unix socket in the state directory
(``<state_dir>/run/api.sock``), for ``astara-router-ctl`` on the appliance.

The TCP listener belongs to the management network and, under mutual TLS, admits only the
orchestrator's client certificate, which an operator who ssh'd in does not hold. The socket
is reachable only through the state directory (0700, the agent's user: astara-agent in the
image, root elsewhere) and is itself 0600: who can open it can already read the
configuration and its secrets in the state directory, so the file-system permission is its
authentication (the API token, when configured, still applies). Requests on it have no peer address: the management-path check compares with the
committed configuration only.

Served by a thread of the worker (werkzeug's threaded server on ``unix://``): a worker that
replaces this one (a reload after a certificate renewal) binds the path anew.
"""
import logging
import os
import threading

from werkzeug.serving import make_server

from ..apply.daemon import check_socket_path
from ..errors import ApplyError

LOG = logging.getLogger(__name__)


def serve(app, settings):
    """Serve ``app`` on the operator's socket in a daemon thread; returns the server, or
    None when the socket cannot be made (the API itself must not fail for it). Call it
    before other threads that create files start: it sets the process's umask while it
    binds."""
    path = settings.operator_socket
    try:
        check_socket_path(path, "the operator socket's")  # the daemons' sockets' rule
    except ApplyError as exc:
        LOG.warning("no operator socket: %s", exc)
        return None
    umask = os.umask(0o177)  # 0600 from the start, not after a chmod
    try:
        server = make_server(f"unix://{path}", 0, app, threaded=True)
    except OSError as exc:
        LOG.warning("no operator socket at %s: %s", path, exc)
        return None
    finally:
        os.umask(umask)
    threading.Thread(target=server.serve_forever, name="operator-socket",
                     daemon=True).start()
    LOG.info("operator API on %s", path)
    return server
