"""TLS for the agent API (README, "Mutual TLS").

* ``mode(settings)``: plain HTTP (no ``[api] certfile``), HTTPS, or mutual TLS
  (``certfile`` + ``ca_certs``: gunicorn requires a client certificate signed by that CA).
* ``server_context``: gunicorn's ``ssl_context`` hook. TLS 1.2 at least, whatever the
  system's OpenSSL policy allows. gunicorn's gthread worker builds a context for every
  connection, re-reading the files each time; this one is built once per process, so a
  certificate changes exactly when the worker is replaced: on SIGHUP to the master.
* ``install``: ``PUT /v1/system/tls`` (api/tls.py) writes a renewed certificate and key over
  the configured files (each atomically, the key 0600) after checking they belong together;
  the caller then sends SIGHUP to the master.
No third-party crypto library: the ``ssl`` module checks what the agent needs.
"""
import logging
import os
import ssl
import tempfile


LOG = logging.getLogger(__name__)
PLAIN, SERVER_ONLY, MUTUAL = "plain HTTP", "HTTPS", "mutual TLS"
MAX_PEM = 64 * 1024
_contexts = {}  # pid -> SSLContext: the master checks one before forking; workers build theirs


def mode(settings):
    if not settings.certfile:
        return PLAIN
    return MUTUAL if settings.ca_certs else SERVER_ONLY


def describe(settings):
    """The line logged at start: how the API is served and why."""
    kind = mode(settings)
    if kind == PLAIN:
        return ("API over plain HTTP: no certificate is configured ([api] certfile); "
                "anyone on the management network can call it")
    if kind == SERVER_ONLY:
        return (f"API over HTTPS with {settings.certfile}, no client certificate required "
                "([api] ca_certs is not set)")
    return (f"API over mutual TLS: certificate {settings.certfile}, client certificates "
            f"signed by {settings.ca_certs} required, TLS 1.2 or later")


def server_context(conf, default_factory):
    """gunicorn's ``ssl_context`` hook: its default context (cert chain, client CA,
    ``cert_reqs``), no older protocol than TLS 1.2; one per process."""
    pid = os.getpid()
    context = _contexts.get(pid)
    if context is None:
        context = default_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _contexts.clear()  # a forked worker drops the master's
        _contexts[pid] = context
    return context


class CredentialError(ValueError):
    """A renewal body that cannot be installed; ``field`` names the culprit."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


def _pem_field(body, field, marker):
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise CredentialError(field, f"{field} is required: a PEM text")
    if len(value) > MAX_PEM:
        raise CredentialError(field, f"{field} is longer than {MAX_PEM} characters")
    if marker not in value or not value.isascii():
        raise CredentialError(field, f"{field} is not a PEM {marker.lower()}")
    return value


def install(settings, body):
    """Check ``body`` (``certificate``, ``private_key``: PEM) and write it over the
    configured certfile/keyfile. The pair must load together (checked on scratch copies
    first, so a bad body never replaces working files). Whether the certificate is the
    right one is the orchestrator's to judge: its client verifies it on the next call.
    Raises CredentialError (naming the field) or OSError."""
    from .store import atomic_write  # here: the gunicorn master imports this module, not msgspec
    certificate = _pem_field(body, "certificate", "CERTIFICATE")
    private_key = _pem_field(body, "private_key", "PRIVATE KEY")
    directory = os.path.dirname(os.path.abspath(settings.certfile))
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tls-check-") as scratch:
        cert_path, key_path = os.path.join(scratch, "c"), os.path.join(scratch, "k")
        atomic_write(cert_path, certificate, durable=False)
        atomic_write(key_path, private_key, durable=False)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_verify_locations(cafile=cert_path)
        except ssl.SSLError:
            raise CredentialError("certificate", "the certificate does not parse") from None
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError:
            raise CredentialError("private_key", "the private key does not load or does "
                                                 "not match the certificate") from None
    keyfile = settings.keyfile or settings.certfile
    if keyfile != settings.certfile:
        atomic_write(keyfile, private_key, mode=0o600)
        atomic_write(settings.certfile, certificate, mode=0o644)
    else:  # one file holds both: it is a secret
        atomic_write(settings.certfile, certificate + private_key, mode=0o600)
    LOG.info("installed a renewed API certificate in %s; reloading", settings.certfile)

