"""``astara-orchestrator --config FILE [--netns NAME]``: run the orchestrator.
``astara-orchestrator db upgrade|current --config FILE``: the store's schema.

Starts the store, the workers, the health monitor, the coordination (``[coordination]
backend_url``, if set) and the admin API (``[api] listen``, ``port``; token required),
then runs until SIGTERM/SIGINT. Stopping leaves the appliances running; the next start
(or, in a cluster, another member) adopts them.

The admin API is served by cheroot, a production WSGI server embedded in this process: the
operator surface (resource state, commands, workers) is this process's own, so it stays in
it; a thread pool of ``[api] threads``.

Schema: on SQLite the orchestrator upgrades its own file at start; a PostgreSQL store
shared by a cluster is upgraded once with ``db upgrade`` (the server refuses to start on an
outdated schema, so members of two versions never run on one schema by surprise).

``--netns NAME`` moves the whole process into network namespace NAME before anything
else starts (all threads and children inherit it), while staying in the host's *mount*
namespace. Use it instead of ``ip netns exec NAME astara-orchestrator``: ``ip netns exec``
gives the process a private (slave) mount namespace, in which the namespaces the netns
driver creates would be invisible to everyone else (and vanish with the process).
"""
import argparse
import ctypes
import logging
import os
import signal
import sys
import threading

from astara_router import logs

from .. import config

CLONE_NEWNET = 0x40000000
LOG = logging.getLogger("orchestrator_lite")


def enter_netns(name):
    """Switch this (still single-threaded) process into /run/netns/NAME for good."""
    if "/" in name or name in ("", ".", ".."):
        raise SystemExit(f"astara-orchestrator: invalid namespace name {name!r}")
    if threading.active_count() > 1:
        raise RuntimeError("enter_netns must run before any thread starts")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise SystemExit(f"astara-orchestrator: setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def setup_logging(settings, level=None, fmt="text"):
    """One handler (the log file, else stderr); each push's lines carry its request id,
    resource and instance (astara_router/logs.py), in text or JSON lines."""
    handler = logging.FileHandler(settings.log_file) if settings.log_file else \
        logging.StreamHandler(sys.stderr)
    logs.configure(fmt, (level or settings.log_level).upper(), handler=handler,
                   text_format="%(asctime)s %(levelname)s %(threadName)s %(name)s: "
                               "%(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def db_main(argv):
    """``astara-orchestrator db upgrade|current [--config FILE]``."""
    parser = argparse.ArgumentParser(prog="astara-orchestrator db",
                                     description="the store's schema (Alembic migrations)")
    parser.add_argument("action", choices=("upgrade", "current"))
    parser.add_argument("--config", default=os.environ.get("ASTARA_ORCHESTRATOR_CONFIG",
                                                           config.DEFAULT_CONFIG))
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level="WARNING")
    from ..store.database import Database, describe
    if settings.database_connection.startswith("sqlite:///"):
        os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
    database = Database(settings.database_connection)
    try:
        if args.action == "upgrade":
            database.upgrade()
        current, head = database.revisions()
    except Exception as exc:  # noqa: BLE001 - say what failed, not a traceback
        parser.exit(1, f"astara-orchestrator db {args.action}: {describe(database.url)}: "
                       f"{type(exc).__name__}: {exc}\n")
    finally:
        database.close()
    print(f"{describe(database.url)}: schema revision {current or '(none)'} "
          f"(newest: {head})")
    return 0 if args.action == "upgrade" or current == head else 1


def make_server(settings, app):
    from cheroot import wsgi
    server = wsgi.Server((settings.api.listen, settings.api.port), app,
                         numthreads=settings.api.threads, server_name="astara-orchestrator")
    server.prepare()  # binds now: a busy port fails the start, not a thread
    return server


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["db"]:
        return db_main(argv[1:])
    parser = argparse.ArgumentParser(prog="astara-orchestrator",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("ASTARA_ORCHESTRATOR_CONFIG",
                                                           config.DEFAULT_CONFIG),
                        help="ini file (default %(default)s)")
    parser.add_argument("--netns", help="run inside this network namespace "
                                        "(keeps the host's mount namespace)")
    parser.add_argument("--log-level", help="override [DEFAULT] log_level")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="text",
                        help="text (default) or json lines")
    args = parser.parse_args(argv)
    if args.netns:
        enter_netns(args.netns)
    try:
        settings = config.load(args.config)
    except config.ConfigError as exc:
        parser.error(str(exc))
    if not settings.api.token:
        parser.error(f"{args.config}: [api] token is required (the admin API never runs "
                     "without authentication)")
    setup_logging(settings, args.log_level, args.log_format)

    from sqlalchemy.exc import SQLAlchemyError

    from ..api import create_app
    from ..drivers.base import DriverError
    from ..service import Orchestrator
    from ..store import SchemaError, StoreError
    try:
        orchestrator = Orchestrator(settings)
    except (DriverError, StoreError, SchemaError, SQLAlchemyError, ValueError,
            OSError) as exc:
        parser.exit(2, f"astara-orchestrator: cannot start: {exc}\n")
    try:
        server = make_server(settings, create_app(orchestrator, settings.api.token))
    except OSError as exc:
        orchestrator.store.close()
        parser.exit(2, f"astara-orchestrator: cannot serve the admin API on "
                       f"{settings.api.listen}:{settings.api.port}: {exc}\n")
    stopping = threading.Event()

    def shutdown(signum, _frame):
        if not stopping.is_set():
            LOG.info("signal %d: stopping (appliances keep running)", signum)
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    orchestrator.start()
    LOG.info("admin API on %s:%d (cheroot, %d threads)", settings.api.listen,
             settings.api.port, settings.api.threads)
    try:
        server.serve()
    finally:
        orchestrator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
