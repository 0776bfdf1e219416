"""Firewall and NAT: the rendered nftables table, loaded by one ``nft -f`` transaction.

How an apply decides what to run (see render/firewall.py for the ruleset itself):
  1. read the live table (``nft list table inet astara``; absent = "none");
  2. if it is exactly the listing recorded after our last load, the live table is the
     ruleset we committed (``committed.json``); otherwise it is unknown (first boot, reboot,
     crash mid-apply, someone edited it) and gets replaced as a whole;
  3. desired == committed: nothing runs, not even ``nft -c``;
     same skeleton: one transaction of ``add/delete element`` (floating IPs, labels, ...);
     otherwise: one transaction ``delete table`` + the new table;
  4. every transaction passes ``nft -c -f`` (the kernel validates it and aborts) before the
     real ``nft -f``; a rejected one leaves the live table untouched;
  5. conntrack entries of floating IPs that appeared, disappeared or moved are deleted (and
     only those): established NAT bindings of every other flow live in conntrack and survive
     any reload.
"""
import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass

from ..errors import ApplyError
from ..render.firewall import (TABLE_SPEC, FirewallRenderError, Ruleset,
                               floating_ips_in_listing, render_firewall, replace_script)
from ..store import atomic_write
from .daemon import FileSet, run_checked

LOG = logging.getLogger(__name__)

NFT = "nft"
CONNTRACK = "conntrack"


# -- the kernel side ----------------------------------------------------------------------------

def live_listing():
    """The agent's table as nft prints it, or None when it does not exist."""
    try:
        result = subprocess.run([NFT, "list", "table", *TABLE_SPEC.split()],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplyError("", f"nft list table: {exc}", status=500) from exc
    if result.returncode == 0:
        return result.stdout
    if "No such file or directory" in result.stderr:
        return None
    raise ApplyError("", f"nft list table failed: {result.stderr.strip()}", status=500)


def run_transaction(script, path, check_only=False):
    """``nft -c -f`` then ``nft -f`` of one script file: all of it or nothing."""
    atomic_write(path, script, mode=0o600)
    run_checked([NFT, "-c", "-f", path], "nft -c (ruleset check)")
    if not check_only:
        run_checked([NFT, "-f", path], "nft -f (ruleset load)")


def _conntrack(args):
    try:
        return subprocess.run([CONNTRACK, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        LOG.warning("conntrack %s: %s", " ".join(args), exc)
        return None


def tracked_addresses(family):
    """Addresses that are an original or reply destination of some conntrack entry."""
    result = _conntrack(["-L", "-f", family])
    found = set()
    for line in (result.stdout if result else "").splitlines():
        # "<proto> ... src=A dst=B sport=.. dport=.. [..] src=C dst=D ...": B orig, D reply
        found.update(ipaddress.ip_address(word[4:]) for word in line.split()
                     if word.startswith("dst="))
    return found


def flush_conntrack(addresses):
    """Forget the connections of these floating IPs: those NATed to them (original
    destination) and those NATed from them (reply destination). One dump first, so only
    addresses that really have entries cost a ``conntrack -D``."""
    for version, family in ((4, "ipv4"), (6, "ipv6")):
        wanted = {a for a in addresses if a.version == version}
        if not wanted:
            continue
        for address in sorted(wanted & tracked_addresses(family)):
            for direction in ("--orig-dst", "--reply-dst"):
                result = _conntrack(["-D", "-f", family, direction, str(address)])
                # exit status 1 with "0 flow entries" only means there was nothing to delete
                if result is not None and result.returncode not in (0, 1):
                    LOG.warning("conntrack -D %s %s: %s", direction, address,
                                result.stderr.strip())


def changed_floating_ips(old, new):
    """Floating addresses whose mapping appeared, disappeared or moved to another fixed IP."""
    return {f for f in old.keys() | new.keys() if old.get(f) != new.get(f)}


@dataclass(frozen=True)
class Snapshot:
    listing: object  # str | None: the live table before the apply
    files: dict  # FileSet snapshot of our state files


# -- the subsystem --------------------------------------------------------------------------------

class FirewallSubsystem:
    name = "firewall"

    def __init__(self, settings):
        self.settings = settings
        self.state_path = settings.path("firewall", "committed.json")
        self.ruleset_path = settings.path("firewall", "ruleset.nft")  # for operators
        self.script_path = settings.path("firewall", "transaction.nft")
        self.files = FileSet(self.state_path, self.ruleset_path)

    # -- helpers --------------------------------------------------------------------------
    def api_ports(self):
        ports = {self.settings.port}
        for bind in self.settings.bind:
            port = bind.rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
        return ports

    def boot_management(self):
        """Kernel name of the interface astara-configure-management set up at boot."""
        try:
            with open(self.settings.path("management.json")) as handle:
                return json.load(handle).get("kernel_name")
        except (OSError, ValueError, AttributeError):
            return None

    def render(self, ctx, config):
        names = {generic: nic.kernel_name for generic, nic in ctx.names.items()}
        try:
            return render_firewall(config, names, self.api_ports(), self.boot_management())
        except FirewallRenderError as exc:
            raise ApplyError(exc.path, exc.message) from exc

    def committed(self):
        """(ruleset, listing) recorded after our last load, or (None, None)."""
        try:
            with open(self.state_path) as handle:
                data = json.load(handle)
            return Ruleset.from_json(data["ruleset"]), data["listing"]
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def record(self, ruleset):
        listing = live_listing()
        atomic_write(self.state_path, json.dumps({"ruleset": ruleset.to_json(),
                                                  "listing": listing}), mode=0o644)
        atomic_write(self.ruleset_path, ruleset.text(), mode=0o644)
        return listing

    # -- the transaction protocol -----------------------------------------------------------
    def capture(self, ctx):
        snapshot = Snapshot(live_listing(), self.files.capture())
        ctx.firewall_live = snapshot.listing
        return snapshot

    def apply(self, ctx, config, previous=()):
        desired = self.render(ctx, config)
        ctx.artifacts["firewall"] = desired.text()
        live = ctx.firewall_live if hasattr(ctx, "firewall_live") else live_listing()
        committed, committed_listing = self.committed()
        if committed is not None and live is not None and committed_listing == live:
            if committed == desired:
                return 0
            script = committed.element_script(desired)
        else:
            script = None
        if script is None:
            script = desired.replace_script()
        run_transaction(script, self.script_path)
        self.record(desired)
        flush_conntrack(changed_floating_ips(floating_ips_in_listing(live),
                                             desired.floating_ips()))
        return 1

    def verify(self, ctx, config):
        committed, listing = self.committed()
        live = live_listing()
        if committed is None or live is None or live != listing:
            raise ApplyError("", "verification failed: the live nftables table "
                                 f"{TABLE_SPEC} is not the committed ruleset", status=500)
        desired = self.render(ctx, config)
        if committed != desired:
            raise ApplyError("", "verification failed: the committed firewall ruleset is "
                                 "not the one this configuration renders", status=500)

    def restore(self, ctx, snapshot):
        live = live_listing()
        if live != snapshot.listing:
            run_transaction(replace_script(snapshot.listing or ""), self.script_path)
            flush_conntrack(changed_floating_ips(floating_ips_in_listing(live),
                                                 floating_ips_in_listing(snapshot.listing)))
        self.files.restore(snapshot.files)
