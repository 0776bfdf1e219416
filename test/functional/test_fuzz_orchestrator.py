"""Fuzzing the orchestrator's admin API (it has no OpenAPI document): a real orchestrator
started in a controller namespace, hypothesis requests on every JSON route — collections
with bodies built from each kind's fields (orchestrator_lite.store.validation.FIELDS) and
plausible or broken values, router helpers, operations, placements, bodies that are not
JSON objects. Property: no answer is a 5xx and the server keeps running.

Everything is paused first (``POST /v1/global/debug``), so the routers the cases create are
stored and validated but no appliance is booted; ``manage`` commands, which would lift the
pause, are not sent."""
import json
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astara_lab.appliance import controller_node
from astara_lab.orchestrator import OrchestratorProcess, write_config
from orchestrator_lite.store.kinds import PLURALS
from orchestrator_lite.store.validation import FIELDS

from .fuzzing import (JUNK_TEXT, budget, fuzz_settings, junk, new_tally, test_addresses,
                      test_cidrs)

pytestmark = pytest.mark.netns

TOKEN = "fuzz-token"
KIND_OF_ID = {"network_id": "network", "floating_network_id": "network",
              "subnet_id": "subnet", "port_id": "port", "vip_port_id": "port",
              "router_id": "router", "loadbalancer_id": "loadbalancer",
              "listener_id": "listener", "pool_id": "pool", "default_pool_id": "pool",
              "id": None}
ADDRESS_FIELDS = ("gateway_ip", "ip_address", "address", "floating_ip_address",
                  "fixed_ip_address", "vip_address", "peer_address")
BOOLEAN_FIELDS = ("external", "ha", "admin_state_up", "enable_dhcp")
CHOICES = {"protocol": ["HTTP", "HTTPS", "TCP", "UDP", "PROXY", "FTP"],
           "lb_algorithm": ["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "RANDOM"],
           "initiator": ["bi-directional", "response-only", "both"],
           "ipv6_ra_mode": [None, "slaac", "dhcpv6-stateful", "bogus"],
           "ipv6_address_mode": [None, "slaac", "dhcpv6-stateless", "bogus"],
           "device_owner": ["", "compute:nova", "network:router_interface"],
           "provisioning_status": ["ACTIVE", "PENDING_CREATE"],
           "status": ["ACTIVE", "DOWN"]}
COMMANDS = ["rebuild", "update", "debug", "poll", "reboot", ""]  # never "manage"
# What a create needs to get past "is required" (a broken case may still leave it out).
REQUIRED = {"subnet": ("network_id", "cidr"), "port": ("network_id",), "router": ("tenant_id",),
            "floatingip": ("floating_network_id",), "loadbalancer": ("vip_port_id",),
            "listener": ("loadbalancer_id",), "pool": ("loadbalancer_id",),
            "member": ("pool_id", "address"),
            "ipsec_site_connection": ("router_id", "peer_address", "psk", "peer_cidrs")}
fresh_cidrs = st.one_of(st.integers(2, 255).map(lambda n: f"198.18.{n}.0/24"),
                        st.integers(2, 0xffff).map(lambda n: f"2001:db8:{n:x}::/64"))


class Orchestrator:
    """The orchestrator (netns driver) in a controller namespace, paused, with the ids it
    has handed out so far by kind."""

    def __init__(self, lab):
        fabric = lab.fabric()
        lab.bridge("b-mgmt")
        self.ctl = controller_node(lab, "b-mgmt")
        folder = lab.tmpdir("orchestrator")
        ini = write_config(folder / "orchestrator.ini", {
            "DEFAULT": {"host": "controller-1", "state_dir": f"{folder}/state"},
            "api": {"listen": "127.0.0.1", "port": 44250, "token": TOKEN},
            "compute": {"driver": "netns"},
            "netns": {"prefix": lab.prefix, "fabric": fabric.name,
                      "management_bridge": "b-mgmt", "state_root": f"{folder}/appliances"},
            "tls": {"enabled": "false"}})  # no appliance to talk to: no CA needed
        self.process = OrchestratorProcess(self.ctl.name, ini, folder / "orchestrator.log")
        self.process.start(timeout=30)
        self.http = self.process.admin.http
        self.ids = {kind: ["no-such-id"] for kind in set(PLURALS.values())}
        self.tenants = ["t-fuzz"]
        self.process.api("POST", "/v1/global/debug", {"reason": "fuzzing the admin API"})
        self._seed()

    def _seed(self):
        """A few objects to refer to, so most cases reach past the reference checks."""
        ext = self.create("networks", {"name": "ext", "external": True, "tenant_id": "t-fuzz"})
        self.create("subnets", {"network_id": ext, "cidr": "198.51.100.0/24"})
        net = self.create("networks", {"name": "tenant", "tenant_id": "t-fuzz"})
        subnet = self.create("subnets", {"network_id": net, "cidr": "198.18.1.0/24"})
        router = self.create("routers", {"tenant_id": "t-fuzz", "name": "r"})
        self.process.api("PUT", f"/v1/routers/{router}/gateway", {"network_id": ext})
        self.process.api("POST", f"/v1/routers/{router}/interfaces", {"subnet_id": subnet})
        self.create("ports", {"network_id": net, "name": "vm"})

    def create(self, plural, body):
        kind = PLURALS[plural]
        obj = self.process.api("POST", f"/v1/{plural}", body)[kind]
        self.ids[kind].append(obj["id"])
        return obj["id"]

    def request(self, method, path, body):
        """(status, decoded answer or None); ``body``: bytes as they are, else JSON."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        response = self.http.request(method, path, body=data, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        try:
            return response.status, response.json()
        except ValueError:
            return response.status, None

    def learn(self, kind, answer):
        """Keep the id of an object a case created, for later cases to refer to."""
        obj = (answer or {}).get(kind)
        if isinstance(obj, dict) and obj.get("id"):
            self.ids[kind].append(obj["id"])


@pytest.fixture(scope="module")
def orchestrator(module_lab):
    orchestrator = Orchestrator(module_lab)
    try:
        yield orchestrator
    finally:
        orchestrator.process.stop()  # by its PID, before the lab removes the namespaces


# -- requests ------------------------------------------------------------------------------------
def pick(choices):
    """One of ``choices()``, read when drawn: the ids grow as cases create objects, and
    hypothesis must see the same draws whatever is known by then (an index, not
    sampled_from over a list that changes)."""
    return st.integers(0, 1 << 16).map(lambda i: (found := choices())[i % len(found)])


def segment(strategy, broken):
    """A path segment: a known value, or for a ``broken`` case now and then junk; quoted
    for the URL."""
    if broken:
        strategy = st.one_of(strategy, strategy, st.text(max_size=6),
                             st.sampled_from(JUNK_TEXT[:4] + ["..", "%", "a/b"]))
    return strategy.map(lambda s: urllib.parse.quote(str(s), safe=""))


def value_for(field, orch, broken=True):
    """Values for one field: plausible (an id of the right kind, a test-range address...),
    or for a ``broken`` case now and then junk."""
    if field in KIND_OF_ID or field.endswith("_id"):
        kind = KIND_OF_ID.get(field)
        plausible = pick(lambda: [i for k, ids in orch.ids.items() if kind in (None, k)
                                  for i in ids if broken or i != "no-such-id"]
                         or ["no-such-id"]) if field != "tenant_id" else \
            st.sampled_from(orch.tenants)
    elif field in ADDRESS_FIELDS:
        plausible = test_addresses
    elif field == "cidr":
        plausible = st.one_of(fresh_cidrs, test_cidrs) if broken else fresh_cidrs
    elif field in BOOLEAN_FIELDS:
        plausible = st.booleans()
    elif field in CHOICES:
        plausible = st.sampled_from(CHOICES[field])
    elif field in ("mtu", "protocol_port", "weight"):
        plausible = st.integers(-1, 70000)
    elif field == "fixed_ips":
        plausible = st.lists(st.fixed_dictionaries({}, optional={
            "subnet_id": pick(lambda: orch.ids["subnet"]), "ip_address": test_addresses}),
            max_size=2)
    elif field == "host_routes":
        plausible = st.lists(st.fixed_dictionaries(
            {"destination": test_cidrs, "nexthop": test_addresses}), max_size=2)
    elif field == "dns_nameservers":
        plausible = st.lists(test_addresses, max_size=2)
    elif field == "peer_cidrs":
        plausible = st.lists(test_cidrs, max_size=2)
    elif field == "local_subnet_ids":
        plausible = st.lists(pick(lambda: orch.ids["subnet"]), max_size=2)
    elif field in ("ikepolicy", "ipsecpolicy", "dpd", "extra"):
        plausible = st.dictionaries(st.sampled_from(["ike_version", "pfs", "action",
                                                     "lifetime", "note"]), junk, max_size=2)
    else:  # names, psk, mac_address...
        plausible = st.text(max_size=12)
    return st.one_of(plausible, plausible, plausible, junk) if broken else plausible


@st.composite
def bodies(draw, kind, orch, broken, creating=True):
    """A body of ``kind``: a create has the required fields unless ``broken``; a broken
    body may also carry junk values and an unknown field."""
    optional = [f for f in FIELDS[kind] if broken or f != "id"]
    fields = draw(st.lists(st.sampled_from(optional), unique=True, max_size=6))
    if creating and not broken:
        fields = list(dict.fromkeys(REQUIRED.get(kind, ()) + tuple(fields)))
    body = {field: draw(value_for(field, orch, broken)) for field in fields}
    if broken and draw(st.booleans()):
        body[draw(st.text(max_size=6))] = draw(junk)  # an unknown field
    return body


@st.composite
def requests(draw, orch):
    """(method, path, body, kind created or None)."""
    broken = draw(st.integers(0, 3)) == 0  # a quarter of the cases: junk allowed anywhere
    plural = draw(st.sampled_from(sorted(PLURALS)))
    kind = PLURALS[plural]

    def known(kind):
        return pick(lambda: [i for i in orch.ids[kind] if broken or i != "no-such-id"]
                    or ["no-such-id"])

    obj = draw(segment(known(kind), broken))
    router = draw(segment(known("router"), broken))
    choice = draw(st.integers(0, 14))
    if choice <= 4:
        return "POST", f"/v1/{plural}", draw(bodies(kind, orch, broken)) \
            if kind in FIELDS else {}, kind
    if choice <= 6:
        return draw(st.sampled_from(["PUT", "PATCH"])), f"/v1/{plural}/{obj}", \
            draw(bodies(kind, orch, broken, creating=False)) if kind in FIELDS else {}, None
    if choice == 7:
        return draw(st.sampled_from(["GET", "DELETE"])), f"/v1/{plural}/{obj}", None, None
    if choice == 8:
        return "POST", f"/v1/routers/{router}/interfaces", draw(st.fixed_dictionaries({}, optional={
            "subnet_id": value_for("subnet_id", orch, broken),
            "port_id": value_for("port_id", orch, broken),
            "ip_address": value_for("ip_address", orch, broken)})), None
    if choice == 9:
        port = draw(segment(known("port"), broken))
        return "DELETE", f"/v1/routers/{router}/interfaces/{port}", None, None
    if choice == 10:
        method = draw(st.sampled_from(["PUT", "DELETE"]))
        return method, f"/v1/routers/{router}/gateway", draw(st.fixed_dictionaries({}, optional={
            "network_id": value_for("network_id", orch, broken),
            "fixed_ips": value_for("fixed_ips", orch, broken)})) if method == "PUT" else None, \
            None
    if choice == 11:
        command = draw(segment(st.sampled_from(COMMANDS), broken))
        if command == "manage":  # junk that happens to spell it
            command = "debug"
        tenant = draw(segment(st.sampled_from(orch.tenants), broken))
        scope = draw(st.sampled_from([f"resources/{router}", f"tenants/{tenant}", "global"]))
        reason = junk if broken else st.text(max_size=12)
        body = draw(st.one_of(st.fixed_dictionaries({}, optional={"reason": reason}), junk)
                    if broken else st.fixed_dictionaries({}, optional={"reason": reason}))
        return "POST", f"/v1/{scope}/{command}", body, None
    if choice == 12:
        scope = draw(segment(st.sampled_from(["tenant", "resource"]), broken))
        key = draw(segment(pick(lambda: orch.tenants + orch.ids["router"]), broken))
        method = draw(st.sampled_from(["PUT", "DELETE"]))
        drivers = st.sampled_from(["netns", "openstack"])
        return method, f"/v1/placements/{scope}/{key}", draw(st.fixed_dictionaries({}, optional={
            "driver": st.one_of(drivers, junk) if broken else drivers,
            "image": junk if broken else st.text(max_size=12)})), None
    if choice == 13 or not broken:
        return "GET", draw(st.sampled_from(["/v1/resources", "/v1/workers", "/v1/placements",
                                            f"/v1/{plural}", f"/v1/resources/{router}"])), \
            None, None
    raw = draw(st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe",
                                b"[" * 100_000 + b"]" * 100_000, b'{"a": 1e999}']))
    return "POST", f"/v1/{plural}", raw, None


def test_admin_api_never_5xx(orchestrator):
    tally = new_tally("orchestrator admin API, hypothesis requests")
    cases = budget("orchestrator")

    @fuzz_settings(cases)
    @given(data=st.data())
    def call(data):
        method, path, body, kind = data.draw(requests(orchestrator), label="request")
        status, answer = orchestrator.request(method, path, body)
        tally.count(status, change=method != "GET")
        assert status < 500, f"{method} {path} {body!r:.2000}: {status} {answer}"
        if kind and status == 201:
            orchestrator.learn(kind, answer)
        orchestrator.process.check_running(f"{method} {path}")

    call()
    assert tally.cases >= cases
    assert 10 * tally.applied >= tally.changes, tally.line()  # not refused wholesale
