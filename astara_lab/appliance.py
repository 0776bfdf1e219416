"""An appliance "VM" made of a network namespace running the real agent, plus the contract
payloads and the NIC MACs their README lists. Shared by the tests and the lab."""
import ipaddress
import json
import os
import pathlib
import signal
import socket
import ssl
import sys
import time

from astara_netns import NetnsHTTPClient, in_netns, pid_alive, wait_for_tcp

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
ORCHESTRATOR_ADDRESS = "fdca:3ba5:a17a:acda::2"  # the contract's orchestrator address
MGMT_PREFIX = 64
API_PORT = 5000
ADMIN_PORT = 44250  # the orchestrators' admin APIs: 44250, 44251... on the controller's lo
# Kept out of the controller's ephemeral ports: an orchestrator's connection to PostgreSQL
# took 44252 as its source port once, and orch-3 could not listen there (EADDRINUSE).
ADMIN_PORTS_RESERVED = f"{ADMIN_PORT}-{ADMIN_PORT + 15}"

# NIC MACs from contract/original-orchestrator/README.md, ge0 first.
CONTRACT_NIC_MACS = {
    "router-basic": ["fa:16:3e:67:41:6c", "fa:16:3e:59:11:a7", "fa:16:3e:0b:cd:e1"],
    "router-ha-primary": ["fa:16:3e:f7:05:80", "fa:16:3e:ab:d9:28", "fa:16:3e:9e:c8:80"],
    "router-ha-secondary": ["fa:16:3e:4c:b3:9a", "fa:16:3e:52:ce:87", "fa:16:3e:c3:12:67"],
    "router-no-gateway": ["fa:16:3e:61:31:4b", "fa:16:3e:07:9f:01", "fa:16:3e:2e:07:5c"],
    "router-dual-stack": ["fa:16:3e:15:f6:fb", "fa:16:3e:5c:f2:10", "fa:16:3e:51:f7:b1",
                          "fa:16:3e:92:77:c9", "fa:16:3e:89:c0:96"],
    "router-many-fips": ["fa:16:3e:29:00:1f", "fa:16:3e:30:7b:48", "fa:16:3e:40:11:44",
                         "fa:16:3e:38:ae:97", "fa:16:3e:80:c2:00", "fa:16:3e:54:d9:8a"],
    "router-wide": ["fa:16:3e:e5:d8:50", "fa:16:3e:81:eb:c9", "fa:16:3e:31:f3:2f",
                    "fa:16:3e:ae:30:1c", "fa:16:3e:e4:fb:f5", "fa:16:3e:8b:d8:20",
                    "fa:16:3e:eb:1e:d7", "fa:16:3e:ef:51:95", "fa:16:3e:24:c8:1b",
                    "fa:16:3e:e9:df:97", "fa:16:3e:c2:43:31", "fa:16:3e:92:f1:91",
                    "fa:16:3e:56:57:9b"],
    "router-vpn": ["fa:16:3e:98:28:e6", "fa:16:3e:80:7a:84", "fa:16:3e:39:3d:7e"],
}


# The original orchestrator's payloads and the invalid ones, kept inside the package (package
# data), so tests, the lab and the benchmarks work from a clone or an install alone.
CONTRACT_DIR = pathlib.Path(__file__).resolve().parent / "contract"


def contract_payloads(kind="original-orchestrator"):
    """``{name: body}`` of the contract files (``kind``: original-orchestrator or invalid)."""
    folder = CONTRACT_DIR / kind
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def management_cidr(payload):
    for network in payload["networks"]:
        if network.get("network_type") == "management":
            return network["interface"]["addresses"][0]
    raise ValueError("payload has no management network")


def nic_macs(name, payload):
    """One MAC per geN the payload names: the README's, else ge0 from the management
    address's EUI-64 and locally administered ones for the rest."""
    known = CONTRACT_NIC_MACS.get(name)
    count = 1 + max(int(n["interface"]["ifname"][2:]) for n in payload["networks"])
    if known and len(known) >= count:
        return known[:count]
    macs = [f"02:a5:{count:02x}:00:00:{i:02x}" for i in range(count)]
    address = ipaddress.ip_interface(management_cidr(payload)).ip
    if address.version == 6:
        eui = address.packed[8:]
        macs[0] = ":".join(f"{b:02x}" for b in
                           (eui[0] ^ 0x02, eui[1], eui[2], eui[5], eui[6], eui[7]))
    return macs


class Appliance:
    """A namespace with one NIC per MAC (eth0, eth1, ... each on its own bridge, ge0 on the
    management bridge) running ``astara-router-api``."""

    def __init__(self, lab, role, macs, mgmt_cidr, mgmt_bridge, bridges=None,
                 enabled_services=("router", "loadbalancer"), controller=None):
        self.lab = lab
        self.ns = lab.netns(role)
        self.macs = list(macs)
        self.mgmt = ipaddress.ip_interface(mgmt_cidr)
        self.enabled_services = enabled_services
        self.state_dir = lab.tmpdir(f"{role}-state")
        self.log_path = lab.tmpdir(f"{role}-log") / "agent.log"
        self.proc = None
        for i, mac in enumerate(self.macs):
            bridge = mgmt_bridge if i == 0 else (bridges or {}).get(i) or lab.bridge(
                f"b-{role}-{i}"[:15])
            lab.plug(self.ns, f"eth{i}", bridge, mac=mac, up=False)
        self.controller = controller

    # -- boot ------------------------------------------------------------------------------
    def configure_management(self):
        self.ns.run([sys.executable, "-m", "astara_router.cli.management", self.macs[0],
                     str(self.mgmt), "--mtu", "1450", "--state-dir", str(self.state_dir),
                     "--sshd-config", "none"])

    def start(self, extra_args=(), wait=True, wrapper=()):
        """``wrapper``: a command prefix that execs the agent, e.g. ``("unshare", "--uts")``
        for a private host name (it must exec, not fork, so ``proc.pid`` is the agent)."""
        env = {"PYTHONPATH": str(REPO_ROOT)}
        self.proc = self.lab.spawn(self.ns, [
            *wrapper, sys.executable, "-m", "astara_router.cli.api",
            "--state-dir", str(self.state_dir),
            "--enabled-services", ",".join(self.enabled_services), *extra_args],
            env=env, log_path=self.log_path)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                wait_for_tcp(self.controller.name, str(self.mgmt.ip), API_PORT, timeout=1)
                if self.client().get("/v1/").status == 200:
                    return
            except (OSError, TimeoutError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not ready in {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)  # the agent's own session: master and worker
        self.proc.wait(timeout)

    def log(self):
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def client(self, timeout=30):
        return NetnsHTTPClient(self.controller.name, str(self.mgmt.ip), API_PORT, timeout)

    # -- live state, for assertions ---------------------------------------------------------
    def recorded_pid(self, pidfile):
        """The PID in ``<state_dir>/<pidfile>``; None when there is no such file."""
        try:
            return int((self.state_dir / pidfile).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def daemon_pid(self, pidfile):
        """The PID in ``<state_dir>/<pidfile>`` while that process lives, else None."""
        pid = self.recorded_pid(pidfile)
        return pid if pid is not None and pid_alive(pid) else None

    def ruleset(self):
        """The agent's nftables table as nft lists it."""
        return self.ns.run(["nft", "list", "table", "inet", "astara"]).stdout

    def dump(self):
        """Addresses, MTUs, link states and routes, the way `ip` shows them."""
        links = self.ns.ip_json("addr", "show")
        keep = []
        for link in links:
            if link["ifname"] == "lo":
                continue
            keep.append({"ifname": link["ifname"], "mtu": link["mtu"],
                         "up": "UP" in link["flags"],
                         "addresses": sorted(f"{a['local']}/{a['prefixlen']}"
                                             for a in link.get("addr_info", ())
                                             if a.get("scope") != "link")})
        routes = [self.ns.ip_json("-4", "route", "show", "table", "main"),
                  self.ns.ip_json("-6", "route", "show", "table", "main")]
        return {"links": keep, "routes": [r for family in routes for r in family
                                          if not r.get("dst", "").startswith("fe80")]}


def controller_node(lab, mgmt_bridge, address=ORCHESTRATOR_ADDRESS, role="ctl"):
    """The orchestrator's place on the management network (pushes configs from here)."""
    ns = lab.netns(role)
    ns.sysctl("net.ipv4.ip_local_reserved_ports", ADMIN_PORTS_RESERVED)  # this netns only
    lab.plug(ns, "eth0", mgmt_bridge)
    ns.ip("addr", "add", f"{address}/{MGMT_PREFIX}", "dev", "eth0", "nodad")
    return ns


def contract_appliance(lab, name, payload, enabled_services=("router", "loadbalancer"),
                       wrapper=None):
    """Management bridge, controller and a booted, management-configured appliance ready
    for ``payload`` (a contract body named ``name``). ``wrapper(appliance)``: the command
    prefix for ``Appliance.start`` (e.g. unprivileged.agent_wrapper, which needs the
    appliance's state directory)."""
    mgmt = lab.bridge("b-mgmt")
    ctl = controller_node(lab, mgmt)
    appliance = Appliance(lab, "app", nic_macs(name, payload), management_cidr(payload),
                          mgmt, enabled_services=enabled_services, controller=ctl)
    appliance.configure_management()
    appliance.start(wrapper=wrapper(appliance) if wrapper else ())
    return appliance


def tls_get(netns_name, host, context, server_name, port=API_PORT, path="/v1/", timeout=10):
    """One GET over TLS from inside ``netns_name``: ``(status line, the server's DER
    certificate)``. A refused handshake raises ``ssl.SSLError`` (a client without the
    certificate an agent requires gets the server's alert, at the latest on reading)."""
    with in_netns(netns_name):
        raw = socket.create_connection((host, port), timeout=timeout)
    with raw, context.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status = tls.recv(200).split(b"\r\n")[0].decode()
        return status, tls.getpeercert(binary_form=True)


def tls_client_context(ca_file, cert_file=None, key_file=None):
    """A TLS client trusting ``ca_file``, presenting ``cert_file`` when given."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def expected_addresses(payload):
    """geN -> set of addresses the payload implies (interface addresses + FIPs as /32)."""
    wanted = {}
    for network in payload["networks"]:
        ifname = network["interface"]["ifname"]
        wanted.setdefault(ifname, set()).update(
            str(ipaddress.ip_interface(a)) for a in network["interface"]["addresses"])
    externals = [n for n in payload["networks"] if n["network_type"] == "external"]
    for fip in payload.get("floating_ips", []):
        address = ipaddress.ip_address(fip["floating_ip"])
        holder = next((n for n in externals if any(
            address in ipaddress.ip_network(s["cidr"]) for s in n["subnets"])), externals[0])
        wanted[holder["interface"]["ifname"]].add(f"{address}/{address.max_prefixlen}")
    return wanted


def kernel_names(appliance):
    """geN -> kernel name, as the appliance's agent reports its NICs."""
    interfaces = appliance.client().get("/v1/system/interfaces").json()["interfaces"]
    return {i["ifname"]: i["kernel_name"] for i in interfaces}
