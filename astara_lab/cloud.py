"""The lab's cloud: what it is (pure data), the admin-API calls that declare it to the
orchestrator (pure), and the namespaces around the orchestrator (shell).

``Cloud`` describes networks (each with its fabric bridge and subnets), tenant VMs (one
port each, with MAC and device id), routers (gateway + interfaces) and floating IPs.
``DEFAULT_CLOUD`` is what ``astara-lab up`` builds (every box a namespace, every line a
bridge in the fabric namespace)::

    inet ── b-public ─┬─ demo-router ── b-private ──── vm0, vm1   10.1.0.0/24
                      │    │       └── b-dualstack ── vm2, vm3   10.2.0.0/24,
                      │  b-mgmt                                  2001:db8:2::/64 SLAAC
                      │    └── ctl: orchestrator + metadata upstream, fdca:3ba5:a17a:acda::2
                      ├─ branch-router ── b-branch ── vm4        10.3.0.0/24
                      └─ ha-router (two instances, VRRP) ── b-ha ── vm5   10.4.0.0/24

    public: 172.24.4.0/24, 2001:db8:c0de:1::/64; inet owns .1/::1 (the gateways), peers
    with the router by BGP, serves HTTP on 198.51.100.200 and 2001:db8:ffff::200 (on lo).
    demo-router: 172.24.4.7, 2001:db8:c0de:1::7; floating IP 172.24.4.101 -> vm0.
    branch-router: 172.24.4.8, 2001:db8:c0de:1::8. An IPsec VPN (IKEv2, PSK) joins
    10.1.0.0/24 behind demo-router and 10.3.0.0/24 behind branch-router.
    demo-lb: a load balancer appliance on b-private, VIP 10.1.0.100:80 (HTTP, round robin)
    in front of vm0's and vm1's web servers, weights 1:3.
    ha-router (HA: the orchestrator boots two instances, the VRRP master holds the
    addresses): 172.24.4.9; floating IP 172.24.4.103 -> vm5.

``desired_state(cloud)`` turns it into the ordered admin-API calls, one function per
resource kind (``network_calls``, ``vm_port_calls``, ``router_calls``, ``floatingip_calls``,
``vpn_calls``, ``loadbalancer_calls``; an HA router is a router with ``ha=True``): a new kind
is one more field of ``Cloud`` and one more function in ``CALL_BUILDERS``. The ``build_*``
functions make the namespaces (the appliances themselves are the orchestrator's job,
through its compute driver).

With a VM driver (``astara-lab up --driver qemu``) the first router (demo-router) is a VM
of the image, the orchestrator's default driver; the other appliances stay namespaces
through placements (``placement_calls``: the netns driver, enabled beside it), so the lab
fits a 2-CPU machine and the HA row can crash a member's namespace.
"""
import dataclasses
import ipaddress
import sys
import uuid
from typing import Optional

from orchestrator_lite.ipam import eui64
from orchestrator_lite.store.kinds import LB_VIP_OWNER

from .appliance import REPO_ROOT, controller_node
from .orchestrator import ADMIN_PORT, ini_text
from .topology import PUBLIC_V4, PUBLIC_V6

TENANT = "demo"
MGMT_BRIDGE = "b-mgmt"
WEB_PORT = 80
METADATA_PORT = 9697
ORCHESTRATOR_ADDRESS = "fdca:3ba5:a17a:acda::2"
LAB_UUIDS = uuid.UUID("6f1d6c1e-6b1a-4c55-9a7e-a57a1ab00000")


@dataclasses.dataclass(frozen=True)
class Subnet:
    id: str
    cidr: str
    gateway_ip: str
    enable_dhcp: bool = True
    ipv6_mode: Optional[str] = None  # "slaac": RA mode and address mode

    @property
    def version(self):
        return ipaddress.ip_network(self.cidr).version


@dataclasses.dataclass(frozen=True)
class Network:
    id: str
    bridge: str  # in the fabric namespace
    subnets: tuple
    external: bool = False
    mtu: int = 1450


@dataclasses.dataclass(frozen=True)
class Vm:
    role: str  # namespace <prefix>-<role>
    network_id: str
    mac: str
    ipv4: str

    @property
    def port_id(self):
        return f"port-{self.role}"

    @property
    def device_id(self):
        return str(uuid.uuid5(LAB_UUIDS, self.role))  # the "Nova instance"


@dataclasses.dataclass(frozen=True)
class RouterPort:
    network_id: str
    fixed_ips: tuple  # ((subnet id, address), ...)


@dataclasses.dataclass(frozen=True)
class Router:
    id: str
    gateway: RouterPort
    interfaces: tuple  # of RouterPort
    tenant_id: str = TENANT
    ha: bool = False  # two instances, keepalived between them


@dataclasses.dataclass(frozen=True)
class FloatingIp:
    id: str
    router_id: str
    address: str
    vm: str  # role of the VM whose IPv4 address it maps to


@dataclasses.dataclass(frozen=True)
class VpnConnection:
    """One side of a site-to-site tunnel between two of the lab's routers."""
    id: str
    router_id: str
    peer_router_id: str
    local_subnet: str  # subnet id behind router_id
    peer_subnet: str  # subnet id behind the peer router
    psk: str = "astara-lab-demo-psk"


@dataclasses.dataclass(frozen=True)
class LbMember:
    vm: str  # role of the VM whose web server (IPv4, WEB_PORT) it is
    weight: int = 1


@dataclasses.dataclass(frozen=True)
class LoadBalancer:
    """One HTTP listener on ``vip`` (a port on ``subnet_id``) with one pool."""
    id: str
    subnet_id: str
    vip: str
    members: tuple  # of LbMember
    algorithm: str = "ROUND_ROBIN"
    port: int = WEB_PORT
    tenant_id: str = TENANT


@dataclasses.dataclass(frozen=True)
class Cloud:
    networks: tuple
    vms: tuple
    routers: tuple
    floating_ips: tuple = ()
    vpn_connections: tuple = ()
    loadbalancers: tuple = ()

    def router(self, router_id):
        return next(r for r in self.routers if r.id == router_id)

    def router_address(self, router_id, version):
        """A router's address on the external network."""
        return next(a for s, a in self.router(router_id).gateway.fixed_ips
                    if self.subnet(s).version == version)

    def network(self, network_id):
        return next(n for n in self.networks if n.id == network_id)

    def vm(self, role):
        return next(v for v in self.vms if v.role == role)

    def subnet(self, subnet_id):
        return next(s for n in self.networks for s in n.subnets if s.id == subnet_id)

    def external_network(self):
        return next(n for n in self.networks if n.external)

    def gateway_address(self, version):
        """The router's address on the external network (first router)."""
        return self.router_address(self.routers[0].id, version)

    def upstream_address(self, version):
        """The internet's own address on the external network (the subnet gateway)."""
        return next(s.gateway_ip for s in self.external_network().subnets
                    if s.version == version)

    def slaac_addresses(self, vm):
        """The IPv6 addresses ``vm`` gets by SLAAC (Neutron's EUI-64, as the store's IPAM)."""
        return [str(eui64(s.cidr, vm.mac)) for s in self.network(vm.network_id).subnets
                if s.ipv6_mode == "slaac"]

    def tenant_v6_prefixes(self):
        """IPv6 prefixes behind the routers: what BGP must announce."""
        attached = {p.network_id for r in self.routers for p in r.interfaces}
        return sorted(s.cidr for n in self.networks if n.id in attached
                      for s in n.subnets if s.version == 6)

    def network_of_subnet(self, subnet_id):
        return next(n for n in self.networks if any(s.id == subnet_id for s in n.subnets))

    def floating_ip_of(self, vm):
        return next((f.address for f in self.floating_ips if f.vm == vm.role), None)

    def vms_behind(self, router):
        networks = {port.network_id for port in router.interfaces}
        return [vm for vm in self.vms if vm.network_id in networks]


def _default_cloud():
    public = Network("public", "b-public", (
        Subnet("public-v4", "172.24.4.0/24", "172.24.4.1", enable_dhcp=False),
        Subnet("public-v6", "2001:db8:c0de:1::/64", "2001:db8:c0de:1::1", enable_dhcp=False),
    ), external=True, mtu=1500)
    private = Network("private", "b-private", (
        Subnet("private-v4", "10.1.0.0/24", "10.1.0.1"),))
    dualstack = Network("dualstack", "b-dualstack", (
        Subnet("dualstack-v4", "10.2.0.0/24", "10.2.0.1"),
        Subnet("dualstack-v6", "2001:db8:2::/64", "2001:db8:2::1", ipv6_mode="slaac"),
    ))
    ha_net = Network("ha-private", "b-ha", (
        Subnet("ha-private-v4", "10.4.0.0/24", "10.4.0.1"),))
    vms = (Vm("vm0", "private", "fa:16:3e:1a:b0:00", "10.1.0.10"),
           Vm("vm1", "private", "fa:16:3e:1a:b0:01", "10.1.0.11"),
           Vm("vm2", "dualstack", "fa:16:3e:1a:b0:02", "10.2.0.10"),
           Vm("vm3", "dualstack", "fa:16:3e:1a:b0:03", "10.2.0.11"),
           Vm("vm5", "ha-private", "fa:16:3e:1a:b0:05", "10.4.0.10"))
    router = Router(
        "demo-router",
        gateway=RouterPort("public", (("public-v4", "172.24.4.7"),
                                      ("public-v6", "2001:db8:c0de:1::7"))),
        interfaces=(RouterPort("private", (("private-v4", "10.1.0.1"),)),
                    RouterPort("dualstack", (("dualstack-v4", "10.2.0.1"),
                                             ("dualstack-v6", "2001:db8:2::1")))))
    ha_router = Router(
        "ha-router", gateway=RouterPort("public", (("public-v4", "172.24.4.9"),)),
        interfaces=(RouterPort("ha-private", (("ha-private-v4", "10.4.0.1"),)),), ha=True)
    fips = (FloatingIp("fip-vm0", "demo-router", "172.24.4.101", "vm0"),
            FloatingIp("fip-vm5", "ha-router", "172.24.4.103", "vm5"))
    branch = Network("branch", "b-branch", (Subnet("branch-v4", "10.3.0.0/24", "10.3.0.1"),))
    branch_router = Router(
        "branch-router",
        gateway=RouterPort("public", (("public-v4", "172.24.4.8"),
                                      ("public-v6", "2001:db8:c0de:1::8"))),
        interfaces=(RouterPort("branch", (("branch-v4", "10.3.0.1"),)),))
    vpn = (VpnConnection("vpn-demo-branch", "demo-router", "branch-router", "private-v4",
                         "branch-v4"),
           VpnConnection("vpn-branch-demo", "branch-router", "demo-router", "branch-v4",
                         "private-v4"))
    lbs = (LoadBalancer("demo-lb", "private-v4", "10.1.0.100",
                        (LbMember("vm0", 1), LbMember("vm1", 3))),)
    return Cloud((public, private, dualstack, branch, ha_net),
                 vms + (Vm("vm4", "branch", "fa:16:3e:1a:b0:04", "10.3.0.10"),),
                 (router, branch_router, ha_router), fips, vpn, lbs)


DEFAULT_CLOUD = _default_cloud()


# -- desired state: admin-API calls (pure) ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict
    what: str  # for progress and errors


def network_calls(cloud):
    calls = []
    for network in cloud.networks:
        calls.append(Call("POST", "/v1/networks", {
            "id": network.id, "name": network.id, "tenant_id": "" if network.external
            else TENANT, "mtu": network.mtu, "external": network.external},
            f"network {network.id}"))
        for subnet in network.subnets:
            body = {"id": subnet.id, "network_id": network.id, "name": subnet.id,
                    "cidr": subnet.cidr, "gateway_ip": subnet.gateway_ip,
                    "enable_dhcp": subnet.enable_dhcp}
            if subnet.ipv6_mode:
                body.update(ipv6_ra_mode=subnet.ipv6_mode, ipv6_address_mode=subnet.ipv6_mode)
            calls.append(Call("POST", "/v1/subnets", body, f"subnet {subnet.id} {subnet.cidr}"))
    return calls


def vm_port_calls(cloud):
    calls = []
    for vm in cloud.vms:
        fixed = []
        for subnet in cloud.network(vm.network_id).subnets:
            if subnet.version == 4:
                fixed.append({"subnet_id": subnet.id, "ip_address": vm.ipv4})
            elif subnet.ipv6_mode == "slaac":
                fixed.append({"subnet_id": subnet.id})  # the store computes the EUI-64
        calls.append(Call("POST", "/v1/ports", {
            "id": vm.port_id, "name": vm.role, "network_id": vm.network_id,
            "tenant_id": TENANT, "mac_address": vm.mac, "device_id": vm.device_id,
            "device_owner": "compute:nova", "fixed_ips": fixed},
            f"port of {vm.role} ({vm.mac}, {vm.ipv4})"))
    return calls


def _fixed_ips(port):
    return [{"subnet_id": s, "ip_address": a} for s, a in port.fixed_ips]


def router_calls(cloud):
    calls = []
    for router in cloud.routers:
        body = {"id": router.id, "name": router.id, "tenant_id": router.tenant_id}
        if router.ha:
            body["ha"] = True
        calls.append(Call("POST", "/v1/routers", body,
                          f"{'HA ' if router.ha else ''}router {router.id}"))
        calls.append(Call("PUT", f"/v1/routers/{router.id}/gateway", {
            "network_id": router.gateway.network_id,
            "fixed_ips": _fixed_ips(router.gateway)},
            f"gateway of {router.id} on {router.gateway.network_id}"))
        for port in router.interfaces:
            # A port first, so one interface can carry a v4 and a v6 address (one NIC).
            port_id = f"{router.id}-{port.network_id}"
            calls.append(Call("POST", "/v1/ports", {
                "id": port_id, "name": port_id, "network_id": port.network_id,
                "tenant_id": router.tenant_id, "fixed_ips": _fixed_ips(port)},
                f"port {port_id}"))
            calls.append(Call("POST", f"/v1/routers/{router.id}/interfaces",
                              {"port_id": port_id},
                              f"interface of {router.id} on {port.network_id}"))
    return calls


def floatingip_calls(cloud):
    return [Call("POST", "/v1/floatingips", {
        "id": fip.id, "router_id": fip.router_id, "floating_ip_address": fip.address,
        "fixed_ip_address": cloud.vm(fip.vm).ipv4},
        f"floating IP {fip.address} → {fip.vm}") for fip in cloud.floating_ips]


def vpn_calls(cloud):
    """One IPsec site connection per side: IKEv2, AES-256/SHA-256, DH group 14."""
    policy = {"encryption_algorithm": "aes-256", "auth_algorithm": "sha256", "pfs": "group14"}
    calls = []
    for vpn in cloud.vpn_connections:
        peer = cloud.router_address(vpn.peer_router_id, 4)
        calls.append(Call("POST", "/v1/ipsec_site_connections", {
            "id": vpn.id, "name": vpn.id, "router_id": vpn.router_id, "peer_address": peer,
            "psk": vpn.psk, "local_subnet_ids": [vpn.local_subnet],
            "peer_cidrs": [cloud.subnet(vpn.peer_subnet).cidr],
            "ikepolicy": dict(policy, ike_version="v2"), "ipsecpolicy": dict(policy)},
            f"IPsec site connection {vpn.router_id} → {peer}"))
    return calls


def loadbalancer_calls(cloud):
    """VIP port, load balancer, pool, listener, members: as Neutron LBaaS v2 builds one."""
    calls = []
    for lb in cloud.loadbalancers:
        network = cloud.network_of_subnet(lb.subnet_id)
        vip_port, pool = f"{lb.id}-vip", f"{lb.id}-pool"
        calls.append(Call("POST", "/v1/ports", {
            "id": vip_port, "name": vip_port, "network_id": network.id,
            "tenant_id": lb.tenant_id, "device_owner": LB_VIP_OWNER,
            "fixed_ips": [{"subnet_id": lb.subnet_id, "ip_address": lb.vip}]},
            f"VIP port of {lb.id} ({lb.vip})"))
        calls.append(Call("POST", "/v1/loadbalancers", {
            "id": lb.id, "name": lb.id, "tenant_id": lb.tenant_id, "vip_port_id": vip_port},
            f"load balancer {lb.id}"))
        calls.append(Call("POST", "/v1/pools", {
            "id": pool, "name": pool, "loadbalancer_id": lb.id, "protocol": "HTTP",
            "lb_algorithm": lb.algorithm}, f"pool of {lb.id} ({lb.algorithm})"))
        calls.append(Call("POST", "/v1/listeners", {
            "id": f"{lb.id}-http", "name": f"http-{lb.port}", "loadbalancer_id": lb.id,
            "protocol": "HTTP", "protocol_port": lb.port, "default_pool_id": pool},
            f"listener of {lb.id} (HTTP :{lb.port})"))
        for member in lb.members:
            calls.append(Call("POST", "/v1/members", {
                "id": f"{lb.id}-{member.vm}", "pool_id": pool,
                "address": cloud.vm(member.vm).ipv4, "protocol_port": WEB_PORT,
                "weight": member.weight}, f"member {member.vm} of {lb.id} "
                                           f"(weight {member.weight})"))
    return calls


# Order matters: what a resource refers to exists before it.
CALL_BUILDERS = (network_calls, vm_port_calls, router_calls, floatingip_calls, vpn_calls,
                 loadbalancer_calls)


def desired_state(cloud):
    return [call for builder in CALL_BUILDERS for call in builder(cloud)]


def vm_resources(cloud, driver):
    """Ids of the resources the driver boots as VMs (the rest: namespaces)."""
    return (cloud.routers[0].id,) if driver != "netns" else ()


def placement_calls(cloud, driver):
    """Placements keeping every other appliance on the netns driver in a VM lab."""
    vms = vm_resources(cloud, driver)
    if not vms:
        return []
    return [Call("PUT", f"/v1/placements/resource/{r.id}", {"driver": "netns"},
                 f"placement: {r.id} on the netns driver")
            for r in (*cloud.routers, *cloud.loadbalancers) if r.id not in vms]


# -- the orchestrator's configuration (pure) --------------------------------------------------

LAB_HEALTH = {"period": 5, "jitter": 0.2, "dead_grace": 10, "boot_timeout": 60,
              "boot_check_interval": 0.5, "max_boot_attempts": 5, "boot_backoff_base": 1,
              "boot_backoff_cap": 10, "error_cooldown": 10, "delete_timeout": 20}
# A VM boots in one to three minutes under TCG emulation on a busy machine, and a guest
# busy with its first apply can miss a liveness probe; hot-plugged NICs show up in seconds.
VM_HEALTH = {"dead_grace": 60, "boot_timeout": 900, "boot_check_interval": 2,
             "max_boot_attempts": 3, "hotplug_timeout": 60, "delete_timeout": 60}
DRIVERS = ("netns", "qemu")


def driver_sections(driver, prefix, fabric, directory, cloud, image=None, ssh_key=None):
    """The [compute] section and the drivers' own: the lab's fabric and bridges. A VM
    driver is the default, with netns enabled beside it for the placements."""
    bridges = {"fabric": fabric, "management_bridge": MGMT_BRIDGE,
               "bridges": ", ".join(f"{n.id}={n.bridge}" for n in cloud.networks),
               "auto_bridges": "true"}
    sections = {"compute": {"driver": "netns"},
                "netns": {"prefix": prefix, **bridges,
                          "state_root": f"{directory}/appliances", "python": sys.executable}}
    if driver == "qemu":
        sections["compute"] = {"driver": "qemu", "drivers": "netns"}
        sections["qemu"] = {**bridges, "state_root": f"{directory}/qemu", "image": image,
                            "ssh_public_key": f"{ssh_key}.pub" if ssh_key else None,
                            "ssh_identity": ssh_key}
    return sections


def orchestrator_config(prefix, fabric, directory, cloud, token, health=None,
                        driver="netns", image=None, ssh_key=None):
    """The ini of the lab's orchestrator: the driver on the lab's fabric, every network's
    bridge named, a short health period (a lab should react while you watch). VM drivers
    get the boot and grace times of a VM, and the controller as the appliances' NTP
    server."""
    return ini_text(orchestrator_sections(prefix, fabric, directory, cloud, token, health,
                                          driver, image, ssh_key),
                    header="# astara-lab's orchestrator (written by astara-lab up; removed "
                           "by astara-lab down)")


def orchestrator_sections(prefix, fabric, directory, cloud, token, health=None,
                          driver="netns", image=None, ssh_key=None):
    """The ini sections of ``orchestrator_config`` ({section: {key: value}})."""
    base_health = dict(LAB_HEALTH, **(VM_HEALTH if driver != "netns" else {}))
    return {
        "DEFAULT": {"host": "astara-lab", "state_dir": f"{directory}/state",
                    "log_level": "INFO"},
        "api": {"listen": "127.0.0.1", "port": ADMIN_PORT, "token": token},
        "management": {"orchestrator_address": ORCHESTRATOR_ADDRESS,
                       "metadata_port": METADATA_PORT},
        "appliance": {"ntp_servers": ORCHESTRATOR_ADDRESS if driver != "netns" else None},
        "health": dict(base_health, **(health or {})),
        "tls": {"enabled": "true"},  # mutual TLS with the appliances (pki.py)
        **driver_sections(driver, prefix, fabric, directory, cloud, image, ssh_key),
    }


# -- namespaces (shell) -----------------------------------------------------------------------

def build_fabric(lab, cloud):
    """The fabric namespace with the management bridge and one bridge per network."""
    lab.bridge(MGMT_BRIDGE)
    for network in cloud.networks:
        lab.bridge(network.bridge)
    return lab.fabric()


def build_controller(lab):
    """The orchestrator's node on the management network (fdca:3ba5:a17a:acda::2)."""
    return controller_node(lab, MGMT_BRIDGE, address=ORCHESTRATOR_ADDRESS)


def build_internet(lab, cloud):
    """The upstream: owns the external subnets' gateway addresses, routes, and has a
    "public" host address on lo for each family."""
    inet = lab.netns("inet", forwarding=True)
    external = cloud.external_network()
    lab.plug(inet, "eth0", external.bridge, mtu=external.mtu)
    for subnet in external.subnets:
        prefix = ipaddress.ip_network(subnet.cidr).prefixlen
        inet.ip("addr", "add", f"{subnet.gateway_ip}/{prefix}", "dev", "eth0", "nodad")
    inet.ip("addr", "add", f"{PUBLIC_V4}/32", "dev", "lo")
    inet.ip("addr", "add", f"{PUBLIC_V6}/128", "dev", "lo")
    return inet


def build_vm(lab, cloud, vm):
    """A tenant VM: eth0 with the port's MAC on its network's bridge, no address (DHCP and
    SLAAC give it one), accepting router advertisements like any cloud image."""
    ns = lab.netns(vm.role)
    network = cloud.network(vm.network_id)
    lab.plug(ns, "eth0", network.bridge, mac=vm.mac, mtu=network.mtu)
    ns.sysctl("net.ipv6.conf.eth0.accept_ra", 1)
    ns.sysctl("net.ipv6.conf.eth0.autoconf", 1)
    return ns


def web_server(lab, ns, bind, name, log_path, port=WEB_PORT):
    """astara_lab.webserver in ``ns``: answers JSON saying who the client was."""
    return lab.spawn(ns, [sys.executable, "-m", "astara_lab.webserver", "--bind", bind,
                          "--port", str(port), "--name", name],
                     env={"PYTHONPATH": str(REPO_ROOT)}, log_path=log_path)


def ntp_server(lab, ctl, log_path):
    """The controller's NTP server (SNTP, this host's clock), for VM appliances' clocks."""
    return lab.spawn(ctl, [sys.executable, "-m", "astara_lab.peers", "ntp", "--bind",
                           ORCHESTRATOR_ADDRESS], env={"PYTHONPATH": str(REPO_ROOT)},
                     log_path=log_path)


def metadata_upstream(lab, ctl, log_path):
    """The orchestrator's metadata endpoint, where the appliances' proxies forward to."""
    return lab.spawn(ctl, [sys.executable, "-m", "astara_lab.peers", "metadata", "--bind",
                           ORCHESTRATOR_ADDRESS, "--port", str(METADATA_PORT)],
                     env={"PYTHONPATH": str(REPO_ROOT)}, log_path=log_path)
