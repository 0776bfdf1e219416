"""Real-kernel tests of the namespace toolkit (astara_netns, astara_lab.leftovers).

Only test ranges are used (198.18.0.0/15, 2001:db8::/32). The root namespace
is only read (link names, one sysctl), never changed.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from astara_lab import leftovers
from astara_netns import (
    NETNS_ETC_DIR, TERM_GRACE, CommandError, Lab, NetnsHTTPClient, in_netns, list_netns,
    netns_pids, pid_alive, run, wait_for_tcp,
)

pytestmark = pytest.mark.netns

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# A TCP listener, the reachability check when `ping` is missing.
TCP_LISTENER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=fam)
while True:
    srv.accept()[0].close()
"""


def root_link_names():
    """Link names of the root namespace (read-only)."""
    return sorted(link["ifname"] for link in json.loads(
        run(["ip", "-j", "link", "show"]).stdout))


def lab_names(prefix):
    return [n for n in list_netns() if n.startswith(prefix + "-")]


def wait_until(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def two_hosts(lab):
    """Namespaces a and b on one bridge with 198.18.0.{1,2} and 2001:db8:1::{1,2}."""
    a, b = lab.netns("a"), lab.netns("b")
    br = lab.bridge("br0")
    lab.plug(a, "eth0", br, mac="02:00:00:00:00:0a", mtu=1400)
    lab.plug(b, "eth0", br, mac="02:00:00:00:00:0b", mtu=1400)
    for ns, n in ((a, 1), (b, 2)):
        ns.ip("addr", "add", f"198.18.0.{n}/24", "dev", "eth0")
        # nodad: the address is usable at once instead of after DAD (~1 s).
        ns.ip("addr", "add", f"2001:db8:1::{n}/64", "dev", "eth0", "nodad")
    return a, b


def assert_reachable(lab, src, dst, ip, use_ping):
    if use_ping:
        src.run(["ping", "-c", "1", "-W", "2", ip])
    else:
        port = 9000
        lab.spawn(dst, [sys.executable, "-c", TCP_LISTENER, ip, str(port)])
        wait_for_tcp(src.name, ip, port, timeout=5)


def test_name_pattern():
    match = leftovers.NAME_RE.fullmatch
    assert Lab.PREFIX_RE.fullmatch(Lab.new_prefix())
    assert match("ast3f9a1c-fab") and match("ast3f9a1c-probe")
    for name in ("ast3f9a1c", "xast3f9a1c-a", "astzzzzzz-a", "ast3f9a1c0-a",
                 "ast3f9a-a", "other"):
        assert not match(name), name


@pytest.mark.parametrize("use_ping", [True, False], ids=["ping", "tcp"])
def test_two_namespaces_reach_each_other(lab, use_ping):
    if use_ping and not shutil.which("ping"):
        pytest.skip("ping not installed (the tcp variant covers this)")
    a, b = two_hosts(lab)
    for ip in ("198.18.0.2", "2001:db8:1::2"):
        assert_reachable(lab, a, b, ip, use_ping)
    for ip in ("198.18.0.1", "2001:db8:1::1"):
        assert_reachable(lab, b, a, ip, use_ping)

    eth0 = a.ip_json("link", "show", "eth0")[0]
    assert eth0["address"] == "02:00:00:00:00:0a" and eth0["mtu"] == 1400
    fab_ends = [link for link in lab.fabric().ip_json("link", "show")
                if link.get("master") == "br0"]
    assert len(fab_ends) == 2
    assert all(len(link["ifname"]) <= 15 and link["mtu"] == 1400 for link in fab_ends)


def test_netns_basics(lab):
    root_forwarding = pathlib.Path("/proc/sys/net/ipv4/ip_forward").read_text()
    r = lab.netns("r", forwarding=True)
    plain = lab.netns("p")
    assert r.exists() and r.name == f"{lab.prefix}-r"
    assert "UP" in r.ip_json("link", "show", "lo")[0]["flags"]
    assert r.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert r.run(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip() == "1"
    assert plain.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
    assert pathlib.Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_forwarding
    # The host's resolv.conf is hidden behind an empty one (hazard 1).
    assert (NETNS_ETC_DIR / r.name / "resolv.conf").is_file()
    assert r.run(["cat", "/etc/resolv.conf"]).stdout == ""
    with pytest.raises(ValueError):
        lab.netns("toolong7")
    with pytest.raises(ValueError):
        lab.netns("r")
    with pytest.raises(CommandError, match="Cannot find device"):
        r.ip("link", "set", "nosuchdev", "up")


def test_in_netns_switches_only_this_thread(lab):
    ns = lab.netns("s")
    ns.ip("addr", "add", "198.18.2.1/32", "dev", "lo")
    own = os.readlink("/proc/thread-self/ns/net")
    target_ino = os.stat(f"/run/netns/{ns.name}").st_ino
    # A thread that already runs looks while we are inside: it stays put.
    # (Threads started inside would inherit the namespace, like any clone.)
    seen_by_other, inside, looked = [], threading.Event(), threading.Event()

    def other_thread():
        inside.wait(5)
        seen_by_other.append(os.readlink("/proc/thread-self/ns/net"))
        looked.set()

    other = threading.Thread(target=other_thread)
    other.start()
    with in_netns(ns.name):
        assert os.stat("/proc/thread-self/ns/net").st_ino == target_ino
        inside.set()
        looked.wait(5)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.join()
    try:
        assert os.readlink("/proc/thread-self/ns/net") == own
        assert seen_by_other == [own]
        # The socket stayed in the namespace: its address is bindable there only.
        sock.bind(("198.18.2.1", 0))
    finally:
        sock.close()
    with pytest.raises(OSError):
        with in_netns(f"{lab.prefix}-nosuch"):
            pass
    assert os.readlink("/proc/thread-self/ns/net") == own


def test_http_client_v4_v6_and_concurrency(lab):
    srv, cli = lab.netns("srv"), lab.netns("cli")
    br = lab.bridge("br0")
    lab.plug(srv, "eth0", br)
    lab.plug(cli, "eth0", br)
    srv.ip("addr", "add", "198.18.1.1/24", "dev", "eth0")
    srv.ip("addr", "add", "2001:db8:2::1/64", "dev", "eth0", "nodad")
    cli.ip("addr", "add", "198.18.1.2/24", "dev", "eth0")
    cli.ip("addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad")
    logs = lab.tmpdir("logs")
    for ip in ("198.18.1.1", "2001:db8:2::1"):
        lab.spawn(srv, [sys.executable, "-m", "astara_lab.webserver", "--bind", ip,
                        "--port", "8080"], env={"PYTHONPATH": str(REPO_ROOT)},
                  log_path=logs / f"http-{ip}.log")
        wait_for_tcp(cli.name, ip, 8080, timeout=10)

    for ip, client_ip in (("198.18.1.1", "198.18.1.2"), ("2001:db8:2::1", "2001:db8:2::2")):
        client = NetnsHTTPClient(cli.name, ip, 8080)
        resp = client.get("/v1/hello")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        seen = resp.json()
        assert (seen["method"], seen["path"], seen["client"]) == ("GET", "/v1/hello", client_ip)
        resp = client.put_json("/v1/system/config", {"hostname": "r1", "n": [1, 2]})
        seen = resp.json()
        assert resp.status == 200 and json.loads(seen["body"]) == {"hostname": "r1", "n": [1, 2]}
        assert seen["headers"]["Content-Type"] == "application/json"
        resp = client.put_raw("/raw", b"not json", "text/plain")
        seen = resp.json()
        assert seen["body"] == "not json" and seen["headers"]["Content-Type"] == "text/plain"

    # 50 threads at once (the barrier makes them overlap), over v4 and v6.
    own = os.readlink("/proc/thread-self/ns/net")
    barrier = threading.Barrier(50)
    clients = [NetnsHTTPClient(cli.name, "198.18.1.1", 8080),
               NetnsHTTPClient(cli.name, "[2001:db8:2::1]", 8080)]

    def one(i):
        before = os.readlink("/proc/thread-self/ns/net")
        barrier.wait(timeout=10)
        resp = clients[i % 2].get(f"/n/{i}")
        after = os.readlink("/proc/thread-self/ns/net")
        return resp.status, resp.json()["path"], before == after == own

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [(200, f"/n/{i}", True) for i in range(50)]
    assert os.readlink("/proc/thread-self/ns/net") == own


def test_wait_for_tcp_times_out(lab):
    ns = lab.netns("w")
    with pytest.raises(TimeoutError):
        wait_for_tcp(ns.name, "127.0.0.1", 9, timeout=0.5)


def test_close_cleans_up_even_after_failure():
    root_before = root_link_names()
    mine = Lab()
    stray = None
    with pytest.raises(RuntimeError, match="boom"):
        with mine:
            a = mine.netns("a", forwarding=True)
            br = mine.bridge("br0")
            mine.plug(a, "eth0", br)
            # A half-failed step: the veth exists, enslaving it fails.
            with pytest.raises(CommandError):
                mine.plug(a, "eth1", "nosuchbr")
            assert "eth1" in a.link_names()
            tmp = mine.tmpdir("scratch")
            mine.spawn(a, ["sleep", "300"])
            # Ignores SIGTERM: needs the SIGKILL after the grace period.
            mine.spawn(a, [sys.executable, "-c",
                           "import pathlib, signal, sys, time; "
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                           "pathlib.Path(sys.argv[1]).touch(); time.sleep(300)",
                           tmp / "ready"])
            # Not a new session, and its child leaves the group with setsid:
            # only the netns sweep can find that one.
            mine.spawn(a, ["sh", "-c", "setsid sleep 301 & exec sleep 302"],
                       new_session=False)
            # Started behind the lab's back: also found by the sweep.
            stray = subprocess.Popen(["ip", "netns", "exec", a.name, "sleep", "303"])
            wait_until(lambda: len(a.pids()) >= 5, what="5 processes in netns")
            wait_until((tmp / "ready").exists, what="SIGTERM ignored")
            pids = a.pids()
            assert root_link_names() == root_before
            start = time.monotonic()
            raise RuntimeError("boom")
    # The grace period was honoured before SIGKILL (a lower bound only: a busy machine may
    # take longer, and that is no failure of the lab).
    assert time.monotonic() - start >= TERM_GRACE
    stray.wait(timeout=5)
    assert lab_names(mine.prefix) == []
    assert not list(NETNS_ETC_DIR.glob(f"{mine.prefix}-*"))
    assert not tmp.parent.exists()
    assert not [p for p in pids if pid_alive(p)]
    assert root_link_names() == root_before
    mine.close()  # idempotent


def test_fixture_lab_closes_after_failing_body(tmp_path):
    """A failing test using the real `lab` fixture, run by a child pytest,
    leaves nothing behind."""
    shutil.copy(REPO_ROOT / "test" / "functional" / "conftest.py", tmp_path)
    (tmp_path / "test_fails.py").write_text(
        "def test_fails(lab):\n"
        "    ns = lab.netns('x')\n"
        "    lab.spawn(ns, ['sleep', '300'])\n"
        "    print('PREFIX=' + lab.prefix)\n"
        "    assert False, 'deliberate'\n")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "test_fails.py"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert res.returncode == 1 and "deliberate" in res.stdout, res.stdout + res.stderr
    prefix = res.stdout.split("PREFIX=", 1)[1].split()[0]
    assert Lab.PREFIX_RE.fullmatch(prefix)
    assert lab_names(prefix) == []
    assert not list(NETNS_ETC_DIR.glob(f"{prefix}-*"))


def test_root_links_unchanged(lab):
    before = root_link_names()
    a, b = two_hosts(lab)
    lab.bridge("br1")
    lab.plug(a, "eth1", "br1")
    assert root_link_names() == before
    lab.close()
    assert root_link_names() == before
    assert lab_names(lab.prefix) == []


def test_leftovers_removes_only_the_pattern():
    prefix = Lab.new_prefix()
    leaked = f"{prefix}-leak"
    other = f"x{Lab.new_prefix()}-keep"  # near miss: the pattern is anchored
    proc = None

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "astara_lab.leftovers", *args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    try:
        run(["ip", "netns", "add", leaked])
        (NETNS_ETC_DIR / leaked).mkdir(parents=True)
        (NETNS_ETC_DIR / leaked / "resolv.conf").touch()
        run(["ip", "netns", "add", other])
        proc = subprocess.Popen(["ip", "netns", "exec", leaked, "sleep", "300"],
                                start_new_session=True)
        wait_until(lambda: proc.pid in netns_pids(leaked), what="sleep in netns")

        found = leftovers.find_leftovers()  # whole machine, read-only
        assert found["namespaces"][leaked] == [proc.pid]
        assert str(NETNS_ETC_DIR / leaked) in found["etc_dirs"]
        assert other not in found["namespaces"]

        res = cli()  # listing only, whole machine
        assert res.returncode == 0 and f"netns {leaked} pids: {proc.pid}" in res.stdout
        assert other not in res.stdout
        assert leaked in list_netns()

        # --prefix keeps other people's running labs safe on a shared machine.
        res = cli("--remove", "--prefix", prefix)
        assert res.returncode == 0, res.stderr
        assert f"netns {leaked}: deleted" in res.stdout
        assert proc.wait(timeout=5) is not None
        assert leaked not in list_netns()
        assert not (NETNS_ETC_DIR / leaked).exists()
        assert other in list_netns()
        assert "no leftovers" in cli("--prefix", prefix).stdout
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in (leaked, other):
            if name in list_netns():
                run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(NETNS_ETC_DIR / leaked, ignore_errors=True)
    assert leaked not in list_netns() and other not in list_netns()
