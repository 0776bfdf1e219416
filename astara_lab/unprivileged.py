"""Run the real agent the way the image does: as the unprivileged ``astara-agent`` user
holding only the capabilities the image's unit grants (README, "Least privilege").

``agent_wrapper()`` is a command prefix for ``Appliance.start(wrapper=...)``: util-linux
``setpriv`` sets the user, drops every group, and makes the unit's capabilities the
inheritable, ambient and bounding sets (systemd-run cannot start a unit inside a network
namespace). A private mount namespace makes the interpreter, the repository and the state
directory reachable to that user where a parent directory is not (pyenv under a 0700
/root, the lab's 0700 temporary directory) without changing the host's permissions.
"""
import os
import pathlib
import pwd
import re
import shlex
import sys

from .appliance import REPO_ROOT
from .image import ASTARA_ELEMENT, parse_unit

AGENT_USER = "astara-agent"  # created by the image (install.d) and by scripts/install-deps
UNIT_FILE = ASTARA_ELEMENT / "init-scripts" / "systemd" / "astara-router-api.service"


def unit_capabilities(unit_file=UNIT_FILE):
    """The capability names of the image unit's ``AmbientCapabilities=`` (lower case,
    without ``cap_``, as privileges.CAPABILITY_BITS): the documented set, in the unit's
    order."""
    unit = parse_unit(unit_file)
    if not unit.has_option("Service", "AmbientCapabilities"):
        raise ValueError(f"{unit_file} has no AmbientCapabilities=")
    return tuple(re.sub(r"^cap_", "", name.lower())
                 for name in unit.get("Service", "AmbientCapabilities").split())


def agent_account(user=AGENT_USER):
    """``(uid, gid)`` of the agent's user; KeyError when this host has no such user."""
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _blocked_ancestors(path, uid, gid):
    """``(directory, child)`` for every ancestor of ``path`` that ``uid`` cannot search."""
    found = []
    parts = pathlib.Path(path).resolve().parts
    for depth in range(1, len(parts)):
        directory = pathlib.Path(*parts[:depth])
        st = directory.stat()
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            found.append((str(directory), parts[depth]))
    return found


def reachability_script(paths, scratch, uid, gid):
    """Shell lines for a private mount namespace in which ``uid`` can reach ``paths``: each
    directory it cannot search is covered by a tmpfs (mode 0755) holding only the needed
    child, bind-mounted back from a stash taken before any cover went on."""
    blocked = []
    for path in paths:
        for pair in _blocked_ancestors(path, uid, gid):
            if pair not in blocked:
                blocked.append(pair)
    blocked.sort(key=lambda pair: len(pair[0]))  # outer covers first (a stable sort)
    lines = []
    for i, (directory, child) in enumerate(blocked):
        stash = os.path.join(scratch, f"stash{i}")
        lines += [f"mkdir -p {shlex.quote(stash)}",
                  f"mount --bind {shlex.quote(os.path.join(directory, child))} "
                  f"{shlex.quote(stash)}"]
    covered = set()
    for i, (directory, child) in enumerate(blocked):
        if directory not in covered:  # one cover per directory, holding all its children
            covered.add(directory)
            lines.append(f"mount -t tmpfs -o mode=0755,size=64k astara-reach "
                         f"{shlex.quote(directory)}")
        target = os.path.join(directory, child)
        lines += [f"mkdir -p {shlex.quote(target)}",
                  f"mount --bind {shlex.quote(os.path.join(scratch, f'stash{i}'))} "
                  f"{shlex.quote(target)}"]
    return lines


def agent_wrapper(lab, state_dir, capabilities=None, user=AGENT_USER):
    """The command prefix that execs the agent as ``user`` with exactly ``capabilities``
    (default: the image unit's). ``state_dir`` (in ``lab``'s temporary directory) is given
    to the user, as the image's StateDirectory= does."""
    uid, gid = agent_account(user)
    caps = unit_capabilities() if capabilities is None else tuple(capabilities)
    scratch = lab.tmpdir("reach")  # root's: the stashes of covered directories
    lab_root = scratch.parent
    os.chmod(lab_root, 0o711)  # the lab's own directory: searchable, not listable
    for path in pathlib.Path(state_dir).rglob("*"):
        os.lchown(path, uid, gid)
    os.chown(state_dir, uid, gid)
    os.chmod(state_dir, 0o700)
    needed = [os.path.realpath(sys.executable), sys.prefix, sys.base_prefix,
              str(REPO_ROOT), str(state_dir)]
    if any(str(scratch).startswith(directory + "/") for path in needed
           for directory, _ in _blocked_ancestors(path, uid, gid)):
        raise RuntimeError(f"{scratch} lies under a directory {user} cannot search")
    listed = "".join(f",+{name}" for name in caps)
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               f"--inh-caps=-all{listed}", f"--ambient-caps=-all{listed}",
               f"--bounding-set=-all{listed}", "--"]
    # The image's /run as the agent sees it: charon's compiled-in pid file created for the
    # agent's user (the image's tmpfiles.d), on a private /run so the host's stays alone.
    run = os.path.realpath("/var/run")
    image_run = [f"mount -t tmpfs -o mode=0755,size=1m astara-run {shlex.quote(run)}",
                 f"install -m 0644 -o {uid} -g {gid} /dev/null {shlex.quote(run)}/charon.pid"]
    script = "\n".join(["set -e", *reachability_script(needed, scratch, uid, gid),
                        *image_run, 'exec "$@"'])
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            "astara-reach", *setpriv)
