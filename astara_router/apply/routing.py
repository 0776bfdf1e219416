"""BIRD 2 (router advertisements + BGP) as a transaction participant.

One ``bird`` per appliance, a child of the agent and so in the agent's network namespace:
``bird -c <state>/bird/bird.conf -s <state>/bird/bird.ctl -P <state>/bird/bird.pid``.
A new config is checked with ``bird -p`` as a candidate in the engine's check phase, then
written over the live file and loaded with ``birdc configure``, which keeps every protocol whose settings did not change
(a BGP session survives an apply that only touched RAs). Nothing changes when the rendered
text equals the live file and BIRD runs. When the config needs neither RAs nor BGP, BIRD is
stopped and its file removed.
"""
import logging
import os
import re
import subprocess
import time

from ..errors import ApplyError
from ..render.routing import DIGEST_SYMBOL, bird_plan, render_bird
from ..store import atomic_write
from .daemon import Daemon, FileSet, check_socket_path, run_checked

LOG = logging.getLogger(__name__)

BIRD = "bird"
BIRDC = "birdc"
# Answers of "birdc configure" that mean the new file is (being) taken into use.
CONFIGURE_OK = ("Reconfigured", "Reconfiguration in progress",
                "Reconfiguration already in progress, queueing")
# "<file>:<line>:<column> <message>", as bird -p and birdc configure report parse errors.
PARSE_ERROR = re.compile(r":(\d+):(\d+)\s+(.*)")


class RoutingSubsystem:
    name = "routing"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.directory = settings.path("bird")
        self.conf = os.path.join(self.directory, "bird.conf")
        self.socket = os.path.join(self.directory, "bird.ctl")
        self.pidfile = os.path.join(self.directory, "bird.pid")
        self.log = os.path.join(self.directory, "bird.log")
        self.files = FileSet(self.conf)
        self.daemon = Daemon("bird", self.pidfile,
                             [BIRD, "-c", self.conf, "-s", self.socket, "-P", self.pidfile])

    # -- transaction interface ----------------------------------------------------------------
    def plan(self, config, names):
        plan = bird_plan(config, names)
        return render_bird(plan, self.log) if plan is not None else None

    def check(self, plan, base):
        """``bird -p`` on a candidate file next to the live one."""
        if plan is None or plan == base:
            return
        os.makedirs(self.directory, exist_ok=True)
        candidate = FileSet.candidate(self.conf)
        atomic_write(candidate, plan.text, 0o644, durable=False)
        try:
            result = subprocess.run([BIRD, "-p", "-c", candidate], capture_output=True,
                                    text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError("", f"bird -p: {exc}", status=500) from exc
        finally:
            self.files.discard({self.conf: None})
        if result.returncode != 0:
            raise parse_failure("bird -p rejected the configuration",
                                result.stderr or result.stdout, plan)

    def healthy(self, plan):
        return plan is None or self.daemon.running()

    def capture(self, ctx, plan, base):
        return {"files": self.files.capture(), "running": self.daemon.running()}

    def apply(self, ctx, plan, base, snapshot):
        if plan is None:
            return self._stop_and_remove()
        live = snapshot["files"][self.conf]
        running = snapshot["running"]
        if live == plan.text and running:
            return 0
        self.files.converge({self.conf: plan.text})
        if running:
            self._reconfigure(plan)
        else:
            self._start()
        return 1

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        if plan is None:
            if self.daemon.running():
                raise ApplyError("", "bird is still running although no router "
                                     "advertisement or BGP is configured", status=500)
            if os.path.exists(self.conf):
                raise ApplyError("", f"{self.conf} still exists", status=500)
            return
        if self.daemon.pid() is None:
            raise ApplyError("", f"bird is not running (no live pid in {self.pidfile})",
                             status=500)
        self._wait_for_digest(plan.digest)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        old = snapshot["files"][self.conf]
        live = self.files.capture()[self.conf]
        running = self.daemon.running()
        if live == old and running == snapshot["running"]:
            return  # this transaction never got as far as changing bird
        self.files.restore(snapshot["files"])
        if not snapshot["running"] or old is None:
            self.daemon.stop()
        elif running:
            self._reconfigure(None)
        else:
            self._start()

    # -- steps --------------------------------------------------------------------------------
    def _stop_and_remove(self):
        return int(self.daemon.stop()) + self.files.converge({self.conf: None})

    def _reconfigure(self, rendered):
        """``birdc configure``: BIRD re-reads its file; on an error it keeps running the old
        configuration and says why."""
        answer = self.birdc("configure")
        if not any(ok in answer for ok in CONFIGURE_OK):
            raise parse_failure("birdc configure failed", answer, rendered, status=500)
        LOG.info("bird reconfigured: %s", answer.strip().splitlines()[-1])

    def _start(self):
        os.makedirs(self.directory, exist_ok=True)
        check_socket_path(self.socket, "bird control socket")
        self.daemon.start()
        deadline = time.monotonic() + 10
        while True:  # the pid file comes before the control socket answers
            try:
                if "Daemon is up and running" in self.birdc("show", "status"):
                    return
            except ApplyError:
                pass
            if time.monotonic() > deadline:
                raise ApplyError("", "bird started but its control socket does not answer",
                                 status=500)
            time.sleep(0.05)

    def _wait_for_digest(self, digest, timeout=5):
        """The running configuration is the rendered one: BIRD evaluates the digest constant
        of the file it loaded. "Reconfiguration in progress" may take a moment."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.birdc("eval", DIGEST_SYMBOL)
            values = [line.strip() for line in answer.splitlines()[1:]]
            if str(digest) in values:
                return
            if time.monotonic() > deadline:
                raise ApplyError("", f"bird runs another configuration (digest "
                                     f"{values or answer.strip()}, wanted {digest})", status=500)
            time.sleep(0.1)

    def birdc(self, *command):
        return run_checked([BIRDC, "-s", self.socket, *command],
                           f"birdc {' '.join(command)}", timeout=10)


def parse_failure(what, output, rendered, status=None):
    """An ApplyError for a BIRD parse error, naming the payload field behind the line when
    the renderer knows it (422), else blaming the appliance (500)."""
    output = (output or "").strip()
    match = PARSE_ERROR.search(output)
    path = ""
    if match and rendered is not None:
        path = rendered.path_for_line(int(match.group(1)))
    message = f"{what}: {match.group(3) if match else output[-1000:]}"
    if match:
        message += f" (bird.conf line {match.group(1)})"
    return ApplyError(path, message, status=status or (422 if path else 500))
