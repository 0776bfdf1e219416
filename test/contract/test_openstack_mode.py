"""The orchestrator in OpenStack mode against a small OpenStack on loopback: desired state
read from Neutron, the appliance booted through Nova with Neutron ports, status written
back, and the router's removal from Neutron cleaning everything up. The appliances are
simulated agents (test/unit/sim_appliances.py's SimAppliance: the agent's own payload
parser, committed hash) reached through the instances' MACs."""
import pytest

from astara_router.model import parse_payload
from orchestrator_lite.config import ApiSettings, NeutronSettings, Settings

import neutron_topologies as topo
from sim_appliances import FAST, SimAppliance, started_orchestrators, wait_for


class Appliances:
    """One simulated agent per instance name, NICs = the instance's Neutron ports."""

    def __init__(self):
        self.by_name = {}

    def client_factory(self, instance):
        from orchestrator_lite.client import ApplianceClient
        sim = self.by_name.get(instance.name)
        if sim is None:
            sim = self.by_name[instance.name] = SimAppliance([n.mac for n in instance.nics])
        return ApplianceClient("127.0.0.1", sim.port, attempts=2, backoff_base=0.01,
                               backoff_cap=0.02, alive_timeout=1, timeout=2, config_timeout=2)

    def close(self):
        for sim in self.by_name.values():
            sim.stop()


@pytest.fixture
def openstack_mode(tmp_path, cloud, os_settings):
    appliances = Appliances()
    with started_orchestrators() as start_orchestrator:
        def start(topology):
            topology.load_into(cloud)
            settings = Settings(host="controller-1", state_dir=str(tmp_path / "state"),
                                api=ApiSettings(token="t"), threads=2, health=FAST,
                                compute_driver="openstack", openstack=os_settings,
                                neutron=NeutronSettings(desired_state=True,
                                                        resync_period=0.3))
            return start_orchestrator(settings, client_factory=appliances.client_factory)

        yield start
    appliances.close()


def test_router_from_neutron_is_booted_on_nova_and_reported_active(openstack_mode, cloud):
    topology, (_, rid) = topo.router_basic()
    o = openstack_mode(topology)
    wait_for(lambda: o.resource(rid)["state"] == "configured", timeout=20,
             what="router configured")
    server, = cloud.servers.values()
    assert server["name"] == f"ak-router-{rid}_0" and server["config_drive"] == "True"
    names = sorted(p["name"] for p in cloud.ports.values() if p["name"].startswith("ASTARA"))
    assert names == [f"ASTARA:MGT:{rid}", f"ASTARA:VRRP:{rid}", f"ASTARA:VRRP:{rid}"]
    shown = o.resource(rid)
    assert shown["instances"][0]["driver"] == "openstack"
    assert shown["placement"] == {"driver": "", "image": "", "source": "default"}
    manager = o.scheduler.automaton(("router", rid)).manager
    payload = next(iter(manager.desired_payloads().values()))
    parse_payload(payload, ("router",))
    expected = topo.CONTRACT["router-basic"]
    for key in ("floating_ips", "default_v4_gateway", "hostname", "labels", "tenant_id"):
        if key != "labels":
            assert payload[key] == expected[key]
    assert [n["network_id"] for n in payload["networks"]] == \
        [n["network_id"] for n in expected["networks"]]
    wait_for(lambda: (rid, "ACTIVE") in cloud.router_statuses, what="ACTIVE written")
    assert cloud.router_statuses[0] == (rid, "BUILD")

    # The router is deleted in Neutron: the next resync stops the appliance and its ports.
    with cloud.lock:
        for port_id in [p["id"] for p in cloud.ports.values() if p["device_id"] == rid]:
            del cloud.ports[port_id]
        cloud.floatingips.clear()
        del cloud.routers[rid]
    wait_for(lambda: not cloud.servers, timeout=20, what="server deleted")
    wait_for(lambda: not [p for p in cloud.ports.values() if p["name"].startswith("ASTARA")],
             what="appliance ports deleted")
    # Desired state, status write-back and Nova driver shared one Connection: one Keystone
    # auth for all of it (its token lasts until 2099).
    assert len(cloud.requests_to("POST", "/identity/v3/auth/tokens")) == 1


def test_operator_writes_of_neutron_objects_are_refused(openstack_mode, cloud):
    from orchestrator_lite.api import create_app
    topology, (_, rid) = topo.router_no_gateway()
    o = openstack_mode(topology)
    client = create_app(o, "t").test_client()
    headers = {"Authorization": "Bearer t"}
    answer = client.post("/v1/routers", json={"id": "r2", "tenant_id": "x"}, headers=headers)
    assert answer.status_code == 405 and "Neutron" in answer.get_json()["message"]
    listed = client.get("/v1/routers", headers=headers).get_json()["routers"]
    assert [r["id"] for r in listed] == [rid]
