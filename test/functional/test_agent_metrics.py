"""The kernel series of the agent's ``GET /metrics`` against the kernel itself: a router-basic
appliance with real traffic from a tenant VM through its NICs and through its conntrack
table. What iproute2 and /proc report in the appliance's namespace is the reference."""
import socket

import pytest

from astara_lab.appliance import contract_payloads, kernel_names
from astara_lab.peers import Connection, PeerServer, eventually
from astara_lab.scrape import metric
from astara_lab.topology import PUBLIC_V4, started_router
from astara_netns import in_netns

pytestmark = pytest.mark.netns
BASIC = contract_payloads("original-orchestrator")["router-basic"]

PINGS = 20
ICMP_FRAME = 98  # ping's 56 bytes of data + ICMP 8 + IPv4 20 + Ethernet 14
DATAGRAMS, DATAGRAM_SIZE = 100, 1000
FLOWS = 5
KERNEL = {"rx": ("packets", "bytes", "errors", "dropped"),
          "tx": ("packets", "bytes", "errors", "dropped")}


def kernel_counters(app, kernel_name):
    """``{"rx_bytes": n, ...}`` of one NIC as ``ip -s link`` reads them."""
    stats = app.ns.ip_json("-s", "link", "show", "dev", kernel_name)[0]["stats64"]
    return {f"{way}_{name}": stats[way][name] for way, names in KERNEL.items()
            for name in names}


def scraped_counters(text, kernel_name):
    return {f"{way}_{name}": metric(text, f"astara_interface_{way}_{name}_total",
                                    interface=kernel_name)
            for way, names in KERNEL.items() for name in names}


def test_interface_counters_are_the_kernels_and_name_the_payload_role(lab):
    t = started_router(lab, "router-basic", BASIC, max_vms=1)
    app, vm = t.appliance, t.vms[0]
    eth = kernel_names(app)["ge2"]  # the internal network, 10.1.0.1/24
    client = app.client()
    start = scraped_counters(client.get("/metrics").text, eth)

    vm.ns.run(["ping", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "1", "10.1.0.1"])
    with in_netns(vm.ns.name):  # one way only: the router answers none of these
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(DATAGRAMS):
                sock.sendto(b"x" * DATAGRAM_SIZE, ("10.1.0.1", 9))

    before = kernel_counters(app, eth)
    text = client.get("/metrics").text
    after = kernel_counters(app, eth)
    scraped = scraped_counters(text, eth)
    for counter, value in scraped.items():  # the kernel's counters only grow
        assert before[counter] <= value <= after[counter], counter
    assert scraped["rx_packets"] - start["rx_packets"] >= PINGS + DATAGRAMS
    assert scraped["tx_packets"] - start["tx_packets"] >= PINGS
    assert (scraped["rx_bytes"] - start["rx_bytes"]
            >= PINGS * ICMP_FRAME + DATAGRAMS * DATAGRAM_SIZE)
    assert scraped["tx_bytes"] - start["tx_bytes"] >= PINGS * ICMP_FRAME
    assert scraped["tx_bytes"] - start["tx_bytes"] < DATAGRAMS * DATAGRAM_SIZE / 2
    # every NIC has its series, labelled with its geN and the payload's network type
    labels = {(m["ifname"], m["kernel_name"]) for m in
              client.get("/v1/system/interfaces").json()["interfaces"]}
    roles = {n["interface"]["ifname"]: n["network_type"] for n in t.payload["networks"]}
    for generic, kernel_name in labels:
        assert metric(text, "astara_interface_rx_packets_total", interface=kernel_name,
                      ifname=generic, network_type=roles[generic]) > 0, generic


def proc_conntrack(app, name):
    return int(app.ns.run(["cat", f"/proc/sys/net/netfilter/{name}"]).stdout)


def test_conntrack_gauges_are_the_appliance_namespaces(lab):
    t = started_router(lab, "router-basic", BASIC, max_vms=1)
    app, vm = t.appliance, t.vms[0]
    server = PeerServer(t.inet, 7000)
    flows = []
    try:
        for _ in range(FLOWS):  # routed and NATed by the appliance: tracked there
            flows.append(Connection(vm.ns, PUBLIC_V4, 7000))
            assert flows[-1].ask() == "172.24.4.228"  # the VM's (10.1.0.8) floating IP
        tracked = app.ns.run(["conntrack", "-L", "-p", "tcp", "--dport", "7000"]).stdout
        assert tracked.count(PUBLIC_V4) >= FLOWS

        def agrees():  # the agent's scrape itself is a new entry: compare right after it
            text = app.client().get("/metrics").text
            return (metric(text, "astara_conntrack_entries")
                    == proc_conntrack(app, "nf_conntrack_count"))
        eventually(agrees, 10, "astara_conntrack_entries equals nf_conntrack_count")
        text = app.client().get("/metrics").text
        assert metric(text, "astara_conntrack_entries") >= FLOWS
        assert metric(text, "astara_conntrack_max") == proc_conntrack(app, "nf_conntrack_max")
    finally:
        for flow in flows:
            flow.close()
        server.close()
