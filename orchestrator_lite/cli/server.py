"""``astara-orchestrator --config FILE [--netns NAME]``: run the orchestrator.

Starts the store, the workers, the health monitor and the admin API (``[api] listen``,
``port``; token required), then runs until SIGTERM/SIGINT. Stopping leaves the appliances
running; the next start adopts them.

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

from werkzeug.serving import make_server

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


def setup_logging(settings, level=None):
    handlers = [logging.StreamHandler(sys.stderr)]
    if settings.log_file:
        handlers = [logging.FileHandler(settings.log_file)]
    logging.basicConfig(level=(level or settings.log_level).upper(), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: "
                               "%(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="astara-orchestrator",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("ASTARA_ORCHESTRATOR_CONFIG",
                                                           config.DEFAULT_CONFIG),
                        help="ini file (default %(default)s)")
    parser.add_argument("--netns", help="run inside this network namespace "
                                        "(keeps the host's mount namespace)")
    parser.add_argument("--log-level", help="override [DEFAULT] log_level")
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
    setup_logging(settings, args.log_level)

    from ..api import create_app
    from ..drivers.base import DriverError
    from ..service import Orchestrator
    from ..store import StoreError
    try:
        orchestrator = Orchestrator(settings)
    except (DriverError, StoreError, ValueError, OSError) as exc:
        parser.exit(2, f"astara-orchestrator: cannot start: {exc}\n")
    server = make_server(settings.api.listen, settings.api.port,
                         create_app(orchestrator, settings.api.token), threaded=True)
    stopping = threading.Event()

    def shutdown(signum, _frame):
        if not stopping.is_set():
            LOG.info("signal %d: stopping (appliances keep running)", signum)
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    orchestrator.start()
    LOG.info("admin API on %s:%d", settings.api.listen, settings.api.port)
    try:
        server.serve_forever()
    finally:
        orchestrator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
