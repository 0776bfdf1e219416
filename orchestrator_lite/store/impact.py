"""Impact analysis: which routers and load balancers a write affects, as events.

Exactly the resources whose payload can change get an event, never "the tenant's first
router"; the store publishes them to its subscribers (the scheduler) after each commit.
"""
from ..events import CREATE, DELETE, LOADBALANCER, ROUTER, UPDATE, Event
from .kinds import ROUTER_PORT_OWNERS


def affected(before, after, changes):
    """Events for exactly the routers/load balancers whose payload a change can alter.

    router/loadbalancer itself: create/update/delete. listener/pool/member: its LB.
    floating IP, IPsec site connection: its router (old and new). port: routers with an *interface* on its network
    (allocations list every port there), the router owning it, the LB whose VIP it is.
    subnet/network: every router and LB attached to the network; the management network:
    every resource. Both snapshots are consulted so a detach still reaches the old router.
    """
    result = {}  # ResourceRef.key -> Event, insertion ordered

    def touch(kind, obj_id, action=UPDATE, reason=""):
        snap = after if after.get(kind, obj_id) else before
        ref = snap.ref(kind, obj_id)
        if ref is None:
            return
        previous = result.get(ref.key)
        if previous is not None:
            if previous.action in (CREATE, DELETE) or action == UPDATE:
                return
        result[ref.key] = Event(ref, action, reason)

    for kind, old, new in changes:
        obj = new or old
        what = f"{kind} {obj['id']} " + ("created" if old is None else
                                         "deleted" if new is None else "updated")
        if kind in (ROUTER, LOADBALANCER):
            touch(kind, obj["id"], CREATE if old is None else DELETE if new is None else UPDATE,
                  what)
        elif kind in ("listener", "pool"):
            for o in filter(None, (old, new)):
                touch(LOADBALANCER, o["loadbalancer_id"], reason=what)
        elif kind == "member":
            for o in filter(None, (old, new)):
                for snap in (before, after):
                    pool = snap.get("pool", o["pool_id"])
                    if pool:
                        touch(LOADBALANCER, pool["loadbalancer_id"], reason=what)
        elif kind in ("floatingip", "ipsec_site_connection"):
            for o in filter(None, (old, new)):
                touch(ROUTER, o["router_id"], reason=what)
        elif kind in ("network", "subnet", "port"):
            network_ids = {o["id"] if kind == "network" else o["network_id"]
                           for o in filter(None, (old, new))}
            if before.management_network_id in network_ids:
                for snap in (before, after):
                    for ref in snap.resources():
                        touch(ref.kind, ref.id, reason=what)
                continue
            for snap in (before, after):
                for network_id in network_ids:
                    for router_id in snap.routers_on_network(
                            network_id, interfaces_only=(kind == "port")):
                        touch(ROUTER, router_id, reason=what)
                    if kind != "port":
                        for lb_id in snap.loadbalancers_on_network(network_id):
                            touch(LOADBALANCER, lb_id, reason=what)
            if kind == "port":
                for o in filter(None, (old, new)):
                    if o["device_owner"] in ROUTER_PORT_OWNERS:
                        touch(ROUTER, o["device_id"], reason=what)
                    for snap in (before, after):
                        for lb in snap.all("loadbalancer"):
                            if lb["vip_port_id"] == o["id"]:
                                touch(LOADBALANCER, lb["id"], reason=what)
    return list(result.values())
