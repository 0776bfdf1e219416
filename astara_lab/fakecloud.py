"""A small OpenStack on 127.0.0.1 for contract tests and benchmarks: Keystone v3, Nova v2.1,
Neutron v2.0 and Glance v2, each with its version discovery document, answering in the
shapes of the OpenStack API reference's documented samples (field names, nesting, status
codes, the ``X-Subject-Token`` header, ``<collection>_links`` pagination).

It keeps state (networks, subnets, ports, routers, floating IPs, servers, server groups,
images, flavors) so the real openstacksdk can boot, list, attach and delete against it,
and records every request (``requests``) so a test can check what the client sent.
``fail`` makes the next matching request answer an error (``fail["POST /servers"] =
(500, "...")``). Nothing here decides what the orchestrator sends; the tests' expected
payloads come from the contract files.
"""
import base64
import copy
import datetime
import itertools
import json
import re
import threading
import urllib.parse
import uuid

from .webserver import QuietHandler, make_server

TOKEN = "gAAAAAB-fake-token"
PROJECT = {"id": "8c1c4e2a0d9e4b7f9c3d2a1b0e9f8d7c", "name": "service",
           "domain": {"id": "default", "name": "Default"}}
USER = {"id": "5b7c1a8e2f3d4c6b9a0e1d2c3b4a5f6e", "name": "astara",
        "domain": {"id": "default", "name": "Default"}}
NOVA_MAX_MICROVERSION = "2.96"


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCloud:
    """State + routing; ``serve()`` starts the HTTP server."""

    def __init__(self, page_size=None):
        self.lock = threading.RLock()
        self.requests = []  # (method, path, query, body)
        self.fail = {}  # "METHOD /path-prefix" -> (status, message), one-shot
        self.page_size = page_size  # Neutron lists paginate when set
        self.networks, self.subnets, self.ports = {}, {}, {}
        self.routers, self.floatingips = {}, {}
        self.servers, self.server_groups, self.interfaces = {}, {}, {}
        self.images = {"b3f1f4d2-8d5e-4c1f-9c8e-0c2a1e4b7d61": {
            "id": "b3f1f4d2-8d5e-4c1f-9c8e-0c2a1e4b7d61", "name": "astara", "status": "active",
            "visibility": "public", "container_format": "bare", "disk_format": "qcow2",
            "min_disk": 0, "min_ram": 0, "protected": False, "tags": [],
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "size": 251658240, "owner": PROJECT["id"]}}
        self.flavors = {"2f5e1c3a-7b9d-4e8f-a1c2-3d4e5f6a7b8c": {
            "id": "2f5e1c3a-7b9d-4e8f-a1c2-3d4e5f6a7b8c", "name": "astara.small", "ram": 512,
            "vcpus": 1, "disk": 3, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0,
            "os-flavor-access:is_public": True, "rxtx_factor": 1.0, "description": None,
            "extra_specs": {}, "OS-FLV-DISABLED:disabled": False}}
        self.router_statuses = []  # (router id, status) written through dhrouterstatus
        self.server_status = "ACTIVE"  # what a created server becomes
        self.base = ""
        self._server = None
        self._macs = itertools.count(0x100)

    # -- HTTP ------------------------------------------------------------------------------
    def serve(self):
        cloud = self

        class Handler(QuietHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = cloud.handle(self.command, self.path, raw)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        self._server = make_server("127.0.0.1", 0, Handler)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __enter__(self):
        return self.serve()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def auth_url(self):
        return f"{self.base}/identity"

    def handle(self, method, raw_path, raw_body):
        url = urllib.parse.urlsplit(raw_path)
        path = url.path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(url.query)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            return 400, {"error": "malformed JSON"}, {}
        with self.lock:
            self.requests.append((method, path, query, body))
            for key in list(self.fail):
                verb, _, prefix = key.partition(" ")
                if verb == method and path.startswith(prefix):
                    status, message = self.fail.pop(key)
                    return status, {"NeutronError" if "/network" in prefix else "error":
                                    {"message": message}}, {}
            for pattern, verb, handler in self.ROUTES:
                match = re.fullmatch(pattern, path)
                if match and verb == method:
                    return handler(self, query, body, *match.groups())
        return 404, {"itemNotFound": {"code": 404, "message": f"{method} {path}"}}, {}

    def requests_to(self, method, prefix):
        return [r for r in self.requests if r[0] == method and r[1].startswith(prefix)]

    # -- Keystone --------------------------------------------------------------------------
    def _identity_versions(self, query, body):
        return 300, {"versions": {"values": [{
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}]}}, {}

    def _identity_v3(self, query, body):
        return 200, {"version": {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}}, {}

    def _tokens(self, query, body):
        try:
            password = body["auth"]["identity"]["password"]["user"]
        except (KeyError, TypeError):
            return 400, {"error": {"code": 400, "message": "malformed auth request"}}, {}
        if password.get("password") != "secret":
            return 401, {"error": {"code": 401, "title": "Unauthorized",
                                   "message": "The request you have made requires "
                                              "authentication."}}, {}

        def endpoint(kind, name, url):
            return {"type": kind, "name": name, "id": uuid.uuid4().hex, "endpoints": [
                {"id": uuid.uuid4().hex, "interface": interface, "region": "RegionOne",
                 "region_id": "RegionOne", "url": url}
                for interface in ("public", "internal", "admin")]}

        token = {"methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
                 "issued_at": now(), "audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"],
                 "user": USER, "project": PROJECT, "is_domain": False,
                 "roles": [{"id": "51cc68287d524c759f47c811e6463340", "name": "admin"},
                           {"id": "9fe2ff9ee4384b1894a90878d3e92bab", "name": "member"}],
                 "catalog": [endpoint("identity", "keystone", f"{self.base}/identity"),
                             endpoint("compute", "nova", f"{self.base}/compute/v2.1"),
                             endpoint("network", "neutron", f"{self.base}/network"),
                             endpoint("image", "glance", f"{self.base}/image")]}
        return 201, {"token": token}, {"X-Subject-Token": TOKEN}

    # -- version discovery of the other services -------------------------------------------
    def _nova_version(self):
        return {"id": "v2.1", "status": "CURRENT", "version": NOVA_MAX_MICROVERSION,
                "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    def _compute_versions(self, query, body):
        return 200, {"versions": [self._nova_version()]}, {}

    def _compute_v21(self, query, body):
        return 200, {"version": self._nova_version()}, {}

    def _network_versions(self, query, body):
        return 200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{self.base}/network/v2.0/"}]}]}, {}

    def _network_v2(self, query, body):
        return 200, {"resources": [
            {"name": name, "collection": name, "links": [
                {"rel": "self", "href": f"{self.base}/network/v2.0/{name}"}]}
            for name in ("networks", "subnets", "ports", "routers", "floatingips")]}, {}

    def _image_versions(self, query, body):
        return 300, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{self.base}/image/v2/"}]}]}, {}

    # -- Neutron ---------------------------------------------------------------------------
    TABLES = {"networks": "networks", "subnets": "subnets", "ports": "ports",
              "routers": "routers", "floatingips": "floatingips"}

    def _neutron_list(self, query, body, collection):
        objects = list(getattr(self, self.TABLES[collection]).values())
        filters = {k: v for k, v in query.items()
                   if k not in ("limit", "marker", "fields", "sort_key", "sort_dir")}
        for key, values in filters.items():
            objects = [o for o in objects if str(o.get(key)) in values or
                       (isinstance(o.get(key), bool) and str(o.get(key)).lower() in values)]
        page = self.page_size or (int(query["limit"][0]) if "limit" in query else None)
        links = []
        if page:
            marker = query.get("marker", [None])[0]
            if marker:
                ids = [o["id"] for o in objects]
                objects = objects[ids.index(marker) + 1:] if marker in ids else []
            if len(objects) > page:
                objects = objects[:page]
                params = dict(filters, limit=page, marker=objects[-1]["id"])
                links = [{"rel": "next", "href": f"{self.base}/network/v2.0/{collection}?"
                          + urllib.parse.urlencode(params, doseq=True)}]
        result = {collection: copy.deepcopy(objects)}
        if links:
            result[f"{collection}_links"] = links
        return 200, result, {}

    def _neutron_show(self, query, body, collection, obj_id):
        obj = getattr(self, self.TABLES[collection]).get(obj_id)
        if obj is None:
            kind = collection[:-1].capitalize()
            return 404, {"NeutronError": {"type": f"{kind}NotFound", "detail": "",
                                          "message": f"{kind} {obj_id} could not be found."}}, {}
        return 200, {collection[:-1]: copy.deepcopy(obj)}, {}

    def new_mac(self):
        n = next(self._macs)
        return f"fa:16:3e:00:{n >> 8:02x}:{n & 0xff:02x}"

    def _port_create(self, query, body):
        attrs = dict(body["port"])
        if attrs["network_id"] not in self.networks:
            return 404, {"NeutronError": {"type": "NetworkNotFound", "detail": "",
                                          "message": f"Network {attrs['network_id']} could "
                                                     "not be found."}}, {}
        mac = attrs.get("mac_address") or self.new_mac()
        if any(p["mac_address"] == mac and p["network_id"] == attrs["network_id"]
               for p in self.ports.values()):
            return 409, {"NeutronError": {"type": "MacAddressInUse", "detail": "",
                                          "message": f"Unable to complete operation for "
                                                     f"network. The mac address {mac} is "
                                                     "in use."}}, {}
        fixed = attrs.get("fixed_ips")
        if fixed is None:  # one address per subnet, SLAAC from the MAC
            fixed = []
            for subnet in self.subnets.values():
                if subnet["network_id"] == attrs["network_id"] and \
                        subnet.get("ipv6_address_mode") == "slaac":
                    from orchestrator_lite.ipam import eui64
                    fixed.append({"subnet_id": subnet["id"],
                                  "ip_address": str(eui64(subnet["cidr"], mac))})
        port = self.add("port", {
            "id": str(uuid.uuid4()), "name": attrs.get("name", ""),
            "network_id": attrs["network_id"], "tenant_id": PROJECT["id"],
            "project_id": PROJECT["id"], "mac_address": mac, "admin_state_up":
            attrs.get("admin_state_up", True), "status": "DOWN", "device_id": "",
            "device_owner": "", "fixed_ips": fixed, "description": attrs.get("description", ""),
            "security_groups": attrs.get("security_groups", []),
            "port_security_enabled": attrs.get("port_security_enabled", True),
            "allowed_address_pairs": attrs.get("allowed_address_pairs", []),
            "binding:vnic_type": "normal", "created_at": now(), "updated_at": now(),
            "revision_number": 1, "tags": []})
        return 201, {"port": copy.deepcopy(port)}, {}

    def _port_delete(self, query, body, port_id):
        if self.ports.pop(port_id, None) is None:
            return 404, {"NeutronError": {"type": "PortNotFound", "detail": "",
                                          "message": f"Port {port_id} could not be found."}}, {}
        return 204, None, {}

    def _router_status(self, query, body, router_id):
        if router_id not in self.routers:
            return 404, {"NeutronError": {"message": f"Router {router_id} not found"}}, {}
        status = body["routerstatus"]["status"]
        self.routers[router_id]["status"] = status
        self.router_statuses.append((router_id, status))
        return 200, {"routerstatus": {"status": status}}, {}

    def add(self, kind, obj):
        """Put a Neutron object (raw API dict) into the cloud; returns it."""
        with self.lock:
            getattr(self, self.TABLES[kind + "s"])[obj["id"]] = obj
        return obj

    # -- Glance ----------------------------------------------------------------------------
    def _images(self, query, body):
        images = [i for i in self.images.values()
                  if "name" not in query or i["name"] in query["name"]]
        return 200, {"images": copy.deepcopy(images), "first": "/v2/images",
                     "schema": "/v2/schemas/images"}, {}

    def _image(self, query, body, image_id):
        image = self.images.get(image_id)
        if image is None:
            return 404, {"message": "404 Not Found", "code": "404 Not Found"}, {}
        return 200, copy.deepcopy(image), {}

    # -- Nova ------------------------------------------------------------------------------
    def _flavors(self, query, body, detail=None):
        return 200, {"flavors": [dict(f, links=[]) for f in self.flavors.values()]}, {}

    def _flavor(self, query, body, flavor_id):
        flavor = self.flavors.get(flavor_id)
        if flavor is None:
            return 404, {"itemNotFound": {"code": 404,
                                          "message": f"Flavor {flavor_id} could not be "
                                                     "found."}}, {}
        return 200, {"flavor": dict(flavor, links=[])}, {}

    def _server_view(self, server):
        view = copy.deepcopy(server)
        addresses = {}
        for port in self.ports.values():
            if port["device_id"] == server["id"]:
                net = self.networks.get(port["network_id"], {}).get("name", "")
                for ip in port["fixed_ips"]:
                    addresses.setdefault(net, []).append({
                        "addr": ip["ip_address"], "version": 6 if ":" in ip["ip_address"]
                        else 4, "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
        view["addresses"] = addresses
        return view

    def _servers(self, query, body, detail=None):
        servers = list(self.servers.values())
        if "name" in query:
            pattern = re.compile(query["name"][0])
            servers = [s for s in servers if pattern.search(s["name"])]
        return 200, {"servers": [self._server_view(s) for s in servers]}, {}

    def _server(self, query, body, server_id):
        server = self.servers.get(server_id)
        if server is None:
            return 404, {"itemNotFound": {"code": 404,
                                          "message": "Instance could not be found"}}, {}
        return 200, {"server": self._server_view(server)}, {}

    def _server_create(self, query, body):
        spec = body["server"]
        if spec.get("imageRef") not in self.images:
            return 400, {"badRequest": {"code": 400, "message": "Invalid imageRef"}}, {}
        if spec.get("flavorRef") not in self.flavors:
            return 400, {"badRequest": {"code": 400, "message": "Invalid flavorRef"}}, {}
        server_id = str(uuid.uuid4())
        for nic in spec.get("networks", []):
            port = self.ports.get(nic.get("port"))
            if port is None or port["device_id"]:
                return 400, {"badRequest": {"code": 400, "message":
                                            f"Port {nic.get('port')} not usable"}}, {}
        for nic in spec.get("networks", []):
            self.ports[nic["port"]].update(device_id=server_id, device_owner="compute:nova",
                                           status="ACTIVE")
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        group = hints.get("group")
        if group:
            self.server_groups[group]["members"].append(server_id)
        self.servers[server_id] = {
            "id": server_id, "name": spec["name"], "status": self.server_status,
            "tenant_id": PROJECT["id"], "user_id": USER["id"], "created": now(),
            "updated": now(), "image": {"id": spec["imageRef"]},
            "flavor": {"original_name": self.flavors[spec["flavorRef"]]["name"]},
            "config_drive": "True" if spec.get("config_drive") else "",
            "user_data": spec.get("user_data"),
            "OS-EXT-AZ:availability_zone": spec.get("availability_zone") or "nova",
            "metadata": spec.get("metadata", {}), "key_name": None,
            "OS-EXT-STS:task_state": None, "OS-EXT-STS:vm_state": "active",
            "OS-EXT-STS:power_state": 1, "hostId": uuid.uuid4().hex, "links": []}
        return 202, {"server": {"id": server_id, "links": [], "adminPass": "x",
                                "OS-DCF:diskConfig": "MANUAL", "security_groups": []}}, {}

    def _server_delete(self, query, body, server_id):
        if self.servers.pop(server_id, None) is None:
            return 404, {"itemNotFound": {"code": 404,
                                          "message": "Instance could not be found"}}, {}
        for port in self.ports.values():
            if port["device_id"] == server_id:
                port.update(device_id="", device_owner="", status="DOWN")
        for group in self.server_groups.values():
            if server_id in group["members"]:
                group["members"].remove(server_id)
        return 204, None, {}

    def _interface_attach(self, query, body, server_id):
        if server_id not in self.servers:
            return 404, {"itemNotFound": {"code": 404, "message": "Instance not found"}}, {}
        port = self.ports.get(body["interfaceAttachment"]["port_id"])
        if port is None:
            return 404, {"itemNotFound": {"code": 404, "message": "Port not found"}}, {}
        port.update(device_id=server_id, device_owner="compute:nova", status="ACTIVE")
        return 200, {"interfaceAttachment": {
            "fixed_ips": port["fixed_ips"], "mac_addr": port["mac_address"],
            "net_id": port["network_id"], "port_id": port["id"], "port_state": "ACTIVE",
            "tag": None}}, {}

    def _interface_detach(self, query, body, server_id, port_id):
        port = self.ports.get(port_id)
        if port is None or port["device_id"] != server_id:
            return 404, {"itemNotFound": {"code": 404,
                                          "message": "Attachment not found"}}, {}
        port.update(device_id="", device_owner="", status="DOWN")
        return 202, None, {}

    def _groups(self, query, body):
        return 200, {"server_groups": copy.deepcopy(list(self.server_groups.values()))}, {}

    def _group_create(self, query, body):
        spec = body["server_group"]
        group = {"id": str(uuid.uuid4()), "name": spec["name"],
                 "policy": spec.get("policy") or (spec.get("policies") or [None])[0],
                 "rules": spec.get("rules", {}), "members": [], "project_id": PROJECT["id"],
                 "user_id": USER["id"]}
        self.server_groups[group["id"]] = group
        return 200, {"server_group": copy.deepcopy(group)}, {}

    def _group_delete(self, query, body, group_id):
        if self.server_groups.pop(group_id, None) is None:
            return 404, {"itemNotFound": {"code": 404, "message": "not found"}}, {}
        return 204, None, {}

    ROUTES = [
        (r"/identity", "GET", _identity_versions),
        (r"/identity/v3", "GET", _identity_v3),
        (r"/identity/v3/auth/tokens", "POST", _tokens),
        (r"/compute", "GET", _compute_versions),
        (r"/compute/v2\.1", "GET", _compute_v21),
        (r"/compute/v2\.1/flavors(/detail)?", "GET", _flavors),
        (r"/compute/v2\.1/flavors/([^/]+)", "GET", _flavor),
        (r"/compute/v2\.1/servers(/detail)?", "GET", _servers),
        (r"/compute/v2\.1/servers", "POST", _server_create),
        (r"/compute/v2\.1/servers/([^/]+)", "GET", _server),
        (r"/compute/v2\.1/servers/([^/]+)", "DELETE", _server_delete),
        (r"/compute/v2\.1/servers/([^/]+)/os-interface", "POST", _interface_attach),
        (r"/compute/v2\.1/servers/([^/]+)/os-interface/([^/]+)", "DELETE", _interface_detach),
        (r"/compute/v2\.1/os-server-groups", "GET", _groups),
        (r"/compute/v2\.1/os-server-groups", "POST", _group_create),
        (r"/compute/v2\.1/os-server-groups/([^/]+)", "DELETE", _group_delete),
        (r"/network", "GET", _network_versions),
        (r"/network/v2\.0", "GET", _network_v2),
        (r"/network/v2\.0/(networks|subnets|ports|routers|floatingips)", "GET", _neutron_list),
        (r"/network/v2\.0/(networks|subnets|ports|routers|floatingips)/([^/]+)", "GET",
         _neutron_show),
        (r"/network/v2\.0/ports", "POST", _port_create),
        (r"/network/v2\.0/ports/([^/]+)", "DELETE", _port_delete),
        (r"/network/v2\.0/dhrouterstatus/([^/]+)", "PUT", _router_status),
        (r"/image", "GET", _image_versions),
        (r"/image/v2/images", "GET", _images),
        (r"/image/v2/images/([^/]+)", "GET", _image),
    ]


def user_data_of(server):
    """The cloud-config a server was booted with (decoded)."""
    return base64.b64decode(server["user_data"]).decode()
