"""DHCP and DNS for the tenant networks: one dnsmasq per appliance.

Everything lives in ``<state_dir>/dnsmasq/``: dnsmasq.conf, dhcp-hosts, dns-names, the
lease file (kept across restarts, so no lease is lost), the pid file, the log and
``loaded.json``, which records what the running dnsmasq has read (pid + file digests).
``loaded.json`` is how an apply knows the gentlest action without guessing:

  nothing differs from what is loaded   nothing (no file written, no signal)
  only dhcp-hosts / dns-names differ     SIGHUP, then wait for dnsmasq to log the re-read
  dnsmasq.conf differs, or unknown       restart (the lease file carries the leases over)
  no subnet needs DHCP                   stop; the config files are removed

Candidates are checked with ``dnsmasq --test`` in the engine's check phase, before anything
live is changed; a refusal names the payload field at fault.
"""
import logging
import os
import re
import signal
import subprocess

from ..errors import ApplyError
from ..render.dhcp import (CONF, HOSTS, LOG as LOG_FILE, NAMES, PIDFILE, lines_text,
                           render_dnsmasq)
from ..store import atomic_write
from .begun import Done, InThread
from .daemon import ExactDaemon, FileSet, LoadedRecord, LogWatch, digest, log_tail

LOG = logging.getLogger(__name__)

DNSMASQ = "dnsmasq"
CHECK_TIMEOUT = 30
RELOAD_TIMEOUT = 5.0
LINE_REF = re.compile(r"\s+at line (\d+) of \S+")


# Reservations per ``dnsmasq --test``: dnsmasq compares every reservation's addresses with
# every other's, so its check grows with the square of their number (5 000 took ~80 ms
# here, 1 000 ~8 ms).
CHECK_CHUNK = 1000


def reservation_groups(lines):
    """``lines`` (the inlined ``dhcp-host=`` lines) grouped so that two reservations naming
    the same address are in one group: the only comparison dnsmasq makes between them."""
    parent = list(range(len(lines)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner = {}
    for i, line in enumerate(lines):
        for token in line.text.split(",")[1:]:  # the MAC first, a short name has no dot
            if "." in token or token.startswith("["):
                first = owner.setdefault(token, i)
                if first != i:  # named before: one group (most addresses are named once)
                    parent[root(i)] = root(first)
    groups = {}
    for i, line in enumerate(lines):
        groups.setdefault(i if parent[i] == i else root(i), []).append(line)
    return list(groups.values())


def _reservations(files):
    return sum(len(block.allocations) for block in files.host_lines)


def check_chunks(files, size=CHECK_CHUNK):
    """The candidate as one or more ``dnsmasq --test`` inputs: each the main config plus a
    share of the reservations (``reservation_groups`` kept whole, about ``size`` lines a
    share) and of the DNS names; a single one up to ``size`` reservations (a check more
    costs a process start, ~3 ms, more than it saves below that)."""
    lines = files.check_lines()
    reservations = _reservations(files)
    if reservations <= size:
        return [lines]
    conf = lines[:len(files.conf_lines)]
    hosts = lines[len(conf):len(conf) + reservations]  # check_lines' order
    names = lines[len(conf) + reservations:]
    shares = [[]]
    for group in reservation_groups(hosts):
        if shares[-1] and len(shares[-1]) + len(group) > size:
            shares.append([])
        shares[-1].extend(group)
    count = len(shares)
    return [conf + tuple(share) + tuple(names[i::count]) for i, share in enumerate(shares)]


def dnsmasq_test(files, path):
    """Run ``dnsmasq --test`` on the candidate (main config with the reservations inlined,
    written to ``path``; a large one in shares, ``check_chunks``, checked side by side). A
    refusal becomes an ApplyError naming the payload field of the refused line (422), or a
    500 when dnsmasq itself cannot run."""
    DnsmasqTest(files, path).wait()


class DnsmasqTest:
    """``dnsmasq_test`` begun: the checkers run while the caller goes on (the engine plans
    the other subsystems meanwhile); ``wait()`` gives their verdict, ``cancel()`` stops
    them. Either removes the candidate files."""

    def __init__(self, files, path):
        self.files = files
        # One share: its text as such, its lines made only for a refusal (None).
        self.chunks = (check_chunks(files, CHECK_CHUNK) if _reservations(files) > CHECK_CHUNK
                       else [None])
        self.paths = [path if i == 0 else f"{path}.{i}" for i in range(len(self.chunks))]
        self.running = []
        self.error = None  # raised by wait(), in the check's turn
        try:
            for lines, chunk_path in zip(self.chunks, self.paths):
                text = files.check_text() if lines is None else lines_text(lines)
                atomic_write(chunk_path, text, 0o600, durable=False)
                self.running.append(subprocess.Popen(
                    [DNSMASQ, "--test", f"--conf-file={chunk_path}"], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        except OSError as exc:
            self.cancel()
            self.error = ApplyError("", f"dnsmasq --test: {exc}", status=500)
            self.error.__cause__ = exc

    def wait(self):
        if self.error is not None:
            raise self.error
        try:
            outputs = [process.communicate(timeout=CHECK_TIMEOUT) for process in self.running]
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError("", f"dnsmasq --test: {exc}", status=500) from exc
        finally:
            self.cancel()
        for lines, process, (stdout, stderr) in zip(self.chunks, self.running, outputs):
            if process.returncode != 0:
                _refusal(self.files.check_lines() if lines is None else lines, stdout,
                         stderr)

    def cancel(self):
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdout, process.stderr):
                stream.close()
        for chunk_path in self.paths:
            try:
                os.unlink(chunk_path)
            except FileNotFoundError:
                pass


def _refusal(lines, stdout, stderr):
    output = (stderr.strip() or stdout.strip())[-2000:]
    message = output.removeprefix("dnsmasq: ").strip()
    found = LINE_REF.search(message)
    if found and 0 < int(found.group(1)) <= len(lines):
        line = lines[int(found.group(1)) - 1]
        message = LINE_REF.sub("", message)
        raise ApplyError(line.path, f"dnsmasq refuses {line.text!r}: {message}",
                         status=422 if line.path else 500)
    raise ApplyError("", f"dnsmasq --test failed: {output}", status=500)


class DhcpSubsystem:
    name = "dhcp"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.directory = settings.path("dnsmasq")
        self.conf = os.path.join(self.directory, CONF)
        self.hosts = os.path.join(self.directory, HOSTS)
        self.names = os.path.join(self.directory, NAMES)
        self.log = os.path.join(self.directory, LOG_FILE)
        self.record = LoadedRecord(os.path.join(self.directory, "loaded.json"))
        self.check_path = os.path.join(self.directory, "dnsmasq.check.conf")
        self.files = FileSet(self.conf, self.hosts, self.names)
        # --conf-file alone: dnsmasq reads neither /etc/dnsmasq.conf nor /etc/dnsmasq.d.
        self.daemon = ExactDaemon(DNSMASQ, os.path.join(self.directory, PIDFILE),
                                  [DNSMASQ, f"--conf-file={self.conf}"])

    # -- engine interface ------------------------------------------------------------------
    def plan(self, config, names):
        return render_dnsmasq(config, names, self.directory)

    def check(self, plan, base):
        self.start_check(plan, base).wait()

    def start_check(self, plan, base):
        """``check`` begun (DnsmasqTest): ``wait()`` for the verdict."""
        if plan is None or plan == base:
            return Done()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return DnsmasqTest(plan, self.check_path)

    def healthy(self, plan):
        return plan is None or self.daemon.pid() is not None

    def capture(self, ctx, plan, base):
        if base is not None and plan == base and self.healthy(plan):
            return None  # nothing to change (apply), so nothing to restore: no file read
        return {"files": self.files.capture(), "running": self.daemon.running()}

    def apply(self, ctx, plan, base, snapshot):
        if snapshot is None:  # capture found the committed plan running
            return 0
        return self._apply(plan)

    def start_apply(self, ctx, plan, base, snapshot):
        """``apply`` begun in a thread of its own, which mostly waits for dnsmasq (a start
        until its pid file, a re-read until its log says so) while the engine applies the
        next subsystem (the metadata proxy, in the agent's own process)."""
        if snapshot is None:
            return Done(0)
        return InThread("dhcp-apply", self._apply, plan)

    def _apply(self, plan):
        if plan is None:
            return self._converge({path: None for path in self.files.paths}, running=False)
        return self._converge(plan.contents(), running=True)

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        pid = self.daemon.pid()
        if plan is None:
            if pid is not None or os.path.exists(self.conf):
                raise ApplyError("", "dnsmasq or its configuration is still there although "
                                     "no subnet needs DHCP", status=500)
            return
        current = self.files.capture()
        for path, text in plan.contents().items():
            if current[path] != text:
                raise ApplyError("", f"{path} does not hold the rendered configuration",
                                 status=500)
        if pid is None:
            raise ApplyError("", "dnsmasq is not running", status=500)
        if self._loaded(pid) != self._digests(current):
            raise ApplyError("", f"dnsmasq (pid {pid}) has not loaded the committed "
                                 "configuration", status=500)

    def restore(self, ctx, snapshot, changes):
        if changes != 0:
            self._converge(snapshot["files"], running=snapshot["running"])

    # -- helpers ---------------------------------------------------------------------------
    def _converge(self, contents, running):
        """Make the files hold ``contents`` ({path: text or None}) and the process match:
        running with exactly those files loaded, or stopped. Returns the change count."""
        changes = self.files.converge(contents)
        pid = self.daemon.pid()
        if not running or contents.get(self.conf) is None:
            if pid is not None:
                self.daemon.stop()
                changes += 1
            self.record.write({})
            return changes
        want = self._digests(contents)
        loaded = self._loaded(pid) if pid is not None else None
        if loaded == want:
            return changes
        if pid is None:
            self._start()
        elif loaded is None or loaded["conf"] != want["conf"]:
            LOG.info("dnsmasq configuration changed: restarting")
            self.daemon.stop()
            self._start()
        elif not self._reload():
            LOG.warning("dnsmasq did not confirm the SIGHUP re-read: restarting")
            self.daemon.stop()
            self._start()
        self._remember(want)
        return changes + 1

    def _start(self):
        try:
            self.daemon.start()
        except ApplyError as exc:
            raise ApplyError("", f"dnsmasq did not start: {exc.message}\n"
                                 f"{log_tail(self.log, 5)}", status=500) from exc

    def _reload(self):
        """SIGHUP, then wait until dnsmasq logs that it re-read the reservations, so the
        next DHCP request is answered from the new ones."""
        log = LogWatch(self.log)
        self.daemon.signal(signal.SIGHUP)
        return log.wait_for(f"read {self.hosts}", RELOAD_TIMEOUT)

    def _digests(self, contents):
        return {"conf": digest(contents.get(self.conf)),
                "hosts": digest(contents.get(self.hosts)),
                "names": digest(contents.get(self.names))}

    def _loaded(self, pid):
        """The digests the running dnsmasq has loaded, if ``loaded.json`` is about it."""
        loaded = self.record.read()
        if loaded.get("pid") != pid:
            return None
        return {key: loaded.get(key) for key in ("conf", "hosts", "names")}

    def _remember(self, digests):
        self.record.write(dict(digests, pid=self.daemon.pid()))
