"""The orchestrator in a lab: its ini, its process in the ctl namespace, its admin API.

One place for what ``astara-lab``, the functional tests and the benchmark all do:
write the ini (``ini_text``/``write_config``), start
``python -m orchestrator_lite.cli.server --config INI --netns CTL`` and wait until the
admin API answers, call the API, wait for a condition while watching the process, read
the log's tail, and stop it by PID.

The server is a plain ``Popen`` from the root namespaces that enters ``CTL`` itself
(``--netns``), never ``ip netns exec``: that would give it a private mount namespace in
which the appliances' named namespaces are invisible to everybody else (see
orchestrator_lite/cli/server.py).

Every failure is an ``OrchestratorError`` (``AdminApiError`` for refused API calls), so
each caller can turn it into its own kind (LabError, BenchError, a test failure).
"""
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.parse

from .appliance import ADMIN_PORT, REPO_ROOT
from astara_netns import NetnsHTTPClient, pid_alive, terminate

_children = {}  # pid -> Popen of orchestrators this process started (reaped when stopped)


class OrchestratorError(Exception):
    pass


@contextlib.contextmanager
def errors_as(kind):
    """Re-raise an OrchestratorError as the caller's own ``kind`` (same message)."""
    try:
        yield
    except OrchestratorError as exc:
        raise kind(str(exc)) from None


class AdminApiError(OrchestratorError):
    def __init__(self, status, message, method=None, path=None):
        where = f"{method} {path}: " if method else ""
        super().__init__(f"{where}{status}: {message}")
        self.status = status
        self.message = message


# -- the ini (pure) -----------------------------------------------------------------------------

def ini_text(sections, header=None):
    """The ini for {section: {key: value}} in order; None values are left out."""
    lines = [header] if header else []
    for name, values in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(path, sections, header=None):
    """Write the ini readable by root only (it holds the admin API token)."""
    path = pathlib.Path(path)
    path.touch(mode=0o600)
    path.write_text(ini_text(sections, header))
    return path


def log_tail(path, size=4000):
    try:
        return pathlib.Path(path).read_text(errors="replace")[-size:]
    except OSError:
        return ""


# -- the admin API, from the root namespace -----------------------------------------------------

class AdminApi:
    """The orchestrator's admin API, reached inside the controller namespace."""

    def __init__(self, ctl_name, token, port=ADMIN_PORT, timeout=30, host="127.0.0.1"):
        self.http = NetnsHTTPClient(ctl_name, host, port, timeout=timeout)
        self.token = token

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        response = self.http.request(method, path, body=data, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        if response.status == 204:
            return None
        try:
            answer = response.json()
        except ValueError:
            answer = {"message": response.text[:500]}
        if response.status >= 400:
            raise AdminApiError(response.status, answer.get("message") or answer,
                                method, path)
        return answer

    def resource(self, resource_id):
        return self.call("GET", f"/v1/resources/{resource_id}")["resource"]

    def resources(self):
        return self.call("GET", "/v1/resources")["resources"]

    def members(self):
        """The admin APIs of every orchestrator (alone: this one)."""
        return [self]

    def metrics(self):
        """``GET /metrics``: the Prometheus text."""
        response = self.http.request("GET", "/metrics",
                                     headers={"Authorization": f"Bearer {self.token}"})
        if response.status != 200:
            raise AdminApiError(response.status, response.text[:500], "GET", "/metrics")
        return response.text


# -- the process --------------------------------------------------------------------------------

def is_orchestrator(pid, config_path):
    """True if ``pid`` is an orchestrator server running with ``config_path``."""
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"orchestrator_lite.cli.server" in cmdline and str(config_path).encode() in cmdline


class OrchestratorProcess:
    """``astara-orchestrator --config CONFIG --netns CTL``, logging to ``log_path``.

    ``pid`` adopts one started earlier (by another process too: ``from_state``)."""

    def __init__(self, ctl_netns_name, config_path, log_path, pid=None, extra_args=(),
                 api_timeout=30):
        self.ctl = ctl_netns_name
        self.config = pathlib.Path(config_path)
        self.log = pathlib.Path(log_path)
        self.pid = pid
        self.extra_args = list(extra_args)
        self.api_timeout = api_timeout
        self._admin = None

    @classmethod
    def from_state(cls, state):
        """The orchestrator of an ``astara-lab`` state file (``namespaces.ctl``,
        ``orchestrator.config/log/pid``)."""
        info = state.get("orchestrator") or {}
        return cls(state["namespaces"].get("ctl"), info.get("config", ""),
                   info.get("log", ""), pid=info.get("pid"))

    @property
    def settings(self):
        """Its ini, read as the orchestrator reads it (orchestrator_lite.config)."""
        from orchestrator_lite import config
        try:
            return config.load(str(self.config))
        except config.ConfigError as exc:
            raise OrchestratorError(str(exc)) from None

    @property
    def admin(self):
        """The admin API client, with the token and port of the ini."""
        if self._admin is None:
            settings = self.settings.api
            url = urllib.parse.urlsplit(settings.base_url)
            self._admin = AdminApi(self.ctl, settings.token, url.port, self.api_timeout,
                                   url.hostname)
        return self._admin

    def api(self, method, path, body=None):
        """One admin API call; AdminApiError (with status and body) on >= 400."""
        return self.admin.call(method, path, body)

    def start(self, timeout=30):
        """Start the server and return its PID once the admin API answers."""
        self.admin  # a bad ini fails here, before anything starts
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator_lite.cli.server", "--config",
                 str(self.config), "--netns", self.ctl, *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=str(REPO_ROOT),
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
        _children[proc.pid] = proc
        self.pid = proc.pid
        self.wait_for(self._answers, timeout, "the admin API")
        return self.pid

    def _answers(self):
        try:
            self.api("GET", "/v1/workers")
            return True
        except (OSError, AdminApiError):
            return False

    def exit_status(self):
        """None while it runs; its exit code (or "gone": not our child) once it has
        stopped."""
        child = _children.get(self.pid)
        if child is not None:
            return child.poll()
        if self.pid and is_orchestrator(self.pid, self.config) and pid_alive(self.pid):
            return None
        return "gone"

    def check_running(self, what="it"):
        status = self.exit_status()
        if status is not None:
            raise OrchestratorError(f"the orchestrator exited ({status}) while waiting for "
                                    f"{what}:\n{self.tail()}")

    def wait_for(self, predicate, timeout, what, interval=0.2):
        """predicate()'s first true value; fails early if the orchestrator exits."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            self.check_running(what)
            if time.monotonic() > deadline:
                raise OrchestratorError(f"timed out after {timeout}s waiting for {what}; "
                                        f"orchestrator log:\n{self.tail()}")
            time.sleep(interval)

    def tail(self, size=4000):
        return log_tail(self.log, size)

    def stop(self, timeout=15):
        """SIGTERM by PID (only if that PID still is this orchestrator), SIGKILL after
        ``timeout``. The appliances keep running. True if one was stopped."""
        pid, child = self.pid, _children.pop(self.pid, None)
        if not pid or not is_orchestrator(pid, self.config):
            if child is not None:
                child.poll()  # reap it if it died on its own
            return False

        terminate(pid, timeout,
                  alive=(lambda: child.poll() is None) if child is not None else None)
        if child is not None:
            child.wait(5)
        return True
