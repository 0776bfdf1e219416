"""The OpenStack compute driver against a small OpenStack on loopback, with the real
openstacksdk: what it sends to Nova, Neutron and Glance (checked on the recorded
requests) and what it makes of their answers."""
import base64

import pytest
import yaml

from astara_lab.fakecloud import FakeCloud, user_data_of
from orchestrator_lite import ipam
from orchestrator_lite.drivers.base import ACTIVE, BUILD, DriverError, Nic
from orchestrator_lite.drivers.openstack import OpenStackDriver
from orchestrator_lite.openstack.cloud import connect

MGMT, MGMT_SUBNET = "b308b496-94cb-45bf-b7a7-0cacb4e0465a", "3480da23-b6b4-4ef4-89dc-e1a4ce98692f"
PREFIX = "fdca:3ba5:a17a:acda::/64"
EXT, NET = "b732f682-02fb-4157-9de7-e589a7503295", "cd85ed9c-7580-4882-9f21-c6603b4d90a0"
RID = "fbf50d45-b64d-4036-804a-b81cad4c7c82"
NAME = f"ak-router-{RID}_0"
SSH_KEY = "ssh-ed25519 AAAAC3 op@lab: #1"  # YAML syntax in the comment: kept as text


@pytest.fixture
def cloud():
    fake = FakeCloud().serve()
    for net_id, name in ((MGMT, "mgt"), (EXT, "public"), (NET, "private")):
        fake.add("network", {"id": net_id, "name": name, "tenant_id": "", "mtu": 1450,
                             "status": "ACTIVE", "admin_state_up": True, "subnets": []})
    fake.add("subnet", {"id": MGMT_SUBNET, "network_id": MGMT, "cidr": PREFIX,
                        "ip_version": 6, "gateway_ip": "fdca:3ba5:a17a:acda::1",
                        "enable_dhcp": True, "ipv6_address_mode": "slaac",
                        "ipv6_ra_mode": None, "name": "mgt", "tenant_id": ""})
    yield fake
    fake.close()


def driver_for(cloud, os_settings, **kwargs):
    return OpenStackDriver(connect(os_settings), MGMT, os_settings.image, os_settings.flavor,
                           os_settings.availability_zone, ssh_public_key=SSH_KEY,
                           **kwargs)


def nics(mgt_mac="fa:16:3e:67:41:6c", data=("fa:16:3e:59:11:a7", "fa:16:3e:0b:cd:e1")):
    return [Nic(mgt_mac, MGMT, "mgt", 1450), Nic(data[0], EXT, "data", 1500),
            Nic(data[1], NET, "data", 1450)]


def cidr(mac="fa:16:3e:67:41:6c"):
    return f"{ipam.eui64(PREFIX, mac)}/64"


def test_boot_makes_named_ports_and_a_config_drive_server(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    instance = driver.create(NAME, nics(), cidr())
    assert instance.status == ACTIVE
    assert instance.management_address == "fdca:3ba5:a17a:acda:f816:3eff:fe67:416c"
    assert [(n.mac, n.network_id, n.role) for n in instance.nics] == \
        [(n.mac, n.network_id, n.role) for n in nics()]
    ports = [body["port"] for _, _, _, body in cloud.requests_to("POST", "/network/v2.0/ports")]
    assert [p["name"] for p in ports] == [f"ASTARA:MGT:{RID}", f"ASTARA:VRRP:{RID}",
                                          f"ASTARA:VRRP:{RID}"]
    assert {p["description"] for p in ports} == {NAME}
    assert [p["mac_address"] for p in ports] == [n.mac for n in nics()]
    assert all(p["port_security_enabled"] is False and p["security_groups"] == []
               for p in ports)
    assert "fixed_ips" not in ports[0]  # SLAAC: Neutron derives the same EUI-64 address
    assert ports[1]["fixed_ips"] == [] and ports[2]["fixed_ips"] == []
    (_, _, _, body), = cloud.requests_to("POST", "/compute/v2.1/servers")
    server = body["server"]
    assert server["name"] == NAME and server["config_drive"] is True
    assert server["imageRef"] == next(iter(cloud.images))  # "astara" found through Glance
    assert server["flavorRef"] == next(iter(cloud.flavors))
    assert server["availability_zone"] == "nova"
    assert [n["port"] for n in server["networks"]] == list(cloud.ports)
    text = base64.b64decode(server["user_data"]).decode()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["bootcmd"] == [["astara-configure-management", "fa:16:3e:67:41:6c",
                                "fdca:3ba5:a17a:acda:f816:3eff:fe67:416c/64", "--mtu", "1450"]]
    (user,) = data["users"]
    assert user["name"] == "astara" and user["ssh_authorized_keys"] == [SSH_KEY]
    assert not body.get("os:scheduler_hints") and not body.get("OS-SCH-HNT:scheduler_hints")


def test_a_restarted_orchestrator_adopts_the_server_by_name(cloud, os_settings):
    first = driver_for(cloud, os_settings).create(NAME, nics(), cidr())
    other = driver_for(cloud, os_settings)  # a new process: nothing but the cloud
    adopted = other.list(f"ak-router-{RID}_")
    assert [(i.id, i.name, i.management_address, i.nics) for i in adopted] == \
        [(first.id, NAME, first.management_address, first.nics)]
    assert other.list("ak-router-someone-else_") == []
    assert [i.name for i in other.list("ak-")] == [NAME]
    assert other.get(first.id).nics == first.nics
    assert other.get("no-such-server") is None


def test_ha_pair_goes_into_one_anti_affinity_group(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    group = f"ak-router-{RID}"
    a = driver.create(f"{group}_0", nics(), cidr(), server_group=group)
    b = driver.create(f"{group}_1", nics("fa:16:3e:4c:b3:9a", ("fa:16:3e:52:ce:87",
                                                               "fa:16:3e:c3:12:67")),
                      cidr("fa:16:3e:4c:b3:9a"),
                      server_group=group)
    groups = list(cloud.server_groups.values())
    assert len(groups) == 1 and groups[0]["name"] == group
    assert groups[0]["policy"] == "anti-affinity"
    assert groups[0]["members"] == [a.id, b.id]
    hints = [body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints")
             for _, _, _, body in
             cloud.requests_to("POST", "/compute/v2.1/servers")]
    assert hints == [{"group": groups[0]["id"]}] * 2
    # Each member's ports carry its own name: deleting one leaves the other's alone.
    driver.delete(a.id)
    assert {p["description"] for p in cloud.ports.values()} == {f"{group}_1"}
    assert cloud.server_groups  # the other member still uses it
    driver.delete(b.id)
    assert cloud.ports == {} and cloud.server_groups == {} and cloud.servers == {}


def test_a_failed_boot_deletes_the_ports_it_made(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    cloud.fail["POST /compute/v2.1/servers"] = (500, "no valid host")
    with pytest.raises(DriverError, match="no valid host|500"):
        driver.create(NAME, nics(), cidr())
    assert cloud.ports == {} and cloud.servers == {}
    assert len(cloud.requests_to("DELETE", "/network/v2.0/ports/")) == 3


def test_a_failed_port_deletes_the_ports_before_it(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    before = len(cloud.ports)
    cloud.add("port", {"id": "taken", "network_id": NET, "mac_address": "fa:16:3e:0b:cd:e1",
                       "name": "vm", "fixed_ips": [], "device_id": "vm", "device_owner":
                       "compute:nova", "description": ""})
    with pytest.raises(DriverError, match="MacAddressInUse|in use|409"):
        driver.create(NAME, nics(), cidr())
    assert set(cloud.ports) == {"taken"} and before == 0
    assert cloud.requests_to("POST", "/compute/v2.1/servers") == []


def test_unknown_image_fails_before_anything_is_made(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    with pytest.raises(DriverError, match="no image 'nonexistent'"):
        driver.create(NAME, nics(), cidr(), image="nonexistent")
    assert cloud.ports == {} and cloud.servers == {}


def test_hot_plug_through_nova_interface_attachments(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    instance = driver.create(NAME, nics()[:2], cidr())
    extra = Nic("fa:16:3e:0b:cd:e1", NET, "data", 1450)
    plugged = driver.attach(instance.id, extra)
    assert [n.mac for n in plugged.nics] == [n.mac for n in nics()]
    (_, path, _, body), = cloud.requests_to("POST", f"/compute/v2.1/servers/{instance.id}/")
    assert path.endswith("/os-interface")
    port = cloud.ports[body["interfaceAttachment"]["port_id"]]
    assert (port["name"], port["mac_address"]) == (f"ASTARA:VRRP:{RID}", extra.mac)
    unplugged = driver.detach(instance.id, extra.mac)
    assert [n.mac for n in unplugged.nics] == [n.mac for n in nics()[:2]]
    assert cloud.requests_to("DELETE", f"/compute/v2.1/servers/{instance.id}/os-interface/")
    assert port["id"] not in cloud.ports
    with pytest.raises(DriverError, match="has no NIC"):
        driver.detach(instance.id, extra.mac)


def test_port_security_kept_with_allowed_address_pairs(cloud, os_settings):
    driver = driver_for(cloud, os_settings, port_security=True)
    driver.create(NAME, nics(), cidr())
    ports = [body["port"] for _, _, _, body in cloud.requests_to("POST", "/network/v2.0/ports")]
    assert ports[0]["port_security_enabled"] is False  # management: the API port only
    for port in ports[1:]:
        assert "port_security_enabled" not in port
        assert port["allowed_address_pairs"] == [{"ip_address": "0.0.0.0/0"},
                                                 {"ip_address": "::/0"}]


def test_building_server_and_broken_server_states(cloud, os_settings):
    driver = driver_for(cloud, os_settings)
    cloud.server_status = "BUILD"
    instance = driver.create(NAME, nics(), cidr())
    assert instance.status == BUILD
    cloud.servers[instance.id]["status"] = "ERROR"
    assert driver.get(instance.id).status == "ERROR"


def test_wrong_password_is_a_clear_error(cloud, os_settings):
    from dataclasses import replace
    with pytest.raises(Exception, match="401|Unauthorized|authenticat"):
        driver_for(cloud, replace(os_settings, password="wrong")).list("ak-")


def test_user_data_is_what_the_server_got(cloud, os_settings):
    instance = driver_for(cloud, os_settings).create(NAME, nics(), cidr())
    data = yaml.safe_load(user_data_of(cloud.servers[instance.id]))
    assert data["bootcmd"][0][0] == "astara-configure-management"
    assert "ntp" not in data  # no [appliance] ntp_servers: the image's defaults apply


def test_ntp_servers_from_the_settings_reach_the_user_data(cloud, os_settings):
    from orchestrator_lite.config import ApplianceSettings, ManagementSettings, Settings
    settings = Settings(openstack=os_settings, management=ManagementSettings(network_id=MGMT),
                        appliance=ApplianceSettings(ntp_servers="198.18.0.1, ntp.example.org"))
    driver = OpenStackDriver.from_settings(settings, connect(os_settings))
    instance = driver.create(NAME, nics(), cidr())
    data = yaml.safe_load(user_data_of(cloud.servers[instance.id]))
    assert data["ntp"] == {"enabled": True, "ntp_client": "systemd-timesyncd",
                           "servers": ["198.18.0.1", "ntp.example.org"]}


def test_tls_files_travel_in_the_servers_user_data(cloud, os_settings, tmp_path):
    from orchestrator_lite.pki import CertificateAuthority
    bundle = CertificateAuthority(tmp_path / "pki").issue(NAME)
    instance = driver_for(cloud, os_settings).create(NAME, nics(), cidr(), tls=bundle)
    files = {f["path"]: f for f in
             yaml.safe_load(user_data_of(cloud.servers[instance.id]))["write_files"]}
    assert "/etc/astara/tls/server.key" in files
    assert files["/etc/astara/tls/server.key"]["content"] == \
        base64.b64encode(bundle.private_key.encode()).decode()
    assert cloud.servers[instance.id]["config_drive"] in (True, "True", "true")
