"""The load balancer: one nginx per appliance, started by the agent, in the agent's network
namespace, entirely under ``<state_dir>/nginx/`` (prefix, configuration, pid file, logs,
temp paths, status socket): never /etc/nginx, never the host's /run.

  check    the candidate tree is written to ``<state_dir>/nginx.check/`` and checked with
           ``nginx -t`` before anything live changes. nginx -t binds the listen addresses,
           so ``net.ipv{4,6}.ip_nonlocal_bind`` are set in the agent's namespace first: a
           VIP that this same apply adds still checks (and nginx binds it at once later).
  apply    changed files are replaced atomically, files of removed listeners are deleted,
           then SIGHUP to the master (what ``nginx -s reload`` sends): new workers take the
           new configuration, old ones finish their requests and connections first. Not
           running yet → start. No load balancer (or it is admin down) → stop, files gone.
  verify   the status server on the unix socket answers the new configuration's digest.
  restore  the files as captured, then reload (or start/stop) back.

An identical apply changes nothing: the files match and the running nginx reports the
plan's digest.
"""
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time

from ..errors import ApplyError
from ..render.loadbalancer import (CONF, ERROR_LOG, HTTP_DIR, PIDFILE, STATUS_SOCKET,
                                   STREAM_DIR, TEMP_DIR, render_nginx)
from ..store import atomic_write
from .daemon import Daemon, LogWatch, check_socket_path
from .netlink import allow_nonlocal_bind

LOG = logging.getLogger(__name__)

NGINX = "nginx"
CHECK_TIMEOUT = 30
RELOAD_TIMEOUT = 10.0
# "[emerg] <message> in <file>:<line>", as nginx -t and a failed reload report errors.
NGINX_ERROR = re.compile(r"\[(?:emerg|alert|crit)\] (?P<message>.*?)"
                         r"(?: in (?P<file>\S+):(?P<line>\d+))?$", re.M)


def nginx_argv(directory, *extra):
    """nginx with its own prefix, configuration and startup error log."""
    return [NGINX, "-p", f"{directory}/", "-c", os.path.join(directory, CONF),
            "-e", os.path.join(directory, ERROR_LOG), *extra]


def read_tree(directory):
    """{relative path: text} of the configuration files under ``directory``."""
    tree = {}
    for sub in ("", HTTP_DIR, STREAM_DIR):
        folder = os.path.join(directory, sub)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        for name in names:
            if (name == CONF if not sub else name.endswith(".conf")):
                relative = os.path.join(sub, name) if sub else name
                with open(os.path.join(directory, relative)) as handle:
                    tree[relative] = handle.read()
    return tree


def write_tree(directory, contents):
    """Make the configuration files under ``directory`` exactly ``contents``: changed
    files replaced atomically, others deleted. Returns how many files changed."""
    current = read_tree(directory)
    for sub in (HTTP_DIR, STREAM_DIR, TEMP_DIR):
        os.makedirs(os.path.join(directory, sub), mode=0o755, exist_ok=True)
    changes = 0
    for relative, text in contents.items():
        if current.get(relative) != text:
            atomic_write(os.path.join(directory, relative), text, 0o644, durable=False)
            changes += 1
    for relative in set(current) - set(contents):
        os.unlink(os.path.join(directory, relative))
        changes += 1
    return changes


def nginx_refusal(output, plan, directory):
    """An ApplyError for nginx's complaint: 422 naming the listener whose file holds the
    refused line, else 500 (the appliance's own part)."""
    match = None
    for match in NGINX_ERROR.finditer(output or ""):
        pass  # the last one is the reason (earlier lines may be warnings)
    if match is None:
        return ApplyError("", f"nginx refused the configuration: {(output or '')[-1000:]}",
                          status=500)
    path = ""
    if match.group("file"):
        path = plan.owner(os.path.relpath(match.group("file"), directory))
    return ApplyError(path, f"nginx refuses it: {match.group('message')}",
                      status=422 if path else 500)


class NginxDaemon(Daemon):
    """nginx's master, recognised by its process title, which names our configuration
    (another appliance's nginx on the same host never matches)."""

    def pid(self):
        try:
            with open(self.pidfile) as handle:
                pid = int(handle.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        conf = self.argv[self.argv.index("-c") + 1]
        if not title.startswith("nginx: master process") or f" -c {conf} " not in title + " ":
            return None
        return pid


class LoadBalancerSubsystem:
    name = "loadbalancer"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.directory = settings.path("nginx")
        self.check_dir = settings.path("nginx.check")
        self.socket = os.path.join(self.directory, STATUS_SOCKET)
        self.log = os.path.join(self.directory, ERROR_LOG)
        self._log = LogWatch(self.log)  # what nginx logged since the last reload or start
        self._old_workers = set()  # workers of the configuration a reload replaces
        self.daemon = NginxDaemon("nginx", os.path.join(self.directory, PIDFILE),
                                  nginx_argv(self.directory), cwd=self.directory)

    # -- engine interface ------------------------------------------------------------------
    def plan(self, config, names):
        return render_nginx(config)

    def check(self, plan, base):
        if plan is None or plan == base:
            return
        allow_nonlocal_bind()
        shutil.rmtree(self.check_dir, ignore_errors=True)
        try:
            write_tree(self.check_dir, plan.contents())
            try:
                result = subprocess.run(nginx_argv(self.check_dir, "-t", "-q"),
                                        capture_output=True, text=True, cwd=self.check_dir,
                                        timeout=CHECK_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ApplyError("", f"nginx -t: {exc}", status=500) from exc
            if result.returncode != 0:
                raise nginx_refusal(result.stderr + result.stdout, plan, self.check_dir)
        finally:
            shutil.rmtree(self.check_dir, ignore_errors=True)

    def healthy(self, plan):
        return plan is None or self.daemon.pid() is not None

    def capture(self, ctx, plan, base):
        return {"files": read_tree(self.directory), "running": self.daemon.running()}

    def apply(self, ctx, plan, base, snapshot):
        if plan is None:
            return self._stop_and_remove()
        allow_nonlocal_bind()
        running = snapshot["running"]
        if snapshot["files"] == plan.contents() and running and \
                self.loaded_digest() == plan.digest:
            return 0
        changes = write_tree(self.directory, plan.contents())
        self._run(running)
        return changes + 1

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        if plan is None:
            if self.daemon.running() or os.path.exists(os.path.join(self.directory, CONF)):
                raise ApplyError("", "nginx or its configuration is still there although no "
                                     "load balancer is configured", status=500)
            return
        self._wait_for_digest(plan.digest)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        if not snapshot["running"] or not snapshot["files"]:
            self._stop_and_remove()
            write_tree(self.directory, snapshot["files"])
            return
        write_tree(self.directory, snapshot["files"])
        self._run(self.daemon.running())

    # -- helpers ---------------------------------------------------------------------------
    def _run(self, running):
        """Reload the running master (SIGHUP: graceful) or start one."""
        self._log = LogWatch(self.log)
        master = self.daemon.pid() if running else None
        self._old_workers = accepting_workers(master) if master else set()
        if master and self.daemon.signal(signal.SIGHUP):
            LOG.info("nginx reloaded")
            return
        check_socket_path(self.socket, "nginx status socket")
        try:
            os.unlink(self.socket)  # left by a killed nginx: it would refuse to bind
        except FileNotFoundError:
            pass
        try:
            self.daemon.start()
        except ApplyError as exc:  # nginx repeats a failed bind five times: say it once
            reasons = dict.fromkeys(m.group("message") for m in NGINX_ERROR.finditer(exc.message))
            raise ApplyError("", "nginx did not start: " + ("; ".join(reasons) or exc.message),
                             status=500) from exc
        LOG.info("nginx started (pid %s)", self.daemon.pid())

    def _stop_and_remove(self):
        changes = int(self.daemon.stop())
        if os.path.isdir(self.directory):
            changes += write_tree(self.directory, {})
        return changes

    def loaded_digest(self):
        """The digest the running nginx answers on its status socket, or None."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(self.socket)
                sock.sendall(b"GET / HTTP/1.0\r\nHost: status\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError:
            return None
        head, _, body = answer.partition(b"\r\n\r\n")
        return body.decode(errors="replace").strip() if b" 200 " in head else None

    def _wait_for_digest(self, digest):
        """The new workers answer the new digest, and the old ones have stopped accepting
        (they close their listening sockets when they start shutting down; until then a
        new connection may still land on the old configuration)."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            loaded = self.loaded_digest()
            if loaded == digest:
                while self._old_workers & accepting_workers(self.daemon.pid()):
                    if time.monotonic() > deadline:
                        LOG.warning("old nginx workers still accept after %.0f s",
                                    RELOAD_TIMEOUT)
                        break
                    time.sleep(0.01)
                return
            refused = self._new_errors()
            if refused or time.monotonic() > deadline:
                raise ApplyError("", f"nginx does not run the new configuration (it answers "
                                     f"{loaded!r}, wanted {digest!r})"
                                 + (f": {refused}" if refused else ""), status=500)
            time.sleep(0.02)

    def _new_errors(self):
        """[emerg]/[alert]/[crit] lines nginx logged since the last reload or start."""
        return "; ".join(m.group(0) for m in NGINX_ERROR.finditer(self._log.new()))


def accepting_workers(master):
    """PIDs of the master's workers that still accept connections: their title is
    "nginx: worker process" (it becomes "... is shutting down" once they have closed their
    listening sockets)."""
    if master is None:
        return set()
    try:
        with open(f"/proc/{master}/task/{master}/children") as handle:
            children = handle.read().split()
    except OSError:
        return set()
    accepting = set()
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                title = handle.read().rstrip(b"\0").decode(errors="replace")
        except OSError:
            continue
        if title.strip() == "nginx: worker process":
            accepting.add(int(child))
    return accepting
