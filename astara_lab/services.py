"""The servers an orchestrator cluster runs on, for the lab, the tests and the bench:
``redis-server`` and ``etcd`` (tooz coordination backends) and PostgreSQL (the shared
store), from Debian's packages.

Each runs in a namespace (the lab's controller namespace, where the orchestrators run:
its loopback is private to it) or, with ``netns=None``, on the host's loopback; each gets
its own data directory and port and is stopped by PID. Nothing packaged is used: no
systemd unit, no default PostgreSQL cluster. PostgreSQL refuses to run as root, so its
data directory belongs to the ``postgres`` user, which ``initdb`` and the server run as
(``runuser``); the directories above it must be traversable by that user, and stay so:
not under pytest's basetemp, which every starting pytest session chmods back to 0700 (a
lab's scratch directory is fine).
"""
import contextlib
import glob
import os
import pathlib
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time

from astara_netns import in_netns, terminate

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    pass


def free_port():
    """A TCP port free on the host's loopback (for servers outside a namespace)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _tcp_answers(netns, port):
    try:
        with in_netns(netns) if netns else contextlib.nullcontext():
            sock = socket.create_connection((LOOPBACK, port), timeout=1.0)
        sock.close()
        return True
    except OSError:
        return False


class Server:
    """One server process (``argv``) in ``netns``, logging to ``directory/server.log``."""
    name = "server"
    stop_signal = signal.SIGTERM  # what asks it to shut down

    def __init__(self, directory, port, netns=None):
        self.directory = pathlib.Path(directory)
        self.port = port
        self.netns = netns
        self.process = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = self.directory / "server.log"

    def argv(self):
        raise NotImplementedError

    def prepare(self):
        """One-time set-up before the first start (data directories)."""

    def ready(self):
        return _tcp_answers(self.netns, self.port)

    def start(self, timeout=30):
        if self.process is None:
            self.prepare()
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*prefix, *map(str, self.argv())], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.directory))
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited ({self.process.returncode}):\n"
                                   f"{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} not ready within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def running(self):
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout=15):
        """``stop_signal`` to its process group (our own child's, by PID), SIGKILL after
        ``timeout``."""
        if self.process is None:
            return
        terminate(self.process.pid, timeout, alive=lambda: self.process.poll() is None,
                  group=True, first=self.stop_signal)
        self.process.wait(5)

    def tail(self, size=3000):
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def state(self):
        """What ``astara-lab status``/``down`` need to find it again."""
        return {"pid": self.pid, "port": self.port, "directory": str(self.directory),
                "url": self.url}


class RedisServer(Server):
    """``redis-server`` without persistence: a restart loses every key (membership,
    locks), which is what the coordination must survive."""
    name = "redis-server"

    def argv(self):
        return ["redis-server", "--bind", LOOPBACK, "--port", self.port, "--save", "",
                "--appendonly", "no", "--dir", self.directory, "--daemonize", "no",
                "--protected-mode", "yes"]

    @property
    def url(self):
        return f"redis://{LOOPBACK}:{self.port}"


class EtcdServer(Server):
    """A one-member etcd (v3 API through its HTTP gateway, what tooz's etcd3gw uses)."""
    name = "etcd"

    def argv(self):
        peer = f"http://{LOOPBACK}:{self.port + 1}"
        client = f"http://{LOOPBACK}:{self.port}"
        return ["etcd", "--name", "astara", "--data-dir", self.directory / "data",
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"astara={peer}", "--log-level", "warn"]

    @property
    def url(self):
        return f"etcd3+http://{LOOPBACK}:{self.port}"


def postgres_bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise ServiceError("PostgreSQL is not installed (scripts/install-deps installs it)")
    return os.path.dirname(found[-1])


def cluster_unavailable(backend=None):
    """Why this machine cannot run a cluster's servers: PostgreSQL (as ``postgres``, through
    ``runuser``, so root is needed) and the coordination ``backend``'s ("redis", "etcd";
    None: the store alone); None when it can. For tests and the lab to skip on."""
    if os.geteuid() != 0:
        return "needs root (PostgreSQL runs as the postgres user)"
    binaries = {None: (), "redis": ("redis-server",), "etcd": ("etcd",)}[backend]
    for binary in ("runuser", *binaries):
        if not shutil.which(binary):
            return f"{binary} is not installed (scripts/install-deps)"
    try:
        postgres_bindir()
    except ServiceError as exc:
        return str(exc)
    return None


class PostgresServer(Server):
    """PostgreSQL in ``directory/data``, owned by and run as ``postgres``; TCP on
    loopback only (no Unix socket), password authentication for user ``astara``,
    database ``astara``."""
    name = "postgres"
    # runuser and postgres share the process group: SIGTERM would be a "smart" shutdown,
    # which waits for the clients; SIGINT is a fast one.
    stop_signal = signal.SIGINT
    user = "astara"
    database = "astara"

    def __init__(self, directory, port, netns=None):
        super().__init__(directory, port, netns)
        self.data = self.directory / "data"
        self.password_file = self.directory / "password"
        self.bindir = postgres_bindir()

    @property
    def password(self):
        return self.password_file.read_text().strip()

    @property
    def url(self):
        return (f"postgresql://{self.user}:{self.password}@{LOOPBACK}:{self.port}/"
                f"{self.database}")

    def _as_postgres(self, argv, **kwargs):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)],
                              capture_output=True, text=True, **kwargs)

    def prepare(self):
        if (self.data / "PG_VERSION").exists():
            return
        postgres = pwd.getpwnam("postgres")
        # postgres must reach its directory: let it traverse (not list) the parents.
        for parent in self.directory.parents:
            if parent == pathlib.Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        self.directory.chmod(0o711)
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_hex(16) + "\n")
        pwfile = self.directory / "initdb-password"
        shutil.copy(self.password_file, pwfile)
        os.chown(pwfile, postgres.pw_uid, postgres.pw_gid)
        self.data.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data, postgres.pw_uid, postgres.pw_gid)
        try:
            result = self._as_postgres([f"{self.bindir}/initdb", "-D", self.data, "-U",
                                        self.user, f"--pwfile={pwfile}",
                                        "--auth=scram-sha-256", "-E", "UTF8",
                                        "--locale=C.UTF-8"])
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {result.stderr.strip()}")

    def argv(self):
        return ["runuser", "-u", "postgres", "--", f"{self.bindir}/postgres", "-D", self.data,
                "-p", self.port, "-c", f"listen_addresses={LOOPBACK}",
                "-c", "unix_socket_directories=", "-c", "max_connections=200"]

    def ready(self):
        if not _tcp_answers(self.netns, self.port):
            return False
        import psycopg
        conninfo = (f"host={LOOPBACK} port={self.port} user={self.user} dbname=postgres "
                    f"password={self.password} connect_timeout=2")
        try:
            with in_netns(self.netns) if self.netns else contextlib.nullcontext():
                conn = psycopg.connect(conninfo, autocommit=True)
            with conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                      (self.database,)).fetchone()
                if not exists:
                    conn.execute(f"CREATE DATABASE {self.database}")
            return True
        except psycopg.Error:
            return False


def stop_recorded(state):
    """Stop a server recorded by ``Server.state()`` in another process (``astara-lab
    down``): SIGINT to its process group if that PID is still one of ours (redis-server
    and etcd shut down on it as on SIGTERM, PostgreSQL fast), SIGKILL after 15 s."""
    pid = state.get("pid")
    if not pid:
        return False
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if str(state.get("directory", "")).encode() not in cmdline:
        return False  # the PID was reused by something else
    terminate(pid, 15, group=True, first=signal.SIGINT)
    return True
