"""The metadata proxy (``astara-metadata-proxy``): config file, start, SIGHUP, stop.

Files under ``settings.path("metadata")``: ``proxy.json`` (the configuration), ``proxy.pid``,
``proxy.status`` (written by the proxy after each load: its PID and the SHA-256 of the
configuration it serves) and ``proxy.log``.

apply:    render → the proxy's own parser checks the text → atomic swap → SIGHUP when the
          proxy serves something else, start when it is not running, stop when there is no
          tenant network to serve. An identical re-apply touches nothing.
verify:   the running proxy reports the hash of the configuration we want.
restore:  old file back → SIGHUP, start or stop to match the snapshot.
"""
import json
import logging
import os
import shutil
import sys
import time

from ..errors import ApplyError
from ..metadata_proxy import ConfigError, config_digest, parse_config
from ..render.metadata import render_proxy_config
from .daemon import Daemon, FileSet

LOG = logging.getLogger(__name__)

PROGRAM = "astara-metadata-proxy"
RELOAD_TIMEOUT = 10.0


def proxy_program():
    """The console script next to the running interpreter (the agent's venv), else PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), PROGRAM)
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(PROGRAM)
    if found is None:
        raise ApplyError("", f"{PROGRAM} is not installed (looked next to {sys.executable} "
                             f"and on PATH)", status=500)
    return found


class MetadataSubsystem:
    name = "metadata"

    def __init__(self, settings):
        self.settings = settings
        self.dir = settings.path("metadata")
        self.config_path = os.path.join(self.dir, "proxy.json")
        self.pidfile = os.path.join(self.dir, "proxy.pid")
        self.status_path = os.path.join(self.dir, "proxy.status")
        self.log_path = os.path.join(self.dir, "proxy.log")
        self.files = FileSet(self.config_path)
        self._daemon = None
        self.signalled_at = 0.0  # wall clock, comparable with the status file's loaded_at

    # -- helpers ----------------------------------------------------------------------------
    @property
    def daemon(self):
        """Created on first use, so an appliance without tenant networks never needs the
        program installed."""
        if self._daemon is None:
            self._daemon = Daemon(PROGRAM, self.pidfile, [
                proxy_program(), "--config", self.config_path, "--pidfile", self.pidfile,
                "--status", self.status_path, "--log", self.log_path], program=PROGRAM)
        return self._daemon

    def running_pid(self):
        # Without the program installed nothing of ours can be running either.
        try:
            return self.daemon.pid()
        except ApplyError:
            return None

    def status(self):
        try:
            with open(self.status_path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def serves(self, digest):
        """True when the running proxy reports ``digest`` as its loaded configuration."""
        pid = self.running_pid()
        status = self.status()
        return pid is not None and status.get("pid") == pid and \
            status.get("config_hash") == digest

    def wait_serving(self, digest, timeout=RELOAD_TIMEOUT):
        """Wait for the proxy to serve ``digest``; fail at once when it reports that it
        could not load exactly that configuration after our last signal."""
        deadline = time.monotonic() + timeout
        while not self.serves(digest):
            status = self.status()
            refused = (status.get("failed_hash") == digest
                       and status.get("loaded_at", 0) >= self.signalled_at)
            if refused or time.monotonic() > deadline:
                detail = status.get("error") or (
                    f"it serves {str(status.get('config_hash'))[:12]}"
                    if self.running_pid() else "it is not running")
                raise ApplyError("", f"metadata proxy did not load configuration "
                                     f"{digest[:12]}: {detail}", status=500)
            time.sleep(0.02)

    def _converge(self, text):
        """Make the proxy serve ``text`` (None: not run). Returns the number of changes."""
        changes = 0
        current = self.files.capture()[self.config_path]
        if text is None:
            if self.running_pid() is not None:
                self.daemon.stop()
                changes += 1
            if current is not None:
                self.files.restore({self.config_path: None})
                changes += 1
            return changes
        if current != text:
            contents = {self.config_path: text}
            self.files.stage(contents)
            self.files.commit(contents)
            changes += 1
        if self.running_pid() is None:
            self.daemon.start()
            changes += 1
        elif not self.serves(config_digest(text)):
            self.signalled_at = time.time()
            self.daemon.signal()  # SIGHUP: the proxy re-reads everything in place
            changes += 1
        return changes

    # -- subsystem interface -------------------------------------------------------------------
    def plan(self, config, names):
        return render_proxy_config(config, self.settings.metadata_connect_timeout,
                                   self.settings.metadata_read_timeout)

    def check(self, plan, base):
        if plan is not None and plan != base:
            try:  # the proxy's own parser is the checker
                parse_config(plan)
            except ConfigError as exc:
                raise ApplyError("", f"metadata proxy configuration rejected: {exc}",
                                 status=500) from exc

    def healthy(self, plan):
        return plan is None or self.running_pid() is not None

    def capture(self, ctx, plan, base):
        return {"files": self.files.capture(), "running": self.running_pid() is not None}

    def apply(self, ctx, plan, base, snapshot):
        if base is not None and plan == base and self.healthy(plan):
            return 0
        if plan is not None:
            os.makedirs(self.dir, exist_ok=True)
        return self._converge(plan)

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        if plan is None:
            if self.running_pid() is not None:
                raise ApplyError("", "metadata proxy runs without tenant networks", status=500)
            return
        self.wait_serving(config_digest(plan))

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        text = snapshot["files"].get(self.config_path)
        if text is None or not snapshot["running"]:
            if self.running_pid() is not None:
                self.daemon.stop()
            self.files.restore(snapshot["files"])
            return
        self.files.restore(snapshot["files"])
        self._converge(text)
        self.wait_serving(config_digest(text))
