"""Desired state from Neutron: the contract topologies, served as Neutron objects by a
small OpenStack on loopback and read with the real openstacksdk (Keystone version
discovery, token, catalog, pagination), must produce exactly the original orchestrator's
payloads (the contract files; subnet order compared sorted, as the README allows)."""
import copy

import pytest

from astara_lab.appliance import CONTRACT_NIC_MACS
from orchestrator_lite import builder, ipam
from orchestrator_lite.builder import InstanceView, PayloadSettings
from orchestrator_lite.events import UPDATE
from orchestrator_lite.instances import interface_map
from orchestrator_lite.openstack.cloud import connect
from orchestrator_lite.openstack.neutron import NeutronReader, NeutronStore
from orchestrator_lite.store import Store, StoreError

import neutron_topologies as topo

SETTINGS = PayloadSettings(management_network_id=topo.MGMT_NET,
                           orchestrator_address="fdca:3ba5:a17a:acda::2", metadata_port=9697,
                           host="controller-1", labels={"ext": ["192.168.57.0/24"]})
LB_NIC_MACS = {"loadbalancer-http": ["fa:16:3e:5e:4c:53", "fa:16:3e:13:6b:14"]}
HA_MACS = (CONTRACT_NIC_MACS["router-ha-primary"], CONTRACT_NIC_MACS["router-ha-secondary"])


@pytest.fixture
def neutron_store(tmp_path, cloud, os_settings):
    stores = []

    def make(topology, **options):
        topology.load_into(cloud)
        local = Store(str(tmp_path / f"local{len(stores)}.sqlite"), topo.MGMT_NET)
        store = NeutronStore(local, NeutronReader(connect(os_settings)), topo.MGMT_NET,
                             **options)
        stores.append(store)
        store.load()
        return store

    yield make
    for store in stores:
        store.close()


def view_for(snapshot, ref, macs, ha_config=None):
    """The instance as the orchestrator would see it: NIC MACs from the README (ge0 = MGT,
    then one per data network), management address = EUI-64 of the MGT MAC."""
    networks = [topo.MGMT_NET] + snapshot.data_networks(ref)
    assert len(networks) == len(macs)
    ports = [{"network_id": n, "mac_address": m} for n, m in zip(networks, macs)]
    address = str(ipam.eui64("fdca:3ba5:a17a:acda::/64", macs[0]))
    return InstanceView(address, interface_map({m: f"ge{i}" for i, m in enumerate(macs)},
                                               ports), ha_config)


def comparable(payload):
    payload = copy.deepcopy(payload)
    for network in payload["networks"]:
        network["subnets"].sort(key=lambda s: s["id"])
    return payload


@pytest.mark.parametrize("name", sorted(topo.TOPOLOGIES))
def test_neutron_objects_produce_the_contract_payload(neutron_store, cloud, name):
    topology, (kind, resource_id) = topo.TOPOLOGIES[name]()
    store = neutron_store(topology)
    if kind == "loadbalancer":
        topo.lb_objects(store)
    snapshot = store.snapshot()
    ref = snapshot.ref(kind, resource_id)
    assert ref is not None, f"{kind} {resource_id} not read from Neutron"
    if name.startswith("router-ha"):
        addresses = [str(ipam.eui64("fdca:3ba5:a17a:acda::/64", m[0])) for m in HA_MACS]
        configs = builder.ha_configs([("r_0", addresses[0], 1.0), ("r_1", addresses[1], 2.0)])
        index = 0 if name.endswith("primary") else 1
        view = view_for(snapshot, ref, HA_MACS[index], configs[f"r_{index}"])
    else:
        view = view_for(snapshot, ref, CONTRACT_NIC_MACS.get(name) or LB_NIC_MACS[name])
    assert comparable(builder.build(snapshot, ref, SETTINGS, view)) == \
        comparable(topo.CONTRACT[name])
    # Read with the real client: Keystone discovery and a token first, then Neutron.
    assert cloud.requests[0][:2] == ("GET", "/identity")
    assert cloud.requests_to("POST", "/identity/v3/auth/tokens")
    assert cloud.requests_to("GET", "/network/v2.0/ports")


def test_pagination_is_followed(neutron_store, cloud):
    cloud.page_size = 3
    topology, (_, rid) = topo.router_many_fips()
    store = neutron_store(topology)
    snapshot = store.snapshot()
    assert len(snapshot.all("port")) == len(topology.objects["ports"])
    assert [f["floating_ip_address"] for f in snapshot.floatingips_of(rid)] == \
        [f"172.24.4.{100 + n}" for n in range(1, 31)]
    assert len(cloud.requests_to("GET", "/network/v2.0/ports")) > 3


def test_a_change_reaches_exactly_the_router_it_affects_by_id(neutron_store):
    topology, (_, basic) = topo.router_basic()
    other, (_, no_gw) = topo.router_no_gateway()
    topology.merge(other)
    store = neutron_store(topology)
    seen = []
    store.subscribe(seen.extend)
    vm = next(p for p in topology.objects["ports"] if p["mac_address"] == "fa:16:3e:10:9f:9b")
    moved = dict(vm, fixed_ips=[dict(vm["fixed_ips"][0], ip_address="10.1.0.13")])
    events = store.upsert("port", moved)
    assert [(e.ref.id, e.action) for e in events] == [(basic, UPDATE)]
    assert seen == events
    assert store.upsert("port", moved) == []  # the same object again: no event
    fip = topology.objects["floatingips"][0]
    assert [e.ref.id for e in store.upsert("floatingip", dict(fip, fixed_ip_address=None))] \
        == [basic]
    assert [e.ref.id for e in store.remove("port", vm["id"])] == [basic]
    fe_vm = next(p for p in topology.objects["ports"] if p["mac_address"] ==
                 "fa:16:3e:94:ac:b4")
    assert [e.ref.id for e in store.remove("port", fe_vm["id"])] == [no_gw]


def test_neutron_kinds_are_read_only_here(neutron_store):
    topology, (_, rid) = topo.router_basic()
    store = neutron_store(topology)
    with pytest.raises(StoreError) as exc:
        store.create("router", {"id": "r9", "tenant_id": "t"})
    assert exc.value.status == 405 and "Neutron" in str(exc.value)
    with pytest.raises(StoreError):
        store.set_router_gateway(rid, topo.PUBLIC)


def test_only_routers_of_the_configured_flavor_are_ours(neutron_store):
    topology, (_, basic) = topo.router_basic()
    other, (_, no_gw) = topo.router_no_gateway()
    topology.objects["routers"][0]["flavor_id"] = "f-astara"
    other.objects["routers"][0]["flavor_id"] = "f-l3-agent"
    topology.merge(other)
    store = neutron_store(topology, router_flavor_id="f-astara")
    assert [r.id for r in store.snapshot().resources()] == [basic]
    moved = dict(other.objects["routers"][0], flavor_id="f-astara")
    assert [(e.ref.id, e.action) for e in store.upsert("router", moved)] == \
        [(no_gw, "create")]
