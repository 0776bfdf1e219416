"""Firewall and NAT: the rendered nftables table, loaded by one ``nft -f`` transaction.

How an apply decides what to run (see render/firewall.py for the ruleset itself):
  1. base known (the committed ruleset, and no nftables notification about our table since
     it was loaded): equal → nothing runs; same skeleton → one transaction of
     ``add/delete element`` (floating IPs, labels, ...); otherwise the table is replaced;
  2. base unknown (boot, drift, after a failed apply): the live table is read and replaced
     as a whole by the new one — in one transaction, so packets see the old table until
     the new one is complete;
  3. every transaction is one libnftables call (``astara_router/nftables.py``), all-or-nothing: a refused one changes
     nothing (so no separate ``nft -c`` is paid);
  4. conntrack entries of floating IPs that disappeared or moved are deleted (and only
     those): established NAT bindings of every other flow live in conntrack and survive
     any reload. A new floating IP has no binding yet.
"""
import ipaddress
import logging
from dataclasses import dataclass

from .. import conntrack, nftables
from ..cli.management import read_management
from ..errors import ApplyError
from ..render.firewall import (TABLE_SPEC, floating_ips_in_listing, render_firewall,
                               replace_script, with_floating_ip_change)
from .begun import Done, InThread

LOG = logging.getLogger(__name__)


# -- the kernel side ----------------------------------------------------------------------------

def live_listing():
    """The agent's table as nft prints it, or None when it does not exist."""
    try:
        return nftables.run(f"list table {TABLE_SPEC}", locate_errors=False)
    except nftables.NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise ApplyError("", f"nft list table failed: {exc}", status=500) from exc


def run_transaction(script):
    """One nftables transaction: the whole script or nothing."""
    try:
        nftables.run(script)
    except nftables.NftError as exc:
        raise ApplyError("", f"nftables refused the ruleset: {exc}", status=500) from exc


def _load(script, stale):
    """The transaction, then the conntrack entries of the ``stale`` floating IPs."""
    run_transaction(script)
    flush_conntrack(stale)
    return 1


def flush_conntrack(addresses):
    """Forget the connections of these floating IPs: those NATed to them (original
    destination) and those NATed from them (reply destination), through ctnetlink
    (conntrack.py). A failure is logged: the new ruleset is loaded already."""
    if not addresses:
        return
    try:
        conntrack.forget(addresses)
    except OSError as exc:
        LOG.warning("conntrack: forgetting the connections of %s: %s",
                    ", ".join(sorted(map(str, addresses))), exc)


def stale_floating_ips(old, new):
    """Floating addresses whose mapping disappeared or moved to another fixed IP: their
    conntrack entries hold NAT bindings that are now wrong. (``{floating: fixed}`` texts as
    nft prints them, which is one canonical form per address.)"""
    return {ipaddress.ip_address(f) for f in old if old[f] != new.get(f)}


@dataclass(frozen=True)
class Snapshot:
    ruleset: object = None  # Ruleset: the committed one, when intact
    listing: object = None  # str | None: the live table, read when the base is unknown


# -- the subsystem --------------------------------------------------------------------------------

class FirewallSubsystem:
    name = "firewall"
    watches = "nftables"

    def __init__(self, settings):
        self.settings = settings

    def api_ports(self):
        ports = {self.settings.port}
        for bind in self.settings.bind:
            port = bind.rsplit(":", 1)[-1]
            if port.isdigit():
                ports.add(int(port))
        return ports

    def boot_management(self):
        """Kernel name of the interface astara-configure-management set up at boot."""
        return read_management(self.settings.state_dir).get("kernel_name")

    # -- the transaction protocol -----------------------------------------------------------
    def plan(self, config, names):
        return render_firewall(config, names, self.api_ports(), self.boot_management())

    def plan_floating_ips(self, base, change, config, names):
        """``base`` with its floating-IP maps patched by ``change``, or None (plan in full)."""
        return with_floating_ip_change(base, config, change) if base is not None else None

    def check(self, plan, base):
        pass  # nft -f is all-or-nothing: a refused ruleset changes nothing

    def capture(self, ctx, plan, base):
        return Snapshot(ruleset=base) if base is not None else Snapshot(listing=live_listing())

    def apply(self, ctx, plan, base, snapshot):
        if base is not None:
            if base == plan:
                return 0
            script = base.element_script(plan) or plan.replace_script()
            stale = base.moved_floating_ips(plan)
        else:
            script = plan.replace_script()
            stale = stale_floating_ips(floating_ips_in_listing(snapshot.listing),
                                       plan.floating_ips())
        return _load(script, stale)

    def start_apply(self, ctx, plan, base, snapshot):
        """``apply`` begun: a whole table (the first apply, the live path, a changed
        skeleton) loads in a thread of its own, beside the links and addresses the engine
        applies next (libnftables works without the interpreter lock; the ruleset names
        interfaces by ``iifname`` strings, so it needs no link or address of theirs).
        Element transactions (floating IPs) are done at once: a thread would cost more."""
        if base is not None:
            if base == plan:
                return Done(0)
            script = base.element_script(plan)
            if script:
                return Done(_load(script, base.moved_floating_ips(plan)))
        return InThread("firewall-load", self.apply, ctx, plan, base, snapshot)

    def verify(self, ctx, plan, base, changes):
        pass  # nft acknowledged the whole transaction

    def restore(self, ctx, snapshot, changes):
        if changes == 0:
            return
        if snapshot.ruleset is not None:
            run_transaction(snapshot.ruleset.replace_script())
            return
        live = live_listing()
        if live != snapshot.listing:
            run_transaction(replace_script(snapshot.listing or ""))
            flush_conntrack(stale_floating_ips(floating_ips_in_listing(live),
                                               floating_ips_in_listing(snapshot.listing)))
