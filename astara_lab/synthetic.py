"""Synthetic router payloads of any size, in the original orchestrator's shape, for
benchmarks and scale tests. Addresses: external 198.18.0.0/16 (gateway 198.18.0.1, router
198.18.0.2), tenant k on 10.100.k.0/24 (k < 250), management like the contract."""
import copy

from .appliance import contract_payloads

EXTERNAL_CIDR = "198.18.0.0/16"


def synthetic_router(networks=50, floating_ips=1000, vms_per_network=None):
    base = contract_payloads()["router-basic"]
    mgmt = copy.deepcopy(base["networks"][0])
    external = copy.deepcopy(base["networks"][1])
    external["interface"]["addresses"] = ["198.18.0.2/16"]
    external["subnets"][0].update(cidr=EXTERNAL_CIDR, gateway_ip="198.18.0.1")
    per_network = vms_per_network or max(1, -(-floating_ips // networks))  # ceil
    tenant_template = base["networks"][2]
    tenants, fixed = [], []
    for k in range(networks):
        net = copy.deepcopy(tenant_template)
        prefix = f"10.100.{k}"
        net["network_id"] = f"00000000-0000-4000-8000-{k:012d}"
        net["interface"] = {"ifname": f"ge{k + 2}", "addresses": [f"{prefix}.1/24"],
                            "mtu": 1450}
        net["subnets"][0].update(id=f"10000000-0000-4000-8000-{k:012d}",
                                 cidr=f"{prefix}.0/24", gateway_ip=f"{prefix}.1",
                                 host_routes=[])
        net["allocations"] = []
        for v in range(per_network):
            address = f"{prefix}.{10 + v}"
            net["allocations"].append({
                "device_id": f"20000000-0000-4000-{k:04d}-{v:012d}",
                "hostname": f"{address.replace('.', '-')}.local",
                "ip_addresses": {address: True},
                "mac_address": f"fa:16:3f:{k // 256:02x}:{k % 256:02x}:{v:02x}"})
            fixed.append(address)
        tenants.append(net)
    payload = copy.deepcopy(base)
    payload.update(default_v4_gateway="198.18.0.1", networks=[mgmt, external] + tenants)
    payload["floating_ips"] = [
        {"floating_ip": f"198.18.{1 + i // 250}.{1 + i % 250}", "fixed_ip": fixed[i % len(fixed)]}
        for i in range(floating_ips)]
    return payload
