"""The orchestrator with its netns driver as a test world (lab, management bridge, the ctl
namespace running astara-orchestrator, astara-ctl) and the astara-ctl steps the tests
share: test_orchestrator_netns.py, test_orchestrator_tls.py and
test_orchestrator_placements_debug.py; the `world` fixture is in conftest.py."""
import json
import pathlib
import site
import subprocess
import sys

from astara_lab.appliance import controller_node
from astara_lab.cluster import delete_appliances
from astara_lab.orchestrator import OrchestratorProcess, errors_as, write_config
from astara_netns import NetnsHTTPClient

ROUTER = "5e1f0c3a-7d2b-4c1e-9a8f-0b1c2d3e4f50"  # the netns and TLS tests' router
HEALTH = {"period": 1, "jitter": 0.1, "dead_grace": 3, "boot_timeout": 40,
          "boot_check_interval": 0.3, "max_boot_attempts": 3, "boot_backoff_base": 0.5,
          "boot_backoff_cap": 2, "error_cooldown": 2, "delete_timeout": 15}


class World:
    """Lab + orchestrator process + astara-ctl, all in the ctl namespace. Plain HTTP to
    the appliances (the original orchestrator's mode, so the tests can read the agents
    directly) unless ``tls`` gives the orchestrator's [tls] section."""

    def __init__(self, lab, tls=None):
        self.lab = lab
        self.fabric = lab.fabric()
        lab.bridge("b-mgmt")
        self.ctl = controller_node(lab, "b-mgmt")
        self.dir = lab.tmpdir("orchestrator")
        self.ini = write_config(self.dir / "orchestrator.ini", {
            "DEFAULT": {"host": "controller-1", "state_dir": f"{self.dir}/state"},
            "api": {"listen": "127.0.0.1", "port": 44250, "token": "functional-token"},
            "compute": {"driver": "netns"},
            "netns": {"prefix": lab.prefix, "fabric": self.fabric.name,
                      "management_bridge": "b-mgmt", "state_root": f"{self.dir}/appliances"},
            "health": HEALTH, "tls": tls or {"enabled": "false"}})
        self.orchestrator = OrchestratorProcess(self.ctl.name, self.ini,
                                                self.dir / "orchestrator.log",
                                                extra_args=["--log-level", "DEBUG"])
        self.start()

    def start(self):
        with errors_as(AssertionError):  # a test failure
            self.orchestrator.start(timeout=20)

    def stop(self):
        self.orchestrator.stop()

    def close(self):
        try:
            self.stop()
        finally:
            # The appliances outlive the orchestrator (on purpose): remove them before the
            # lab deletes the fabric. Deleting kills the processes inside each namespace.
            delete_appliances(self.lab.prefix, self.dir / "appliances", self.fabric.name)

    def run_ctl(self, *args):
        return self.ctl.run([sys.executable, "-m", "orchestrator_lite.cli.ctl", "--config",
                             str(self.ini), *args], check=False)

    def ctl_ok(self, *args):
        return self.run_ctl(*args).returncode == 0

    def ctl_json(self, *args):
        result = self.run_ctl(*args)
        assert result.returncode == 0, f"astara-ctl {args}: {result.stderr}\n{self.tail()}"
        return json.loads(result.stdout)

    def resource(self, resource_id):
        return self.ctl_json("resource", "show", resource_id)

    def state(self, resource_id):
        result = self.run_ctl("resource", "show", resource_id)
        return json.loads(result.stdout)["state"] if result.returncode == 0 else None

    def agent(self, address):
        return NetnsHTTPClient(self.ctl.name, address, 5000, timeout=10)

    def tail(self):
        return self.orchestrator.tail(6000)

    def wait_for(self, predicate, timeout, what):
        with errors_as(AssertionError):  # a test failure
            return self.orchestrator.wait_for(predicate, timeout, what)


def build_router(world, router_id, tenant):
    ctl = world.ctl_json
    if not world.ctl_ok("network", "show", "ext"):
        ctl("network", "create", "id=ext", "external=true", "mtu=1500")
        ctl("subnet", "create", "id=ext4", "network_id=ext", "cidr=198.51.100.0/24",
            "gateway_ip=198.51.100.1", "enable_dhcp=false")
    net, sub = f"net-{router_id[:4]}", f"sub-{router_id[:4]}"
    ctl("network", "create", f"id={net}", f"tenant_id={tenant}", "mtu=1450")
    ctl("subnet", "create", f"id={sub}", f"network_id={net}", "cidr=10.1.0.0/24",
        'dns_nameservers=["198.51.100.53"]')
    ctl("router", "create", f"id={router_id}", f"tenant_id={tenant}")
    ctl("router", "set-gateway", router_id, "ext")
    ctl("router", "add-interface", router_id, sub)
    ctl("port", "create", f"network_id={net}", "device_id=vm-1", "device_owner=compute:nova",
        'fixed_ips=[{"ip_address": "10.1.0.10"}]')


def committed(world, instance):
    """The appliance's GET /v1/system/config, or None while it does not answer."""
    try:
        return world.agent(instance["management_address"]).get("/v1/system/config").json()
    except OSError:
        return None


def in_sync(world, router_id):
    """The resource is configured and every appliance's committed hash is the desired
    one; returns the resource view."""
    resource = world.resource(router_id)
    if resource["state"] != "configured" or not resource["instances"]:
        return None
    for instance in resource["instances"]:
        config = committed(world, instance)
        if config is None or config["hash"] != resource["desired_hash"].get(instance["name"]):
            return None
    return resource


def make_image(directory):
    """Another "image" for the netns driver: a virtualenv of its own (here using the test
    virtualenv's packages through a .pth file); returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)],
                   check=True)
    python = directory / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    pathlib.Path(purelib, "astara-test-image.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    for script in pathlib.Path(sys.executable).parent.glob("astara-*"):  # its tools
        body = script.read_text().split("\n", 1)[1]
        target = directory / "bin" / script.name
        target.write_text(f"#!{python}\n{body}")
        target.chmod(0o755)
    return python
