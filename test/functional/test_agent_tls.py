"""Mutual TLS on the real agent in a namespace, with certificates from the orchestrator's
CA (orchestrator_lite/pki.py), delivered as the netns driver delivers them, called from the
controller namespace by raw TLS sockets and by the orchestrator's own client."""
import os
import signal
import ssl
import stat

import pytest

from astara_lab.appliance import (Appliance, controller_node, contract_payloads,
                                  management_cidr, nic_macs, tls_client_context, tls_get)
from astara_lab.peers import eventually
from astara_netns import in_netns
from orchestrator_lite.client import ApplianceClient, ApplianceRejected, ApplianceUnavailable
from orchestrator_lite.pki import AGENT_INI, SERVER_KEY, CertificateAuthority, write_files

pytestmark = pytest.mark.netns

NAME = "ak-router-5a3b7c1e-0000-4000-8000-000000000001_0"
PORT = 5000


class TlsAppliance:
    """The agent of router-basic, with the files a netns driver writes for ``bundle``."""

    def __init__(self, lab, ca):
        body = contract_payloads()["router-basic"]
        self.ctl = controller_node(lab, lab.bridge("b-mgmt"))
        self.app = Appliance(lab, "app", nic_macs("router-basic", body),
                             management_cidr(body), "b-mgmt", controller=self.ctl)
        self.app.configure_management()
        self.directory = lab.tmpdir("instance")
        self.bundle = ca.issue(NAME)
        write_files(self.bundle.boot_files(self.directory))
        self.address = str(self.app.mgmt.ip)
        self.ca = ca
        self.body = body
        self.app.start(["--config-file", str(self.directory / AGENT_INI)], wait=False)
        eventually(lambda: self.served_certificate(), 60, "the agent answers over TLS",
                   interval=0.2)

    def client(self, server_name=NAME, **kwargs):
        return ApplianceClient(self.address, PORT, tls=self.ca.client_tls(),
                               server_name=server_name, attempts=1, **kwargs)

    def call(self, function, *args):
        """Run ``function`` with sockets made in the controller's namespace."""
        with in_netns(self.ctl.name):
            return function(*args)

    def exchange(self, context, server_name=NAME):
        """One GET over TLS: the status line, or the exception that ended it."""
        try:
            return tls_get(self.ctl.name, self.address, context, server_name)[0]
        except (ssl.SSLError, ConnectionResetError) as exc:
            return exc

    def served_certificate(self):
        """The DER certificate the agent presents (verified against the CA)."""
        try:
            return tls_get(self.ctl.name, self.address, client_context(self.ca, self.ca),
                           NAME)[1]
        except OSError:
            return None

    def master_pid(self):
        pid = self.app.recorded_pid("run/api.pid")
        assert pid is not None, "the agent recorded no run/api.pid"
        return pid


def der(pem):
    return ssl.PEM_cert_to_DER_cert(pem)


def client_context(ca, cert_ca=None):
    """A TLS client trusting ``ca``; with ``cert_ca``, presenting its client certificate."""
    if cert_ca is None:
        return tls_client_context(ca.ca_file)
    return tls_client_context(ca.ca_file, cert_ca.client_cert_file, cert_ca.client_key_file)


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def agent(lab, ca):
    return TlsAppliance(lab, ca)


def test_mutual_tls_admits_only_the_orchestrators_client(agent, ca, tmp_path):
    assert agent.exchange(client_context(ca, ca)) == "HTTP/1.1 200 OK"
    refused = agent.exchange(client_context(ca))  # no client certificate
    assert isinstance(refused, ssl.SSLError), refused
    assert "CERTIFICATE_REQUIRED" in str(refused).upper()
    stranger = CertificateAuthority(tmp_path / "other-pki")  # a client cert of another CA
    refused = agent.exchange(client_context(ca, stranger))
    assert isinstance(refused, ssl.SSLError) and "UNKNOWN_CA" in str(refused).upper(), refused
    assert "mutual TLS" in agent.app.log()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_below_1_2_is_refused(agent, ca):
    old = client_context(ca, ca)
    old.check_hostname = False
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    refused = agent.exchange(old)
    assert isinstance(refused, ssl.SSLError), refused
    assert "PROTOCOL_VERSION" in str(refused).upper() or \
        "UNSUPPORTED_PROTOCOL" in str(refused).upper(), refused
    modern = client_context(ca, ca)
    modern.minimum_version = modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert agent.exchange(modern) == "HTTP/1.1 200 OK"


def test_orchestrator_client_verifies_the_appliance_name(agent):
    client = agent.client()
    assert agent.call(client.is_alive)
    answer = agent.call(client.put_config, agent.body)
    assert answer["generation"] == 1
    impostor = agent.client(server_name="ak-router-5a3b7c1e-0000-4000-8000-000000000002_0")
    assert not agent.call(impostor.is_alive)
    with pytest.raises(ApplianceUnavailable, match="Hostname mismatch"):
        agent.call(impostor.committed)
    plain = ApplianceClient(agent.address, PORT, attempts=1)  # the original's plain HTTP
    assert not agent.call(plain.is_alive)


def test_renewal_is_served_after_the_reload_and_keeps_the_key_secret(agent, ca):
    client = agent.client()
    agent.call(client.put_config, agent.body)
    assert agent.served_certificate() == der(agent.bundle.certificate)
    master = agent.master_pid()
    renewed = ca.issue(NAME)
    answer = agent.call(client.renew_certificate, renewed)
    assert answer == {"installed": True, "reloading": True}
    eventually(lambda: agent.served_certificate() == der(renewed.certificate), 60,
               "the renewed certificate served")
    assert agent.master_pid() == master  # a reload (SIGHUP), not a restart
    key = agent.directory / SERVER_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_text() == renewed.private_key
    # The committed configuration survived the reload, and no key reached the log.
    assert agent.call(client.committed)[0] == 1
    secret = renewed.private_key.splitlines()[1]
    log = (agent.app.log_path).read_text()
    assert "PRIVATE KEY" not in log and secret not in log


def test_a_sighup_serves_the_certificate_on_disk(agent, ca):
    renewed = ca.issue(NAME)
    write_files(renewed.boot_files(agent.directory))
    # The worker built its context once: new files alone change nothing...
    assert agent.served_certificate() == der(agent.bundle.certificate)
    os.kill(agent.master_pid(), signal.SIGHUP)
    eventually(lambda: agent.served_certificate() == der(renewed.certificate), 60,
               "the certificate on disk served after SIGHUP")


def test_a_bad_renewal_is_refused_and_changes_nothing(agent, ca):
    client = agent.client()
    before = (agent.directory / SERVER_KEY).read_text()
    other = ca.issue("ak-router-5a3b7c1e-0000-4000-8000-000000000003_0")
    mismatched = type(other)(NAME, agent.bundle.certificate, other.private_key)
    with pytest.raises(ApplianceRejected) as refused:
        agent.call(client.renew_certificate, mismatched)
    assert refused.value.status == 422 and refused.value.errors[0]["path"] == "private_key"
    assert other.private_key.splitlines()[1] not in refused.value.message
    assert (agent.directory / SERVER_KEY).read_text() == before
    assert agent.served_certificate() == der(agent.bundle.certificate)
