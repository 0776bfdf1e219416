"""Shared plumbing for subsystems that drive a daemon through config files.

The pattern every daemon subsystem follows:
  check:    in the engine's check phase, before anything live changes, the daemon's own
            checker validates the rendered text written as a candidate next to the live
            file (``FileSet.candidate``), removed again with ``FileSet.discard``
  capture:  ``FileSet.capture()`` remembers the current file contents
  apply:    ``FileSet.converge`` rewrites (atomically) the files whose content differs →
            reload with the gentlest signal
  restore:  ``FileSet.converge``/``restore`` puts the snapshot's contents back → reload
"""
import hashlib
import json
import logging
import os
import signal
import subprocess
import time

from ..errors import ApplyError
from ..store import atomic_write

LOG = logging.getLogger(__name__)

SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the NUL


def run_checked(cmd, what, path="", timeout=30, cwd=None):
    """Run a checker or control command; a failure becomes an ApplyError with its output."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplyError(path, f"{what}: {exc}", status=500) from exc
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise ApplyError(path, f"{what} failed: {output}", status=500)
    return result.stdout


def digest(text):
    """sha256 of a file's text; None for an absent file."""
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def check_socket_path(path, what):
    """A unix socket path a daemon can bind, or an ApplyError naming ``what`` it is."""
    if len(path.encode()) > SOCKET_PATH_MAX:
        raise ApplyError("", f"{what} path {path} is longer than {SOCKET_PATH_MAX} bytes; "
                             "use a shorter state_dir", status=500)


def log_tail(path, lines, sep="", missing=""):
    """The last ``lines`` lines of a log, joined by ``sep`` (each stripped unless ``sep`` is
    empty), or ``missing`` when the log cannot be read."""
    try:
        with open(path, errors="replace") as handle:
            last = handle.readlines()[-lines:]
    except OSError:
        return missing
    return sep.join(line.strip() for line in last) if sep else "".join(last)


class LogWatch:
    """What a daemon logs from now on: the log's size is remembered when the watch is made
    (before a signal or a start), ``new()`` is what was appended since."""

    def __init__(self, path):
        self.path = path
        try:
            self.offset = os.path.getsize(path)
        except OSError:
            self.offset = 0

    def new(self):
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_for(self, marker, timeout, interval=0.01):
        """Whether ``marker`` is logged within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while marker not in self.new():
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True


class LoadedRecord:
    """``loaded.json``: the pid and file digests of what a running daemon has loaded, so an
    apply knows the gentlest action, after an agent restart too. Not fsync'd: a power loss
    takes the daemons, and with them what the record is about."""

    def __init__(self, path):
        self.path = path

    def read(self):
        try:
            with open(self.path) as handle:
                return dict(json.load(handle))
        except (OSError, ValueError, TypeError):
            return {}

    def write(self, record):
        """Replace the record; an empty one removes the file."""
        if record:
            atomic_write(self.path, json.dumps(record, sort_keys=True), 0o600, durable=False)
        else:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class FileSet:
    """A group of config files owned by one subsystem, replaced together. Written
    atomically but not fsync'd: they are derived from the committed generation, which is
    (store.py), and the boot re-apply writes them again after a power loss."""

    def __init__(self, *paths, mode=0o644):
        self.paths = paths
        self.mode = mode

    def capture(self):
        snapshot = {}
        for path in self.paths:
            try:
                with open(path) as handle:
                    snapshot[path] = handle.read()
            except FileNotFoundError:
                snapshot[path] = None
        return snapshot

    @staticmethod
    def candidate(path):
        return f"{path}.new"

    def discard(self, contents):
        for path in contents:
            try:
                os.unlink(self.candidate(path))
            except FileNotFoundError:
                pass

    def converge(self, contents):
        """Make each file hold ``contents[path]`` (None: absent), rewriting only those
        that differ; returns how many did."""
        current = self.capture()
        changed = {path: text for path, text in contents.items() if current.get(path) != text}
        self.restore(changed)
        return len(changed)

    def restore(self, snapshot):
        for path, text in snapshot.items():
            if text is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                atomic_write(path, text, self.mode, durable=False)


def alive(pid):
    """The process exists and has not exited (a zombie has closed all its files)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Daemon:
    """A daemon that writes its own pid file; we only ever signal the PID in that file,
    and only if that process still runs the expected program."""

    def __init__(self, name, pidfile, argv, program=None, cwd=None):
        self.name = name
        self.pidfile = pidfile
        self.argv = list(argv)
        self.program = program or os.path.basename(argv[0])
        self.cwd = cwd  # the working directory it starts in

    def pid(self):
        try:
            with open(self.pidfile) as handle:
                pid = int(handle.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        if not any(os.path.basename(part.decode(errors="replace")) == self.program
                   for part in cmdline[:2]):
            return None  # a stale pid file pointing at someone else's process
        return pid

    def running(self):
        return self.pid() is not None

    def start(self, timeout=10):
        """Start a self-daemonising program and wait for its pid file."""
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass
        run_checked(self.argv, f"starting {self.name}", cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while self.pid() is None:
            if time.monotonic() > deadline:
                raise ApplyError("", f"{self.name} did not start (no pid in {self.pidfile})",
                                 status=500)
            time.sleep(0.005)

    def signal(self, sig=signal.SIGHUP):
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        return True

    def stop(self, timeout=5):
        """SIGTERM, SIGKILL after ``timeout`` seconds; whether there was a daemon to stop.
        Returns once the process has exited: its pid file is no sign of that (dnsmasq
        removes it on SIGTERM before it closes its sockets, and a successor started then
        failed with "Address already in use")."""
        pid = self.pid()
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not alive(pid):
                    return True
                time.sleep(0.005)
        return True


class ExactDaemon(Daemon):
    """A Daemon whose PID only counts while that process runs exactly ``command`` (default:
    the argv it is started with): another appliance's daemon on the same host never
    matches, even after PID reuse."""

    def __init__(self, name, pidfile, argv, program=None, command=None):
        super().__init__(name, pidfile, argv, program)
        self.command = list(command or argv)

    def pid(self):
        pid = super().pid()
        return pid if pid is not None and self.runs_command(pid) else None

    def runs_command(self, pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = [part.decode(errors="replace")
                        for part in handle.read().split(b"\0") if part]
        except OSError:
            return False
        return argv == self.command
