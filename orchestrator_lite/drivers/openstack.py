"""OpenStack compute driver: appliances are Nova servers, their NICs Neutron ports.

``create`` makes one Neutron port per NIC with the MAC it is given — the management port
``ASTARA:MGT:<resource id>`` on the management network (its SLAAC address is the EUI-64 of
that MAC, the management address the orchestrator computed), the data ports
``ASTARA:VRRP:<router id>`` / ``ASTARA:LB:<lb id>`` without fixed IPs (astara's names, so
Neutron plugins and the original's filters recognise them). ``description`` carries the
instance name, so the ports of each member of an HA pair are told apart (the original
deleted both members' ports by name). Data ports have port security off (astara's way);
with ``[openstack] port_security = true`` they keep it and get allowed-address pairs for
0.0.0.0/0 and ::/0 instead — a router forwards packets from any address and answers for
its VIPs and floating IPs, which no narrower pair would allow. Then the server boots from
the Glance image (by name or id; a placement may name another) with the flavor,
availability zone, a config drive and cloud-init user data (userdata.cloud_config, as for
QEMU VMs): ``bootcmd`` runs ``astara-configure-management <mgt MAC> <address/prefix> --mtu
N`` and the ``astara`` user gets the operator's ssh key; with mutual TLS (pki.py) ``write_files`` puts the instance's
certificate, key (0600) and CA under /etc/astara/tls and the drop-in
/etc/astara/astara.ini.d/50-tls.ini that points the agent at them. The two instances of an HA router go into an anti-affinity
server group named after the resource. When any step fails, what was created is deleted.

Instances are found again by name (``list(prefix)``: Nova's name filter) and their NICs
by the ports' names, so a restarted orchestrator adopts running servers. Hot-plug is
Nova's interface attach/detach with a port made the same way.
"""
import base64
import datetime
import logging
import re
import threading

from .. import ipam
from ..health import INSTANCE_NAME, server_group_name
from . import userdata
from .base import ACTIVE, BUILD, ERROR, ComputeDriver, DriverError, Instance, Nic

LOG = logging.getLogger(__name__)
BUILDING = {"BUILD", "REBUILD", "REBOOT", "HARD_REBOOT", "RESIZE", "VERIFY_RESIZE",
            "MIGRATING", "PASSWORD"}
DATA_LABEL = {"router": "VRRP", "loadbalancer": "LB"}


def port_name(instance_name, role):
    match = INSTANCE_NAME.match(instance_name)
    if not match:
        raise DriverError(f"{instance_name!r} is not an appliance instance name")
    label = "MGT" if role == "mgt" else DATA_LABEL.get(match["kind"], "VRRP")
    return f"ASTARA:{label}:{match['id']}"


def _epoch(stamp):
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return 0.0


class OpenStackDriver(ComputeDriver):
    name = "openstack"

    def __init__(self, conn, management_network_id, image, flavor, availability_zone="",
                 ssh_public_key="", boot_command="astara-configure-management",
                 port_security=False, server_group_policy="anti-affinity",
                 management_mtu=1450, ntp_servers=()):
        self.conn = conn
        self.management_network_id = management_network_id
        self.image = image
        self.flavor = flavor
        self.availability_zone = availability_zone
        self.ssh_public_key = ssh_public_key
        self.boot_command = boot_command
        self.port_security = port_security
        self.server_group_policy = server_group_policy
        self.management_mtu = management_mtu
        self.ntp_servers = tuple(ntp_servers)
        self._ids = {}  # ("image"|"flavor", name) -> id
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, conn):
        """``conn``: the orchestrator's openstacksdk Connection, shared with the Neutron
        desired state; whoever connected it closes it."""
        o = settings.openstack
        if not o.image or not o.flavor:
            raise DriverError("[openstack] image and flavor are required for the openstack "
                              "driver")
        key = ""
        if o.ssh_public_key:
            try:
                with open(o.ssh_public_key) as handle:
                    key = handle.read().strip()
            except OSError as exc:
                raise DriverError(f"[openstack] ssh_public_key: {exc}") from None
        return cls(conn, settings.management.network_id, o.image, o.flavor,
                   o.availability_zone, key, o.boot_command, o.port_security,
                   o.server_group_policy, settings.management.mtu,
                   settings.appliance.ntp_server_list)

    # -- lookups ---------------------------------------------------------------------------
    def _resolve(self, what, name_or_id):
        with self._lock:
            cached = self._ids.get((what, name_or_id))
        if cached:
            return cached
        try:
            found = (self.conn.image.find_image if what == "image"
                     else self.conn.compute.find_flavor)(name_or_id, ignore_missing=True)
        except Exception as exc:  # noqa: BLE001 - any SDK/HTTP failure names the call
            raise DriverError(f"looking up {what} {name_or_id!r}: {exc}") from exc
        if found is None:
            raise DriverError(f"no {what} {name_or_id!r} in the cloud")
        with self._lock:
            self._ids[(what, name_or_id)] = found.id
        return found.id

    def _ports_by_instance(self, names):
        """``{instance name: [raw port]}`` for the appliance ports of these instances."""
        resources = {port_name(n, r) for n in names for r in ("mgt", "data")}
        ports = {}
        for name in sorted(resources):
            for port in self.conn.network.ports(name=name):
                ports.setdefault(port.description or "", []).append(port)
        return ports

    def _instance(self, server, ports):
        mgt = [p for p in ports if p.network_id == self.management_network_id]
        data = [p for p in ports if p.network_id != self.management_network_id]
        nics = tuple(Nic(p.mac_address, p.network_id, "mgt" if p in mgt else "data")
                     for p in mgt + data)
        address = None
        if mgt and mgt[0].fixed_ips:
            address = mgt[0].fixed_ips[0]["ip_address"]
        status = ACTIVE if server.status == "ACTIVE" else \
            BUILD if server.status in BUILDING else ERROR
        image = server.image
        image = image.get("id") if isinstance(image, dict) else getattr(image, "id", None)
        return Instance(id=server.id, name=server.name, status=status,
                        management_address=address, created_at=_epoch(server.created_at),
                        nics=nics, details={"nova_status": server.status,
                                            "availability_zone": server.availability_zone,
                                            "image": image})

    def get(self, instance_id):
        server = self.conn.compute.find_server(instance_id, ignore_missing=True)
        if server is None:
            return None
        if not server.name:
            server = self.conn.compute.get_server(instance_id)
        ports = self._ports_by_instance([server.name]).get(server.name, [])
        return self._instance(server, ports)

    def list(self, prefix):
        servers = [s for s in self.conn.compute.servers(details=True,
                                                        name="^" + re.escape(prefix))
                   if s.name.startswith(prefix)]
        appliances = [s for s in servers if INSTANCE_NAME.match(s.name)]
        ports = self._ports_by_instance([s.name for s in appliances]) if appliances else {}
        return sorted((self._instance(s, ports.get(s.name, [])) for s in servers),
                      key=lambda i: i.name)

    def shell_command(self, instance_id):
        instance = self.get(instance_id)
        if instance is None or not instance.management_address:
            return None
        return ["ssh", "-o", "StrictHostKeyChecking=accept-new",
                f"astara@{instance.management_address}"]

    # -- ports -----------------------------------------------------------------------------
    def _create_port(self, instance_name, nic, management_address=None):
        attrs = {"network_id": nic.network_id, "mac_address": nic.mac,
                 "name": port_name(instance_name, nic.role), "description": instance_name,
                 "admin_state_up": True}
        if nic.role == "mgt":
            attrs.update(port_security_enabled=False, security_groups=[])
            prefix = next((s.cidr for s in self.conn.network.subnets(network_id=nic.network_id)
                           if s.ipv6_address_mode == "slaac"), None)
            if prefix is None or str(ipam.eui64(prefix, nic.mac)) != management_address:
                attrs["fixed_ips"] = [{"ip_address": management_address}]
        else:
            attrs["fixed_ips"] = []
            if self.port_security:
                attrs["allowed_address_pairs"] = [{"ip_address": "0.0.0.0/0"},
                                                  {"ip_address": "::/0"}]
            else:
                attrs.update(port_security_enabled=False, security_groups=[])
        try:
            return self.conn.network.create_port(**attrs)
        except Exception as exc:  # noqa: BLE001
            raise DriverError(f"creating port {attrs['name']} on {nic.network_id}: "
                              f"{exc}") from exc

    def _delete_ports(self, ports):
        for port in ports:
            try:
                self.conn.network.delete_port(port, ignore_missing=True)
            except Exception as exc:  # noqa: BLE001 - best effort; logged
                LOG.warning("cannot delete port %s: %s", port.id, exc)

    # -- server groups (HA pairs) ----------------------------------------------------------
    def _server_group(self, name):
        for group in self.conn.compute.server_groups():
            if group.name == name:
                return group.id
        group = self.conn.compute.create_server_group(name=name,
                                                      policy=self.server_group_policy)
        return group.id

    def _drop_empty_group(self, name):
        for group in self.conn.compute.server_groups():
            if group.name == name and not group.member_ids:
                self.conn.compute.delete_server_group(group, ignore_missing=True)

    # -- lifecycle -------------------------------------------------------------------------
    def create(self, name, nics, management_cidr, image=None, server_group=None, tls=None):
        nics = list(nics)
        if not nics or nics[0].role != "mgt":
            raise DriverError("the first NIC must be the management NIC")
        if any(i.name == name for i in self.list(name)):
            raise DriverError(f"an instance named {name} exists")
        image_id = self._resolve("image", image or self.image)
        flavor_id = self._resolve("flavor", self.flavor)
        address = management_cidr.split("/")[0]
        ports, server = [], None
        try:
            for nic in nics:
                ports.append(self._create_port(name, nic, address))
            hints = {}
            if server_group:
                hints["group"] = self._server_group(server_group)
            data = userdata.cloud_config(
                nics[0].mac, management_cidr, nics[0].mtu or self.management_mtu,
                [self.ssh_public_key], self.ntp_servers, boot_command=self.boot_command,
                files=userdata.image_tls_files(tls))
            attrs = {"name": name, "image_id": image_id, "flavor_id": flavor_id,
                     "networks": [{"port": p.id} for p in ports], "config_drive": True,
                     "user_data": base64.b64encode(data.encode()).decode(),
                     "metadata": {"astara_instance": name}}
            if self.availability_zone:
                attrs["availability_zone"] = self.availability_zone
            if hints:
                attrs["scheduler_hints"] = hints
            server = self.conn.compute.create_server(**attrs)
            server = self.conn.compute.get_server(server.id)
        except Exception as exc:  # noqa: BLE001 - clean up whatever was made
            LOG.warning("booting %s failed: %s", name, exc)
            if server is not None:
                self.conn.compute.delete_server(server, ignore_missing=True)
            self._delete_ports(ports)
            raise exc if isinstance(exc, DriverError) else \
                DriverError(f"cannot boot {name}: {exc}") from exc
        LOG.info("instance %s: server %s, image %s", name, server.id, image_id)
        return self._instance(server, ports)

    def delete(self, instance_id):
        server = self.conn.compute.find_server(instance_id, ignore_missing=True)
        if server is None:
            return
        name = server.name or self.conn.compute.get_server(instance_id).name
        ports = self._ports_by_instance([name]).get(name, []) \
            if INSTANCE_NAME.match(name or "") else []
        try:
            self.conn.compute.delete_server(instance_id, ignore_missing=True)
        except Exception as exc:  # noqa: BLE001
            raise DriverError(f"deleting server {instance_id}: {exc}") from exc
        self._delete_ports(ports)
        match = INSTANCE_NAME.match(name or "")
        if match:
            self._drop_empty_group(server_group_name(match["kind"], match["id"]))

    def attach(self, instance_id, nic):
        instance = self.get(instance_id)
        if instance is None:
            raise DriverError(f"no instance {instance_id}")
        port = self._create_port(instance.name, nic)
        try:
            self.conn.compute.create_server_interface(instance_id, port_id=port.id)
        except Exception as exc:  # noqa: BLE001
            self._delete_ports([port])
            raise DriverError(f"attaching {nic.mac} to {instance.name}: {exc}") from exc
        return self.get(instance_id)

    def detach(self, instance_id, mac):
        instance = self.get(instance_id)
        if instance is None:
            raise DriverError(f"no instance {instance_id}")
        ports = self._ports_by_instance([instance.name]).get(instance.name, [])
        port = next((p for p in ports if p.mac_address == mac), None)
        if port is None:
            raise DriverError(f"{instance.name} has no NIC {mac}")
        try:
            self.conn.compute.delete_server_interface(port.id, server=instance_id)
        except Exception as exc:  # noqa: BLE001
            raise DriverError(f"detaching {mac} from {instance.name}: {exc}") from exc
        self._delete_ports([port])
        return self.get(instance_id)
