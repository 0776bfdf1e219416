"""The orchestrator's GET /metrics on its admin API: a real orchestrator (store, workers,
health monitor, HTTP client) driving the simulated appliances of sim_appliances.py
through the fake compute driver. The netns driver with real agents:
test/functional/test_orchestrator_netns.py."""
from orchestrator_lite import state as st
from orchestrator_lite.api import create_app

from astara_lab.scrape import orchestrator_exposition, samples as exposition_samples
from sim_appliances import (TOKEN, SimCloud, make_settings, simple_router,
                            started_orchestrators, state_of, wait_for)


def scrape(o):
    """``{(sample name, labels as a sorted tuple): value}`` from GET /metrics."""
    return exposition_samples(orchestrator_exposition(o, TOKEN))


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_metrics_need_the_token(orch):
    o = orch()
    assert create_app(o, TOKEN).test_client().get("/metrics").status_code == 401


def test_resources_pushes_boots_and_polls(orch, cloud):
    o = orch()
    simple_router(o.store)
    wait_for(lambda: state_of(o, "r1") == st.CONFIGURED, what="configured")
    appliance = cloud.appliances["ak-router-r1_0"]
    samples = scrape(o)
    assert value(samples, "astara_orchestrator_resources", state="configured") == 1
    assert value(samples, "astara_orchestrator_boots_total", result="created") == 1
    assert value(samples, "astara_orchestrator_pushes_total", result="applied") == \
        appliance.puts == 1
    # Without Neutron's notifications there is no broker to report on.
    assert not [name for name, _ in samples if "notification" in name or "broker" in name]
    polls = value(samples, "astara_orchestrator_health_polls_total")
    wait_for(lambda: value(scrape(o), "astara_orchestrator_health_polls_total") > polls,
             what="more health polls counted")

    # A push the appliance keeps answering with 500: failed (after the client's retries).
    appliance.fail_puts = 100
    o.store.create("floatingip", {"router_id": "r1", "floating_ip_address": "172.24.4.50",
                                  "fixed_ip_address": "10.1.0.10"})
    wait_for(lambda: value(scrape(o), "astara_orchestrator_pushes_total", result="failed")
             >= 1, what="a failed push counted")
    appliance.fail_puts = 0
    wait_for(lambda: value(scrape(o), "astara_orchestrator_pushes_total", result="applied")
             == 2, what="the push applied at last")
    assert value(scrape(o), "astara_orchestrator_timeouts_total", kind="boot") == 0


class SilentCloud(SimCloud):
    """Instances whose agent never answers."""

    def create(self, name, nics, management_cidr, **hints):
        instance = super().create(name, nics, management_cidr, **hints)
        self.appliances[name].alive = False
        return instance


def test_boot_timeouts_are_counted(tmp_path):
    silent = SilentCloud()
    try:
        with started_orchestrators() as start:
            o = start(make_settings(tmp_path, boot_timeout=0.3, max_boot_attempts=2),
                      driver=silent, client_factory=silent.client_factory)
            simple_router(o.store)
            wait_for(lambda: state_of(o, "r1") == st.ERROR, what="boot attempts exhausted")
            samples = scrape(o)
            assert value(samples, "astara_orchestrator_timeouts_total", kind="boot") == 2
            assert value(samples, "astara_orchestrator_boots_total", result="created") == 2
            assert value(samples, "astara_orchestrator_resources", state="error") == 1
            assert value(samples, "astara_orchestrator_pushes_total",
                         result="applied") == 0
    finally:
        silent.shutdown()
