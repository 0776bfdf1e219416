"""The orchestrator with mutual TLS, for real: its netns driver delivers each appliance's
certificate as files, its client speaks HTTPS, and a short certificate lifetime makes it
renew them while the test watches (test_orchestrator_netns.py runs the plain-HTTP mode)."""
import ssl
import stat

import pytest

from astara_lab.appliance import tls_client_context, tls_get
from orchestrator_lite.rollout import in_sync
from .orchestrator_world import ROUTER, build_router

pytestmark = pytest.mark.netns

# Certificates live 0.002 days (173 s) and fall due 0.0018 days (156 s) before expiry:
# renewed about 17 s after each issue.
TLS = {"enabled": "true", "lifetime_days": "0.002", "renew_before_days": "0.0018"}


def served_certificate(world, address, name, client=True):
    """The DER certificate the agent presents to a client in the ctl namespace (with the
    orchestrator's client certificate unless ``client`` is False)."""
    pki = world.dir / "state" / "pki"
    context = tls_client_context(pki / "ca.crt", *((pki / "client.crt", pki / "client.key")
                                                   if client else ()))
    status, certificate = tls_get(world.ctl.name, address, context, name)
    return certificate, status


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("world", [TLS], ids=["tls"], indirect=True)
def test_orchestrator_uses_mutual_tls_and_renews_certificates(world):
    build_router(world, ROUTER, "tenant1")
    resource = world.wait_for(lambda: (r := world.resource(ROUTER)) and in_sync(r) and r,
                              60, "router configured over mutual TLS")
    [instance] = resource["instances"]
    address, name, pid = (instance["management_address"], instance["name"],
                          instance["details"]["agent_pid"])
    pki = world.dir / "state" / "pki"
    issued = pki / "issued" / f"{name}.crt"
    first, status = served_certificate(world, address, name)
    assert status == "HTTP/1.1 200 OK"
    assert first == ssl.PEM_cert_to_DER_cert(issued.read_text())

    # Plain HTTP and a client without the orchestrator's certificate get nothing.
    with pytest.raises(OSError):
        world.agent(address).get("/v1/system/config")
    with pytest.raises(ssl.SSLError, match="(?i)certificate.required"):
        served_certificate(world, address, name, client=False)

    # Secrets: the CA's and the appliance's keys are the owner's alone.
    tls_dir = world.dir / "appliances" / instance["details"]["netns"] / "tls"
    assert mode(pki) == 0o700 and mode(pki / "ca.key") == 0o600
    assert mode(pki / "client.key") == 0o600
    assert mode(tls_dir) == 0o700 and mode(tls_dir / "server.key") == 0o600

    # Renewal before expiry: a new certificate is pushed and served after the reload,
    # the same appliance (no reboot), still in sync.
    world.wait_for(lambda: served_certificate(world, address, name)[0] != first, 90,
                   "a renewed certificate served")
    renewed = world.wait_for(lambda: (r := world.resource(ROUTER)) and in_sync(r) and r, 30,
                             "in sync after the renewal")
    assert renewed["instances"][0]["details"]["agent_pid"] == pid
    orchestrator_log = world.orchestrator.log.read_text()
    assert "has a new certificate" in orchestrator_log
    logs = orchestrator_log + (tls_dir.parent / "agent.log").read_text()
    assert "PRIVATE KEY" not in logs
    assert (tls_dir / "server.key").read_text().splitlines()[1] not in logs
