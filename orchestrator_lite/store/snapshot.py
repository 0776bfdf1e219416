"""The desired state at one instant: an immutable ``Snapshot`` of every object, with the
lookups and indexes the payload builder, the instance managers and ``impact`` need.

Readers never mutate its dicts; a write makes a new snapshot with ``with_changes``
(copy-on-write), so a reader keeps a consistent view while writers go on.
"""
import functools

from ..events import LOADBALANCER, ROUTER, ResourceRef
from .errors import NotFound
from .kinds import ROUTER_GATEWAY_OWNER, ROUTER_INTERFACE_OWNERS, ROUTER_PORT_OWNERS


class Snapshot:
    """All objects at one instant, with the lookups the builder and events need."""

    def __init__(self, objects, management_network_id):
        self._objects = objects  # kind -> {id: obj}, creation order
        self.management_network_id = management_network_id

    def get(self, kind, obj_id):
        if not isinstance(obj_id, str):  # ids are strings; a body may hold anything
            return None
        return self._objects[kind].get(obj_id)

    def require(self, kind, obj_id, field=None):
        obj = self.get(kind, obj_id)
        if obj is None:
            raise NotFound(f"{kind} {obj_id} does not exist", field=field,
                           status=404 if field is None else 400)
        return obj

    def all(self, kind):
        return list(self._objects[kind].values())

    def with_changes(self, changes):
        """A new snapshot with ``changes`` (``(kind, old, new)``) applied; this one is never
        mutated. Each changed kind's table is copied once per batch (a cluster catch-up or
        a delete cascade brings many changes at a time)."""
        objects = dict(self._objects)
        copied = set()
        for kind, old, new in changes:
            if kind not in copied:
                objects[kind] = dict(objects[kind])
                copied.add(kind)
            table = objects[kind]
            if new is None:
                table.pop(old["id"], None)
            else:
                table[new["id"]] = new
        return Snapshot(objects, self.management_network_id)

    def merged(self, other, kinds):
        """This snapshot with the objects of ``kinds`` taken from ``other`` (OpenStack
        mode: Neutron's objects plus the local store's own kinds). Shares their tables:
        neither is ever mutated."""
        return Snapshot({**self._objects, **{kind: other._objects[kind] for kind in kinds}},
                        self.management_network_id)

    # -- indexes (built once per snapshot, on first use) --------------------------------------
    @functools.cached_property
    def _by(self):
        index = {"subnets": {}, "ports": {}, "router_ports": {}, "fips": {}, "aports": {},
                 "listeners": {}, "pools": {}, "members": {}, "vpn": {}}
        for subnet in self.all("subnet"):
            index["subnets"].setdefault(subnet["network_id"], []).append(subnet)
        for port in self.all("port"):
            index["ports"].setdefault(port["network_id"], []).append(port)
            if port["device_owner"] in ROUTER_PORT_OWNERS:
                index["router_ports"].setdefault(port["device_id"], []).append(port)
        for fip in self.all("floatingip"):
            index["fips"].setdefault(fip["router_id"], []).append(fip)
        for aport in self.all("appliance_port"):
            index["aports"].setdefault(aport["resource_id"], []).append(aport)
        for listener in self.all("listener"):
            index["listeners"].setdefault(listener["loadbalancer_id"], []).append(listener)
        for pool in self.all("pool"):
            index["pools"].setdefault(pool["loadbalancer_id"], []).append(pool)
        for member in self.all("member"):
            index["members"].setdefault(member["pool_id"], []).append(member)
        for connection in self.all("ipsec_site_connection"):
            index["vpn"].setdefault(connection["router_id"], []).append(connection)
        return index

    def subnets_of(self, network_id):
        return self._by["subnets"].get(network_id, [])

    def ports_on(self, network_id):
        return self._by["ports"].get(network_id, [])

    def router_ports(self, router_id):
        return self._by["router_ports"].get(router_id, [])

    def gateway_port(self, router_id):
        return next((p for p in self.router_ports(router_id)
                     if p["device_owner"] == ROUTER_GATEWAY_OWNER), None)

    def interface_ports(self, router_id):
        return [p for p in self.router_ports(router_id)
                if p["device_owner"] in ROUTER_INTERFACE_OWNERS]

    def floatingips_of(self, router_id):
        return self._by["fips"].get(router_id, [])

    def appliance_ports(self, resource_id):
        return self._by["aports"].get(resource_id, [])

    def listeners_of(self, lb_id):
        return self._by["listeners"].get(lb_id, [])

    def pools_of(self, lb_id):
        return self._by["pools"].get(lb_id, [])

    def members_of(self, pool_id):
        return self._by["members"].get(pool_id, [])

    def vpn_connections_of(self, router_id):
        """The router's IPsec site connections, in creation order."""
        return self._by["vpn"].get(router_id, [])

    def routers_on_network(self, network_id, interfaces_only=False):
        owners = ROUTER_INTERFACE_OWNERS if interfaces_only else ROUTER_PORT_OWNERS
        return {p["device_id"] for p in self.ports_on(network_id)
                if p["device_owner"] in owners and p["device_id"] in self._objects["router"]}

    def loadbalancers_on_network(self, network_id):
        ports = {p["id"] for p in self.ports_on(network_id)}
        return {lb["id"] for lb in self.all("loadbalancer") if lb["vip_port_id"] in ports}

    # -- resources (things with appliances) ----------------------------------------------------
    def resources(self):
        return [ResourceRef(ROUTER, r["id"], r["tenant_id"]) for r in self.all("router")] + \
            [ResourceRef(LOADBALANCER, lb["id"], lb["tenant_id"])
             for lb in self.all("loadbalancer")]

    def ref(self, kind, obj_id):
        obj = self.get(kind, obj_id) if kind in (ROUTER, LOADBALANCER) else None
        return ResourceRef(kind, obj_id, obj["tenant_id"]) if obj else None

    def find_ref(self, obj_id):
        """The router or load balancer with this id (kind unknown to the caller)."""
        return self.ref(ROUTER, obj_id) or self.ref(LOADBALANCER, obj_id)

    def data_networks(self, ref):
        """Network ids an appliance of ``ref`` needs a data NIC on, in NIC order: router =
        gateway network first, then each interface network once (astara's order); load
        balancer = the VIP network."""
        if ref.kind == ROUTER:
            networks = []
            gateway = self.gateway_port(ref.id)
            if gateway:
                networks.append(gateway["network_id"])
            for port in self.interface_ports(ref.id):
                if port["network_id"] not in networks:
                    networks.append(port["network_id"])
            return networks
        lb = self.get(LOADBALANCER, ref.id)
        vip = self.get("port", lb["vip_port_id"]) if lb else None
        return [vip["network_id"]] if vip else []
