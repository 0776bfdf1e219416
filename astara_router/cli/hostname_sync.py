"""``astara-hostname-sync``: the image's privileged helper for the host name.

The image's agent runs unprivileged (README, "Least privilege"): it writes the host name
of its configuration into ``<etc_dir>/hostname`` (``etc_dir = /var/lib/astara/etc`` in the
image's ini) and cannot call sethostname. ``astara-hostname.path`` runs this, as root,
whenever that file changes, and once at boot. Its whole interface is one host name: it is
checked with the payload's own grammar, then set as the kernel's host name and written
into /etc/hostname and /etc/hosts, which are rendered here (the management address comes
from what ``astara-configure-management`` recorded, and must parse as one address), never
copied from the agent.
"""
import argparse
import os
import socket
import sys

from .. import settings as settings_mod
from ..apply.daemon import FileSet
from ..model.schema import HOST_NAME_MAX
from ..render.hostname import render_hostname_file, render_hosts
from .management import read_management


def wanted_hostname(etc_dir):
    """The host name the agent asks for, or None when it has written none."""
    try:
        with open(os.path.join(etc_dir, "hostname")) as handle:
            text = handle.read(HOST_NAME_MAX + 2)
    except FileNotFoundError:
        return None
    name = text.removesuffix("\n")
    if len(name) > HOST_NAME_MAX or render_hostname_file(name) != text:  # ValueError: bad
        raise ValueError(f"{etc_dir}/hostname does not hold one host name")
    return name


def sync(settings, target="/etc", kernel=socket):
    """Make the kernel's host name (``kernel``: gethostname/sethostname) and ``target``'s
    hostname/hosts match the agent's file; the number of things changed."""
    if not settings.etc_dir or os.path.realpath(settings.etc_dir) == os.path.realpath(target):
        raise ValueError("etc_dir must name the agent's own directory, not " + target)
    name = wanted_hostname(settings.etc_dir)
    if name is None:
        return 0
    address = read_management(settings.state_dir).get("address")
    files = {os.path.join(target, "hostname"): render_hostname_file(name),
             os.path.join(target, "hosts"): render_hosts(name, address)}
    changed = FileSet(*files).converge(files)
    if kernel.gethostname() != name:
        kernel.sethostname(name)
        changed += 1
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    parser.add_argument("--config-file", default="/etc/astara/astara.ini")
    args = parser.parse_args(argv)
    try:
        changed = sync(settings_mod.load(args.config_file))
    except (OSError, ValueError) as exc:
        print(f"astara-hostname-sync: {exc}", file=sys.stderr)
        return 1
    print(f"astara-hostname-sync: {changed} change(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
