"""``astara-configure-management MAC ADDRESS/PREFIX``: boot-time management interface setup.

cloud-init runs it on every boot (the orchestrator puts it in user-data's bootcmd). It finds
the NIC with that MAC (any NIC, not only the first as the original did), brings it up, sets
the MTU, adds the address (IPv6 without DAD so the API can bind at once), records it for
``astara-router-api``'s default bind, and points sshd at it. Idempotent.
"""
import argparse
import functools
import ipaddress
import json
import os
import re
import sys

from .. import rtnl
from .. import settings as settings_mod
from ..naming import list_nics
from ..store import atomic_write

MANAGEMENT_FILE = "management.json"  # in the state directory
SSHD_KEYS = re.compile(r"^\s*#?\s*(ListenAddress|AddressFamily|UseDNS)\s", re.I)


def configure(mac, address, mtu, state_dir, sshd_config=None):
    mac = mac.lower()
    nic = next((n for n in list_nics() if n.mac == mac), None)
    if nic is None:
        raise SystemExit(f"astara-configure-management: no NIC with MAC {mac}")
    if not nic.up or nic.mtu != mtu:
        _, error = rtnl.transact([functools.partial(rtnl.link_request, index=nic.index,
                                                    mtu=mtu, up=True)])
        if error is not None:
            raise SystemExit(f"astara-configure-management: {nic.kernel_name}: {error}")
    # "address replace": idempotent on every boot; IPv6 without DAD, so it answers at once
    _, error = rtnl.change_addresses([(True, nic.index, address, address.version == 6)])
    if error is not None:
        raise SystemExit(f"astara-configure-management: {address} on {nic.kernel_name}: "
                         f"{error}")
    print(f"{address} on {nic.kernel_name}", file=sys.stderr)
    atomic_write(os.path.join(state_dir, MANAGEMENT_FILE),
                 json.dumps({"address": str(address.ip), "prefixlen": address.network.prefixlen,
                             "mac": mac, "kernel_name": nic.kernel_name}), mode=0o644)
    if sshd_config:
        configure_sshd(sshd_config, address.ip)


def read_management(state_dir):
    """What ``configure`` recorded at boot (address, prefixlen, mac, kernel_name), or {}
    when there is no record or its address is not one address: the state directory is the
    agent's, and the root hostname helper puts that address into /etc/hosts."""
    try:
        with open(os.path.join(state_dir, MANAGEMENT_FILE)) as handle:
            record = json.load(handle)
        return dict(record, address=str(ipaddress.ip_address(record["address"])))
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def configure_sshd(path, ip):
    try:
        with open(path) as handle:
            lines = [line for line in handle.read().splitlines() if not SSHD_KEYS.match(line)]
    except FileNotFoundError:
        return
    lines += [f"AddressFamily {'inet6' if ip.version == 6 else 'inet'}",
              f"ListenAddress {ip}", "UseDNS no"]
    atomic_write(path, "\n".join(lines) + "\n", mode=0o644)
    print(f"sshd configured to listen on {ip}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or " ").splitlines()[0])
    parser.add_argument("mac_address")
    parser.add_argument("ip_address", help="address/prefix, e.g. fdca:3ba5:a17a:acda::5/64")
    parser.add_argument("--mtu", type=int, default=1280)
    parser.add_argument("--config-file")
    parser.add_argument("--state-dir")
    parser.add_argument("--sshd-config", default="/etc/ssh/sshd_config",
                        help="rewritten to listen on the address; 'none' to skip")
    args = parser.parse_args(argv)
    try:
        address = ipaddress.ip_interface(args.ip_address)
        if "/" not in args.ip_address:
            raise ValueError("a prefix length is required")
    except ValueError as exc:
        parser.error(f"ip_address: {exc}")
    try:
        settings = settings_mod.load(args.config_file, state_dir=args.state_dir)
    except ValueError as exc:
        parser.error(str(exc))
    configure(args.mac_address, address, args.mtu, settings.state_dir,
              None if args.sshd_config == "none" else args.sshd_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
