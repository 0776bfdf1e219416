"""The contract topologies as Neutron would show them (``GET /v2.0/<collection>`` objects,
Newton-era field names, the API reference's shapes), written from the facts in
astara_lab/contract/original-orchestrator/README.md. Nothing here is computed by the
orchestrator: SLAAC addresses are written out, and opaque ids of the two big topologies
(the VMs of many-fips and wide) are read from the contract files by position, as
test/unit/test_orchestrator_builder.py does.

Each function returns ``{collection: [objects]}`` in Neutron's list order, plus the
resource it describes."""
import itertools
import json

from astara_lab.appliance import contract_payloads

CONTRACT = contract_payloads("original-orchestrator")
MGMT_NET = "b308b496-94cb-45bf-b7a7-0cacb4e0465a"
MGMT_SUBNET = "3480da23-b6b4-4ef4-89dc-e1a4ce98692f"
PUBLIC = "b732f682-02fb-4157-9de7-e589a7503295"
PUBLIC_SUBNET = "f7ceb21a-7ad7-49ee-b705-c6b74ab2fac8"
DUALSTACK = "9470b502-4d7a-4377-8885-da4e3f45727e"
ADMIN = "a9c8e7d6b5a44f3e8d2c1b0a9f8e7d6c"
INTERFACE = "network:router_interface"
_IDS = itertools.count(1)  # ids unique across topologies (tests merge two)
GATEWAY = "network:router_gateway"


class Topology:
    def __init__(self):
        self.objects = {"networks": [], "subnets": [], "ports": [], "routers": [],
                        "floatingips": []}
        self.network("mgt", MGMT_NET, ADMIN, 1450)
        self.subnet(MGMT_SUBNET, MGMT_NET, "fdca:3ba5:a17a:acda::/64",
                    "fdca:3ba5:a17a:acda::1", ADMIN, address_mode="slaac")

    def next_id(self, kind):
        return f"{next(_IDS):08x}-{kind[:4].encode().hex()}-4000-8000-000000000000"

    def network(self, name, net_id, tenant, mtu, external=False):
        self.objects["networks"].append({
            "id": net_id, "name": name, "tenant_id": tenant, "project_id": tenant,
            "admin_state_up": True, "status": "ACTIVE", "shared": False, "mtu": mtu,
            "router:external": external, "subnets": [], "availability_zones": ["nova"],
            "port_security_enabled": True, "provider:network_type":
            "flat" if external else "vxlan"})

    def subnet(self, subnet_id, net_id, cidr, gateway, tenant, dhcp=True, dns=(), routes=(),
               ra_mode=None, address_mode=None):
        self.objects["subnets"].append({
            "id": subnet_id, "network_id": net_id, "name": "", "tenant_id": tenant,
            "project_id": tenant, "cidr": cidr, "ip_version": 6 if ":" in cidr else 4,
            "gateway_ip": gateway, "enable_dhcp": dhcp, "dns_nameservers": list(dns),
            "host_routes": [{"destination": d, "nexthop": n} for d, n in routes],
            "ipv6_ra_mode": ra_mode, "ipv6_address_mode": address_mode,
            "allocation_pools": [], "subnetpool_id": None, "description": ""})

    def port(self, net_id, mac, fixed, device_id="", owner="compute:nova", tenant="",
             port_id=None, name=""):
        port = {"id": port_id or self.next_id("port"), "name": name, "network_id": net_id,
                "tenant_id": tenant, "project_id": tenant, "mac_address": mac,
                "admin_state_up": True, "status": "ACTIVE", "device_id": device_id,
                "device_owner": owner,
                "fixed_ips": [{"subnet_id": s, "ip_address": ip} for s, ip in fixed],
                "security_groups": [], "allowed_address_pairs": [], "description": "",
                "binding:vnic_type": "normal"}
        self.objects["ports"].append(port)
        return port

    def router(self, router_id, tenant, ha=False, gateway_net=None):
        self.objects["routers"].append({
            "id": router_id, "name": "router", "tenant_id": tenant, "project_id": tenant,
            "admin_state_up": True, "status": "ACTIVE", "ha": ha, "distributed": False,
            "external_gateway_info": {"network_id": gateway_net, "enable_snat": True}
            if gateway_net else None, "routes": []})

    def floatingip(self, router_id, tenant, floating, fixed, port_id, net=PUBLIC):
        self.objects["floatingips"].append({
            "id": self.next_id("fip"), "router_id": router_id, "tenant_id": tenant,
            "project_id": tenant, "floating_network_id": net,
            "floating_ip_address": floating, "fixed_ip_address": fixed,
            "port_id": port_id, "status": "ACTIVE", "description": ""})

    def public(self):
        self.network("public", PUBLIC, ADMIN, 1500, external=True)
        self.subnet(PUBLIC_SUBNET, PUBLIC, "172.24.4.0/24", "172.24.4.1", ADMIN, dhcp=False)

    def merge(self, other):
        """Adds ``other``'s objects that this topology lacks (by id: both hold the
        management network); returns this topology."""
        for collection, objects in other.objects.items():
            have = {o["id"] for o in self.objects[collection]}
            self.objects[collection] += [o for o in objects if o["id"] not in have]
        return self

    def load_into(self, cloud):
        """Serves every object from ``cloud`` (astara_lab.fakecloud.FakeCloud)."""
        for collection, objects in self.objects.items():
            for obj in objects:
                cloud.add(collection[:-1], obj)


def router_basic():
    t, tenant, rid = Topology(), "baef51913f354071ab020eae853d4ffe", \
        "fbf50d45-b64d-4036-804a-b81cad4c7c82"
    net, sub = "cd85ed9c-7580-4882-9f21-c6603b4d90a0", "f1b6f239-1a19-4afc-a6bb-475627009fd1"
    t.public()
    t.network("private", net, tenant, 1450)
    t.subnet(sub, net, "10.1.0.0/24", "10.1.0.1", tenant, dns=["8.8.8.8", "8.8.4.4"],
             routes=[("192.168.200.0/24", "10.1.0.254")])
    t.router(rid, tenant, gateway_net=PUBLIC)
    t.port(PUBLIC, "fa:16:3e:c8:1d:07", [(PUBLIC_SUBNET, "172.24.4.7")], rid, GATEWAY)
    t.port(net, "fa:16:3e:e3:aa:ff", [(sub, "10.1.0.1")], rid, INTERFACE, tenant)
    web1 = t.port(net, "fa:16:3e:1d:cb:d6", [(sub, "10.1.0.8")],
                  "e4b010e5-c133-4cdc-85b2-0f3e6e1b95e9", tenant=tenant)
    t.port(net, "fa:16:3e:10:9f:9b", [(sub, "10.1.0.12")],
           "a52ee083-0c32-4631-8d88-a631589e2280", tenant=tenant)
    t.floatingip(rid, tenant, "172.24.4.228", "10.1.0.8", web1["id"])
    return t, ("router", rid)


def router_ha():
    t, tenant, rid = Topology(), "12a8864cf3a646979c0a75c8d901ecf7", \
        "3a2fe2db-ca41-47a3-9aeb-8c4fa8218534"
    net, sub = "58aa0c2f-f606-44d6-9025-1a87a638e592", "00d9d3a1-a868-43d5-9b8b-41beba572f9d"
    t.public()
    t.network("private", net, tenant, 1450)
    t.subnet(sub, net, "10.2.0.0/24", "10.2.0.1", tenant, dns=["8.8.8.8", "8.8.4.4"],
             routes=[("192.168.201.0/24", "10.2.0.254")])
    t.router(rid, tenant, ha=True, gateway_net=PUBLIC)
    t.port(PUBLIC, "fa:16:3e:c8:1d:09", [(PUBLIC_SUBNET, "172.24.4.9")], rid, GATEWAY)
    t.port(net, "fa:16:3e:90:03:79", [(sub, "10.2.0.1")], rid,
           "network:ha_router_replicated_interface", tenant)
    app1 = t.port(net, "fa:16:3e:cb:03:d3", [(sub, "10.2.0.5")],
                  "a3e280e0-a1dd-4fd6-82ed-28351db94dbd", tenant=tenant)
    t.port(net, "fa:16:3e:6a:f4:ff", [(sub, "10.2.0.6")],
           "d1680d23-feab-403e-9f12-f7e2cbe625ee", tenant=tenant)
    t.floatingip(rid, tenant, "172.24.4.231", "10.2.0.5", app1["id"])
    return t, ("router", rid)


def router_no_gateway():
    t, tenant, rid = Topology(), "c0a081079dfa4a078c0f0152f38c832e", \
        "e0f0c018-8187-4d99-bb2d-adc3eb3ec4fc"
    fe, be = "47dcb695-c668-47de-bcde-d939761d62dd", "ee7f86d8-9ea7-40bb-9cfd-e895c546332d"
    fe_sub, be_sub = "105de5fb-8742-456e-9298-9f4a60ecd4a9", \
        "69e50d75-82be-47bd-92e4-67d9b77be521"
    t.network("frontend", fe, tenant, 1450)
    t.subnet(fe_sub, fe, "192.168.50.0/24", "192.168.50.1", tenant, dns=["192.168.50.2"])
    t.network("backend", be, tenant, 1450)
    t.subnet(be_sub, be, "192.168.51.0/24", "192.168.51.1", tenant)
    t.router(rid, tenant)
    t.port(fe, "fa:16:3e:3c:94:3a", [(fe_sub, "192.168.50.1")], rid, INTERFACE, tenant)
    t.port(fe, "fa:16:3e:94:ac:b4", [(fe_sub, "192.168.50.10")],
           "258d15d2-c9f1-4d6a-ab32-50ba99bd7dba", tenant=tenant)
    t.port(fe, "fa:16:3e:9d:07:28", [(fe_sub, "192.168.50.2")],
           "728cdf5a-117c-4caa-8ae4-1178cb8130b6", tenant=tenant)
    t.port(be, "fa:16:3e:86:b1:21", [(be_sub, "192.168.51.1")], rid, INTERFACE, tenant)
    t.port(be, "fa:16:3e:72:99:1f", [(be_sub, "192.168.51.20")],
           "8b426183-d512-4a5b-80d7-e99ab3d03a8e", tenant=tenant)
    return t, ("router", rid)


def router_dual_stack():
    t, tenant, rid = Topology(), "2fe01268f3ba4deaa64f7b454ec2e61b", \
        "6aa12cb8-69a5-4c89-b171-73e791f26670"
    ds, v6, st = "31dabf46-6bb7-4803-9a7d-921e870945f4", \
        "b5de4686-53ea-467d-b695-6e0f4fa1f918", "0e758d09-f2c1-4d5d-9fe2-1444111aab9c"
    ds4, ds6 = "1ad9aedc-a689-4520-8933-0395753fd435", "6418461d-9bc2-478c-926a-4660eccb7749"
    v6sub, stsub = "4bea1d39-c293-460d-a0a5-21d7f2092eb6", \
        "fc9c6621-ee51-4f41-8d87-7b49cc2cc22e"
    ext4, ext6 = "fe2c6803-2026-4352-a176-2d1d92eeccf5", "1f237edc-e368-4b73-b761-a128c29933a2"
    t.network("public-dualstack", DUALSTACK, ADMIN, 1500, external=True)
    t.subnet(ext4, DUALSTACK, "198.51.100.0/24", "198.51.100.1", ADMIN, dhcp=False)
    t.subnet(ext6, DUALSTACK, "2001:db8:c0de:1::/64", "2001:db8:c0de:1::1", ADMIN,
             address_mode="slaac")
    t.network("ds-net", ds, tenant, 1450)
    t.subnet(ds4, ds, "10.20.0.0/24", "10.20.0.1", tenant, dns=["8.8.8.8"])
    t.subnet(ds6, ds, "fd4e:7a31:2c5b:1::/64", "fd4e:7a31:2c5b:1::1", tenant,
             dns=["2001:4860:4860::8888"], ra_mode="slaac", address_mode="slaac")
    t.network("v6only-net", v6, tenant, 1450)
    t.subnet(v6sub, v6, "fd4e:7a31:2c5b:2::/64", "fd4e:7a31:2c5b:2::1", tenant,
             dns=["2001:4860:4860::8844"], ra_mode="dhcpv6-stateful",
             address_mode="dhcpv6-stateful")
    t.network("static-net", st, tenant, 1450)
    t.subnet(stsub, st, "10.30.0.0/24", "10.30.0.1", tenant, dhcp=False)
    t.router(rid, tenant, gateway_net=DUALSTACK)
    t.port(DUALSTACK, "fa:16:3e:2f:9e:e6", [(ext4, "198.51.100.12"),
                                            (ext6, "2001:db8:c0de:1:f816:3eff:fe2f:9ee6")],
           rid, GATEWAY)
    t.port(ds, "fa:16:3e:e7:5b:4f", [(ds4, "10.20.0.1"),
                                     (ds6, "fd4e:7a31:2c5b:1:f816:3eff:fee7:5b4f")],
           rid, INTERFACE, tenant)
    vm1 = t.port(ds, "fa:16:3e:4a:0a:95", [(ds4, "10.20.0.11"),
                                           (ds6, "fd4e:7a31:2c5b:1:f816:3eff:fe4a:a95")],
                 "c78ba473-29d8-4f95-832c-f5900030f024", tenant=tenant)
    t.port(ds, "fa:16:3e:56:1e:79", [(ds4, "10.20.0.12"),
                                     (ds6, "fd4e:7a31:2c5b:1:f816:3eff:fe56:1e79")],
           "29200b9c-4161-4f8d-85b7-bbd2fbec4b8c", tenant=tenant)
    t.port(v6, "fa:16:3e:6f:fe:54", [(v6sub, "fd4e:7a31:2c5b:2::1")], rid, INTERFACE, tenant)
    t.port(v6, "fa:16:3e:5e:0e:5f", [(v6sub, "fd4e:7a31:2c5b:2::1a5")],
           "aab558e7-0c6f-4e10-a854-0adab5b37de2", tenant=tenant)
    t.port(v6, "fa:16:3e:8f:f7:52", [(v6sub, "fd4e:7a31:2c5b:2::2c7")],
           "993c82fd-9c44-44cf-ac99-627ec7303c0d", tenant=tenant)
    t.port(st, "fa:16:3e:ff:d8:c3", [(stsub, "10.30.0.1")], rid, INTERFACE, tenant)
    t.port(st, "fa:16:3e:4c:b7:4f", [(stsub, "10.30.0.21")],
           "8bbb4214-4f63-43e3-a0dd-ae999af6984c", tenant=tenant)
    t.floatingip(rid, tenant, "198.51.100.50", "10.20.0.11", vm1["id"], net=DUALSTACK)
    return t, ("router", rid)


def _internal_networks(name):
    """(network id, subnet id, [(ip, mac, device id)]) per internal network of a contract
    file, by position (opaque ids only)."""
    for network in CONTRACT[name]["networks"]:
        if network["network_type"] == "internal":
            yield (network["network_id"], network["subnets"][0]["id"],
                   [(next(iter(a["ip_addresses"])), a["mac_address"], a["device_id"])
                    for a in network["allocations"]])


def router_many_fips():
    t, tenant, rid = Topology(), "368fab0cc44d4c5893226d3038a41c86", \
        "b63b847c-0b9f-488c-827b-09f49b1d9371"
    t.public()
    t.router(rid, tenant, gateway_net=PUBLIC)
    t.port(PUBLIC, "fa:16:3e:c8:1d:0b", [(PUBLIC_SUBNET, "172.24.4.11")], rid, GATEWAY)
    tiers = list(_internal_networks("router-many-fips"))
    for k, (net, sub, allocations) in enumerate(tiers, start=1):
        t.network(f"tier-{k}", net, tenant, 1450)
        t.subnet(sub, net, f"10.40.{k}.0/24", f"10.40.{k}.1", tenant, dns=["8.8.8.8"])
    ports = {}
    for k, (net, sub, allocations) in enumerate(tiers, start=1):
        _, router_mac, _ = allocations[0]
        t.port(net, router_mac, [(sub, f"10.40.{k}.1")], rid, INTERFACE, tenant)
        ids = {ip: (mac, dev) for ip, mac, dev in allocations}
        for nn in range(k, 41, 4):  # vmNN on tier ((NN-1) mod 4)+1 at .(10 + (NN-1) div 4)
            ip = f"10.40.{k}.{10 + (nn - 1) // 4}"
            ports[ip] = t.port(net, ids[ip][0], [(sub, ip)], ids[ip][1], tenant=tenant)
    for nn in range(1, 31):
        ip = f"10.40.{(nn - 1) % 4 + 1}.{10 + (nn - 1) // 4}"
        t.floatingip(rid, tenant, f"172.24.4.{100 + nn}", ip, ports[ip]["id"])
    return t, ("router", rid)


def router_wide():
    t, tenant, rid = Topology(), "1e56270559ec4eb2a746d79a1a865d88", \
        "006167f5-9b83-4b0b-9e3a-f6fda78af3e8"
    t.public()
    t.router(rid, tenant, gateway_net=PUBLIC)
    t.port(PUBLIC, "fa:16:3e:c8:1d:0e", [(PUBLIC_SUBNET, "172.24.4.14")], rid, GATEWAY)
    vms = {}
    for k, (net, sub, allocations) in enumerate(_internal_networks("router-wide"), start=1):
        (_, router_mac, _), (vm_ip, vm_mac, vm_dev) = allocations
        t.network(f"net-{k:02d}", net, tenant, 1450)
        t.subnet(sub, net, f"10.60.{k}.0/24", f"10.60.{k}.1", tenant, dns=["8.8.8.8"])
        t.port(net, router_mac, [(sub, f"10.60.{k}.1")], rid, INTERFACE, tenant)
        vms[f"10.60.{k}.10"] = t.port(net, vm_mac, [(sub, f"10.60.{k}.10")], vm_dev,
                                      tenant=tenant)
    for fip, fixed in (("172.24.4.140", "10.60.1.10"), ("172.24.4.141", "10.60.9.10"),
                       ("172.24.4.142", "10.60.11.10")):
        t.floatingip(rid, tenant, fip, fixed, vms[fixed]["id"])
    return t, ("router", rid)


LB_ID = "961cb534-0a20-4fcd-9383-3d4ddf00b525"


def loadbalancer_http():
    """The VIP network and port are Neutron's; the load balancer itself lives in the
    orchestrator's store in OpenStack mode (``lb_objects``)."""
    t, tenant = Topology(), "d90eb1385b434498b22b6f6281c904c5"
    net, sub = "ec53466d-ba0c-4f20-92ba-31d450777c17", "6a54b7c8-9450-4010-9e07-4019f826cfea"
    t.network("web-net", net, tenant, 1450)
    t.subnet(sub, net, "10.70.0.0/24", "10.70.0.1", tenant, dns=["8.8.8.8"])
    # The VIP port exactly as LBaaS v2 created it (README: admin down, unbound, owner
    # neutron:LOADBALANCERV2): Neutron's JSON, carried through to the payload.
    vip = json.loads(json.dumps(CONTRACT["loadbalancer-http"]["services"]["loadbalancer"]
                                ["vip_port"]))
    t.objects["ports"].append(vip)
    t.port(net, "fa:16:3e:aa:70:11", [(sub, "10.70.0.11")], t.next_id("vm"), tenant=tenant)
    t.port(net, "fa:16:3e:aa:70:12", [(sub, "10.70.0.12")], t.next_id("vm"), tenant=tenant)
    return t, ("loadbalancer", LB_ID)


def lb_objects(store):
    """web-lb (README: listener http-80 -> web-pool, two members) in the local store."""
    tenant, pool = "d90eb1385b434498b22b6f6281c904c5", "e096c024-943b-4ce3-af6e-3b4217cb97d6"
    store.create("loadbalancer", {"id": LB_ID, "tenant_id": tenant, "name": "web-lb",
                                  "vip_port_id": "3eb1ab7c-7ad2-4fb5-90c0-60a898bd626f",
                                  "provisioning_status": "PENDING_CREATE"})
    store.create("pool", {"id": pool, "loadbalancer_id": LB_ID, "name": "web-pool"})
    store.create("listener", {"id": "5501f2b9-d1c5-465c-b302-2d090ead6bc2",
                              "loadbalancer_id": LB_ID, "name": "http-80",
                              "protocol_port": 80, "default_pool_id": pool})
    for member_id, address in (("0c83e1bc-9bd8-4654-a9fa-e2d706fbef41", "10.70.0.11"),
                               ("d389a9ef-7b5d-4b1a-815b-bd3720b35966", "10.70.0.12")):
        store.create("member", {"id": member_id, "address": address, "protocol_port": 80,
                                "pool_id": pool})


TOPOLOGIES = {"router-basic": router_basic, "router-ha-primary": router_ha,
              "router-ha-secondary": router_ha, "router-no-gateway": router_no_gateway,
              "router-dual-stack": router_dual_stack, "router-many-fips": router_many_fips,
              "router-wide": router_wide, "loadbalancer-http": loadbalancer_http}


def many_routers(count):
    """``count`` routers, each with its tenant network, two VM ports and a floating IP:
    (topology, [(router id, k, subnet id)])."""
    t = Topology()
    t.public()
    routers = []
    for k in range(1, count + 1):
        tenant = f"{k:032x}"
        rid = f"{0xa000 + k:04x}0000-0000-4000-8000-00000000beef"
        net = f"{0xc000 + k:04x}0000-0000-4000-8000-0000000000ee"
        sub = f"{0xd000 + k:04x}0000-0000-4000-8000-00000000005b"
        t.network(f"net-{k}", net, tenant, 1450)
        t.subnet(sub, net, f"10.100.{k}.0/24", f"10.100.{k}.1", tenant)
        t.router(rid, tenant, gateway_net=PUBLIC)
        # .1 is the upstream gateway: router addresses start at .11 (never a gateway)
        t.port(PUBLIC, f"fa:16:3e:77:00:{k:02x}", [(PUBLIC_SUBNET, f"172.24.4.{10 + k}")],
               rid, GATEWAY)
        t.port(net, f"fa:16:3e:77:01:{k:02x}", [(sub, f"10.100.{k}.1")], rid, INTERFACE,
               tenant)
        vm = t.port(net, f"fa:16:3e:77:02:{k:02x}", [(sub, f"10.100.{k}.10")], f"vm-{k}",
                    tenant=tenant)
        t.port(net, f"fa:16:3e:77:03:{k:02x}", [(sub, f"10.100.{k}.11")], f"vm-{k}b",
               tenant=tenant)
        t.floatingip(rid, tenant, f"172.24.4.{100 + k}", f"10.100.{k}.10", vm["id"])
        routers.append((rid, k, sub))
    return t, routers
