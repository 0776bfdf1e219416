"""A whole router's world out of namespaces, shaped after one payload.

  ctl    the orchestrator's spot on the management network (pushes configs; later the
         upstream metadata server)
  app    the appliance: one NIC per geN, each on the bridge of its network
  inet   the "internet": owns the external subnets' gateway addresses and a public host
         address on lo (PUBLIC_V4/PUBLIC_V6); the BGP peer lives here
  vmNN   tenant VMs: one namespace per allocation (not the router's own port), with the
         allocation's MAC, on its network's bridge
"""
import ipaddress

from .appliance import (Appliance, controller_node, management_cidr, nic_macs)

PUBLIC_V4 = "198.51.100.200"  # "somewhere on the internet"; never a real public address
PUBLIC_V6 = "2001:db8:ffff::200"


class RouterTopology:
    def __init__(self, lab, name, payload, vm_addressing="static", max_vms=None,
                 enabled_services=("router", "loadbalancer")):
        self.lab = lab
        self.payload = payload
        self.networks = payload["networks"]
        mgmt = lab.bridge("b-mgmt")
        self.ctl = controller_node(lab, mgmt)
        self.bridges = {}
        for network in self.networks:
            index = int(network["interface"]["ifname"][2:])
            if network["network_type"] != "management" and index not in self.bridges:
                self.bridges[index] = lab.bridge(f"b-ge{index}")
        self.appliance = Appliance(lab, "app", nic_macs(name, payload),
                                   management_cidr(payload), mgmt, bridges=self.bridges,
                                   enabled_services=enabled_services, controller=self.ctl)
        self.inet = self._internet()
        self.vms = self._vms(vm_addressing, max_vms)

    # -- the internet ------------------------------------------------------------------------
    def _internet(self):
        externals = [n for n in self.networks if n["network_type"] == "external"]
        if not externals:
            return None
        inet = self.lab.netns("inet", forwarding=True)
        for k, network in enumerate(externals):
            dev = f"eth{k}"
            self.lab.plug(inet, dev, self.bridges[int(network["interface"]["ifname"][2:])])
            for subnet in network["subnets"]:
                if subnet["gateway_ip"]:
                    prefix = ipaddress.ip_network(subnet["cidr"]).prefixlen
                    inet.ip("addr", "add", f"{subnet['gateway_ip']}/{prefix}", "dev", dev,
                            "nodad")
        inet.ip("addr", "add", f"{PUBLIC_V4}/32", "dev", "lo")
        inet.ip("addr", "add", f"{PUBLIC_V6}/128", "dev", "lo")
        return inet

    def external_address(self, version=4):
        for network in self.networks:
            if network["network_type"] == "external":
                for text in network["interface"]["addresses"]:
                    address = ipaddress.ip_interface(text)
                    if address.version == version:
                        return address
        return None

    # -- tenant VMs --------------------------------------------------------------------------
    def _vms(self, addressing, max_vms):
        vms = []
        for network in self.networks:
            if network["network_type"] not in ("internal", "isolated"):
                continue
            router_ips = {str(ipaddress.ip_interface(a).ip)
                          for a in network["interface"]["addresses"]}
            seen = set()
            for allocation in network["allocations"]:
                ips = set(allocation["ip_addresses"])
                if ips & router_ips or allocation["mac_address"] in seen:
                    continue  # the router's own port, or a duplicate network entry
                seen.add(allocation["mac_address"])
                if max_vms is not None and len(vms) >= max_vms:
                    return vms
                vms.append(self._vm(len(vms), network, allocation, addressing))
        return vms

    def _vm(self, number, network, allocation, addressing):
        ns = self.lab.netns(f"vm{number}")
        ifname = network["interface"]["ifname"]
        self.lab.plug(ns, "eth0", self.bridges[int(ifname[2:])],
                      mac=allocation["mac_address"])
        vm = TenantVM(ns, network, allocation)
        if addressing == "static":
            vm.configure_static()
        return vm

    def vm_for(self, address):
        return next(vm for vm in self.vms if address in vm.allocation["ip_addresses"])


class TenantVM:
    def __init__(self, ns, network, allocation):
        self.ns = ns
        self.network = network
        self.allocation = allocation

    def addresses(self, version):
        return [ipaddress.ip_address(a) for a in self.allocation["ip_addresses"]
                if ipaddress.ip_address(a).version == version]

    def configure_static(self):
        """What a VM with a static config would have: its addresses and the default route
        via the subnet gateway (no DHCP involved)."""
        for subnet in self.network["subnets"]:
            cidr = ipaddress.ip_network(subnet["cidr"])
            mine = [a for a in self.addresses(cidr.version) if a in cidr]
            for address in mine:
                self.ns.ip("addr", "add", f"{address}/{cidr.prefixlen}", "dev", "eth0",
                           "nodad")
            if mine and subnet["gateway_ip"]:
                family = "-4" if cidr.version == 4 else "-6"
                self.ns.ip(family, "route", "replace", "default", "via",
                           subnet["gateway_ip"])


def started_router(lab, name, shape, max_vms=None, push=True, payload=None, wrapper=None,
                   vm_addressing="static"):
    """``RouterTopology`` shaped after contract body ``name`` (``shape``), its agent
    started on the management network (``wrapper(appliance)``: a command prefix, as
    for contract_appliance) and, with ``push``, ``payload`` (default: the shape) applied
    (200, else AssertionError)."""
    topology = RouterTopology(lab, name, shape, vm_addressing=vm_addressing, max_vms=max_vms)
    topology.appliance.configure_management()
    topology.appliance.start(wrapper=wrapper(topology.appliance) if wrapper else ())
    if push:
        response = topology.appliance.client().put_json("/v1/system/config",
                                                        payload or shape)
        assert response.status == 200, response.text
    return topology
