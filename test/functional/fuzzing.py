"""What the fuzz tests share: the case budget, hypothesis settings, payload strategies built
from the model (valid and mutated), the rewrite of generated addresses into the test ranges,
the kernel state read back after a refusal, and the tally every run reports.

Addresses come only from 198.18.0.0/15, 198.51.100.0/24 and 2001:db8::/32 (the developers'
guide); the management network and the orchestrator's address are the contract's, which
no case may change anyway (a push that moves them is refused).
"""
import copy
import dataclasses
import hashlib
import ipaddress
import os
import string
import subprocess

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from astara_lab.appliance import contract_payloads
from astara_netns import in_netns

# `make test` runs DEFAULT_CASES cases in all, `make fuzz` sets ASTARA_FUZZ_CASES=10000.
DEFAULT_CASES = 2000
SHARES = {"agent-model": 0.5, "agent-schemathesis": 0.3, "orchestrator": 0.2}


def budget(share):
    """This test's number of cases: its share of ASTARA_FUZZ_CASES (default 2 000)."""
    total = int(os.environ.get("ASTARA_FUZZ_CASES", DEFAULT_CASES))
    return max(1, round(total * SHARES[share]))


def fuzz_settings(max_examples):
    """Reproducible runs (CI sees the same cases each time): derandomized, no example
    database, no deadline (a push takes what the kernel takes), and no shrinking budget
    spent on health checks meant for pure functions."""
    return settings(max_examples=max_examples, derandomize=True, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# -- the tally ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    """Cases of one fuzz test by outcome; ``valid``: generated as a valid payload."""

    name: str
    cases: int = 0
    changes: int = 0  # cases that asked for a change (the rest only read)
    valid: int = 0
    applied: int = 0
    refused: int = 0
    valid_refused: int = 0
    statuses: dict = dataclasses.field(default_factory=dict)

    def count(self, status, valid=False, change=True):
        """One case answered ``status``; ``change``: it asked to change something (a push,
        a create...), so a 2xx means applied."""
        self.cases += 1
        self.changes += change
        self.valid += valid
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.applied += change
        elif 400 <= status < 500:
            self.refused += 1
            self.valid_refused += valid

    def line(self):
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (f"{self.name}: {self.cases} cases ({self.changes} changes, "
                f"{self.valid} generated valid), {self.applied} applied (2xx), "
                f"{self.refused} refused (4xx) [{by_status}]")


TALLIES = []  # printed at the end of the session (conftest.pytest_terminal_summary)


def new_tally(name):
    tally = Tally(name)
    TALLIES.append(tally)
    return tally


# -- addresses ----------------------------------------------------------------------------------
TEST_V4 = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("198.51.100.0/24"))
TEST_V6 = (ipaddress.ip_network("2001:db8::/32"),)


def in_test_ranges(address):
    return any(address in net for net in (TEST_V6 if address.version == 6 else TEST_V4))


def _into_test_range(address):
    """The same host bits in 198.18.0.0/15 or 2001:db8::/32."""
    if in_test_ranges(address):
        return address
    net = TEST_V6[0] if address.version == 6 else TEST_V4[0]
    host_bits = address.max_prefixlen - net.prefixlen
    return net.network_address + (int(address) & ((1 << host_bits) - 1))


def _rewrite_text(text):
    address, _, prefix = text.partition("/")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return text
    moved = str(_into_test_range(parsed))
    return f"{moved}/{prefix}" if prefix or text.endswith("/") else moved


def to_test_ranges(value):
    """``value`` (a JSON value) with every string that is an address or ``address/prefix``
    moved into the test ranges, keys of objects too. Generated from the schema's patterns,
    addresses can be anything; none may be public or a documentation range of another
    kind (192.0.2.0/24, 203.0.113.0/24) on a NIC, not even in a namespace."""
    if isinstance(value, str):
        return _rewrite_text(value)
    if isinstance(value, list):
        return [to_test_ranges(v) for v in value]
    if isinstance(value, dict):
        return {to_test_ranges(k): to_test_ranges(v) for k, v in value.items()}
    return value


def addresses_in(value):
    """Every address (of ``address`` or ``address/prefix`` strings) in a JSON value."""
    if isinstance(value, str):
        try:
            yield ipaddress.ip_interface(value).ip
        except ValueError:
            pass
    elif isinstance(value, list):
        for item in value:
            yield from addresses_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from addresses_in(key)
            yield from addresses_in(item)


# -- the kernel state a refusal must leave alone --------------------------------------------------
VOLATILE = (".log", ".pid", "leases")  # what the daemons write as they run
# The fence's record of the newest orchestrator epoch seen: taken from a push's header before
# its payload is judged, on purpose (fencing.py), so a refusal may move it.
FENCE_RECORD = "epoch.json"


def config_files(state_dir):
    """{relative path: sha256} of the files under the agent's state directory the apply
    writes (daemon configs, the committed generation), not logs, pid files, leases or the
    epoch fence's record."""
    found = {}
    for path in sorted(state_dir.rglob("*")):
        if path.is_file() and not path.name.endswith(VOLATILE) and path.name != FENCE_RECORD:
            found[str(path.relative_to(state_dir))] = hashlib.sha256(
                path.read_bytes()).hexdigest()
    return found


def kernel_state(appliance):
    """Addresses, routes, the whole nftables ruleset and the daemon config files, read
    back."""
    with in_netns(appliance.ns.name):  # a thread in the namespace: no `ip netns exec`
        ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                                 check=True).stdout
    return {"ip": appliance.dump(), "nft": ruleset,
            "files": config_files(appliance.state_dir)}


# The agent's records of a generation (its number, the daemons' PIDs, the generations kept
# for a rollback): they differ between two applies of the same payload, and no refusal may
# touch them.
GENERATION_RECORDS = ("committed", "loaded.json")  # store.py: the slots of the generations


def state_difference(before, after, ignore=()):
    """What changed between two kernel_state() readings, in words (empty: nothing);
    ``ignore``: names of files or top directories not to compare."""
    changes = []
    if before["ip"] != after["ip"]:
        changes.append(f"addresses/routes: {before['ip']} -> {after['ip']}")
    if before["nft"] != after["nft"]:
        changes.append("nft ruleset changed")
    for name in sorted(set(before["files"]) | set(after["files"])):
        if os.path.basename(name) in ignore or name.split("/")[0] in ignore:
            continue
        if before["files"].get(name) != after["files"].get(name):
            changes.append(f"file {name} changed")
    return changes


# -- payloads from the model ----------------------------------------------------------------------
BASIC = contract_payloads("original-orchestrator")["router-basic"]
MANAGEMENT_NETWORK = BASIC["networks"][0]  # ge0: the management path, never changed here
ORCHESTRATOR = BASIC["orchestrator"]
EXTERNAL_V4 = ipaddress.ip_network("198.51.100.0/24")
EXTERNAL_V6 = ipaddress.ip_network("2001:db8:ffff::/64")
TENANT_NICS = ("ge2", "ge3")
NIC_COUNT = 4  # ge0 management, ge1 external, ge2/ge3 tenant
EXTRA_DESTINATIONS = ipaddress.ip_network("198.19.0.0/16")  # routes, labels, extra FIPs

ids = st.uuids().map(str)
names = st.text(alphabet=string.ascii_letters + string.digits + " -_.:éß€", max_size=20)
# Plain alphabets, not from_regex: drawing a case must cost far less than pushing it.
host_labels = st.builds(lambda first, rest: first + rest,
                        st.sampled_from(string.ascii_lowercase),
                        st.text(string.ascii_lowercase + string.digits, max_size=12))
label_names = st.text(string.ascii_lowercase, min_size=1, max_size=8)
tenant_ids = st.integers(0, 2**128 - 1).map(lambda n: f"{n:032x}")
mtus = st.sampled_from([None, 1400, 1450, 1500])


def _mac(index, host):
    return f"02:a5:f0:{index:02x}:{host >> 8:02x}:{host & 0xff:02x}"


@st.composite
def tenant_network(draw, ifname, index, cidr_v4, cidr_v6):
    """A tenant network on ``ifname``: the router at .1, VMs on the rest."""
    hosts = draw(st.lists(st.integers(10, 250), max_size=3, unique=True))
    with_v6 = draw(st.booleans())
    dhcp = draw(st.booleans())
    subnets = [{"id": draw(ids), "cidr": str(cidr_v4), "gateway_ip": str(cidr_v4[1]),
                "dhcp_enabled": dhcp,
                "dns_nameservers": [str(EXTERNAL_V4[h]) for h in draw(st.lists(
                    st.integers(20, 30), max_size=2, unique=True))],
                "host_routes": [{"destination": str(ipaddress.ip_network(
                                    (int(EXTRA_DESTINATIONS[0]) + (d << 8), 24))),
                                 "nexthop": str(cidr_v4[hosts[0]])}
                                for d in draw(st.lists(st.integers(0, 49), max_size=2,
                                                       unique=True))] if hosts else []}]
    addresses = [f"{cidr_v4[1]}/{cidr_v4.prefixlen}"]
    if with_v6:
        subnets.append({"id": draw(ids), "cidr": str(cidr_v6),
                        "gateway_ip": str(cidr_v6[1]), "dhcp_enabled": False,
                        "ipv6_ra_mode": None, "ipv6_address_mode": None})
        addresses.append(f"{cidr_v6[1]}/{cidr_v6.prefixlen}")
    allocations = [{"mac_address": _mac(index, h), "hostname": draw(host_labels),
                    "device_id": draw(ids),
                    "ip_addresses": {str(cidr_v4[h]): dhcp}} for h in hosts]
    mtu = draw(mtus)
    return {"network_id": draw(ids), "name": draw(names),
            "network_type": draw(st.sampled_from(["internal", "isolated"])),
            "interface": {"ifname": ifname, "addresses": addresses, "mtu": mtu},
            "mtu": mtu, "subnets": subnets, "allocations": allocations,
            "v4_conf_service": "static", "v6_conf_service": "static"}


@st.composite
def router_payloads(draw):
    """A valid router payload for the fuzz appliance (router-basic's management network),
    every other address from the test ranges."""
    router_host, *fip_hosts = draw(st.lists(st.integers(2, 254), min_size=1, max_size=4,
                                            unique=True))
    external_addresses = [f"{EXTERNAL_V4[router_host]}/{EXTERNAL_V4.prefixlen}"]
    external_subnets = [{"id": draw(ids), "cidr": str(EXTERNAL_V4),
                         "gateway_ip": str(EXTERNAL_V4[1]), "dhcp_enabled": False,
                         "dns_nameservers": [], "host_routes": []}]
    if draw(st.booleans()):
        external_addresses.append(f"{EXTERNAL_V6[router_host]}/{EXTERNAL_V6.prefixlen}")
        external_subnets.append({"id": draw(ids), "cidr": str(EXTERNAL_V6),
                                 "gateway_ip": str(EXTERNAL_V6[1]), "dhcp_enabled": False})
    external = {"network_id": draw(ids), "name": draw(names), "network_type": "external",
                "interface": {"ifname": "ge1", "addresses": external_addresses},
                "subnets": external_subnets, "allocations": []}
    tenants = []
    slots = draw(st.lists(st.integers(0, 255), max_size=len(TENANT_NICS), unique=True))
    for ifname, slot in zip(TENANT_NICS, slots):
        tenants.append(draw(tenant_network(
            ifname, slot, ipaddress.ip_network(f"198.18.{slot}.0/24"),
            ipaddress.ip_network(f"2001:db8:{slot:x}::/64"))))
    vms = [ip for net in tenants if net["network_type"] == "internal"
           for alloc in net["allocations"] for ip in alloc["ip_addresses"]]
    floating_ips = [{"floating_ip": str(EXTERNAL_V4[h]), "fixed_ip": draw(st.sampled_from(vms))}
                    for h in fip_hosts] if vms else []
    gateway = str(EXTERNAL_V4[1])
    static_routes = [
        draw(st.sampled_from([[destination, gateway],
                              {"destination": destination, "next_hop": gateway}]))
        for destination in (f"198.19.{100 + d}.0/24" for d in draw(
            st.lists(st.integers(0, 99), max_size=2, unique=True)))]
    labels = {name: [f"198.19.{200 + n}.0/24"] for n, name in enumerate(draw(st.lists(
        label_names, max_size=2, unique=True)))}
    asn = draw(st.integers(64512, 65534))
    return {"tenant_id": draw(tenant_ids),
            "hostname": draw(host_labels), "asn": asn, "neighbor_asn": asn,
            "default_v4_gateway": draw(st.sampled_from([gateway, ""])),
            "networks": [copy.deepcopy(MANAGEMENT_NETWORK), external, *tenants],
            "floating_ips": floating_ips, "static_routes": static_routes, "labels": labels,
            "orchestrator": dict(ORCHESTRATOR), "ha_resource": False, "vpn": {}}


# A mutation breaks a valid payload one way: a field dropped or given a wrong value, an
# address moved onto another one, a list entry repeated, an unknown key or service added.
JUNK_TEXT = ["", "x" * 300, "a\nb", "a\r\nb", "\ud800", "x\ndhcp-script=/bin/sh\n#",
             "'; flush ruleset; '", "${HOME}", "}{", "\x00", "a b", "ge0", "é" * 256]
junk = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64),
                 st.floats(allow_nan=False), st.sampled_from(JUNK_TEXT),
                 st.text(max_size=8), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
test_addresses = st.one_of(
    st.integers(0, 255).map(lambda h: str(EXTERNAL_V4[h])),
    st.integers(0, 0x1ffff).map(lambda h: str(TEST_V4[0][h])),
    st.integers(0, 2**16).map(lambda h: str(EXTERNAL_V6[h])))
test_cidrs = st.one_of(
    st.tuples(test_addresses, st.sampled_from([0, 8, 15, 24, 31, 32, 64, 128])).map(
        lambda pair: f"{pair[0]}/{pair[1]}"),
    st.sampled_from(["198.51.100.0/24", "198.18.0.0/24", "198.18.0.0/15",
                     "2001:db8:ffff::/64", "2001:db8::/32"]))


def _nodes(value, path=()):
    """(path, value) of every node below the root."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield path + (key,), item
        yield from _nodes(item, path + (key,))


def _set(root, path, value):
    for key in path[:-1]:
        root = root[key]
    root[path[-1]] = value


def _delete(root, path):
    for key in path[:-1]:
        root = root[key]
    del root[path[-1]]


def _is_address(value):
    return isinstance(value, str) and any(True for _ in addresses_in(value))


@st.composite
def mutated(draw, payloads):
    """A valid payload from ``payloads`` broken (or not) by one mutation."""
    body = draw(payloads)
    nodes = [(p, v) for p, v in _nodes(body)
             if p[:2] != ("networks", 0)]  # the management path: refused for other reasons
    kind = draw(st.sampled_from(["drop", "junk", "address", "repeat", "unknown",
                                 "service"]))
    if kind == "drop":
        path, _ = draw(st.sampled_from(nodes))
        _delete(body, path)
    elif kind == "junk":
        path, _ = draw(st.sampled_from(nodes))
        _set(body, path, draw(junk))
    elif kind == "address":
        addressed = [p for p, v in nodes if _is_address(v)]
        path = draw(st.sampled_from(addressed))
        _set(body, path, draw(test_cidrs if "/" in _get(body, path) else test_addresses))
    elif kind == "repeat":
        lists = [p for p, v in nodes if isinstance(v, list) and v]
        if lists:
            path = draw(st.sampled_from(lists))
            items = _get(body, path)
            items.append(copy.deepcopy(draw(st.sampled_from(items))))
    elif kind == "unknown":
        dicts = [()] + [p for p, v in nodes if isinstance(v, dict)]
        path = draw(st.sampled_from(dicts))
        _get(body, path)[draw(label_names)] = draw(junk)
    else:
        body["services"] = draw(st.sampled_from(
            [{"router": {}}, {"loadbalancer": None}, {"firewall": {}}, {"router": []}, []]))
    return body


def _get(root, path):
    for key in path:
        root = root[key]
    return root
