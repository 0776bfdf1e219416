"""The orchestrator's certificate authority for mutual TLS with its appliances.

Kept in ``[tls] directory`` (default ``<state_dir>/pki``, mode 0700)::

  ca.key  ca.crt           the CA (EC P-256; keys 0600)
  client.key  client.crt   the orchestrator's client certificate (clientAuth), re-issued
                           when due (``renew_client``, before any use of the client's
                           context); client.lock serialises its writers and readers
  issued/<name>.crt        the last server certificate issued to each appliance instance

Each appliance instance gets a server certificate whose only identity is its instance
name (``ak-router-<id>_0``) as a DNS subjectAltName; the orchestrator's client connects to
the management address but verifies that name (``ClientTls.context``: it is also the SNI).
Certificates are delivered in the boot data (``boot_files``: the netns driver writes them,
the OpenStack driver puts them in the cloud-init user data) and renewed before they expire
through the agent's ``PUT /v1/system/tls`` (``due``, ``issue``). Private keys of appliances
are never stored here: they go to the appliance and nowhere else.
"""
import contextlib
import dataclasses
import datetime
import fcntl
import logging
import os
import pathlib
import ssl
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from astara_router.store import atomic_write

LOG = logging.getLogger(__name__)
DAY = 86400.0
CA_LIFETIME_DAYS = 3650
# What an appliance holds (the netns driver's files are relative to the appliance's
# directory; the OpenStack driver writes them under /etc/astara).
SERVER_CERT, SERVER_KEY, CLIENT_CA = "tls/server.crt", "tls/server.key", "tls/ca.crt"
AGENT_INI = "tls/agent.ini"
# In the image: /etc/astara/tls/*, and a drop-in of /etc/astara/astara.ini
# (astara_router/settings.py drop_ins) that points the agent at them.
IMAGE_BASE, IMAGE_INI = "/etc/astara", "/etc/astara/astara.ini.d/50-tls.ini"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What one appliance instance needs: its certificate and key, and the CA that signs
    the orchestrator's client certificate (the same CA)."""
    name: str
    certificate: str  # PEM
    private_key: str = dataclasses.field(repr=False)  # PEM; a secret: never logged
    ca_certificate: str = ""
    not_after: float = 0.0  # epoch seconds

    def agent_ini(self, base):
        """The agent's ``[api]`` settings for files kept under ``base``."""
        base = pathlib.PurePosixPath(base)
        return ("# mutual TLS for the agent API (written by the orchestrator)\n[api]\n"
                f"certfile = {base / SERVER_CERT}\nkeyfile = {base / SERVER_KEY}\n"
                f"ca_certs = {base / CLIENT_CA}\n")

    def boot_files(self, base, ini_path=None):
        """``[(path, content, mode)]``: the three PEM files under ``base`` and the ini
        naming them (``ini_path``, default ``base/tls/agent.ini``)."""
        base = pathlib.PurePosixPath(base)
        return [(str(base / SERVER_CERT), self.certificate, 0o644),
                (str(base / SERVER_KEY), self.private_key, 0o600),
                (str(base / CLIENT_CA), self.ca_certificate, 0o644),
                (str(ini_path or base / AGENT_INI), self.agent_ini(base), 0o644)]

    def renewal_body(self):
        """The body of the agent's ``PUT /v1/system/tls``."""
        return {"certificate": self.certificate, "private_key": self.private_key}


def write_files(files):
    """Write ``boot_files`` output on this host (directories 0700, atomic writes)."""
    for path, content, mode in files:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, content, mode=mode)


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _epoch(cert):
    return cert.not_valid_after_utc.timestamp()


class CertificateAuthority:
    """Issues and renews; thread-safe (boots and renewals run on several workers)."""

    def __init__(self, directory, lifetime_days=30.0, renew_before_days=10.0,
                 common_name="astara orchestrator", clock=time.time):
        if lifetime_days <= 0 or not 0 <= renew_before_days < lifetime_days:
            raise ValueError("tls: lifetime_days must be positive and renew_before_days "
                             "between 0 and lifetime_days")
        self.directory = pathlib.Path(directory)
        self.lifetime = lifetime_days * DAY
        self.renew_before = renew_before_days * DAY
        self.common_name = common_name
        self._clock = clock
        self._lock = threading.RLock()
        self._not_after = {}  # instance name -> epoch, cached from issued/<name>.crt
        self._client = None  # ClientTls, made once the client certificate exists
        self._client_renew_at = 0.0  # epoch: when the client certificate falls due (cached)
        self._ensure()

    # -- files ---------------------------------------------------------------------------
    @property
    def ca_file(self):
        return self.directory / "ca.crt"

    @property
    def client_cert_file(self):
        return self.directory / "client.crt"

    @property
    def client_key_file(self):
        return self.directory / "client.key"

    def _issued(self, name):
        if "/" in name or name.startswith("."):
            raise ValueError(f"not an instance name: {name!r}")
        return self.directory / "issued" / f"{name}.crt"

    def _ensure(self):
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # keys inside; never world-readable
            (self.directory / "issued").mkdir(mode=0o700, exist_ok=True)
            key_file = self.directory / "ca.key"
            if not key_file.exists() or not self.ca_file.exists():
                self._make_ca(key_file)
            self._ca_key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            self._ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            self.ca_pem = _pem(self._ca_cert)
            self.renew_client()

    def _make_ca(self, key_file):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.common_name} CA")])
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_LIFETIME_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ski), critical=False)
                .sign(key, hashes.SHA256()))
        atomic_write(str(key_file), _key_pem(key), mode=0o600)
        atomic_write(str(self.ca_file), _pem(cert), mode=0o644)
        LOG.info("created the appliance CA in %s", self.directory)

    def _sign(self, common_name, dns_name, usage):
        """(certificate, key) for a leaf: ``usage`` is SERVER_AUTH or CLIENT_AUTH."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
        not_after = min(now + datetime.timedelta(seconds=self.lifetime),
                        self._ca_cert.not_valid_after_utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            common_name)]))
                .issuer_name(self._ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._ca_key.public_key()), critical=False)
                .sign(self._ca_key, hashes.SHA256()))
        return cert, key

    # -- the orchestrator's client certificate ---------------------------------------------
    @contextlib.contextmanager
    def _client_files(self):
        """Held while the client certificate and key are written, or read together: the
        members of a cluster on one host share them (an flock, across processes), and a
        reader between the key's write and the certificate's would pair a new key with the
        old certificate."""
        with self._lock, open(self.directory / "client.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield

    def _client_not_after(self):
        """When the client certificate on disk expires (epoch); None when it is missing,
        unreadable, of another CA or without its key."""
        try:
            cert = x509.load_pem_x509_certificate(self.client_cert_file.read_bytes())
        except (OSError, ValueError):
            return None
        if cert.issuer != self._ca_cert.subject or not self.client_key_file.exists():
            return None
        return _epoch(cert)

    def _issue_client(self):
        cert, key = self._sign(self.common_name, "astara-orchestrator",
                               ExtendedKeyUsageOID.CLIENT_AUTH)
        atomic_write(str(self.client_key_file), _key_pem(key), mode=0o600)
        atomic_write(str(self.client_cert_file), _pem(cert), mode=0o644)
        LOG.info("issued the orchestrator's client certificate (valid until %s)",
                 cert.not_valid_after_utc.isoformat())
        return _epoch(cert)

    def renew_client(self):
        """Re-issue the orchestrator's own certificate when it falls due. ClientTls asks
        before every use of its context, so a running orchestrator renews it even when no
        instance is ever booted; until the cached date that costs one clock read."""
        if self._clock() < self._client_renew_at:
            return
        with self._client_files():
            not_after = self._client_not_after()  # another member may have renewed it
            if not_after is None or not_after - self._clock() < self.renew_before:
                not_after = self._issue_client()
            self._client_renew_at = not_after - self.renew_before

    def client_context(self):
        """``(SSLContext, stamp)`` for the client side: TLS >= 1.2, the CA, the client
        certificate and key (read together); ``stamp`` tells that certificate file apart."""
        with self._client_files():
            stamp = _stamp(self.client_cert_file)
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=str(self.ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return context, stamp

    def client_tls(self):
        """The client side (one per CA); renews the orchestrator's certificate when due."""
        self.renew_client()
        with self._lock:
            if self._client is None:
                self._client = ClientTls(self)
            return self._client

    # -- appliance certificates ------------------------------------------------------------
    def issue(self, name, record=True):
        """A new Bundle for instance ``name``. Its certificate (not its key) is recorded
        as the instance's current one, unless ``record`` is False: a renewal records it
        (``record``) only once the appliance has it, so a failed push stays due."""
        with self._lock:
            cert, key = self._sign(name, name, ExtendedKeyUsageOID.SERVER_AUTH)
        bundle = Bundle(name, _pem(cert), _key_pem(key), self.ca_pem, _epoch(cert))
        LOG.info("issued a certificate for %s (valid until %s)", name,
                 cert.not_valid_after_utc.isoformat())
        if record:
            self.record(bundle)
        return bundle

    def record(self, bundle):
        with self._lock:
            atomic_write(str(self._issued(bundle.name)), bundle.certificate, mode=0o644)
            self._not_after[bundle.name] = bundle.not_after

    def not_after(self, name):
        """When the last certificate issued to ``name`` expires (epoch), or None."""
        with self._lock:
            if name not in self._not_after:
                try:
                    cert = x509.load_pem_x509_certificate(self._issued(name).read_bytes())
                except (OSError, ValueError):
                    return None
                self._not_after[name] = _epoch(cert)
            return self._not_after[name]

    def due(self, name):
        """True when ``name``'s certificate is unknown or within the renewal window."""
        not_after = self.not_after(name)
        return not_after is None or not_after - self._clock() < self.renew_before

    def forget(self, name):
        with self._lock:
            self._not_after.pop(name, None)
            try:
                self._issued(name).unlink()
            except (OSError, ValueError):
                pass


def _stamp(path):
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns  # a renewal replaces the file: a new inode


class ClientTls:
    """The orchestrator's TLS client settings: one SSLContext, renewed by the CA before any
    use when its certificate falls due, and rebuilt when the certificate file changed
    (renewed here or by another member of a cluster sharing the directory)."""

    def __init__(self, authority):
        self._authority = authority
        self._lock = threading.Lock()
        self._context = None
        self._stamp = None

    def context(self):
        self._authority.renew_client()
        stamp = _stamp(self._authority.client_cert_file)
        with self._lock:
            if self._context is None or stamp != self._stamp:
                self._context, self._stamp = self._authority.client_context()
            return self._context
