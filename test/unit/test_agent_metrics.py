"""The kernel series of the agent's ``GET /metrics``: the link counters as rtnl parses
them out of an RTM_NEWLINK message, and the collector's labels and conntrack gauges (its
kernel sources given as data; test/functional/test_agent_metrics.py reads the real ones)."""
import re
import socket
import struct

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from astara_lab.appliance import contract_payloads
from astara_lab.scrape import samples
from astara_router import rtnl
from astara_router.errors import ApplyError
from astara_router.metrics import Metrics, network_types
from astara_router.model import parse_payload
from astara_router.naming import Nic

BASIC = contract_payloads()["router-basic"]


def attribute(kind, value):
    data = rtnl.RTATTR.pack(rtnl.RTATTR.size + len(value), kind) + value
    return data + b"\0" * (-len(data) % 4)


def newlink(stats64, index=7, name=b"eth2\0", mac=bytes.fromhex("fa163e0000aa")):
    return (rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 1, index, rtnl.IFF_UP, 0)
            + attribute(rtnl.IFLA_IFNAME, name)
            + attribute(rtnl.IFLA_MTU, struct.pack("=I", 1450))
            + attribute(rtnl.IFLA_ADDRESS, mac) + attribute(rtnl.IFLA_STATS64, stats64))


def test_link_counters_are_the_first_eight_fields_of_rtnl_link_stats64():
    # the kernel sends 24+ __u64 (multicast, collisions, rx_length_errors, ...) after these
    values = [1000 + 111 * k for k in range(24)]
    index, name, mac, mtu, up, kind, counters = rtnl.link(
        newlink(struct.pack("=24Q", *values)), counters=True)
    assert (index, name, mac.hex(), mtu, up, kind) == (7, "eth2", "fa163e0000aa", 1450, True,
                                                      None)
    assert counters == {"rx_packets": values[0], "tx_packets": values[1],
                        "rx_bytes": values[2], "tx_bytes": values[3],
                        "rx_errors": values[4], "tx_errors": values[5],
                        "rx_dropped": values[6], "tx_dropped": values[7]}


def test_link_without_counters_keeps_its_six_fields_and_short_stats_are_none():
    payload = newlink(struct.pack("=4Q", 1, 2, 3, 4))
    assert len(rtnl.link(payload)) == 6
    assert rtnl.link(payload, counters=True)[-1] == {}


def test_network_types_by_generic_name():
    config = parse_payload(BASIC, ("router", "loadbalancer"))
    assert network_types(config) == {n["interface"]["ifname"]: n["network_type"]
                                     for n in BASIC["networks"]}
    assert network_types(None) == {}


def scrape(metrics):
    return samples(metrics.render(3).decode())


def test_collector_labels_each_nic_and_reads_conntrack_at_each_scrape(tmp_path):
    config = parse_payload(BASIC, ("router", "loadbalancer"))
    counters = dict.fromkeys(rtnl.LINK_COUNTERS, 0)
    nics = {"ge2": Nic(3, "eth2", "fa:16:3e:00:00:02", 1450, True, (), counters),
            "ge5": Nic(4, "ens9", "fa:16:3e:00:00:05", 1500, True, (), {})}
    (tmp_path / "nf_conntrack_max").write_text("262144\n")
    metrics = Metrics(lambda: nics, lambda: config, conntrack_dir=str(tmp_path))

    first = scrape(metrics)
    assert first[("astara_conntrack_max", ())] == 262144
    assert not any(name == "astara_conntrack_entries" for name, _ in first)  # no file: absent
    labels = (("ifname", "ge2"), ("interface", "eth2"), ("network_type", "internal"))
    assert first[("astara_interface_rx_bytes_total", labels)] == 0

    counters.update(rx_bytes=98_000, tx_packets=17)
    (tmp_path / "nf_conntrack_count").write_text("5\n")
    second = scrape(metrics)
    assert second[("astara_interface_rx_bytes_total", labels)] == 98_000
    assert second[("astara_interface_tx_packets_total", labels)] == 17
    assert second[("astara_conntrack_entries", ())] == 5
    # a NIC the payload does not name: its geN, no network_type; no counters, no series
    assert not any(dict(key).get("interface") == "ens9" for _, key in second)
    nics["ge5"] = Nic(4, "ens9", "fa:16:3e:00:00:05", 1500, True, (), {**counters})
    spare = (("ifname", "ge5"), ("interface", "ens9"), ("network_type", ""))
    assert scrape(metrics)[("astara_interface_tx_packets_total", spare)] == 17


def test_without_nics_payload_or_conntrack_there_are_no_kernel_series(tmp_path):
    text = Metrics(dict, lambda: None, str(tmp_path)).render(0).decode()
    assert "astara_generation" in text
    series = {name for name, _ in samples(text)}  # the families are described, empty
    assert not any(name.startswith(("astara_conntrack", "astara_interface"))
                   for name in series), series


def without_created_times(text):
    return re.sub(r"^(\S+_created(?:\{.*\})?) \S+$", r"\1 T", text, flags=re.M)


def test_the_text_is_what_prometheus_client_writes_for_the_same_series(tmp_path):
    """The agent writes its exposition itself (no prometheus_client in the appliance's
    process): the same lines as the library's generate_latest, creation times aside."""
    mine = Metrics(dict, lambda: None, str(tmp_path))
    registry = CollectorRegistry()
    applies = Counter("astara_applies", "Transactions by result", ["result"],
                      registry=registry)
    seconds = Histogram("astara_apply_seconds", "Transaction duration", ["result"],
                        registry=registry)
    steps = Histogram("astara_subsystem_apply_seconds", "Apply step duration per subsystem",
                      ["subsystem"], registry=registry)
    refusals = Counter("astara_refusals", "Pushes answered with an error, by reason",
                       ["reason"], registry=registry)
    Gauge("astara_generation", "The committed generation", registry=registry).set(12345678)
    repairs = Counter("astara_reconcile_repairs", "Supervisor repairs by reason", ["reason"],
                      registry=registry)
    restarts = Counter("astara_daemon_restarts", "Dead daemons started again", ["subsystem"],
                       registry=registry)
    for applied, spent, each in ((True, 0.0042, {"netlink": 0.003, "dhcp": 12.0}),
                                 (False, 0.5, {"netlink": 0.1}), (True, 0.075, {})):
        mine.transaction(applied, spent, each)
        result = "applied" if applied else "rolled_back"
        applies.labels(result).inc()
        seconds.labels(result).observe(spent)
        for name, value in each.items():
            steps.labels(name).observe(value)
    for exc, reason in ((ApplyError("", "full", status=507), "state_directory_full"),
                        (ApplyError("", "busy", status=409), "cannot_apply")):
        mine.refused(exc)
        refusals.labels(reason).inc()
    mine.repaired(["dhcp is down", 'a "quoted"\\reason\n'])
    for reason in ("dhcp is down", 'a "quoted"\\reason\n'):
        repairs.labels(reason).inc()
    restarts.labels("dhcp").inc()
    theirs = generate_latest(registry).decode()
    ours = mine.render(12345678).decode()
    kernel = ours.index("# HELP astara_applies_total")  # the NIC families come first
    assert without_created_times(ours[kernel:]) == without_created_times(theirs)
    assert mine.content_type == CONTENT_TYPE_LATEST
