"""A private RabbitMQ broker for tests and benchmarks (Debian's ``rabbitmq-server``).

Everything is its own: node ``astara<hex>@localhost``, HOME (Erlang cookie), data and log
dirs under ``workdir``, the AMQP port and the distribution port on 127.0.0.1, and its own
``epmd`` started by us on its own port bound to 127.0.0.1 (``ERL_EPMD_ADDRESS``/
``ERL_EPMD_PORT``), so no packaged service and no shared epmd is involved. ``stop()`` ends
the broker and then epmd by PID (the broker's own PID comes from its pid file). ``restart``
keeps the data dir, node name and ports: clients see the same broker come back.
"""
import contextlib
import datetime
import json
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import time
import uuid

from astara_netns import terminate

from .services import free_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the script, not the su wrapper
EPMD = "/usr/bin/epmd"


def available():
    """Why a broker cannot run here, or None."""
    for path in (RABBITMQ_SERVER, EPMD):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (scripts/install-deps installs rabbitmq-server)"
    return None


def _wait_port(port, timeout, alive):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _stop_child(proc, grace):
    """Stop a child process by PID (SIGTERM, SIGKILL after ``grace``) and reap it."""
    terminate(proc.pid, grace, alive=lambda: proc.poll() is None)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class Broker:
    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.node = f"astara{secrets.token_hex(3)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.home = self.workdir / "home"
        self._epmd = None
        self._server = None

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self):
        base = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home), RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port), ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd_port), RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"), RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),  # .conf is appended
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_LOGS=str(base / "log" / "rabbit.log"))
        return env

    def _prepare(self):
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)
        (self.workdir / "log").mkdir(exist_ok=True)
        # guest may log in from 127.0.0.1 (loopback_users applies to "localhost" only).
        (self.workdir / "rabbitmq.conf").write_text(
            "listeners.tcp.default = 127.0.0.1:%d\nloopback_users = none\n"
            "management.tcp.port = 0\n" % self.port)
        (self.workdir / "advanced.config").write_text("[].\n")
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")

    def start(self, timeout=90.0):
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self._prepare()
        env = self._env()
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"], env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            if not _wait_port(self.epmd_port, 10, lambda: self._epmd.poll() is None):
                self.stop()
                raise RuntimeError("epmd did not start")
        with open(self.workdir / "log" / "console.log", "ab") as console:
            self._server = subprocess.Popen(
                [RABBITMQ_SERVER], env=env, stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.workdir))
        if not _wait_port(self.port, timeout, lambda: self._server.poll() is None):
            log = self.log_tail()
            self.stop()
            raise RuntimeError(f"rabbitmq-server did not listen on {self.port}:\n{log}")
        return self

    def log_tail(self, lines=30):
        text = ""
        for path in sorted((self.workdir / "log").glob("*.log")):
            text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _beam_pid(self):
        try:
            return int((self.workdir / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_broker(self):
        """Stop the broker only (epmd stays): the shell wrapper by PID, then the VM."""
        beam = self._beam_pid()
        if self._server is not None:
            _stop_child(self._server, 30)
            self._server = None
        if beam:
            terminate(beam, 10)
        try:
            (self.workdir / "rabbit.pid").unlink()
        except OSError:
            pass

    def restart(self, timeout=90.0):
        self.stop_broker()
        return self.start(timeout)

    def stop(self):
        self.stop_broker()
        if self._epmd is not None:
            _stop_child(self._epmd, 5)
            self._epmd = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def notification(event_type, payload, publisher="network.controller-1"):
    """An oslo.messaging ``messagingv2`` notification envelope, as Neutron sends it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    message = {"message_id": str(uuid.uuid4()), "publisher_id": publisher,
               "event_type": event_type, "priority": "INFO", "payload": payload,
               "timestamp": stamp, "_context_is_admin": False,
               "_context_project_id": "baef51913f354071ab020eae853d4ffe",
               "_context_request_id": f"req-{uuid.uuid4()}"}
    return {"oslo.version": "2.0", "oslo.message": json.dumps(message)}


class Publisher:
    """Publishes notifications the way Neutron's notifier does: topic exchange
    ``neutron``, routing key ``notifications.info``, JSON."""

    def __init__(self, url, exchange="neutron", topic="notifications"):
        import kombu
        self.connection = kombu.Connection(url, connect_timeout=5)
        self.exchange = kombu.Exchange(exchange, type="topic", durable=False,
                                       auto_delete=False)
        self.routing_key = f"{topic}.info"
        self.producer = self.connection.Producer(serializer="json")

    def publish(self, event_type, payload):
        self.producer.publish(notification(event_type, payload), exchange=self.exchange,
                              routing_key=self.routing_key, declare=[self.exchange],
                              retry=True, retry_policy={"max_retries": 5})

    def close(self):
        self.connection.release()
