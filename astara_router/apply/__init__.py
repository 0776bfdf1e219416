"""Appliers: one module per subsystem, run by the engine in the order below.

Order matters: addresses exist before daemons bind to them, the firewall is in place
before services answer, announcements go out once everything else is ready.

The protocol every subsystem follows (the engine calls these in this order):

``name``                                  its key in the committed plans
``watches``                               "netlink", "nftables" or None: the kernel change
                                          notifications that invalidate its committed plan
``plan(config, names) -> plan``           pure: what it wants, from the model and the map
                                          geN → kernel name; equal plans mean no change
``check(plan, base)``                     the daemon's own checker on the plan, before any
                                          live change (nothing when ``plan == base``)
``capture(ctx, plan, base) -> snapshot``  what rollback needs: ``base`` itself when the
                                          committed plan is intact, else a live read
``apply(ctx, plan, base, snapshot) -> n`` change only the difference; ``base`` None means
                                          "unknown", diff against the live state instead
``verify(ctx, plan, base, changes)``      cheap confirmation (acks, the daemon's report)
``restore(ctx, snapshot, changes)``      converge back to the snapshot; ``changes`` is what
                                          apply reported (None: it failed midway)
optional:
``reads_floating_ips``                     False: the plan does not depend on the floating
                                          IPs, so the committed one is kept when nothing
                                          else changed (default True: always planned)
``plan_floating_ips(base, change, config, names) -> plan | None``
                                          the plan when only floating IPs changed:
                                          ``base`` (the committed plan of the previous
                                          configuration) patched by ``change``
                                          (model/change.py); None: plan in full
``start_check(plan, base) -> begun``      ``check`` begun while the other subsystems are
                                          planned (a checker process running beside
                                          them); ``begun.wait()`` raises as ``check``
                                          would, ``begun.cancel()`` stops it
``start_apply(ctx, plan, base, snapshot) -> begun``
                                          ``apply`` begun (in a thread that mostly waits
                                          on the kernel or a daemon): the engine applies
                                          the next subsystem meanwhile, then
                                          ``begun.wait()`` gives the change count or raises
                                          as ``apply`` would (apply/begun.py); only for
                                          work the next subsystem's does not depend on
``healthy(plan) -> bool``                 its daemon still runs (identical-push fast path)
``expected(plan, nics)``                  (netlink) what the kernel watch compares its
                                          notifications with (watch.Expected)
``after_commit(plan, base, nics)``        background work after the answer (announcements)
"""
import importlib
import pkgutil

ORDER = (
    ("ha", "HaSubsystem"),                # HA router: keepalived (VRRP) + conntrackd; first,
                                          # so addresses move between it and netlink cleanly
    ("firewall", "FirewallSubsystem"),    # nftables filter + NAT, one transaction: before
                                          # the links, so a refused ruleset changes nothing
                                          # there (a whole table loads beside them)
    ("netlink", "NetlinkSubsystem"),      # links, MTU, addresses, routes
    ("hostname", "HostnameSubsystem"),    # hostname, /etc/hosts
    ("dhcp", "DhcpSubsystem"),            # dnsmasq: DHCPv4/v6, DNS
    ("metadata", "MetadataSubsystem"),    # the metadata proxy
    ("routing", "RoutingSubsystem"),      # BIRD 2: RA, BGP
    ("vpn", "VpnSubsystem"),              # strongSwan: IPsec site connections
    ("loadbalancer", "LoadBalancerSubsystem"),  # nginx: HTTP and TCP listeners
    ("garp", "GarpSubsystem"),            # gratuitous ARP / unsolicited NA
)


def default_subsystems(settings):
    present = {m.name for m in pkgutil.iter_modules(__path__)}
    return [getattr(importlib.import_module(f"{__name__}.{module}"), cls)(settings)
            for module, cls in ORDER if module in present]
