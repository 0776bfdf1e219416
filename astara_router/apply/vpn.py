"""IPsec site-to-site VPN with strongSwan: charon, a child of the agent, driven by swanctl.

Everything lives in ``<state_dir>/vpn/`` (0700), nothing in the host's /etc or /run:

  strongswan.conf   charon's and swanctl's settings (plugins, vici socket, log, the global
                    DPD/MTU settings), passed as ``STRONGSWAN_CONF``
  swanctl.conf      the connections and their PSKs (0600; the PSKs hex-encoded)
  run/              charon writes its pid file to the compiled-in ``/run/charon.pid``: it
                    runs in a private mount namespace (``unshare --mount``) where this
                    directory is bound over /run. The vici socket is here too. An agent
                    without CAP_SYS_ADMIN (the image's, README "Least privilege") cannot
                    make one: its charon writes the real ``/run/charon.pid``, which the
                    image creates for the agent's user (tmpfiles.d); one charon per host.
  charon.log        charon's log (level 1: strongSwan logs secrets at level 4 only)

IPsec backend (agent setting ``[vpn] ipsec_backend``): ``kernel`` (xfrm, the image),
``libipsec`` (strongSwan's userspace ESP over a TUN device, for kernels without ESP such as
the CI machine's) or ``auto``: the kernel path when this kernel can install an ESP SA —
probed once, in a throwaway network namespace — else libipsec.

swanctl has no offline checker: the renderer's output is pinned by grammar tests, and the
load is verified against the running charon. An apply:

  nothing to change        nothing runs (text unchanged and charon running)
  swanctl.conf changed     ``swanctl --load-all --clear``: charon replaces changed
                           connections, unloads removed ones (tearing their SAs down) and
                           leaves unchanged ones and their SAs alone
  strongswan.conf changed  charon restarts (its plugins and global settings are read at
                           start), then the load
  no active connection     charon stops (SIGTERM tears every SA down), files removed

verify: vici's list of loaded connections, children, traffic selectors and shared keys
must equal the plan. restore: the old files back, charon restarted or stopped to match, the
old connections loaded again.
"""
import logging
import os
import re
import socket
import subprocess
import time

from ..errors import ApplyError
from ..privileges import CAP_SYS_ADMIN, has_capability
from ..render.vpn import LOG_FILE, RUN_DIR, SOCKET, render_vpn
from .daemon import Daemon, FileSet, check_socket_path, log_tail

LOG = logging.getLogger(__name__)

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
TUN_DEVICE = "/dev/net/tun"
START_TIMEOUT = 15.0
# swanctl's chatter about credential folders and plugins we do not use
NOISE = ("opening directory", "plugin '", "loading '")
LOAD_FAILED = re.compile(r"loading connection '([^']+)' failed")
# charon's name for an IKE_SA without a connection: a responder's, before the peer's
# IKE_AUTH selects one (no connection name has parentheses: render.vpn.CONNECTION_NAME)
UNNAMED = "(unnamed)"


def kernel_has_esp():
    """Whether this kernel can install an ESP SA: one ``ip xfrm state add`` in a throwaway
    network namespace (it vanishes with the command). A kernel without ESP answers
    "Requested type not found"."""
    key = "0x" + "00" * 16
    command = ["unshare", "--net", "ip", "xfrm", "state", "add", "src", "127.0.0.1",
               "dst", "127.0.0.2", "proto", "esp", "spi", "0x100", "mode", "tunnel",
               "enc", "cbc(aes)", key, "auth-trunc", "hmac(sha1)", key + "00000000", "96"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOG.warning("cannot probe the kernel for ESP (%s): using kernel-libipsec", exc)
        return False
    if result.returncode != 0:
        LOG.info("the kernel cannot install ESP SAs (%s): IPsec runs in userspace "
                 "(kernel-libipsec)", result.stderr.strip())
    return result.returncode == 0


class Charon(Daemon):
    """charon of this appliance: its pid file says which process, and that process must
    run with our ``STRONGSWAN_CONF`` (another appliance's charon on the same host never
    counts, even after PID reuse)."""

    def __init__(self, directory):
        self.directory = directory
        self.conf = os.path.join(directory, "strongswan.conf")
        self.run_dir = os.path.join(directory, RUN_DIR)
        self.socket = os.path.join(self.run_dir, SOCKET)
        self.log = os.path.join(directory, LOG_FILE)
        # where charon's compiled-in pid file is: its own /run, or the host's
        self.private_run = has_capability(CAP_SYS_ADMIN)
        self.host_run = os.path.realpath("/var/run")
        super().__init__("charon", os.path.join(
            self.run_dir if self.private_run else self.host_run, "charon.pid"), [CHARON])
        self.process = None  # our Popen, reaped when it exits

    def pid(self):
        if self.process is not None and self.process.poll() is not None:
            self.process = None  # reaped
        pid = super().pid()
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            return None
        return pid if f"STRONGSWAN_CONF={self.conf}".encode() in environ else None

    def clear_stale(self):
        """Before a start: remove the socket and pid file a dead charon left. charon refuses
        to start while its pid file names a live process, and after a SIGKILL that pid may
        be reused by any daemon of the same user. The host's /run/charon.pid is emptied
        instead (the agent owns that file, tmpfiles.d, but may not unlink in /run)."""
        for stale in (self.pidfile, self.socket) if self.private_run else (self.socket,):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        if not self.private_run:
            try:
                os.truncate(self.pidfile, 0)
            except FileNotFoundError:
                pass

    def start(self, timeout=START_TIMEOUT):
        check_socket_path(self.socket, "charon's vici socket")
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.clear_stale()
        argv = (["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind "$1" "$2" && exec "$3"', "charon", self.run_dir, self.host_run,
                 CHARON]
                if self.private_run else [CHARON])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                     "STRONGSWAN_CONF": self.conf},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while self.pid() is None or not self.answers():
            if self.process is None or self.process.poll() is not None:
                raise ApplyError("", f"charon exited at start:\n{self.log_tail()}", status=500)
            if time.monotonic() > deadline:
                raise ApplyError("", f"charon did not start in {timeout:.0f} s:\n"
                                     f"{self.log_tail()}", status=500)
            time.sleep(0.02)
        LOG.info("charon started (pid %s)", self.pid())

    def stop(self, timeout=10):
        """Daemon.stop (SIGTERM: charon tears its SAs, routes and TUN down; returns once it
        has exited, also when another agent process started it), then the process we
        started is reaped."""
        stopped = super().stop(timeout)
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        return stopped

    def answers(self):
        try:
            with self.session():
                return True
        except OSError:
            return False

    def session(self):
        return _ViciSession(self.socket)

    def log_tail(self):
        return log_tail(self.log, 8)


class _ViciSession:
    """A vici session over our socket, closed on exit."""

    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def __enter__(self):
        import vici  # only appliances with a VPN need it
        return vici.Session(self.sock)

    def __exit__(self, *exc):
        self.sock.close()


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def loaded_state(session):
    """{connection: {child: (local_ts, remote_ts)}} and the shared key ids charon holds."""
    conns = {}
    for item in session.list_conns():
        for name, conn in item.items():
            conns[name] = {child: (tuple(map(_text, spec.get("local-ts", ()))),
                                   tuple(map(_text, spec.get("remote-ts", ()))))
                           for child, spec in conn.get("children", {}).items()}
    keys = tuple(sorted(map(_text, session.get_shared().get("keys", ()))))
    return conns, keys


def wanted_state(plan):
    conns = {c.name: {child.name: (child.local_ts, child.remote_ts) for child in c.children}
             for c in plan.connections} if plan is not None else {}
    keys = tuple(sorted(c.secret for c in plan.connections)) if plan is not None else ()
    return conns, keys


class VpnSubsystem:
    name = "vpn"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.directory = settings.path("vpn")
        self.backend_setting = settings.ipsec_backend
        self._backend = None
        self.charon = Charon(self.directory)
        self.swanctl = os.path.join(self.directory, "swanctl.conf")
        self.secrets = FileSet(self.swanctl, mode=0o600)  # holds the PSKs
        self.conf_files = FileSet(self.charon.conf, mode=0o600)

    def backend(self):
        """The IPsec backend, decided once (the kernel does not change under us)."""
        if self._backend is None:
            setting = self.backend_setting
            if setting == "auto":
                setting = "kernel" if kernel_has_esp() else "libipsec"
            self._backend = setting
        return self._backend

    # -- the transaction protocol -----------------------------------------------------------
    def plan(self, config, names):
        if config.router is None or not any(s.active_connections for s in config.router.vpn):
            return None  # no probe, no charon for appliances without a VPN
        return render_vpn(config, self.backend(), self.directory)

    def check(self, plan, base):
        """No offline checker exists for swanctl.conf (the renderer's grammar is pinned by
        tests); what can be checked before anything changes: the programs and the TUN
        device kernel-libipsec needs."""
        if plan is None or plan == base:
            return
        for program in (CHARON, "/usr/sbin/swanctl"):
            if not os.access(program, os.X_OK):
                raise ApplyError("", f"{program} is not installed (strongSwan)", status=500)
        if plan.backend == "libipsec" and not os.path.exists(TUN_DEVICE):
            raise ApplyError("", f"kernel-libipsec needs {TUN_DEVICE}, which this appliance "
                                 f"does not have", status=500)

    def healthy(self, plan):
        return plan is None or self.charon.running()

    def capture(self, ctx, plan, base):
        return {"secrets": self.secrets.capture(), "settings": self.conf_files.capture(),
                "running": self.charon.running()}

    def apply(self, ctx, plan, base, snapshot):
        if base is not None and plan == base and self.healthy(plan):
            return 0
        if plan is None:
            return self._remove()
        try:
            return self._converge(plan.strongswan, plan.swanctl, force_load=base is None)
        except ApplyError as exc:
            refused = LOAD_FAILED.search(exc.message)
            connection = plan.connection_named(refused.group(1)) if refused else None
            if connection is None:
                raise
            raise ApplyError(connection.path, exc.message, status=500) from exc

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        if plan is None:
            if self.charon.running() or os.path.exists(self.swanctl):
                raise ApplyError("", "charon or swanctl.conf is still there although no "
                                     "connection is active", status=500)
            return
        if not self.charon.running():
            raise ApplyError("", f"charon is not running:\n{self.charon.log_tail()}",
                             status=500)
        with self.charon.session() as session:
            loaded = loaded_state(session)
        wanted = wanted_state(plan)
        if loaded != wanted:
            raise ApplyError("", f"charon has not loaded the rendered connections: it holds "
                                 f"{loaded[0]} and keys {loaded[1]}, wanted {wanted[0]} and "
                                 f"keys {wanted[1]}", status=500)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        settings = snapshot["settings"][self.charon.conf]
        secrets = snapshot["secrets"][self.swanctl]
        if not snapshot["running"] or settings is None or secrets is None:
            self._remove()
            self.conf_files.restore(snapshot["settings"])
            self.secrets.restore(snapshot["secrets"])
            return
        self._converge(settings, secrets, force_load=True)

    # -- steps --------------------------------------------------------------------------------
    def _converge(self, settings, secrets, force_load):
        """charon running with ``settings`` and ``secrets`` loaded; the change count."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        changes = 0
        if self.conf_files.converge({self.charon.conf: settings}):
            if self.charon.running():
                LOG.info("strongswan.conf changed: restarting charon")
                self.charon.stop()
            changes += 1
        changes += self.secrets.converge({self.swanctl: secrets})
        started = not self.charon.running()
        if started:
            self.charon.start()
            changes += 1
        if changes or force_load:
            self._load()
            self._tear_down_unloaded()
        return max(changes, 1 if force_load else 0)

    def _load(self):
        """``swanctl --load-all --clear``: connections and secrets as in swanctl.conf."""
        command = [SWANCTL, "--load-all", "--clear", "--noprompt", "--file", self.swanctl,
                   "--uri", f"unix://{self.charon.socket}"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "STRONGSWAN_CONF": self.charon.conf})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError("", f"swanctl --load-all: {exc}", status=500) from exc
        output = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                           if line.strip() and not line.startswith(NOISE))
        if result.returncode != 0:
            raise ApplyError("", f"swanctl --load-all failed: {output[-2000:]}", status=500)
        LOG.info("swanctl: %s", output.splitlines()[-1] if output else "loaded")

    def _tear_down_unloaded(self):
        """charon sends DELETE for the SAs of an unloaded connection but keeps them until
        the peer answers (or its retransmissions give up): destroy them now, so the
        tunnel is gone when the apply answers. A peer's negotiation in progress has no
        connection yet (UNNAMED until its IKE_AUTH selects one, and only a loaded one can
        be selected): it is left to finish. Destroying it silently left the peer
        retransmitting into nothing until it gave up."""
        with self.charon.session() as session:
            loaded = {name for item in session.list_conns() for name in item}
            orphans = {_text(sa["uniqueid"]) for item in session.list_sas()
                       for name, sa in item.items() if name not in loaded | {UNNAMED}}
            for unique_id in sorted(orphans):
                try:
                    for _ in session.terminate({"ike-id": unique_id, "force": "yes",
                                                "timeout": "-1"}):
                        pass
                except Exception as exc:  # vici's CommandException: already gone
                    LOG.info("terminating IKE_SA %s: %s", unique_id, exc)

    def _remove(self):
        return (int(self.charon.stop()) + self.secrets.converge({self.swanctl: None})
                + self.conf_files.converge({self.charon.conf: None}))
