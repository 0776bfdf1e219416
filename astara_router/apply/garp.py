"""Gratuitous ARP / unsolicited NA for addresses that appear on the appliance.

Only what is new compared with the committed plan is announced: interface addresses and
floating IPs (on their external interface), keyed by (geN, address), so an identical
re-apply sends nothing and an address that moves to another NIC is announced there. The
first apply after boot (or after drift) has no trusted plan: everything is announced (the
VM may come back with new MACs).

Frames go out after the commit, in a background thread (``after_commit``): neighbours learn
an address only once the whole configuration is in place, and the answer to the push does
not wait for thousands of frames. Sending is best effort (a lost announcement only delays
the neighbours until their next ARP), so it never fails a transaction. IPv6 addresses still
in duplicate address detection are announced once DAD succeeds (RFC 4862 forbids
advertising tentative addresses). capture/restore do nothing: packets cannot be unsent.
"""
import logging
import time
from dataclasses import dataclass

from .. import garp, rtnl
from ..model.change import floating_ip_change
from ..render.netlink import keepalived_owns

LOG = logging.getLogger(__name__)

IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
DAD_WAIT = 10.0  # DAD takes 1-2 s with the default sysctls


# -- what to announce (pure) ----------------------------------------------------------------

def announced_addresses(config):
    """Every (geN, address) the configuration puts on the appliance, link-local excluded
    (the kernel owns those) and, on an HA router, keepalived's (it announces them when its
    instance becomes master; a backup must stay silent)."""
    return frozenset((generic, address) for generic, addresses in _announced(config).items()
                     for address in addresses)


def _announced(config):
    """``announced_addresses`` as ``{geN: frozenset of addresses}``."""
    found = _interface_addresses(config)
    for fip, network in config.floating_ip_networks:
        if network is not None and not keepalived_owns(config, network):
            found.setdefault(network.interface.ifname, set()).add(fip.floating_ip)
    return {generic: frozenset(addresses) for generic, addresses in found.items()}


def _interface_addresses(config):
    """``{geN: set of addresses}`` of the interfaces alone (``_announced``)."""
    found = {}
    for network in config.networks:
        if keepalived_owns(config, network):
            continue
        for address in network.interface.addresses:
            if not address.ip.is_link_local:
                found.setdefault(network.interface.ifname, set()).add(address.ip)
    return found


def added_addresses(config, before):
    """The (geN, address) ``config`` announces that ``before`` (a configuration, or None:
    nothing known) did not. When the two differ by a few floating IPs alone (the usual
    push), those few are looked at, not sets of thousands made for both."""
    if before is not None and not config.ha:
        change = (floating_ip_change(before.floating_ips, config.floating_ips)
                  if before.without_floating_ips() == config.without_floating_ips()
                  else None)
        if change is not None:
            # The same networks: the same interface addresses, and a floating address lives
            # on the same external network in both (a function of the address alone)
            gone = {fip.key for fip in change.removed}
            found = []
            for fip in change.added:
                network = config.external_interface_for(fip.floating_ip)
                if network is None or fip.key in gone:
                    continue
                address = fip.floating_ip
                if not address.is_link_local and any(
                        a.ip == address for a in network.interface.addresses):
                    continue  # the interface's own address: known already
                found.append((network.interface.ifname, address))
            return found
    after = _announced(config)
    known = _announced(before) if before is not None else {}
    return [(generic, address) for generic, addresses in after.items()
            for address in addresses - known.get(generic, frozenset())]


# -- sending (shell) ----------------------------------------------------------------------

def _send(nic, addresses, router):
    try:
        garp.announce(nic.kernel_name, addresses, mac=nic.mac, router=router)
        LOG.info("announced %s on %s (%s)", ", ".join(map(str, addresses)), nic.kernel_name,
                 nic.mac)
    except OSError as exc:
        LOG.warning("cannot announce %s on %s: %s", ", ".join(map(str, addresses)),
                    nic.kernel_name, exc)


def _announce_after_dad(pending, router):
    """Thread body: announce each (nic, address) as soon as its DAD is over."""
    deadline = time.monotonic() + DAD_WAIT
    while pending and time.monotonic() < deadline:
        waiting = []
        live = rtnl.address_flags()
        for nic, address in pending:
            flags = live.get((nic.index, address))
            if flags is None or flags & IFA_F_DADFAILED:
                LOG.warning("not announcing %s on %s: %s", address, nic.kernel_name,
                            "DAD failed" if flags else "address gone")
            elif flags & IFA_F_TENTATIVE:
                waiting.append((nic, address))
            else:
                _send(nic, [address], router)
        pending = waiting
        if pending:
            time.sleep(0.05)
    for nic, address in pending:
        LOG.warning("not announcing %s on %s: still tentative after %.0f s", address,
                    nic.kernel_name, DAD_WAIT)


@dataclass(frozen=True, eq=False)
class GarpPlan:
    """What the configuration puts on the appliance is found from it when announcing
    (``added_addresses``): the plan keeps the configuration, which the committed
    generation holds anyway, not sets of its addresses (5 000 floating IPs: 0.27 MB)."""
    config: object  # the SystemConfig

    @property
    def router(self):
        return self.config.router is not None

    @property
    def addresses(self):
        """``{geN: frozenset of addresses}`` the configuration puts on the appliance."""
        return _announced(self.config)

    def __eq__(self, other):  # the same announcements (a preview compares plans)
        if not isinstance(other, GarpPlan):
            return NotImplemented
        return self.config is other.config or (self.router == other.router
                                               and self.addresses == other.addresses)

    __hash__ = None


class GarpSubsystem:
    """Announces, after the answer, what appeared since the committed plan (everything when
    that is unknown: after boot or drift the VM may come back with new MACs)."""

    name = "garp"
    watches = "netlink"

    def __init__(self, settings=None):
        self.settings = settings

    def plan(self, config, names):
        return GarpPlan(config)

    def check(self, plan, base):
        pass

    def capture(self, ctx, plan, base):
        return None

    def apply(self, ctx, plan, base, snapshot):
        return 0  # announcing changes nothing on the appliance; it happens after the commit

    def verify(self, ctx, plan, base, changes):
        pass

    def restore(self, ctx, snapshot, changes):
        pass  # packets cannot be unsent; nothing was sent yet anyway

    @staticmethod
    def new(plan, base):
        return tuple(sorted(added_addresses(plan.config,
                                            base.config if base is not None else None),
                            key=lambda item: (item[0], item[1].version, item[1])))

    def after_commit(self, plan, base, nics):
        """Background: send now what is usable now, the rest once its DAD is over."""
        new = self.new(plan, base)
        announce(new, nics, plan.router)


def announce(addresses, nics, router):
    """``addresses``: (geN, address); ``nics``: geN → naming.Nic."""
    by_nic, deferred = {}, []
    live = rtnl.address_flags() if any(a.version == 6 for _, a in addresses) else {}
    for generic, address in addresses:
        nic = nics.get(generic)
        if nic is None:
            continue
        if live.get((nic.index, address), 0) & IFA_F_TENTATIVE:
            deferred.append((nic, address))
        else:
            by_nic.setdefault(nic, []).append(address)
    for nic, found in by_nic.items():
        _send(nic, found, router)
    if deferred:
        _announce_after_dad(deferred, router)
