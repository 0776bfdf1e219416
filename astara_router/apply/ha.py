"""keepalived (VRRP) and conntrackd for an HA router, as a transaction participant.

Files in ``<state_dir>/ha/``: ``keepalived.conf``, ``keepalived.pid`` (and
``keepalived-vrrp.pid``, its VRRP child), ``keepalived.log``, ``notify.sh`` (keepalived runs
it on every state change; an agent that is not root runs it for keepalived, which writes
the change to ``notify.fifo``, see ha_notify.py), ``vrrp.state`` (the state it last reported), ``conntrackd.conf``,
``conntrackd.ctl`` (its control socket), ``conntrackd.lock``, ``conntrackd.pid``,
``conntrackd.log`` and ``loaded.json`` (pid + digest of the configuration each running
daemon has loaded, so an apply knows the gentlest action after an agent restart too).

  check     ``keepalived -t`` on a candidate next to the live file, in the appliance's own
            network namespace (it checks the interfaces exist); a refusal names the
            payload field behind the refused line. conntrackd has no checker: its renderer
            is pinned by grammar tests, and its load is verified against the daemon.
  apply     files swapped atomically; conntrackd (re)started when its file changed (it
            cannot reload) before keepalived, so a new master finds it; keepalived reloaded
            with SIGHUP (state and addresses kept; removed addresses and routes dropped) and
            the reload confirmed in its log, or started — after removing any virtual address
            left on the links by a keepalived that died, since a fresh instance starts as
            backup. Not HA: both stopped (SIGTERM: keepalived releases its addresses first),
            files removed.
  verify    keepalived and its VRRP child run; ``conntrackd -s`` answers on our socket and
            names the management interface.
  restore   the snapshot's files and daemons back, the same way.

Both daemons run in the agent's network namespace, detached (their own session, so
stopping the agent stops neither: keepalived keeps serving while the agent restarts), with
every path under the state directory: two appliances on one host never meet.
"""
import contextlib
import functools
import ipaddress
import logging
import os
import re
import signal
import subprocess
import time

from .. import rtnl
from ..errors import ApplyError
from ..privileges import CAP_SETGID, has_capability
from ..render.ha import (CONNTRACKD_CONF, CONNTRACKD_LOCK, CONNTRACKD_LOG, CONNTRACKD_SOCKET,
                         KEEPALIVED_CONF, NOTIFY, NOTIFY_FIFO, HaOptions, render_ha)
from ..store import atomic_write
from .daemon import (ExactDaemon, FileSet, LoadedRecord, LogWatch, alive, check_socket_path,
                     digest, log_tail, run_checked)
from .ha_notify import NotifyFifo
from .netlink import MAIN_TABLE, RTPROT_ASTARA, allow_nonlocal_bind

LOG = logging.getLogger(__name__)

KEEPALIVED = "keepalived"
CONNTRACKD = "conntrackd"
CHECK_TIMEOUT = 30
RELOAD_TIMEOUT = 10.0
RELOADED = "Reload complete"
LINE_REF = re.compile(r"\(([^():]*): Line (\d+)\)\s*(.*)")
# Start a program detached: its own session, output to a log, no controlling terminal;
# "$!" (printed, and written to the pid file unless the program writes its own) is the
# program itself: a background job of a shell without job control is no process-group
# leader, so setsid execs without forking.
DETACH = ('log=$1; pidfile=$2; shift 2; setsid "$@" </dev/null >>"$log" 2>&1 & '
          'echo $!; [ "$pidfile" = - ] || echo $! >"$pidfile"')


def detached(argv, log, pidfile=None):
    return ["sh", "-c", DETACH, "sh", log, pidfile or "-", *argv]


class DetachedDaemon(ExactDaemon):
    """Started through ``detached``, identified by its exact command line."""

    def __init__(self, name, pidfile, command, log, writes_pidfile):
        super().__init__(name, pidfile,
                         detached(command, log, None if writes_pidfile else pidfile),
                         program=os.path.basename(command[0]), command=command)

    def start(self, timeout=10):
        """Launch, then wait until the pid file names the running program; a program
        that exits at once fails at once."""
        try:
            os.unlink(self.pidfile)
        except FileNotFoundError:
            pass
        launched = int(run_checked(self.argv, f"starting {self.name}").split()[0])
        deadline = time.monotonic() + timeout
        while self.pid() is None:
            if not alive(launched):
                raise ApplyError("", f"{self.name} exited at once", status=500)
            if time.monotonic() > deadline:
                raise ApplyError("", f"{self.name} did not write {self.pidfile}", status=500)
            time.sleep(0.02)


class HaSubsystem:
    name = "ha"

    def __init__(self, settings):
        self.directory = settings.path("ha")
        # without CAP_SETGID keepalived cannot run the notify script (its setgroups fails,
        # also as root in a container), so the agent does (ha_notify.py)
        self.options = HaOptions(settings.ha_advert_interval, settings.ha_preempt,
                                 settings.ha_preempt_delay,
                                 notify_fifo=not has_capability(CAP_SETGID))
        path = lambda name: os.path.join(self.directory, name)  # noqa: E731
        self.keepalived_conf = path(KEEPALIVED_CONF)
        self.conntrackd_conf = path(CONNTRACKD_CONF)
        self.notify = path(NOTIFY)
        self.keepalived_log = path("keepalived.log")
        self.conntrackd_log = path(CONNTRACKD_LOG)
        self.vrrp_pidfile = path("keepalived-vrrp.pid")
        self.record = LoadedRecord(path("loaded.json"))
        self.socket = path(CONNTRACKD_SOCKET)
        self.lock = path(CONNTRACKD_LOCK)
        self.config_files = FileSet(self.keepalived_conf, self.conntrackd_conf)
        self.script = FileSet(self.notify, mode=0o755)
        self.notify_fifo = NotifyFifo(path(NOTIFY_FIFO), self.notify)
        # -P: VRRP only (no checker process); -n: no fork (detached() does that), so the
        # log gets everything (-l) and nothing goes to a syslog the appliance may not have.
        self.keepalived = DetachedDaemon(
            KEEPALIVED, path("keepalived.pid"),
            [KEEPALIVED, "-n", "-l", "-G", "-P", "-f", self.keepalived_conf,
             "-p", path("keepalived.pid"), "-r", self.vrrp_pidfile],
            self.keepalived_log, writes_pidfile=True)
        self.conntrackd = DetachedDaemon(
            CONNTRACKD, path("conntrackd.pid"), [CONNTRACKD, "-C", self.conntrackd_conf],
            os.devnull, writes_pidfile=False)  # it logs to its LogFile

    # -- engine interface ------------------------------------------------------------------
    def plan(self, config, names):
        return render_ha(config, names, self.directory, self.options)

    def check(self, plan, base):
        """``keepalived -t`` on a candidate next to the live file."""
        if plan is None or plan == base:
            return
        check_socket_path(self.socket, "conntrackd socket")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        candidate = FileSet.candidate(self.keepalived_conf)
        atomic_write(candidate, plan.keepalived_text, 0o644, durable=False)
        try:
            result = subprocess.run([KEEPALIVED, "-t", "-f", candidate], capture_output=True,
                                    text=True, timeout=CHECK_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError("", f"keepalived -t: {exc}", status=500) from exc
        finally:
            self.config_files.discard({self.keepalived_conf: None})
        if result.returncode != 0:
            raise refusal(result.stderr or result.stdout, plan)

    def healthy(self, plan):
        if plan is None:
            return True
        return self.keepalived.running() and (plan.conntrackd is None
                                              or self.conntrackd.running())

    def capture(self, ctx, plan, base):
        return {"files": {**self.config_files.capture(), **self.script.capture()},
                "keepalived": self.keepalived.running(),
                "conntrackd": self.conntrackd.running(),
                "cleared": []}  # filled by apply: addresses it removed before starting

    def apply(self, ctx, plan, base, snapshot):
        if base is not None and plan == base and self.healthy(plan):
            if plan is not None:  # nothing to converge: read for the keepalived running,
                self._read_notifications()  # perhaps started by an earlier agent
            return 0
        if plan is None:
            return self._converge(dict.fromkeys(
                (self.keepalived_conf, self.conntrackd_conf, self.notify)), False, False)
        allow_nonlocal_bind()  # daemons bind to addresses the master holds, on the backup too
        contents = dict.fromkeys((self.keepalived_conf, self.conntrackd_conf))
        contents.update(plan.contents(self.directory))
        return self._converge(contents, True, plan.conntrackd is not None,
                              plan.virtual_addresses, snapshot["cleared"])

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        if plan is None:
            if self.keepalived.running() or self.conntrackd.running():
                raise ApplyError("", "keepalived or conntrackd still runs although the "
                                     "router is not HA", status=500)
            return
        current = self.config_files.capture()
        if current[self.keepalived_conf] != plan.keepalived_text or \
                current[self.conntrackd_conf] != plan.conntrackd:
            raise ApplyError("", f"{self.directory} does not hold the rendered "
                                 "configuration", status=500)
        if self._vrrp_child() is None:
            with quoting(self.keepalived_log):
                raise ApplyError("", "keepalived's VRRP process is not running", status=500)
        if plan.conntrackd is not None:
            # It may answer on its socket before its sync channel fails (a taken port):
            # then it is gone here, and its log says why.
            with quoting(self.conntrackd_log):
                self._conntrackd_serves(plan.management_interface)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        files = snapshot["files"]
        # Restored last (the reverse of the apply order): netlink's routes are back. A
        # keepalived that became master before the rollback holds the addresses netlink
        # had; stopping it removes them, and with a link's last IPv4 address the kernel
        # flushes every route through that link, netlink's included.
        routes = rtnl.routes(MAIN_TABLE, RTPROT_ASTARA)
        self._converge(files, snapshot["keepalived"],
                       snapshot["conntrackd"] and files[self.conntrackd_conf] is not None)
        # what netlink (or a dead keepalived) had there before: the kernel as it was
        _ip_batch(f"address replace {address} dev {dev}" for dev, address in
                  snapshot["cleared"])
        lost = set(routes) - set(rtnl.routes(MAIN_TABLE, RTPROT_ASTARA))
        if lost:
            _, error = rtnl.transact([functools.partial(
                rtnl.route_request, add=True, destination=destination, gateway=gateway,
                oif=oif, table=MAIN_TABLE, protocol=RTPROT_ASTARA)
                for destination, gateway, oif in routes if (destination, gateway, oif) in lost])
            if error is not None:
                raise error

    # -- helpers ---------------------------------------------------------------------------
    def _converge(self, contents, keepalived, conntrackd, virtual_addresses=(),
                  cleared=None):
        """Files as ``contents`` ({path: text or None}), each daemon running with exactly
        its file loaded (or stopped); ``cleared`` collects the addresses removed before
        keepalived starts. Returns the change count."""
        changes = self.config_files.converge({p: contents[p] for p in
                                              (self.keepalived_conf, self.conntrackd_conf)})
        changes += self.script.converge({self.notify: contents[self.notify]})
        loaded = self.record.read()
        if not keepalived:
            loaded.pop(KEEPALIVED, None)
            changes += int(self.keepalived.stop())  # SIGTERM: it releases its addresses, routes
        changes += self._converge_conntrackd(conntrackd, loaded,
                                             digest(contents[self.conntrackd_conf]))
        if keepalived:
            self._read_notifications()  # before keepalived opens the FIFO
            changes += self._converge_keepalived(
                loaded, digest(contents[self.keepalived_conf]), virtual_addresses,
                cleared if cleared is not None else [])
        self.record.write(loaded)
        return changes

    def _read_notifications(self):
        if self.options.notify_fifo:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self.notify_fifo.ensure_reading()

    def _converge_conntrackd(self, wanted, loaded, conf_digest):
        pid = self.conntrackd.pid()
        if not wanted:
            loaded.pop(CONNTRACKD, None)
            if pid is None:
                return 0
            self.conntrackd.stop()
            return 1
        if pid is not None and loaded.get(CONNTRACKD) == [pid, conf_digest]:
            return 0
        self._forget(loaded, CONNTRACKD)
        if pid is not None:  # conntrackd cannot reload: restart (it re-reads the kernel
            LOG.info("conntrackd configuration changed: restarting")  # table at start)
            self.conntrackd.stop()
        try:
            os.unlink(self.lock)  # left by a conntrackd that was killed: it would not start
        except FileNotFoundError:
            pass
        self._start(self.conntrackd, self.conntrackd_log, lambda: self._conntrackd_serves(None))
        loaded[CONNTRACKD] = [self.conntrackd.pid(), conf_digest]
        return 1

    def _converge_keepalived(self, loaded, conf_digest, virtual_addresses, cleared):
        pid = self.keepalived.pid()
        if pid is not None and loaded.get(KEEPALIVED) == [pid, conf_digest]:
            return 0
        self._forget(loaded, KEEPALIVED)  # what it runs is unknown until confirmed
        if pid is None:
            cleared.extend(clear_stale(virtual_addresses))
            try:
                os.unlink(self.vrrp_pidfile)
            except FileNotFoundError:
                pass
            self._start(self.keepalived, self.keepalived_log, lambda: self._wait(
                lambda: self._vrrp_child() is not None,
                "keepalived did not start its VRRP process"))
        else:
            self._reload_keepalived()
        loaded[KEEPALIVED] = [self.keepalived.pid(), conf_digest]
        return 1

    def _reload_keepalived(self):
        """SIGHUP, then wait until keepalived logs that the reload is complete: from then on
        it runs the new configuration (state and addresses kept)."""
        log = LogWatch(self.keepalived_log)
        self.keepalived.signal(signal.SIGHUP)
        if not log.wait_for(RELOADED, RELOAD_TIMEOUT, interval=0.02):
            raise ApplyError("", "keepalived did not confirm the SIGHUP reload", status=500)
        LOG.info("keepalived reloaded")

    def _start(self, daemon, log, ready):
        """Start ``daemon`` and wait until ``ready()`` passes; a failure quotes its log."""
        with quoting(log):
            daemon.start()
            ready()

    def _vrrp_child(self):
        try:
            with open(self.vrrp_pidfile) as handle:
                pid = int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        parent = self.keepalived.pid()
        try:
            with open(f"/proc/{pid}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pid if parent is not None and ppid == parent else None

    def _conntrackd_serves(self, interface, timeout=5.0):
        """conntrackd answers on our socket; its sync channel runs on ``interface``."""
        def answers():
            if self.conntrackd.pid() is None:
                raise ApplyError("", "conntrackd exited", status=500)
            try:
                output = run_checked([CONNTRACKD, "-C", self.conntrackd_conf, "-s"],
                                     "conntrackd -s", timeout=5)
            except ApplyError:
                return False
            return interface is None or f"device={interface}" in output
        self._wait(answers, f"conntrackd does not answer on {self.socket}"
                   + (f" with a sync channel on {interface}" if interface else ""), timeout)

    @staticmethod
    def _wait(condition, failure, timeout=RELOAD_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ApplyError("", failure, status=500)
            time.sleep(0.02)

    def _forget(self, loaded, daemon):
        """Persist "``daemon``'s configuration unknown" before acting on it: an apply that
        fails halfway must not leave a record claiming the old one is loaded."""
        if loaded.pop(daemon, None) is not None:
            self.record.write(loaded)


@contextlib.contextmanager
def quoting(log):
    """An ApplyError raised inside quotes the last lines of ``log``: where a daemon says
    why it failed (the API logs it; the client gets only the 500)."""
    try:
        yield
    except ApplyError as exc:
        raise ApplyError("", f"{exc.message}; {log}: "
                             f"{log_tail(log, 3, sep=' | ', missing=f'no {log}')}",
                         status=500) from exc


def clear_stale(virtual_addresses):
    """Remove the virtual addresses already on the links — left by a keepalived that died,
    or by a generation that was not HA — and keepalived's routes: a new keepalived starts
    as backup and would leave them there. Returns the (dev, address) removed."""
    names = {index: name for index, name, *_ in rtnl.links()}
    present = {(names.get(index), ipaddress.ip_interface(text))
               for index, texts in rtnl.addresses().items() for text in texts}
    removed = [item for item in virtual_addresses if item in present]
    _ip_batch(f"address del {address} dev {dev}" for dev, address in removed)
    for family in ("-4", "-6"):
        subprocess.run(["ip", family, "route", "flush", "proto", "keepalived"],
                       capture_output=True, text=True)
    return removed


def _ip_batch(lines):
    text = "".join(f"{line}\n" for line in lines)
    if text:
        subprocess.run(["ip", "-force", "-batch", "-"], input=text, capture_output=True,
                       text=True)


def refusal(output, plan):
    """An ApplyError for ``keepalived -t`` output: the payload field behind the first line
    it names (422), else the appliance's fault (500)."""
    output = (output or "").strip()
    for match in LINE_REF.finditer(output):
        path = plan.path_for_line(int(match.group(2)))
        if path:
            return ApplyError(path, f"keepalived refuses it: {match.group(3)}")
    return ApplyError("", f"keepalived -t rejected the configuration: {output[-1500:]}",
                      status=500)
