"""One appliance VM of the built image, booted by the orchestrator's QEMU driver inside a
lab: the image's boot test and the VM benchmarks share it.

``VmAppliance(lab)`` makes the management bridge and router-basic's data bridges in the
lab's fabric, the controller namespace (fdca:3ba5:a17a:acda::2) with an NTP server, an ssh
key pair, and a ``QemuDriver`` on them; ``boot()`` creates the instance with router-basic's
three NICs (MACs and management address of the contract payload) and returns once its
agent answers the liveness probe. Nothing is made in the root namespace; ``close()``
deletes the VM (the lab removes the rest).
"""
import ipaddress
import pathlib
import time

from astara_netns import NetnsHTTPClient, run
from orchestrator_lite.drivers.base import ACTIVE, Nic
from orchestrator_lite.drivers.qemu import QemuDriver

from .appliance import CONTRACT_NIC_MACS, contract_payloads, controller_node, management_cidr
from .image import outputs
from .peers import DEFAULT_ORCHESTRATOR_ADDRESS, NtpServer, eventually

PAYLOAD_NAME = "router-basic"
MACS = CONTRACT_NIC_MACS[PAYLOAD_NAME]  # ge0 (management), ge1 (external), ge2 (internal)
BRIDGES = {"ext": "b-ge1", "int": "b-ge2", "spare": "b-ge3"}
MGMT_MTU = 1450
API_PORT = 5000
PUT_TIMEOUT = 300  # the original client waits 90 s; TCG on a busy machine needs more
NAME = "ak-router-imagetest_0"


def router_basic():
    return contract_payloads("original-orchestrator")[PAYLOAD_NAME]


class VmAppliance:
    def __init__(self, lab, image=None, accel="auto", name=NAME):
        self.lab = lab
        self.name = name
        self.payload = router_basic()
        self.mgmt = ipaddress.ip_interface(management_cidr(self.payload))
        for bridge in ("b-mgmt", *BRIDGES.values()):
            lab.bridge(bridge)
        self.ctl = controller_node(lab, "b-mgmt")
        self.ntp = NtpServer(DEFAULT_ORCHESTRATOR_ADDRESS, ns=self.ctl).start()
        keys = lab.tmpdir("keys")
        self.key = keys / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "astara-vm", "-f",
             self.key])
        self.image = str(image or outputs()["qcow2"])
        self.driver = QemuDriver(
            lab.tmpdir("qemu"), lab.fabric().name, bridges=BRIDGES, auto_bridges=False,
            image=self.image, accel=accel, management_mtu=MGMT_MTU,
            ssh_public_key=f"{self.key}.pub", ssh_identity=str(self.key),
            ntp_servers=[DEFAULT_ORCHESTRATOR_ADDRESS])
        self.client = NetnsHTTPClient(self.ctl.name, str(self.mgmt.ip), API_PORT,
                                      timeout=PUT_TIMEOUT)
        self.probe = NetnsHTTPClient(self.ctl.name, str(self.mgmt.ip), API_PORT, timeout=10)
        self.instance = None
        self.started = None

    def boot(self, timeout):
        """Create the VM; returns seconds from create to the first 200 on the liveness
        probe (AssertionError when it does not come within ``timeout``)."""
        nics = [Nic(MACS[0], "mgmt", "mgt", MGMT_MTU), Nic(MACS[1], "ext", "data", 1500),
                Nic(MACS[2], "int", "data", 1450)]
        self.started = time.monotonic()
        self.instance = self.driver.create(self.name, nics, str(self.mgmt))

        def answers():
            assert self.driver.get(self.instance.id).status == ACTIVE, "QEMU is not running"
            try:
                return self.probe.get("/v1/firewall/rules").status == 200
            except OSError as exc:  # refused, unreachable, timed out: not up yet
                raise AssertionError(repr(exc)) from None
        eventually(answers, timeout, "the liveness probe on the management address",
                   interval=1)
        return time.monotonic() - self.started

    def configure(self):
        """PUT router-basic; (seconds, answer)."""
        started = time.monotonic()
        response = self.client.put_json("/v1/system/config", self.payload)
        return time.monotonic() - started, response

    def console(self, tail=6000):
        if self.instance is None:
            return ""
        try:
            return pathlib.Path(self.instance.details["console"]).read_text(
                errors="replace")[-tail:]
        except OSError:
            return ""

    def ssh(self, *command):
        """The driver's own shell command (what ``astara-ctl ssh`` runs), with a command."""
        argv = self.driver.shell_command(self.instance.id)
        return self.ctl.run([*argv, "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                             "-o", "LogLevel=ERROR", *command], check=False)

    def interfaces(self):
        response = self.client.get("/v1/system/interfaces")
        assert response.status == 200, response.text
        return {i["ifname"]: i for i in response.json()["interfaces"]}

    def close(self):
        if self.instance is not None:
            self.driver.delete(self.instance.id)
        self.ntp.stop()
