"""astara-leftovers: list (and with --remove, delete) what crashed labs left.

Only names of the Lab pattern (``ast`` + 6 hex digits + ``-`` + role) are
ever considered: namespaces, the processes inside them, /etc/netns/<name>
dirs and lab temp roots (<tmp>/<prefix>-lab-*). Anything else is never
touched. Do not run --remove while labs are in use: it cannot tell a live
lab from a leaked one (use --prefix to narrow it to one lab).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile

from astara_netns import (
    NETNS_ETC_DIR, Lab, kill_netns_processes, list_netns, netns_pids, run,
)

NAME_RE = re.compile(rf"({Lab.PREFIX_RE.pattern})-[A-Za-z0-9_.-]+")
TMP_RE = re.compile(rf"({Lab.PREFIX_RE.pattern})-lab-\S+")


def _keep(regex, name, prefix):
    m = regex.fullmatch(name)
    return bool(m) and (prefix is None or m.group(1) == prefix)


def find_leftovers(prefix=None):
    """What matches the lab pattern (optionally only lab `prefix`)."""
    namespaces = sorted(n for n in list_netns() if _keep(NAME_RE, n, prefix))
    etc_dirs = []
    if NETNS_ETC_DIR.is_dir():
        etc_dirs = sorted(p for p in NETNS_ETC_DIR.iterdir()
                          if _keep(NAME_RE, p.name, prefix))
    tmp = tempfile.gettempdir()
    tmp_dirs = sorted(os.path.join(tmp, n) for n in os.listdir(tmp)
                      if _keep(TMP_RE, n, prefix))
    return {
        "namespaces": {n: netns_pids(n) for n in namespaces},
        "etc_dirs": [str(p) for p in etc_dirs],
        "tmp_dirs": tmp_dirs,
    }


def remove_leftovers(found):
    names = list(found["namespaces"])
    killed = kill_netns_processes(names)
    if killed:
        print(f"killed processes: {' '.join(map(str, sorted(killed)))}")
    # Fabric namespaces last, as Lab.close() does.
    for name in sorted(names, key=lambda n: n.endswith("-" + Lab.FABRIC_ROLE)):
        res = run(["ip", "netns", "del", name], check=False)
        status = "deleted" if res.returncode == 0 else f"FAILED: {res.stderr.strip()}"
        print(f"netns {name}: {status}")
    for path in found["etc_dirs"] + found["tmp_dirs"]:
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="astara-leftovers", description=__doc__.splitlines()[0])
    parser.add_argument("--remove", action="store_true",
                        help="kill the processes and delete what was found")
    parser.add_argument("--prefix",
                        help="only this lab prefix (e.g. ast3f9a1c)")
    args = parser.parse_args(argv)
    if args.prefix and not Lab.PREFIX_RE.fullmatch(args.prefix):
        parser.error(f"--prefix must match {Lab.PREFIX_RE.pattern}")

    found = find_leftovers(args.prefix)
    if not (found["namespaces"] or found["etc_dirs"] or found["tmp_dirs"]):
        print("no leftovers")
        return 0
    for name, pids in found["namespaces"].items():
        print(f"netns {name} pids: {' '.join(map(str, pids)) or '-'}")
    for path in found["etc_dirs"] + found["tmp_dirs"]:
        print(f"dir {path}")
    if args.remove:
        remove_leftovers(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
