"""``astara-router-api``: the agent's HTTP API under gunicorn.

The gunicorn master runs the engine (the one writer of the kernel state) and the Flask
app; its one gthread worker answers the reads of the committed bytes and relays every
other request to the master (relay.py), so that no read waits for the interpreter lock an
apply holds. The master re-applies the persisted configuration at its start, before the
worker answers anything; a worker gunicorn respawns after a crash is sent the committed
bytes and serves at once.
"""
import argparse
import fcntl
import gc
import glob
import ipaddress
import logging
import os
import signal
import sys
import threading

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from .. import logs
from .. import settings as settings_mod
from .. import tls
from ..memory import TrimWhenQuiet, give_back
from ..privileges import drop_all_capabilities
from ..relay import Front, Relay, WorkerPairs

LOG = logging.getLogger("astara_router.api")


def format_bind(address, port):
    address = ipaddress.ip_address(str(address).split("/")[0])
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def stored_management_address(settings, stored):
    """The management address of a persisted generation, or None (none, or not valid)."""
    if stored is None:
        return None
    try:
        from ..model import parse_payload
        return parse_payload(stored.payload, settings.enabled_services).management_address
    except Exception:
        return None


def in_child(function):
    """``function()`` (None or a short text) computed in a forked child process, so that
    this one keeps nothing it allocated: the gunicorn master, before it starts (one thread,
    no signal handlers yet), parsing a persisted 5 000-floating-IP payload kept 7.5 MB."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            result = function()
            os.write(write_end, b"" if result is None else str(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    return text or None


def default_bind(settings, stored=None):
    """The management address: from the persisted config (``stored``; default: what the
    agent will run, ``Store.load``, all of it read and parsed in a child process, so that
    the gunicorn master neither keeps nor imports the store, the model and msgspec: 2 MB),
    else from what astara-configure-management recorded at boot, else every address."""
    if stored is None:
        def in_the_child():
            from ..store import Store
            return _bind_of(settings, Store(settings.state_dir).load())
        return in_child(in_the_child)
    return _bind_of(settings, stored)


def _bind_of(settings, stored):
    from .management import read_management
    address = stored_management_address(settings, stored)
    if address is not None:
        return format_bind(address, settings.port)
    recorded = read_management(settings.state_dir).get("address")
    if recorded is not None:
        return format_bind(recorded, settings.port)
    return f"[::]:{settings.port}"


def hold_writer_lock(settings):
    """One writer across processes: on SIGHUP gunicorn starts the new worker while the
    old one still finishes its requests (an apply, perhaps); the new one waits here until
    the old one has exited. The lock goes with the process (the fd is never closed)."""
    fd = os.open(settings.path("run", "writer.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def reload_master():
    """SIGHUP to this gunicorn master (the engine's process): a new worker, which serves
    the new certificate; the old one finishes its requests."""
    os.kill(os.getpid(), signal.SIGHUP)


def freeze_before_fork(arbiter, worker):
    """gunicorn's ``pre_fork`` hook: the master's objects leave the collector's generations,
    so the worker's collections never write to the pages it inherited (each would become a
    private copy: 3.6 MB of PSS at 5 000 floating IPs, make bench); the pages the master
    freed go back to the kernel (jemalloc keeps them in an idle process: 1.6 MB)."""
    gc.freeze()
    give_back()


def build_app(settings):
    """The engine, booted, and the Flask app over it: in the gunicorn master, once its
    first worker is forked (relay.py)."""
    from ..api import create_app
    from ..engine import Engine
    from ..supervisor import Supervisor
    os.makedirs(settings.path("run"), exist_ok=True)
    hold_writer_lock(settings)
    # Threads of this process take turns on the interpreter lock: the applying one, the
    # requests the worker relays, the metadata proxy. Every millisecond instead of every 5.
    sys.setswitchinterval(0.001)
    engine = Engine(settings)
    engine.boot()
    app = create_app(settings, engine)
    app.extensions["astara"]["reload_server"] = reload_master
    from ..api import local
    # astara-router-ctl's way in (api/local.py). Before the prober and the supervisor
    # start: it changes the process's umask while it binds, and a repair writes daemon
    # files (the boot's announcement threads write none).
    local.serve(app, settings)
    app.extensions["astara"]["prober"].start()
    Supervisor(settings, engine).start()
    return app, engine


class WorkersOnly:
    """``os`` for gunicorn's arbiter module, whose ``reap_workers`` waits for any child
    (``waitpid(-1)``): in this master the engine's children (checkers, daemons being
    started) are waited for by whoever started them, and a child the arbiter reaped
    would leave its ``subprocess`` without an exit status (it reports 0). Only the
    arbiter's own children are waited for here."""

    def __init__(self, arbiter):
        self._arbiter = arbiter

    def __getattr__(self, name):
        return getattr(os, name)

    def waitpid(self, pid, options):
        if pid != -1:
            return os.waitpid(pid, options)
        arbiter = self._arbiter
        for known in (*arbiter.WORKERS, arbiter.reexec_pid,
                      getattr(arbiter, "dirty_arbiter_pid", 0)):
            if known:
                try:
                    found = os.waitpid(known, options)
                except ChildProcessError:
                    continue
                if found[0]:
                    return found
        return 0, 0


WORKER_PAIRS = []  # the relay.WorkerPairs of the worker being forked


class AgentArbiter(Arbiter):
    """gunicorn's arbiter, which also runs the engine (relay.py): each worker is forked
    with one end of a socket pair, whose other end serves it; the engine boots once the
    first worker is forked (the worker inherits none of its memory)."""

    def __init__(self, app):
        super().__init__(app)
        self.relay = Relay()
        self.applier = None
        self.applier_failed = False
        import gunicorn.arbiter
        gunicorn.arbiter.os = WorkersOnly(self)

    def spawn_worker(self):
        pairs = WorkerPairs(self.cfg.threads)  # a channel per thread of the worker
        WORKER_PAIRS[:] = [pairs]
        try:
            pid = super().spawn_worker()  # the child never comes back here
        finally:
            WORKER_PAIRS.clear()
            pairs.close(pairs.theirs)
        self.relay.add_worker(pairs.mine)
        if self.applier is None:
            self.applier = threading.Thread(target=self._run_applier, name="applier",
                                            daemon=True)
            self.applier.start()
        return pid

    def _run_applier(self):
        try:
            app, engine = build_app(self.app.settings)
            self.relay.attach(app, engine)
        except BaseException:
            LOG.exception("the engine could not start")
            self.applier_failed = True
            os.kill(os.getpid(), signal.SIGTERM)

    def halt(self, reason=None, exit_status=0):
        if self.applier_failed and not exit_status:
            reason, exit_status = reason or "the engine could not start", 1
        super().halt(reason, exit_status)


def in_the_new_worker(arbiter, worker):
    """gunicorn's ``post_fork`` hook, in the new worker: the master's ends of the relays
    (its own pair's and the other workers') are not the worker's to hold, nor are the
    capabilities: it parses what the network sends, and applies nothing."""
    arbiter.relay.close_in_child()
    pairs = WORKER_PAIRS[0]
    pairs.close(pairs.mine)
    try:
        drop_all_capabilities()
    except OSError as exc:
        LOG.warning("the worker keeps its capabilities: %s", exc)


class AgentApplication(BaseApplication):
    def __init__(self, settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        s = self.settings
        run_dir = s.path("run")
        os.makedirs(run_dir, exist_ok=True)
        options = {
            "bind": list(s.bind) or [default_bind(s)],
            "workers": 1,  # one writer: never more than one process applying
            "worker_class": ThreadWorker,
            "threads": s.threads,
            "timeout": 120,
            "graceful_timeout": 10,
            "pidfile": os.path.join(run_dir, "api.pid"),
            "worker_tmp_dir": run_dir,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "astara-router-api",
            # gunicorn ≥ 27 opens a control socket (gunicornc's) by default, served by an
            # asyncio loop in a thread of the master: nothing here uses it, and the master
            # stays smaller without (asyncio and its thread).
            "control_socket_disable": True,
            "pre_fork": freeze_before_fork,
            "post_fork": in_the_new_worker,
        }
        if s.certfile:
            options.update(certfile=s.certfile, keyfile=s.keyfile or None,
                           ssl_context=tls.server_context)
            if s.ca_certs:
                import ssl
                options.update(ca_certs=s.ca_certs, cert_reqs=ssl.CERT_REQUIRED)
        LOG.log(logging.WARNING if tls.mode(s) == tls.PLAIN else logging.INFO,
                tls.describe(s))
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        """The worker's app: reads from bytes, the rest relayed to the master (relay.py);
        returned once the master's engine has booted."""
        control, channels = WORKER_PAIRS[0].theirs
        front = Front(control, channels, self.settings.api_token, TrimWhenQuiet())
        front.wait_ready()
        return front

    def run(self):
        try:
            AgentArbiter(self).run()
        except RuntimeError as exc:  # as BaseApplication.run
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    parser.add_argument("--config-file", help="ini file ([DEFAULT] state_dir, "
                                              "enabled_services; [api]; [status]; "
                                              "[supervisor])")
    parser.add_argument("--bind", action="append",
                        help="address:port or [v6]:port (repeatable); default: the "
                             "management address on port 5000")
    parser.add_argument("--state-dir", help="default /var/lib/astara")
    parser.add_argument("--enabled-services", help="comma list: router, loadbalancer")
    parser.add_argument("--port", type=int)
    parser.add_argument("--log-format", choices=logs.FORMATS,
                        help="text (default) or json; both carry the request id and the "
                             "generation of the work a line belongs to")
    return parser.parse_args(argv)


# The allocator of every Python object when it is installed (Debian's libjemalloc2): a
# push that replaces thousands of floating IPs leaves CPython's own allocator (1 MiB arenas
# freed only when empty) and glibc's holding the freed generation's pages, where jemalloc
# gives whole pages back (memory.TrimWhenQuiet purges them once pushes pause; one arena:
# the threads take turns on the interpreter lock anyway). Worker PSS at 5 000 floating
# IPs, after four pushes each replacing all of them: 75 -> 62 MB; after one: 55 -> 53.5
# MB. The price: parsing and rendering that payload takes ~15 % more CPU than on
# CPython's allocator (a full apply of it ~10 % longer: make bench, noisy).
JEMALLOC = "/usr/lib/*-linux-gnu/libjemalloc.so.2"
ALLOCATOR_SETTINGS = {"PYTHONMALLOC": "malloc",
                      "MALLOC_CONF": "narenas:1,muzzy_decay_ms:0"}
# Without docstrings (and asserts: the agent's code has none): the ~2 MB of docstrings of
# the ~430 modules the worker imports (the standard library's, Flask's, werkzeug's, click's,
# ours) are not held, by the master or the worker. PSS at 5 000 floating IPs: 1.5-2.6 MB
# less (make bench). The OpenAPI document takes its schema descriptions from the sources
# instead (api/openapi.py); the image and install-deps compile the .opt-2.pyc files.
OPTIMIZE_SETTINGS = {"PYTHONOPTIMIZE": "2"}
RUNTIME_MARK = "ASTARA_ROUTER_RUNTIME"  # set for the re-executed agent, then removed


def runtime_settings():
    """The environment the agent runs under: jemalloc when installed (unless something is
    preloaded already) and no docstrings. {} when the process already runs so."""
    wanted = {}
    found = glob.glob(JEMALLOC)
    if found and not os.environ.get("LD_PRELOAD"):
        wanted.update(ALLOCATOR_SETTINGS, LD_PRELOAD=found[0])
    if sys.flags.optimize < 2:
        wanted.update(OPTIMIZE_SETTINGS)
    return wanted


def with_runtime():
    """Run the agent again (the same process: exec) under ``runtime_settings``, once; their
    variables are removed from the environment afterwards, so the daemons and tools the
    agent starts do not inherit them. Nothing to change: nothing happens."""
    if os.environ.pop(RUNTIME_MARK, None) is not None:
        for name in ("LD_PRELOAD", *ALLOCATOR_SETTINGS, *OPTIMIZE_SETTINGS):
            os.environ.pop(name, None)
        return
    wanted = runtime_settings()
    if wanted:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **wanted, RUNTIME_MARK: "1"})



def main(argv=None):
    args = parse_args(argv)
    with_runtime()
    try:
        settings = settings_mod.load(args.config_file, state_dir=args.state_dir,
                                     bind=tuple(args.bind or ()), port=args.port,
                                     enabled_services=args.enabled_services,
                                     log_format=args.log_format)
        logs.configure(settings.log_format, logging.INFO)
    except ValueError as exc:
        print(f"astara-router-api: {exc}", file=sys.stderr)
        return 2
    AgentApplication(settings).run()
    return 0



if __name__ == "__main__":
    sys.exit(main())
