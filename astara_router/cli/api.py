"""``astara-router-api``: the agent's HTTP API under gunicorn.

Exactly one gthread worker process: one writer owns the kernel state, threads serve GETs
from the committed snapshot while an apply runs. The worker re-applies the persisted
configuration before it answers anything (also when gunicorn respawns it after a crash).
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

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from .. import logs
from .. import settings as settings_mod
from .. import tls
from ..memory import give_back, page_out_alone
from ..readers import READERS

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


def reload_master(master_pid):
    """SIGHUP to this worker's gunicorn master: a new worker, new certificate."""
    def reload():
        if os.getppid() == master_pid:
            os.kill(master_pid, signal.SIGHUP)
    return reload


def freeze_before_fork(arbiter, worker):
    """gunicorn's ``pre_fork`` hook: the master's objects leave the collector's generations,
    so the worker's collections never write to the pages it inherited (each would become a
    private copy: 3.6 MB of PSS at 5 000 floating IPs, make bench); the pages the master
    freed go back to the kernel (jemalloc keeps them in an idle process: 1.6 MB)."""
    gc.freeze()
    give_back()


def build_app(settings):
    from ..api import create_app
    from ..engine import Engine
    from ..supervisor import Supervisor
    os.makedirs(settings.path("run"), exist_ok=True)
    hold_writer_lock(settings)
    # A read waits for the interpreter lock while an apply computes: hand it over every
    # millisecond instead of every 5 (GET p99 during applies: make bench). 0.5 or 0.2 ms
    # gain nothing more; what was measured against applies in a process of their own:
    # README, "Decisions" ("Applies in the process that answers reads").
    sys.setswitchinterval(0.001)
    engine = Engine(settings)
    engine.boot()
    app = create_app(settings, engine)
    app.extensions["astara"]["reload_server"] = reload_master(os.getppid())
    from ..api import local
    # astara-router-ctl's way in (api/local.py). Before the prober and the supervisor
    # start: it changes the process's umask while it binds, and a repair writes daemon
    # files (the boot's announcement threads write none).
    local.serve(app, settings)
    app.extensions["astara"]["prober"].start()
    Supervisor(settings, engine).start()
    return app


class AgentArbiter(Arbiter):
    """gunicorn's arbiter, which gives back the file pages only it maps once its worker
    serves: the master then only waits on signals and its worker, and what its start
    touched stays resident in it alone otherwise (0.7-0.8 MB of PSS, make bench)."""

    def __init__(self, app):
        super().__init__(app)
        self.starting = {}  # pid -> its heartbeat file's time when it was spawned

    def spawn_worker(self):
        pid = super().spawn_worker()  # the child never comes back here (gunicorn exits it)
        self.starting[pid] = self.WORKERS[pid].tmp.last_update()
        return pid

    def manage_workers(self):
        super().manage_workers()
        serving = [pid for pid, spawned in self.starting.items()
                   if pid not in self.WORKERS or self._beat_since(pid, spawned)]
        for pid in serving:
            del self.starting[pid]
        if serving and not self.starting:
            page_out_alone()

    def _beat_since(self, pid, spawned):
        """The worker's heartbeat (gunicorn's worker loop touches its file) has moved
        since the spawn: it has booted and serves."""
        try:
            return self.WORKERS[pid].tmp.last_update() != spawned
        except (OSError, ValueError):
            return True


class AgentThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, which counts the reads in flight for the applying
    threads to give way to (``readers.ReadersFirst``): from the poller's hand-over to the
    answer; a request that is not a GET or HEAD stops counting once its method is read."""

    def run(self):
        READERS.watch(self.poller, ignored=(self.method_queue.fileno(),))
        super().run()

    def enqueue_req(self, conn):
        READERS.arrive()
        super().enqueue_req(conn)

    def handle(self, conn):
        READERS.serving()
        try:
            return super().handle(conn)
        finally:
            READERS.depart()

    def handle_request(self, req, conn):
        if req.method not in ("GET", "HEAD"):
            READERS.depart()
            READERS.let_readers_first()  # a push's Flask dispatch is a writer's step too
        return super().handle_request(req, conn)


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
            "worker_class": AgentThreadWorker,
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
        return build_app(self.settings)

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
# gives whole pages back (memory.QuietTrims purges them once pushes pause; one arena:
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
