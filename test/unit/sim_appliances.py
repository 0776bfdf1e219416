"""Simulated appliances for tests of the whole orchestrator (test_orchestrator_flow.py and
its neighbours, test/contract/test_openstack_mode.py, test/functional/test_neutron_events.py):
HTTP servers on 127.0.0.1 that answer like the agent (its own payload parser, a committed
hash), the fake compute driver whose instances they are, fast health settings, a router
to build in a store, a poll helper, orchestrators stopped at the end of a fixture, and a
settable clock with a CA that runs on it.

Importable from every test directory (pytest.ini puts test/unit on the path); the unit
tests' `cloud` and `orch` fixtures built on them are in test/unit/conftest.py."""
import contextlib
import pathlib
import ssl
import tempfile
import threading
import time

from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from astara_lab.peers import eventually
from astara_router import API_VERSION, BANNER, CAPABILITIES
from astara_router.model import PayloadError, parse_payload
from astara_router.store import payload_hash
from orchestrator_lite.client import ApplianceClient
from orchestrator_lite.config import ApiSettings, HealthSettings, Settings
from orchestrator_lite.pki import DAY, CertificateAuthority
from orchestrator_lite.service import Orchestrator

from fake_driver import FakeDriver

TOKEN = "t0ken"
FAST = HealthSettings(period=0.3, jitter=0.1, dead_grace=0.6, boot_timeout=3.0,
                      boot_check_interval=0.05, max_boot_attempts=3, boot_backoff_base=0.1,
                      boot_backoff_cap=0.2, error_cooldown=0.5, delete_timeout=2.0,
                      hotplug_timeout=2.0, max_push_failures=3, push_backoff_base=0.05,
                      push_backoff_cap=0.1)


class Clock:
    """A clock for code that takes ``clock=`` (it calls it for the time): the test sets or
    moves ``now``."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def backdated_ca(directory):
    """``(ca, clock)``: a CA in ``directory`` (30-day certificates, renewed in their last 10
    days) whose clock stands 25 days back, so that certificates issued before and after a
    21-day move of ``clock.now`` are all valid for a handshake at the real time now."""
    clock = Clock(time.time() - 25 * DAY)
    return CertificateAuthority(directory, lifetime_days=30, renew_before_days=10,
                                clock=clock), clock


def server_context(bundle, directory):
    """The agent's side of mutual TLS for ``bundle`` (a pki.Bundle): its certificate, and
    a client certificate of the bundle's CA required."""
    directory = pathlib.Path(directory)
    (directory / "server.crt").write_text(bundle.certificate)
    (directory / "server.key").write_text(bundle.private_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    context.load_verify_locations(cadata=bundle.ca_certificate)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class SimAppliance:
    """An agent stand-in: NIC list from the instance's MACs, liveness, committed hash.
    ``legacy``: the original appliance's API (a banner without version or capabilities,
    no GET /v1/system/config), what an old image runs. ``tls`` (the pki.Bundle the
    instance was booted with): HTTPS requiring a client certificate of its CA, and
    ``PUT /v1/system/tls`` takes renewals (``renewals``). ``requests``: ``(client port,
    client certificate PEM or None, path)`` of every request, so a test sees connections
    and the certificate each one presented."""

    def __init__(self, macs, legacy=False, tls=None):
        self.macs = list(macs)
        self.payload, self.hash, self.generation = None, None, 0
        self.alive = True
        self.legacy = legacy
        self.puts = 0
        self.config_reads = 0
        self.status_reads = 0
        self.fail_puts = 0  # answer 500 to this many PUTs
        self.requests = []
        self.renewals = []
        app = Flask("sim")

        @app.before_request
        def liveness():
            self.requests.append((request.environ.get("REMOTE_PORT"),
                                  request.environ.get("SSL_CLIENT_CERT"), request.path))
            if not self.alive:
                return Response("dead", status=503)
            return None

        @app.get("/v1/firewall/rules")
        def rules():
            return Response("", mimetype="text/plain")

        @app.get("/v1/")
        def banner():
            if self.legacy:
                return jsonify(v1={"base": "Astara appliance API"})
            return jsonify(service=BANNER, state="ready", generation=self.generation,
                           enabled_services=["router"], api_version=API_VERSION,
                           capabilities=list(CAPABILITIES))

        @app.get("/v1/status/")
        def status():
            self.status_reads += 1
            if self.legacy:
                return jsonify(error="Not Found", message="no such path"), 404
            return jsonify(state="ready", reasons=[], last_error=None)

        @app.get("/v1/system/interfaces")
        def interfaces():
            return jsonify(interfaces=[{"ifname": f"ge{i}", "lladdr": mac}
                                       for i, mac in enumerate(self.macs)])

        @app.get("/v1/system/config")
        def get_config():
            self.config_reads += 1
            if self.legacy:
                return jsonify(error="Method Not Allowed", message="PUT only"), 405
            etag = f'"{self.hash or "none"}"'
            if request.headers.get("If-None-Match") == etag:
                return Response(status=304)
            return jsonify(configuration=self.payload or {}, generation=self.generation,
                           hash=self.hash)

        @app.put("/v1/system/config")
        def put_config():
            self.puts += 1
            if self.fail_puts:
                self.fail_puts -= 1
                return jsonify(error="Internal Server Error", message="daemon failed"), 500
            body = request.get_json()
            try:
                parse_payload(body, ("router", "loadbalancer"))
            except PayloadError as exc:
                return jsonify(exc.to_dict()), exc.status
            self.commit(body)
            return jsonify(generation=self.generation, hash=self.hash)

        @app.put("/v1/system/tls")
        def renew_tls():
            if tls is None:
                return jsonify(error="Conflict", message="not serving TLS"), 409
            self.renewals.append(request.get_json())
            return jsonify(installed=True, reloading=True)

        self._files = tempfile.TemporaryDirectory(prefix="sim-tls-") if tls else None
        self.server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=(
            server_context(tls, self._files.name) if tls else None))
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def commit(self, body):
        self.payload, self.hash = body, payload_hash(body)
        self.generation += 1

    def wipe(self):
        """A reboot that lost the config."""
        self.payload, self.hash, self.generation = None, None, 0

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self._files is not None:
            self._files.cleanup()


class SimCloud(FakeDriver):
    """Fake compute whose instances are SimAppliances. With ``certificates`` (the
    orchestrator's pki.CertificateAuthority, given to it too) they speak mutual TLS with
    the certificate their boot carried, and clients use the CA's client side."""

    def __init__(self, certificates=None):
        super().__init__()
        self.appliances = {}  # instance name -> SimAppliance
        self.legacy_images = set()  # images whose appliances speak the original API
        self.certificates = certificates

    def create(self, name, nics, management_cidr, **hints):
        instance = super().create(name, nics, management_cidr, **hints)
        self.appliances[name] = SimAppliance([n.mac for n in nics],
                                             legacy=hints.get("image") in self.legacy_images,
                                             tls=hints.get("tls"))
        return instance

    def delete(self, instance_id):
        instance = self.get(instance_id)
        super().delete(instance_id)
        if instance is not None:
            self.appliances.pop(instance.name).stop()

    def attach(self, instance_id, nic):
        instance = super().attach(instance_id, nic)
        self.appliances[instance.name].macs.append(nic.mac)
        return instance

    def detach(self, instance_id, mac):
        instance = super().detach(instance_id, mac)
        self.appliances[instance.name].macs.remove(mac)
        return instance

    def client_factory(self, instance):
        tls = self.certificates.client_tls() if self.certificates is not None else None
        return ApplianceClient("127.0.0.1", self.appliances[instance.name].port, attempts=2,
                               backoff_base=0.01, backoff_cap=0.02, alive_timeout=1,
                               timeout=2, config_timeout=2, tls=tls,
                               server_name=instance.name if tls else None)

    def close(self):
        pass

    def shutdown(self):
        for appliance in self.appliances.values():
            appliance.stop()


def make_settings(tmp_path, **health):
    return Settings(host="controller-1", state_dir=str(tmp_path / "state"),
                    api=ApiSettings(token=TOKEN), threads=3,
                    health=HealthSettings(**{**FAST.__dict__, **health}))


def desired_hash(o, resource_id):
    return o.resource(resource_id)["desired_hash"]


def state_of(o, resource_id):
    return next((r for r in o.resources() if r["id"] == resource_id), {}).get("state")


def simple_router(store, tenant="t1", router_id="r1", ha=False):
    store.create("network", {"id": "ext", "external": True, "mtu": 1500})
    store.create("subnet", {"id": "ext4", "network_id": "ext", "cidr": "172.24.4.0/24",
                            "gateway_ip": "172.24.4.1", "enable_dhcp": False})
    store.create("network", {"id": "net1", "tenant_id": tenant, "mtu": 1450})
    store.create("subnet", {"id": "sub1", "network_id": "net1", "cidr": "10.1.0.0/24"})
    store.create("router", {"id": router_id, "tenant_id": tenant, "ha": ha})
    store.set_router_gateway(router_id, "ext")
    store.add_router_interface(router_id, subnet_id="sub1")
    store.create("port", {"network_id": "net1", "device_owner": "compute:nova",
                          "device_id": "vm1", "fixed_ips": [{"ip_address": "10.1.0.10"}]})


def wait_for(predicate, timeout=10.0, what="condition"):
    """``predicate``'s first truthy value, polled every 20 ms (the tests' defaults for
    astara_lab.peers.eventually)."""
    return eventually(predicate, timeout, what, interval=0.02)


@contextlib.contextmanager
def started_orchestrators():
    """``start(settings, **kwargs)``: an Orchestrator, started; every one is stopped when
    the block ends (errors stopping are ignored: a test may have stopped it already)."""
    started = []

    def start(settings, **kwargs):
        o = Orchestrator(settings, **kwargs)
        started.append(o)
        o.start()
        return o

    try:
        yield start
    finally:
        for o in started:
            with contextlib.suppress(Exception):
                o.stop()
