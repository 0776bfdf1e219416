"""Host name: ``<etc_dir>/hostname``, ``<etc_dir>/hosts`` and the kernel host name.

The kernel host name belongs to a UTS namespace, which a namespace appliance usually
shares with the machine it runs on. It is set only when it is this agent's own:
  * the agent runs in PID 1's network namespace: it is the real VM's agent;
  * or the agent has a UTS namespace of its own: different from PID 1's (or, where PID 1's
    namespaces cannot be read, from the kernel's initial one), and no process outside the
    agent's network namespace shares it.
Otherwise only the files are written.

Where the files go (``etc_dir``): the setting when given; else ``/etc`` on a real VM; else
``<state_dir>/etc``, also for an agent with a private UTS namespace, since its /etc is
still the host's unless a mount namespace says otherwise (then set ``etc_dir = /etc``).
Whatever cannot be determined is answered the safe way: no sethostname, files under the
state directory. Without CAP_SYS_ADMIN (the image's unprivileged agent) only the files are
written: the image's ``astara-hostname`` helper sets the kernel name from them (README,
"Least privilege").

Files are written atomically and only when their content differs; ``sethostname`` is a
system call (no shell, no ``hostname`` program).
"""
import os
import socket
from dataclasses import dataclass

from ..errors import ApplyError
from ..privileges import CAP_SYS_ADMIN, has_capability
from ..render.hostname import render_hostname_file, render_hosts
from .daemon import FileSet

# The kernel's fixed inode numbers of its initial namespaces (include/linux/proc_ns.h).
INITIAL_UTS_INODE = 0xEFFFFFFE


def namespace_id(pid, kind):
    """The namespace's inode number, or None when it cannot be read (process gone, or
    /proc/1 locked down as in some sandboxes)."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def is_real_vm():
    mine, init = namespace_id("self", "net"), namespace_id(1, "net")
    return mine is not None and mine == init


def uts_shared_outside_netns():
    """True when a process outside our network namespace is in our UTS namespace."""
    uts, net = namespace_id("self", "uts"), namespace_id("self", "net")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and namespace_id(entry.name, "uts") == uts:
            other = namespace_id(entry.name, "net")
            if other is not None and other != net:
                return True
    return False


def owns_kernel_hostname():
    if not has_capability(CAP_SYS_ADMIN):
        return False  # sethostname needs it; the image's helper does it from the files
    if is_real_vm():
        return True
    mine = namespace_id("self", "uts")
    reference = namespace_id(1, "uts") or INITIAL_UTS_INODE
    if mine is None or mine == reference:
        return False
    return not uts_shared_outside_netns()


def default_etc_dir(settings):
    if settings.etc_dir:
        return settings.etc_dir
    return "/etc" if is_real_vm() else settings.path("etc")


@dataclass(frozen=True)
class HostnamePlan:
    hostname: str
    files: tuple  # ((path, text), ...)


class HostnameSubsystem:
    name = "hostname"
    reads_floating_ips = False  # its plan is kept when only floating IPs change

    def __init__(self, settings):
        self.settings = settings
        self.etc_dir = default_etc_dir(settings)
        self.hostname_path = os.path.join(self.etc_dir, "hostname")
        self.hosts_path = os.path.join(self.etc_dir, "hosts")
        self.files = FileSet(self.hostname_path, self.hosts_path)
        self.set_kernel = owns_kernel_hostname()

    def plan(self, config, names):
        try:
            files = {self.hostname_path: render_hostname_file(config.hostname),
                     self.hosts_path: render_hosts(config.hostname, config.management_address)}
        except ValueError as exc:  # the model refuses these already; never write one
            raise ApplyError("hostname", str(exc)) from exc
        return HostnamePlan(config.hostname, tuple(sorted(files.items())))

    def check(self, plan, base):
        pass  # rendered from a validated RFC 1123 name; nothing else reads these files

    def capture(self, ctx, plan, base):
        return {"files": self.files.capture(),
                "kernel": socket.gethostname() if self.set_kernel else None}

    def apply(self, ctx, plan, base, snapshot):
        # two small files: always read, so hand edits are undone
        os.makedirs(self.etc_dir, exist_ok=True)
        changes = self.files.converge(dict(plan.files))
        if self.set_kernel and snapshot["kernel"] != plan.hostname:
            self._sethostname(plan.hostname)
            changes += 1
        return changes

    def verify(self, ctx, plan, base, changes):
        if changes == 0:
            return
        current = self.files.capture()
        problems = [f"{path} differs" for path, text in plan.files if current[path] != text]
        if self.set_kernel and socket.gethostname() != plan.hostname:
            problems.append(f"kernel host name is {socket.gethostname()!r}")
        if problems:
            raise ApplyError("hostname", "verification failed: " + "; ".join(problems),
                             status=500)

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        self.files.converge(snapshot["files"])
        kernel = snapshot["kernel"]
        if kernel is not None and socket.gethostname() != kernel:
            self._sethostname(kernel)

    @staticmethod
    def _sethostname(name):
        try:
            socket.sethostname(name)
        except OSError as exc:
            raise ApplyError("hostname", f"sethostname: {exc.strerror}", status=500) from exc
