"""Payload builder against the original orchestrator's bodies: each contract topology is
created in the store (networks, subnets, ports with MACs and fixed IPs, routers, floating
IPs, load balancers) the way an operator would, appliance ports get the README's NIC MACs,
and the built payload must equal the contract file (subnet order, which the README calls
not significant, is compared sorted). Every payload must also pass the agent's own parser.

Opaque identifiers of the two big topologies (many-fips, wide: ids and MACs of 40/11 VMs)
are read from the contract files by position; their structure comes from the README."""
import copy
import ipaddress
import json

import pytest

from astara_lab.appliance import CONTRACT_NIC_MACS, contract_payloads
from astara_router.model import parse_payload
from orchestrator_lite import builder, ipam
from orchestrator_lite.builder import InstanceView, PayloadSettings
from orchestrator_lite.config import ManagementSettings
from orchestrator_lite.events import LOADBALANCER, ROUTER, ResourceRef
from orchestrator_lite.instances import interface_map
from orchestrator_lite.store import Store
from orchestrator_lite.store.kinds import ROUTER_INTERFACE_OWNERS

CONTRACT = contract_payloads("original-orchestrator")
MGMT = ManagementSettings(mtu=1450)  # contract management network: ids, prefix, ::1
SETTINGS = PayloadSettings(management_network_id=MGMT.network_id,
                           orchestrator_address="fdca:3ba5:a17a:acda::2", metadata_port=9697,
                           host="controller-1", labels={"ext": ["192.168.57.0/24"]})
PUBLIC = "b732f682-02fb-4157-9de7-e589a7503295"
PUBLIC_SUBNET = "f7ceb21a-7ad7-49ee-b705-c6b74ab2fac8"
DUALSTACK = "9470b502-4d7a-4377-8885-da4e3f45727e"


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "o.sqlite"), MGMT.network_id)
    s.ensure_management_network(MGMT)
    yield s
    s.close()


def public(store):
    store.create("network", {"id": PUBLIC, "name": "public", "mtu": 1500, "external": True})
    store.create("subnet", {"id": PUBLIC_SUBNET, "network_id": PUBLIC,
                            "cidr": "172.24.4.0/24", "gateway_ip": "172.24.4.1",
                            "enable_dhcp": False})


def public_dualstack(store):
    store.create("network", {"id": DUALSTACK, "name": "public-dualstack", "mtu": 1500,
                             "external": True})
    store.create("subnet", {"id": "fe2c6803-2026-4352-a176-2d1d92eeccf5",
                            "network_id": DUALSTACK, "cidr": "198.51.100.0/24",
                            "gateway_ip": "198.51.100.1", "enable_dhcp": False})
    store.create("subnet", {"id": "1f237edc-e368-4b73-b761-a128c29933a2",
                            "network_id": DUALSTACK, "cidr": "2001:db8:c0de:1::/64",
                            "ipv6_address_mode": "slaac"})


def tenant_net(store, tenant, net_id, subnet_id, cidr, dns=(), routes=(), **subnet):
    store.create("network", {"id": net_id, "tenant_id": tenant, "mtu": 1450})
    store.create("subnet", {"id": subnet_id, "network_id": net_id, "cidr": cidr,
                            "dns_nameservers": list(dns), "host_routes": list(routes),
                            **subnet})


def vm(store, net_id, device_id, mac, *ips):
    fixed = [{"ip_address": ip} if "." in ip or "::" in ip else {"subnet_id": ip} for ip in ips]
    return store.create("port", {"network_id": net_id, "device_id": device_id,
                                 "device_owner": "compute:nova", "mac_address": mac,
                                 "fixed_ips": fixed})


def router_port(store, router_id, net_id, mac, fixed, owner=ROUTER_INTERFACE_OWNERS[0]):
    return store.create("port", {"network_id": net_id, "device_id": router_id,
                                 "device_owner": owner, "mac_address": mac,
                                 "fixed_ips": fixed})


# -- the topologies (README "Files") -----------------------------------------------------------

def router_basic(store):
    tenant, rid, net = "baef51913f354071ab020eae853d4ffe", \
        "fbf50d45-b64d-4036-804a-b81cad4c7c82", "cd85ed9c-7580-4882-9f21-c6603b4d90a0"
    public(store)
    tenant_net(store, tenant, net, "f1b6f239-1a19-4afc-a6bb-475627009fd1", "10.1.0.0/24",
               dns=["8.8.8.8", "8.8.4.4"],
               routes=[{"destination": "192.168.200.0/24", "nexthop": "10.1.0.254"}])
    store.create("router", {"id": rid, "tenant_id": tenant})
    store.set_router_gateway(rid, PUBLIC, [{"ip_address": "172.24.4.7"}])
    store.add_router_interface(rid, subnet_id="f1b6f239-1a19-4afc-a6bb-475627009fd1",
                               mac_address="fa:16:3e:e3:aa:ff")
    vm(store, net, "e4b010e5-c133-4cdc-85b2-0f3e6e1b95e9", "fa:16:3e:1d:cb:d6", "10.1.0.8")
    vm(store, net, "a52ee083-0c32-4631-8d88-a631589e2280", "fa:16:3e:10:9f:9b", "10.1.0.12")
    store.create("floatingip", {"router_id": rid, "floating_ip_address": "172.24.4.228",
                                "fixed_ip_address": "10.1.0.8"})
    return ResourceRef(ROUTER, rid, tenant)


def router_ha_primary(store):
    tenant, rid, net, sub = "12a8864cf3a646979c0a75c8d901ecf7", \
        "3a2fe2db-ca41-47a3-9aeb-8c4fa8218534", "58aa0c2f-f606-44d6-9025-1a87a638e592", \
        "00d9d3a1-a868-43d5-9b8b-41beba572f9d"
    public(store)
    tenant_net(store, tenant, net, sub, "10.2.0.0/24", dns=["8.8.8.8", "8.8.4.4"],
               routes=[{"destination": "192.168.201.0/24", "nexthop": "10.2.0.254"}])
    store.create("router", {"id": rid, "tenant_id": tenant, "ha": True})
    store.set_router_gateway(rid, PUBLIC, [{"ip_address": "172.24.4.9"}])
    router_port(store, rid, net, "fa:16:3e:90:03:79", [{"subnet_id": sub,
                                                        "ip_address": "10.2.0.1"}],
                owner="network:ha_router_replicated_interface")
    vm(store, net, "a3e280e0-a1dd-4fd6-82ed-28351db94dbd", "fa:16:3e:cb:03:d3", "10.2.0.5")
    vm(store, net, "d1680d23-feab-403e-9f12-f7e2cbe625ee", "fa:16:3e:6a:f4:ff", "10.2.0.6")
    store.create("floatingip", {"router_id": rid, "floating_ip_address": "172.24.4.231",
                                "fixed_ip_address": "10.2.0.5"})
    return ResourceRef(ROUTER, rid, tenant)


def router_no_gateway(store):
    tenant, rid = "c0a081079dfa4a078c0f0152f38c832e", "e0f0c018-8187-4d99-bb2d-adc3eb3ec4fc"
    fe, be = "47dcb695-c668-47de-bcde-d939761d62dd", "ee7f86d8-9ea7-40bb-9cfd-e895c546332d"
    tenant_net(store, tenant, fe, "105de5fb-8742-456e-9298-9f4a60ecd4a9", "192.168.50.0/24",
               dns=["192.168.50.2"])
    tenant_net(store, tenant, be, "69e50d75-82be-47bd-92e4-67d9b77be521", "192.168.51.0/24")
    store.create("router", {"id": rid, "tenant_id": tenant})
    store.add_router_interface(rid, subnet_id="105de5fb-8742-456e-9298-9f4a60ecd4a9",
                               mac_address="fa:16:3e:3c:94:3a")
    vm(store, fe, "258d15d2-c9f1-4d6a-ab32-50ba99bd7dba", "fa:16:3e:94:ac:b4",
       "192.168.50.10")
    vm(store, fe, "728cdf5a-117c-4caa-8ae4-1178cb8130b6", "fa:16:3e:9d:07:28", "192.168.50.2")
    store.add_router_interface(rid, subnet_id="69e50d75-82be-47bd-92e4-67d9b77be521",
                               mac_address="fa:16:3e:86:b1:21")
    vm(store, be, "8b426183-d512-4a5b-80d7-e99ab3d03a8e", "fa:16:3e:72:99:1f",
       "192.168.51.20")
    return ResourceRef(ROUTER, rid, tenant)


def router_dual_stack(store):
    tenant, rid = "2fe01268f3ba4deaa64f7b454ec2e61b", "6aa12cb8-69a5-4c89-b171-73e791f26670"
    ds, v6, st = "31dabf46-6bb7-4803-9a7d-921e870945f4", \
        "b5de4686-53ea-467d-b695-6e0f4fa1f918", "0e758d09-f2c1-4d5d-9fe2-1444111aab9c"
    ds4, ds6 = "1ad9aedc-a689-4520-8933-0395753fd435", "6418461d-9bc2-478c-926a-4660eccb7749"
    public_dualstack(store)
    tenant_net(store, tenant, ds, ds4, "10.20.0.0/24", dns=["8.8.8.8"])
    store.create("subnet", {"id": ds6, "network_id": ds, "cidr": "fd4e:7a31:2c5b:1::/64",
                            "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac",
                            "dns_nameservers": ["2001:4860:4860::8888"]})
    tenant_net(store, tenant, v6, "4bea1d39-c293-460d-a0a5-21d7f2092eb6",
               "fd4e:7a31:2c5b:2::/64", dns=["2001:4860:4860::8844"],
               ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful")
    tenant_net(store, tenant, st, "fc9c6621-ee51-4f41-8d87-7b49cc2cc22e", "10.30.0.0/24",
               enable_dhcp=False)
    store.create("router", {"id": rid, "tenant_id": tenant})
    # The gateway port's v6 address is SLAAC, computed from its MAC.
    store.set_router_gateway(rid, DUALSTACK, mac_address="fa:16:3e:2f:9e:e6",
                             fixed_ips=[{"ip_address": "198.51.100.12"},
                                        {"subnet_id": "1f237edc-e368-4b73-b761-a128c29933a2"}])
    # "router add port": a port with 10.20.0.1; Neutron added the SLAAC address itself.
    port = store.create("port", {"network_id": ds, "mac_address": "fa:16:3e:e7:5b:4f",
                                 "fixed_ips": [{"ip_address": "10.20.0.1"},
                                               {"subnet_id": ds6}]})
    store.add_router_interface(rid, port_id=port["id"])
    vm(store, ds, "c78ba473-29d8-4f95-832c-f5900030f024", "fa:16:3e:4a:0a:95", "10.20.0.11",
       ds6)
    vm(store, ds, "29200b9c-4161-4f8d-85b7-bbd2fbec4b8c", "fa:16:3e:56:1e:79", "10.20.0.12",
       ds6)
    store.add_router_interface(rid, subnet_id="4bea1d39-c293-460d-a0a5-21d7f2092eb6",
                               mac_address="fa:16:3e:6f:fe:54")
    vm(store, v6, "aab558e7-0c6f-4e10-a854-0adab5b37de2", "fa:16:3e:5e:0e:5f",
       "fd4e:7a31:2c5b:2::1a5")
    vm(store, v6, "993c82fd-9c44-44cf-ac99-627ec7303c0d", "fa:16:3e:8f:f7:52",
       "fd4e:7a31:2c5b:2::2c7")
    store.add_router_interface(rid, subnet_id="fc9c6621-ee51-4f41-8d87-7b49cc2cc22e",
                               mac_address="fa:16:3e:ff:d8:c3")
    vm(store, st, "8bbb4214-4f63-43e3-a0dd-ae999af6984c", "fa:16:3e:4c:b7:4f", "10.30.0.21")
    store.create("floatingip", {"router_id": rid, "floating_ip_address": "198.51.100.50",
                                "fixed_ip_address": "10.20.0.11"})
    return ResourceRef(ROUTER, rid, tenant)


def _contract_ids(name):
    """Per internal network of a contract file: (network id, subnet id, [(ip, mac,
    device id)] of its allocations)."""
    for network in CONTRACT[name]["networks"]:
        if network["network_type"] == "internal":
            yield (network["network_id"], network["subnets"][0]["id"],
                   [(next(iter(a["ip_addresses"])), a["mac_address"], a["device_id"])
                    for a in network["allocations"]])


def router_many_fips(store):
    tenant, rid = "368fab0cc44d4c5893226d3038a41c86", "b63b847c-0b9f-488c-827b-09f49b1d9371"
    public(store)
    store.create("router", {"id": rid, "tenant_id": tenant})
    store.set_router_gateway(rid, PUBLIC, [{"ip_address": "172.24.4.11"}])
    tiers = list(_contract_ids("router-many-fips"))
    assert len(tiers) == 4
    for k, (net, sub, allocations) in enumerate(tiers, start=1):
        tenant_net(store, tenant, net, sub, f"10.40.{k}.0/24", dns=["8.8.8.8"])
        router_ip, router_mac, _ = allocations[0]
        assert router_ip == f"10.40.{k}.1"
        store.add_router_interface(rid, subnet_id=sub, mac_address=router_mac)
    # vmNN is on tier ((NN-1) mod 4)+1 at 10.40.k.(10 + (NN-1) div 4); created in VM order
    # per tier, which is the port-list order the allocations show.
    ids = {ip: (mac, dev) for _, _, allocations in tiers for ip, mac, dev in allocations}
    for k, (net, _, _) in enumerate(tiers, start=1):
        for nn in range(k, 41, 4):
            ip = f"10.40.{k}.{10 + (nn - 1) // 4}"
            vm(store, net, ids[ip][1], ids[ip][0], ip)
    for nn in range(1, 31):
        k = (nn - 1) % 4 + 1
        store.create("floatingip", {"router_id": rid,
                                    "floating_ip_address": f"172.24.4.{100 + nn}",
                                    "fixed_ip_address": f"10.40.{k}.{10 + (nn - 1) // 4}"})
    return ResourceRef(ROUTER, rid, tenant)


def router_wide(store):
    tenant, rid = "1e56270559ec4eb2a746d79a1a865d88", "006167f5-9b83-4b0b-9e3a-f6fda78af3e8"
    public(store)
    store.create("router", {"id": rid, "tenant_id": tenant})
    store.set_router_gateway(rid, PUBLIC, [{"ip_address": "172.24.4.14"}])
    nets = list(_contract_ids("router-wide"))
    assert len(nets) == 11
    for k, (net, sub, allocations) in enumerate(nets, start=1):
        tenant_net(store, tenant, net, sub, f"10.60.{k}.0/24", dns=["8.8.8.8"])
        (router_ip, router_mac, _), (vm_ip, vm_mac, vm_dev) = allocations
        assert (router_ip, vm_ip) == (f"10.60.{k}.1", f"10.60.{k}.10")
        store.add_router_interface(rid, subnet_id=sub, mac_address=router_mac)
        vm(store, net, vm_dev, vm_mac, vm_ip)
    for fip, fixed in (("172.24.4.140", "10.60.1.10"), ("172.24.4.141", "10.60.9.10"),
                       ("172.24.4.142", "10.60.11.10")):
        store.create("floatingip", {"router_id": rid, "floating_ip_address": fip,
                                    "fixed_ip_address": fixed})
    return ResourceRef(ROUTER, rid, tenant)


VIP_EXTRA = {"allowed_address_pairs": [], "binding:host_id": "", "binding:profile": {},
             "binding:vif_details": {}, "binding:vif_type": "unbound",
             "binding:vnic_type": "normal", "created_at": "2016-09-27T13:38:26Z",
             "description": "", "extra_dhcp_opts": [], "port_security_enabled": True,
             "project_id": "d90eb1385b434498b22b6f6281c904c5", "revision_number": 5,
             "security_groups": ["10cb7af0-b1b9-4642-81ec-34b51ea6b096"],
             "updated_at": "2016-09-27T13:38:26Z"}


def loadbalancer_http(store):
    tenant, lb_id = "d90eb1385b434498b22b6f6281c904c5", "961cb534-0a20-4fcd-9383-3d4ddf00b525"
    net, sub = "ec53466d-ba0c-4f20-92ba-31d450777c17", "6a54b7c8-9450-4010-9e07-4019f826cfea"
    tenant_net(store, tenant, net, sub, "10.70.0.0/24", dns=["8.8.8.8"])
    vip = store.create("port", {
        "id": "3eb1ab7c-7ad2-4fb5-90c0-60a898bd626f", "network_id": net,
        "name": f"loadbalancer-{lb_id}", "mac_address": "fa:16:3e:df:d9:2b",
        "fixed_ips": [{"ip_address": "10.70.0.20"}], "device_id": lb_id,
        "device_owner": "neutron:LOADBALANCERV2", "admin_state_up": False, "status": "DOWN",
        "extra": VIP_EXTRA})
    store.create("loadbalancer", {"id": lb_id, "tenant_id": tenant, "name": "web-lb",
                                  "vip_port_id": vip["id"],
                                  "provisioning_status": "PENDING_CREATE"})
    store.create("pool", {"id": "e096c024-943b-4ce3-af6e-3b4217cb97d6",
                          "loadbalancer_id": lb_id, "name": "web-pool"})
    store.create("listener", {"id": "5501f2b9-d1c5-465c-b302-2d090ead6bc2",
                              "loadbalancer_id": lb_id, "name": "http-80",
                              "protocol_port": 80,
                              "default_pool_id": "e096c024-943b-4ce3-af6e-3b4217cb97d6"})
    for member_id, address in (("0c83e1bc-9bd8-4654-a9fa-e2d706fbef41", "10.70.0.11"),
                               ("d389a9ef-7b5d-4b1a-815b-bd3720b35966", "10.70.0.12")):
        store.create("member", {"id": member_id, "address": address, "protocol_port": 80,
                                "pool_id": "e096c024-943b-4ce3-af6e-3b4217cb97d6"})
    return ResourceRef(LOADBALANCER, lb_id, tenant)


SCENARIOS = {"router-basic": router_basic, "router-ha-primary": router_ha_primary,
             "router-no-gateway": router_no_gateway, "router-dual-stack": router_dual_stack,
             "router-many-fips": router_many_fips, "router-wide": router_wide,
             "loadbalancer-http": loadbalancer_http}
LB_NIC_MACS = {"loadbalancer-http": ["fa:16:3e:5e:4c:53", "fa:16:3e:13:6b:14"]}


def instance_view(store, ref, name):
    """What the orchestrator learns about the instance: appliance ports with the README's
    NIC MACs (ge0 = MGT, then one per data network in NIC order), the management address
    (EUI-64 of the MGT MAC), and the interface map from the appliance's MAC -> geN list."""
    snapshot = store.snapshot()
    macs = (CONTRACT_NIC_MACS.get(name) or LB_NIC_MACS[name])
    networks = [MGMT.network_id] + snapshot.data_networks(ref)
    assert len(networks) == len(macs), "one NIC per network"
    ports = [{"network_id": nid, "mac_address": mac} for nid, mac in zip(networks, macs)]
    reported = {mac: f"ge{i}" for i, mac in enumerate(macs)}
    address = str(ipam.eui64(MGMT.prefix, macs[0]))
    return InstanceView(address, interface_map(reported, ports))


def comparable(payload):
    """Subnet order is not significant (README "Format"): sort it."""
    payload = copy.deepcopy(payload)
    for network in payload["networks"]:
        network["subnets"].sort(key=lambda s: s["id"])
    return payload


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_builder_reproduces_contract_payload(store, name):
    ref = SCENARIOS[name](store)
    view = instance_view(store, ref, name)
    if name == "router-ha-primary":
        secondary = "fdca:3ba5:a17a:acda:f816:3eff:fe4c:b39a"
        configs = builder.ha_configs([("a_0", view.management_address, 1475572353),
                                      ("a_1", secondary, 1475572361)])
        view = InstanceView(view.management_address, view.interfaces, configs["a_0"])
    payload = builder.build(store.snapshot(), ref, SETTINGS, view)
    # Equal JSON values, list order included (networks, allocations, floating IPs,
    # listeners, members); only subnets are compared sorted.
    assert comparable(payload) == comparable(CONTRACT[name])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_built_payload_passes_the_agent_parser(store, name):
    ref = SCENARIOS[name](store)
    payload = builder.build(store.snapshot(), ref, SETTINGS, instance_view(store, ref, name))
    parse_payload(payload, ("router", "loadbalancer"))
    # And the placeholder view (used for input digests) builds a valid payload too.
    placeholder = builder.placeholder_view(store.snapshot(), ref)
    placeholder = InstanceView("fdca:3ba5:a17a:acda::99", placeholder.interfaces,
                               placeholder.ha_config)
    parse_payload(builder.build(store.snapshot(), ref, SETTINGS, placeholder),
                  ("router", "loadbalancer"))


def test_ha_configs_priority_by_age():
    configs = builder.ha_configs([("r_1", "fd00::b", 20.0), ("r_0", "fd00::a", 10.0)])
    assert configs == {"r_0": {"peers": ["fd00::b"], "priority": 100},
                       "r_1": {"peers": ["fd00::a"], "priority": 50}}


def test_ha_secondary_matches_contract(store):
    ref = router_ha_primary(store)
    snapshot = store.snapshot()
    macs = CONTRACT_NIC_MACS["router-ha-secondary"]
    ports = [{"network_id": nid, "mac_address": mac}
             for nid, mac in zip([MGMT.network_id] + snapshot.data_networks(ref), macs)]
    primary = str(ipam.eui64(MGMT.prefix, CONTRACT_NIC_MACS["router-ha-primary"][0]))
    secondary = str(ipam.eui64(MGMT.prefix, macs[0]))
    configs = builder.ha_configs([("a_0", primary, 1.0), ("a_1", secondary, 2.0)])
    view = InstanceView(secondary, interface_map({m: f"ge{i}" for i, m in enumerate(macs)},
                                                 ports), configs["a_1"])
    assert comparable(builder.build(snapshot, ref, SETTINGS, view)) == \
        comparable(CONTRACT["router-ha-secondary"])


def test_two_router_ports_on_one_network_share_one_entry(store):
    tenant, net = "t1", "n1"
    tenant_net(store, tenant, net, "s4", "10.9.0.0/24")
    store.create("subnet", {"id": "s6", "network_id": net, "cidr": "fd00:9::/64"})
    store.create("router", {"id": "r1", "tenant_id": tenant})
    store.add_router_interface("r1", subnet_id="s4")
    store.add_router_interface("r1", subnet_id="s6")
    ref = ResourceRef(ROUTER, "r1", tenant)
    assert store.snapshot().data_networks(ref) == [net]
    view = InstanceView("fdca:3ba5:a17a:acda::5", {MGMT.network_id: "ge0", net: "ge1"})
    payload = builder.build(store.snapshot(), ref, SETTINGS, view)
    internal = [n for n in payload["networks"] if n["network_type"] == "internal"]
    assert len(internal) == 1
    assert internal[0]["interface"]["addresses"] == ["10.9.0.1/24", "fd00:9::1/64"]
    parse_payload(payload, ("router",))


def test_missing_nic_is_a_build_error(store):
    ref = router_basic(store)
    view = InstanceView("fdca:3ba5:a17a:acda::5", {MGMT.network_id: "ge0"})
    with pytest.raises(builder.BuildError, match="no NIC on network"):
        builder.build(store.snapshot(), ref, SETTINGS, view)


def test_labels_from_provider_rules(tmp_path):
    rules = tmp_path / "provider_rules.json"
    rules.write_text(json.dumps({"labels": {"ext": ["192.168.57.0/24"]}, "prerules": []}))
    assert builder.load_labels(str(rules)) == {"ext": ["192.168.57.0/24"]}
    assert builder.load_labels(str(tmp_path / "missing.json")) == {}
    assert builder.load_labels("") == {}


def test_management_address_is_eui64_of_the_mgt_mac():
    assert str(ipam.eui64("fdca:3ba5:a17a:acda::/64", "fa:16:3e:67:41:6c")) == \
        "fdca:3ba5:a17a:acda:f816:3eff:fe67:416c"
    assert ipaddress.ip_address("fdca:3ba5:a17a:acda:f816:3eff:fe67:416c") in \
        ipaddress.ip_network(MGMT.prefix)


# -- VPN: router-vpn.json from a router with one IPsec site connection ---------------------------

def router_vpn(store):
    """README "router-vpn.json": the basic topology with its gateway on public-dualstack and
    one IPsec site connection (the VPN service, policies and endpoint groups inline)."""
    payload = CONTRACT["router-vpn"]
    tenant, rid = payload["tenant_id"], "f9c6be66-21b1-4a2d-b637-f32c4dd6d0a1"
    net, subnet = "ae0ef759-fb54-4d47-a971-89be15c91a59", "264a23fc-e18d-47fb-84c6-5ad81a1592be"
    public_dualstack(store)
    tenant_net(store, tenant, net, subnet, "10.8.0.0/24", dns=["8.8.8.8", "8.8.4.4"],
               routes=[{"destination": "192.168.202.0/24", "nexthop": "10.8.0.254"}])
    store.create("router", {"id": rid, "tenant_id": tenant, "name": "vpn-to-branch"})
    store.set_router_gateway(rid, DUALSTACK, [
        {"ip_address": "198.51.100.17"}, {"ip_address": "2001:db8:c0de:1:f816:3eff:fe54:face"}])
    interface = payload["networks"][2]["allocations"]
    store.add_router_interface(rid, subnet_id=subnet, mac_address=interface[0]["mac_address"])
    for allocation in interface[1:]:
        vm(store, net, allocation["device_id"], allocation["mac_address"],
           *allocation["ip_addresses"])
    store.create("floatingip", {"router_id": rid, "floating_ip_address": "198.51.100.61",
                                "fixed_ip_address": "10.8.0.8"})
    contract = payload["vpn"]["ipsec"][0]["ipsec_connections"][0]
    policy = {"ikepolicy": IKE_KEYS, "ipsecpolicy": IPSEC_KEYS}
    store.create("ipsec_site_connection", {
        "id": contract["id"], "router_id": rid, "name": contract["name"],
        "peer_address": contract["peer_address"], "peer_id": contract["peer_id"],
        "psk": contract["psk"], "initiator": contract["initiator"], "mtu": contract["mtu"],
        "local_subnet_ids": [subnet],
        "peer_cidrs": contract["peer_ep_group"]["endpoints"], "dpd": contract["dpd"],
        **{key: {k: contract[key][k] for k in keys} for key, keys in policy.items()}})
    return ResourceRef(ROUTER, rid, tenant)


IKE_KEYS = ("ike_version", "auth_algorithm", "encryption_algorithm", "pfs",
            "phase1_negotiation_mode", "lifetime")
IPSEC_KEYS = ("transform_protocol", "auth_algorithm", "encryption_algorithm",
              "encapsulation_mode", "pfs", "lifetime")


def without_neutron_ids(payload):
    """The VPN's Neutron-side identifiers and names (service, policies, endpoint groups),
    which the orchestrator derives from the connection instead of storing objects for."""
    payload = comparable(payload)
    for service in payload["vpn"]["ipsec"]:
        service.update(id=None, name=None)
        for connection in service["ipsec_connections"]:
            connection["vpnservice_id"] = None
            for key in ("ikepolicy", "ipsecpolicy", "local_ep_group", "peer_ep_group"):
                connection[key].update(id=None, name=None)
    return payload


def test_builder_reproduces_the_contract_vpn(store):
    ref = router_vpn(store)
    payload = builder.build(store.snapshot(), ref, SETTINGS,
                            instance_view(store, ref, "router-vpn"))
    assert without_neutron_ids(payload) == without_neutron_ids(CONTRACT["router-vpn"])
    parse_payload(payload)
    # without connections the router sends "vpn": {} as before
    store.delete("ipsec_site_connection", "bf4655d2-27d0-4d9e-8578-62c5e5bf890f")
    assert builder.build(store.snapshot(), ref, SETTINGS,
                         instance_view(store, ref, "router-vpn"))["vpn"] == {}
