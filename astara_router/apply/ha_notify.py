"""keepalived's state changes through its notify FIFO, for an agent that is not root.

keepalived calls setgroups() before every script it runs, which needs CAP_SETGID; the
image's agent does not have it (README, "Least privilege"), so its keepalived runs no
script: it writes each state change to ``<state_dir>/ha/notify.fifo`` (``notify_fifo``,
one line such as ``INSTANCE "astara" MASTER 100``) and a thread of the agent runs
``notify.sh`` with those words, as keepalived would have.

The agent opens the FIFO read-write before it starts keepalived: keepalived finds a
reader, and the agent never reads an end of file while keepalived restarts. State changes
written while no agent process reads (a worker being replaced) wait in the pipe.
"""
import logging
import os
import shlex
import stat
import subprocess
import threading

LOG = logging.getLogger(__name__)
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
SCRIPT_TIMEOUT = 60


def notify_arguments(line):
    """notify.sh's arguments for one FIFO line, or None for a line it does not take."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if len(words) == 4 and words[0] == "INSTANCE" and words[2] in STATES and \
            words[3].isdigit():
        return words
    return None


class NotifyFifo:
    def __init__(self, path, script):
        self.path = path
        self.script = script
        self._lock = threading.Lock()
        self._thread = None

    def ensure_reading(self):
        """The FIFO exists and this process reads it (started once per agent process)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._is_fifo():
                return
            if not self._is_fifo():
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                os.mkfifo(self.path, 0o600)
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._read, args=(fd,), daemon=True,
                                            name="keepalived-notify")
            self._thread.start()

    def _is_fifo(self):
        try:
            return stat.S_ISFIFO(os.lstat(self.path).st_mode)
        except FileNotFoundError:
            return False

    def _read(self, fd):
        with os.fdopen(fd, "r", errors="replace") as fifo:
            for line in fifo:
                arguments = notify_arguments(line)
                if arguments is None:
                    LOG.warning("keepalived notify FIFO: ignored %r", line[:200])
                    continue
                LOG.info("keepalived: %s", " ".join(arguments))
                try:
                    subprocess.run([self.script, *arguments], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=SCRIPT_TIMEOUT, check=False)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    LOG.warning("%s %s: %s", self.script, " ".join(arguments), exc)
