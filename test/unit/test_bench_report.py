"""The pure parts of the agent benchmark (test/bench): percentiles, summaries, ratios,
goals and the table (bench_report.py); the floor's `ip -batch` text from `ip -j` dumps and
its nft element transaction from two rulesets (agent_floor.py)."""
import pytest

from agent_floor import (Address, dnsmasq_start, element_script, parse_kernel_state,
                         parse_ruleset)
from bench_report import (Goal, Summary, markdown_table, measured_row, paired_ratios,
                          percentile, ratio_goal)


# -- statistics ------------------------------------------------------------------------------

def test_percentile_is_nearest_rank():
    values = list(range(100, 0, -1))  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2  # rank ceil(2.0) = 2, no interpolation
    assert percentile([1, 2, 3, 4], 51) == 3


@pytest.mark.parametrize("values, p", [([], 50), ([1], 0), ([1], 101)])
def test_percentile_refuses_nonsense(values, p):
    with pytest.raises(ValueError):
        percentile(values, p)


def test_summary_and_paired_ratios():
    assert Summary.of([3, 1, 2, 10]) == Summary(2.5, 1, 10, 4)
    assert paired_ratios([10, 20, 30], [5, 0, 10]) == [2.0, 3.0]  # a 0 floor is skipped
    with pytest.raises(ValueError):
        paired_ratios([1, 2], [1])


# -- rows and goals --------------------------------------------------------------------------

def test_ratio_row_uses_the_median_of_per_run_ratios():
    # per-run ratios 4, 2, 1.5 → median 2 (the ratio of the medians would be 2.5)
    row = measured_row("full apply", "seconds", [0.4, 0.5, 0.3], [0.1, 0.25, 0.2],
                       ratio_goal(2))
    assert row.cells() == ["full apply", "400 ms (300–500)", "200 ms (100–250)", "2.0×",
                           "≤ 2× floor", "met"]
    assert measured_row("x", "seconds", [0.5], [0.1], ratio_goal(2)).cells()[3:] == \
        ["5.0×", "≤ 2× floor", "not met"]


def test_absolute_goals_and_counts():
    fast = measured_row("re-apply", "seconds", [0.0042, 0.0061, 0.0123],
                        goal=Goal("≤ 10 ms", max_value=0.010))
    assert fast.cells() == ["re-apply", "6.1 ms (4.2–12.3)", "—", "—", "≤ 10 ms", "met"]
    zero = Goal("0 in every run", max_value=0, every_run=True)
    assert measured_row("events", "count", [0, 0, 0], goal=zero).met is True
    assert measured_row("events", "count", [0, 0, 3], goal=zero).met is False  # median is 0
    assert measured_row("events", "count", [0, 0, 3], goal=zero).value == "0 (0–3)"
    memory = measured_row("PSS", "bytes", [61_500_000, 59_000_000, 60_100_000],
                          [41e6, 40e6, 42e6], Goal("≤ 60 MB", max_value=60e6))
    assert memory.cells()[1:] == ["60.1 MB (59.0–61.5)", "41.0 MB (40.0–42.0)", "1.5×",
                                  "≤ 60 MB", "not met"]
    assert measured_row("info", "seconds", [0.0004], goal=None).cells() == \
        ["info", "0.40 ms", "—", "—", "—", "—"]


def test_markdown_table():
    rows = [measured_row("a|b", "seconds", [1.5, 2.5], [1, 1], ratio_goal(1.3))]
    assert markdown_table(rows).splitlines() == [
        "| metric | value (median, min–max) | floor or peer (median, min–max) | ratio | goal "
        "| met? |",
        "| --- | --- | --- | --- | --- | --- |",
        "| a\\|b | 2 000 ms (1 500–2 500) | 1 000 ms (1 000–1 000) | 2.0× | ≤ 1.3× floor "
        "| not met |"]


# -- the floor's inputs ----------------------------------------------------------------------

ADDR_DUMP = [
    {"ifname": "lo", "mtu": 65536, "flags": ["LOOPBACK", "UP"],
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifname": "eth1", "mtu": 1500, "flags": ["BROADCAST", "UP", "LOWER_UP"], "addr_info": [
        {"family": "inet", "local": "198.18.0.2", "prefixlen": 16, "broadcast": "198.18.255.255",
         "scope": "global"},
        {"family": "inet", "local": "198.18.1.1", "prefixlen": 32, "scope": "global"},
        {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
        {"family": "inet6", "local": "2001:db8:1::5", "prefixlen": 64, "scope": "global",
         "dynamic": True}]},
    {"ifname": "eth2", "mtu": 1450, "flags": ["BROADCAST"], "addr_info": [
        {"family": "inet6", "local": "2001:db8:2::1", "prefixlen": 64, "scope": "global",
         "nodad": True}]},
]
ROUTES = {4: [{"dst": "default", "gateway": "198.18.0.1", "dev": "eth1", "protocol": "211",
               "flags": []},
              {"dst": "198.18.0.0/16", "dev": "eth1", "protocol": "kernel", "scope": "link",
               "prefsrc": "198.18.0.2", "flags": []},
              {"type": "blackhole", "dst": "10.9.0.0/16", "protocol": "211", "flags": []}],
          6: [{"dst": "2001:db8:2::/64", "dev": "eth2", "protocol": "kernel", "metric": 256},
              {"dst": "default", "gateway": "fe80::99", "dev": "eth1", "protocol": "211",
               "metric": 1024, "flags": ["onlink"]}]}


def test_batch_makes_links_addresses_then_routes():
    state = parse_kernel_state(ADDR_DUMP, ROUTES)
    assert state.batch().splitlines() == [
        "link set dev eth1 mtu 1500 up",
        "link set dev eth2 mtu 1450",
        "addr add 198.18.0.2/16 dev eth1 broadcast 198.18.255.255",
        "addr add 198.18.1.1/32 dev eth1",
        "addr add 2001:db8:2::1/64 dev eth2 nodad",
        "route add 0.0.0.0/0 via 198.18.0.1 dev eth1 proto 211",
        "route add ::/0 via fe80::99 dev eth1 proto 211 metric 1024 onlink",
        "route add blackhole 10.9.0.0/16 proto 211",
    ]
    assert Address("eth1", "198.18.1.1/32").command("del") == \
        ["del", "198.18.1.1/32", "dev", "eth1"]


RULES = """# managed by astara-router
table inet astara {
	set tenants {
		type ipv4_addr
		flags interval
		elements = {
			10.1.0.0/24
		}
	}

	map fip_dnat {
		type ipv4_addr : ipv4_addr
		elements = {
			172.24.4.228 : 10.1.0.8,
			172.24.4.229 : 10.1.0.9
		}
	}

	map fip_snat {
		type ipv4_addr : ipv4_addr
		elements = { 10.1.0.8 : 172.24.4.228, 10.1.0.9 : 172.24.4.229 }
	}

	chain input {
		type filter hook input priority filter; policy drop;
		tcp dport { 22, 5000 } accept
	}
}
"""


def test_parse_ruleset_separates_elements_from_the_skeleton():
    skeleton, elements = parse_ruleset(RULES)
    assert elements == {
        ("inet", "astara", "tenants"): ("10.1.0.0/24",),
        ("inet", "astara", "fip_dnat"): ("172.24.4.228 : 10.1.0.8", "172.24.4.229 : 10.1.0.9"),
        ("inet", "astara", "fip_snat"): ("10.1.0.8 : 172.24.4.228", "10.1.0.9 : 172.24.4.229")}
    assert "\t\ttcp dport { 22, 5000 } accept" in skeleton
    assert not any("172.24" in line for line in skeleton)


def test_element_script_adds_and_deletes_only_what_changed():
    grown = RULES.replace("172.24.4.229 : 10.1.0.9\n",
                          "172.24.4.229 : 10.1.0.9,\n\t\t\t172.24.4.230 : 10.1.0.10\n")
    grown = grown.replace("10.1.0.9 : 172.24.4.229 }", "10.1.0.9 : 172.24.4.229, "
                          "10.1.0.10 : 172.24.4.230 }")
    assert element_script(RULES, grown).splitlines() == [
        "add element inet astara fip_dnat { 172.24.4.230 : 10.1.0.10 }",
        "add element inet astara fip_snat { 10.1.0.10 : 172.24.4.230 }"]
    assert element_script(grown, RULES).splitlines() == [
        "delete element inet astara fip_dnat { 172.24.4.230 : 10.1.0.10 }",
        "delete element inet astara fip_snat { 10.1.0.10 : 172.24.4.230 }"]
    assert element_script(RULES, RULES) == ""
    with pytest.raises(ValueError):
        element_script(RULES, RULES.replace("22, 5000", "22, 5001"))


def test_dnsmasq_start_follows_its_input_files_and_rebases():
    files = {"/s/dnsmasq/dnsmasq.conf": "user=root\npid-file=/s/dnsmasq/dnsmasq.pid\n"
                                        "dhcp-hostsfile=/s/dnsmasq/dhcp-hosts\n"
                                        "addn-hosts=/s/dnsmasq/dns-names\ninterface=eth2\n",
             "/s/dnsmasq/dhcp-hosts": "fa:16:3e:00:00:01,10.1.0.8\n",
             "/s/dnsmasq/dns-names": "10.1.0.8 vm0.local\n"}
    daemon = dnsmasq_start("/s/dnsmasq/dnsmasq.conf", files.__getitem__)
    assert daemon.files == files
    moved = daemon.rebased("/s", "/floor/state")
    assert sorted(moved.files) == ["/floor/state/dnsmasq/dhcp-hosts",
                                   "/floor/state/dnsmasq/dns-names",
                                   "/floor/state/dnsmasq/dnsmasq.conf"]
    assert "pid-file=/floor/state/dnsmasq/dnsmasq.pid" in \
        moved.files["/floor/state/dnsmasq/dnsmasq.conf"]
    assert moved.check == ("dnsmasq", "--test", "--conf-file=/floor/state/dnsmasq/dnsmasq.conf")
    assert moved.pidfile == "/floor/state/dnsmasq/dnsmasq.pid"
