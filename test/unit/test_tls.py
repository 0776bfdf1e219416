"""Mutual TLS pieces that need no namespace: the orchestrator's CA (pki.py), the boot
data that carries its files, the agent's settings, SSL context hook and renewal route.
The agent over real sockets: test/functional/test_agent_tls.py."""
import base64
import configparser
import logging
import ssl
import stat

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from astara_router import settings as agent_settings
from astara_router import tls
from astara_router.api import create_app
from astara_router.cli.api import AgentApplication
from orchestrator_lite import config
from orchestrator_lite.client import ApplianceUnavailable
from orchestrator_lite.drivers.userdata import cloud_config, image_tls_files
from orchestrator_lite.pki import DAY, CertificateAuthority, write_files

from sim_appliances import Clock

NAME = "ak-router-5a3b7c1e-0000-4000-8000-000000000001_0"


EPOCH = 1.8e9  # the CA's clock in these tests: a fixed instant (2027)


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


# -- the orchestrator's CA ---------------------------------------------------------------------

def test_ca_keeps_its_keys_private_and_persists(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    assert mode_of(tmp_path / "pki") == 0o700
    assert mode_of(tmp_path / "pki" / "ca.key") == 0o600
    assert mode_of(ca.client_key_file) == 0o600
    again = CertificateAuthority(tmp_path / "pki")  # a restarted orchestrator
    assert again.ca_pem == ca.ca_pem
    assert again.client_cert_file.read_text() == ca.client_cert_file.read_text()


def test_appliance_certificate_names_the_instance_for_server_auth_only(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki", lifetime_days=30, clock=Clock(EPOCH))
    bundle = ca.issue(NAME)
    cert = x509.load_pem_x509_certificate(bundle.certificate.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [NAME]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.issuer == x509.load_pem_x509_certificate(ca.ca_pem.encode()).subject
    assert bundle.not_after == pytest.approx(EPOCH + 30 * DAY)
    assert bundle.ca_certificate == ca.ca_pem
    assert "PRIVATE KEY" not in repr(bundle)
    # Its key is not kept by the orchestrator: only the certificate is recorded.
    assert not any("PRIVATE" in p.read_text() for p in (tmp_path / "pki" / "issued").iterdir())
    client = x509.load_pem_x509_certificate(ca.client_cert_file.read_bytes())
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_certificates_fall_due_in_the_renewal_window(tmp_path):
    clock = Clock(EPOCH)
    ca = CertificateAuthority(tmp_path / "pki", lifetime_days=30, renew_before_days=10,
                              clock=clock)
    assert ca.due(NAME)  # never issued
    ca.issue(NAME)
    assert not ca.due(NAME)
    clock.now += 19 * DAY
    assert not ca.due(NAME)
    assert not CertificateAuthority(tmp_path / "pki", 30, 10, clock=clock).due(NAME)
    clock.now += 2 * DAY
    assert ca.due(NAME)
    client_before = ca.client_cert_file.read_text()
    ca.client_tls()  # the orchestrator's own certificate is due too: re-issued
    assert ca.client_cert_file.read_text() != client_before
    ca.forget(NAME)
    assert ca.not_after(NAME) is None


@pytest.mark.parametrize("lifetime, renew", [(0, 0), (10, 10), (10, -1)])
def test_ca_refuses_a_renewal_window_that_cannot_work(tmp_path, lifetime, renew):
    with pytest.raises(ValueError, match="renew_before_days"):
        CertificateAuthority(tmp_path / "pki", lifetime, renew)


def test_client_context_reloads_a_renewed_client_certificate(tmp_path):
    clock = Clock(EPOCH)
    ca = CertificateAuthority(tmp_path / "pki", 30, 10, clock=clock)
    client = ca.client_tls()
    first = client.context()
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert first.check_hostname and first.verify_mode == ssl.CERT_REQUIRED
    assert client.context() is first
    clock.now += 25 * DAY
    assert ca.client_tls() is client and client.context() is not first


def test_members_sharing_the_directory_renew_the_client_certificate_once(tmp_path):
    """Two orchestrators on one [tls] directory: the first to use its client after the
    certificate fell due re-issues it, the other loads that one instead of issuing its
    own (its cached due date only tells it to look)."""
    clock = Clock(EPOCH)
    first, second = (CertificateAuthority(tmp_path / "pki", 30, 10, clock=clock)
                     for _ in range(2))
    contexts = [ca.client_tls().context() for ca in (first, second)]
    original = first.client_cert_file.read_text()
    clock.now += 21 * DAY
    assert first.client_tls().context() is not contexts[0]
    renewed = first.client_cert_file.read_text()
    assert renewed != original
    assert second.client_tls().context() is not contexts[1]
    assert second.client_cert_file.read_text() == renewed  # loaded, not issued again
    key = first.client_key_file.read_text()
    second.client_tls().context()
    assert first.client_key_file.read_text() == key


def test_boot_files_for_the_netns_driver(tmp_path):
    bundle = CertificateAuthority(tmp_path / "pki").issue(NAME)
    write_files(bundle.boot_files(tmp_path / "instance"))
    tls_dir = tmp_path / "instance" / "tls"
    assert mode_of(tls_dir) == 0o700 and mode_of(tls_dir / "server.key") == 0o600
    assert (tls_dir / "server.key").read_text() == bundle.private_key
    settings = agent_settings.load(str(tls_dir / "agent.ini"))
    assert (settings.certfile, settings.keyfile, settings.ca_certs) == (
        str(tls_dir / "server.crt"), str(tls_dir / "server.key"), str(tls_dir / "ca.crt"))


def test_user_data_writes_the_files_the_image_agent_reads(tmp_path):
    """What the QEMU and OpenStack drivers boot with (userdata.image_tls_files)."""
    bundle = CertificateAuthority(tmp_path / "pki").issue(NAME)
    text = cloud_config("fa:16:3e:00:00:01", "fdca::5/64", 1450,
                        files=image_tls_files(bundle))
    assert text.startswith("#cloud-config\n") and "PRIVATE KEY" not in text  # base64 only
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    content = {p: base64.b64decode(f["content"]).decode() for p, f in files.items()}
    assert content["/etc/astara/tls/server.key"] == bundle.private_key
    assert files["/etc/astara/tls/server.key"]["permissions"] == "0600"
    assert content["/etc/astara/tls/server.crt"] == bundle.certificate
    assert content["/etc/astara/tls/ca.crt"] == bundle.ca_certificate
    # The image's agent reads the drop-in next to its own ini.
    image = tmp_path / "etc" / "astara.ini"
    image.parent.mkdir()
    image.write_text("[DEFAULT]\nstate_dir = /var/lib/astara\n[api]\nport = 5000\n")
    (tmp_path / "etc" / "astara.ini.d").mkdir()
    (tmp_path / "etc" / "astara.ini.d" / "50-tls.ini").write_text(
        content["/etc/astara/astara.ini.d/50-tls.ini"])
    settings = agent_settings.load(str(image))
    assert settings.port == 5000
    assert settings.certfile == "/etc/astara/tls/server.crt"
    assert settings.ca_certs == "/etc/astara/tls/ca.crt"
    assert "write_files" not in yaml.safe_load(
        cloud_config("m", "a/64", 1450, files=image_tls_files(None)))


# -- settings ----------------------------------------------------------------------------------

def test_orchestrator_tls_settings(tmp_path):
    parser = configparser.ConfigParser()
    parser.read_string("[DEFAULT]\nstate_dir = /srv/o\n[tls]\nlifetime_days = 2\n"
                       "renew_before_days = 0.5\n")
    settings = config.from_parser(parser)
    assert settings.tls.enabled and settings.tls.lifetime_days == 2.0
    assert settings.pki_directory == "/srv/o/pki"
    parser.read_string("[tls]\nrenew_before_days = 3\n")
    with pytest.raises(config.ConfigError, match="tls.renew_before_days"):
        config.from_parser(parser)
    parser.read_string("[tls]\nenabled = maybe\n")
    with pytest.raises(config.ConfigError, match="tls.enabled"):
        config.from_parser(parser)


def test_agent_refuses_a_key_or_client_ca_without_certificate(tmp_path):
    ini = tmp_path / "a.ini"
    ini.write_text("[api]\nca_certs = /etc/astara/ca.crt\n")
    with pytest.raises(ValueError, match="need certfile"):
        agent_settings.load(str(ini))


def test_agent_logs_how_it_serves(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    AgentApplication(agent_settings.Settings(state_dir=str(tmp_path), bind=("[::1]:5999",)))
    assert "API over plain HTTP: no certificate is configured" in caplog.text
    caplog.clear()
    cfg = AgentApplication(agent_settings.Settings(
        state_dir=str(tmp_path), bind=("[::1]:5999",), certfile="/c", keyfile="/k",
        ca_certs="/ca")).cfg
    assert "API over mutual TLS" in caplog.text
    assert cfg.ssl_context is tls.server_context


def test_server_context_is_tls_1_2_or_later_and_built_once_per_process():
    made = []

    def factory():  # a context the system policy might let go down to TLS 1.0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        made.append(context)
        return context

    tls._contexts.clear()
    try:
        context = tls.server_context(None, factory)
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert tls.server_context(None, factory) is context and len(made) == 1
    finally:  # no other test may get this test's context
        tls._contexts.clear()


# -- PUT /v1/system/tls ------------------------------------------------------------------------

class StubEngine:
    class committed:
        generation = 0
        firewall_text = ""
        view_json = b"{}"
        hash = None

    state = "ready"


@pytest.fixture
def renewal(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    bundle = ca.issue(NAME)
    write_files(bundle.boot_files(tmp_path / "app"))
    settings = agent_settings.load(str(tmp_path / "app" / "tls" / "agent.ini"),
                                   state_dir=str(tmp_path / "state"))
    app = create_app(settings, StubEngine(), prober=object())
    reloads = []
    app.extensions["astara"]["reload_server"] = lambda: reloads.append(1)
    return ca, app, tmp_path / "app" / "tls", reloads


def test_renewal_replaces_the_files_then_reloads(renewal):
    ca, app, tls_dir, reloads = renewal
    new = ca.issue(NAME)
    client = app.test_client()
    response = client.put("/v1/system/tls", json=new.renewal_body(),
                          base_url="https://appliance")
    assert response.status_code == 200, response.json
    assert response.json == {"installed": True, "reloading": True}
    assert reloads == []  # not before the answer is out
    response.close()
    assert reloads == [1]
    assert (tls_dir / "server.key").read_text() == new.private_key
    assert mode_of(tls_dir / "server.key") == 0o600
    assert (tls_dir / "server.crt").read_text() == new.certificate
    assert [p.name for p in tls_dir.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("body, field", [
    ({"private_key": "x"}, "certificate"),
    ({"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
     "certificate"),
    ("mismatched", "private_key"),
    ({"certificate": "x" * 70000, "private_key": "y"}, "certificate"),
])
def test_a_renewal_that_cannot_work_is_refused_naming_the_field(renewal, body, field):
    ca, app, tls_dir, reloads = renewal
    before = (tls_dir / "server.key").read_text()
    if body == "mismatched":
        body = {"certificate": ca.issue(NAME).certificate,
                "private_key": ca.issue("ak-router-x_0").private_key}
    response = app.test_client().put("/v1/system/tls", json=body,
                                     base_url="https://appliance")
    assert response.status_code == 422, response.json
    assert response.json["errors"][0]["path"] == field
    assert "PRIVATE KEY" not in response.get_data(as_text=True)
    assert (tls_dir / "server.key").read_text() == before and reloads == []


def test_no_renewal_over_plain_http(renewal):
    ca, app, tls_dir, reloads = renewal
    response = app.test_client().put("/v1/system/tls", json=ca.issue(NAME).renewal_body())
    assert response.status_code == 409 and reloads == []
    # A certificate is configured: plain HTTP here is the operator socket's.
    message = response.json["message"]
    assert "renewed only over TLS" in message and "certfile is not set" not in message
    plain = create_app(agent_settings.Settings(state_dir=str(tls_dir.parent / "plain")),
                       StubEngine(), prober=object())
    for base_url in ("http://appliance", "https://appliance"):  # X-Forwarded-Proto: https
        response = plain.test_client().put("/v1/system/tls", base_url=base_url,
                                           json=ca.issue(NAME).renewal_body())
        assert response.status_code == 409
        assert "[api] certfile is not set" in response.json["message"]


# -- renewal from the orchestrator's side ------------------------------------------------------

class Appliance:
    """What the instance manager calls: renew_certificate, failing ``failures`` times."""

    def __init__(self, failures):
        self.failures = failures
        self.received = []

    def renew_certificate(self, bundle):
        if self.failures:
            self.failures -= 1
            raise ApplianceUnavailable("connection refused")
        self.received.append(bundle)


def test_a_failed_renewal_stays_due_and_is_pushed_again(tmp_path):
    from types import SimpleNamespace

    from orchestrator_lite.instances import InstanceManager
    clock = Clock(EPOCH)
    ca = CertificateAuthority(tmp_path / "pki", 30, 10, clock=clock)
    first = ca.issue(NAME)
    ref = SimpleNamespace(kind="router", id="5a3b7c1e-0000-4000-8000-000000000001")
    manager = InstanceManager(ref, None, None, None, None, None, certificates=ca)
    appliance = Appliance(failures=1)
    runtime = SimpleNamespace(instance=SimpleNamespace(name=NAME), client=appliance)
    manager._renew_certificate(runtime)
    assert appliance.received == []  # not due yet
    clock.now += 25 * DAY
    manager._renew_certificate(runtime)  # due; the push fails
    assert appliance.received == [] and ca.due(NAME)
    manager._renew_certificate(runtime)
    [bundle] = appliance.received
    assert bundle.certificate != first.certificate and not ca.due(NAME)
    assert ca.not_after(NAME) == pytest.approx(clock.now + 30 * DAY)
