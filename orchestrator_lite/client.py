"""HTTP client for one appliance's agent API (the original's three calls, plus the committed
config hash for drift detection).

* ``is_alive()``: ``GET /v1/firewall/rules``, one try, ``alive_timeout`` (3 s); 200 = alive.
* ``banner()``: ``GET /v1/`` -> the banner (API version and capabilities, capabilities.py).
* ``get_interfaces()``: ``GET /v1/system/interfaces`` -> ``{mac: geN}``.
* ``committed()``: ``GET /v1/system/config`` -> ``(generation, hash)``; with
  ``if_none_match`` a 304 answer means "already at that hash" and costs no body.
* ``put_config(payload, epoch)``: ``PUT /v1/system/config`` with ``Content-type:
  application/json`` (exactly the original's header) and the owner's ownership epoch
  (``X-Astara-Epoch``); the appliance refuses an epoch older than one it accepted with a
  409 (``ApplianceFenced``). With the client's confirm timeout, ``?confirm_timeout=N``
  (commit-confirm: the agent reverts unless confirmed).
* ``confirm()``: ``POST /v1/system/config/confirm`` over the same path; False when the
  appliance does not know commit-confirm (404/405: an original appliance).

Every request says which orchestrator sends it (``X-Astara-Orchestrator``: ``[DEFAULT]
host``); the agent logs it with each push.

Retries (all but ``is_alive``): timeouts, connection errors and 5xx are retried with
exponential back-off and jitter, then raise ``ApplianceUnavailable``. A 4xx is never
retried: it raises ``ApplianceRejected`` carrying the agent's JSON ``error``/``message``/
``errors``; the caller parks the resource in ``error`` and never reboots for it. The agent
answers every input problem with a 4xx (README, "Input grammar and limits"), so a 5xx means
the appliance itself failed (a daemon, a full disk) with its previous generation still in
place: worth a few retries, as a transient failure.
Every request made while a request id is bound to the log context (``InstanceManager``
binds one per push) carries it as ``X-Request-Id``: the agent logs its apply under it.
IPv6 hosts are bracketed in URLs. Proxy environment variables are ignored (direct
management network, as the original did).

Connections: one ``requests.Session`` per client, made on first use, so the calls of a
health poll (``is_alive``, ``status``, ``committed``) share one TCP connection and, with
TLS, one handshake (the agent keeps an idle connection open for 2 s). ``close()`` drops
the pooled connection (the instance manager does after each observation: the next poll
comes after the agent has closed its end anyway); the next call connects again.

TLS (``tls``: a ``pki.ClientTls``, with ``server_name`` the instance name): HTTPS with the
orchestrator's client certificate, the appliance's certificate verified against the CA
and that name (README, "Mutual TLS"); ``renew_certificate(bundle)`` pushes a new one.
Without ``tls``: plain HTTP, the original orchestrator's way.
"""
import ipaddress
import json
import logging
import threading
import time

import requests
from requests.adapters import HTTPAdapter

from astara_router.fencing import EPOCH_HEADER, ORCHESTRATOR_HEADER  # the agent's names
from astara_router.logs import REQUEST_ID_HEADER, current_fields

from .retry import backoff_delay

LOG = logging.getLogger(__name__)


class ApplianceError(Exception):
    """Base class; ``message`` is what goes into the resource's last error."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class ApplianceUnavailable(ApplianceError):
    """No usable answer (timeout, connection refused, 5xx) after all retries."""


class ApplianceRejected(ApplianceError):
    """The appliance answered 4xx: the request (payload) is wrong; retrying cannot help."""

    def __init__(self, status, error, message, errors=()):
        self.status = status
        self.error = error
        self.errors = list(errors or ())
        details = "; ".join(f"{e.get('path') or '(body)'}: {e.get('message')}"
                            for e in self.errors if isinstance(e, dict))
        text = f"appliance refused the request ({status} {error}): {message}"
        if details and details not in message:
            text += f" [{details}]"
        super().__init__(text)


class ApplianceFenced(ApplianceRejected):
    """409: the appliance accepted a higher ownership epoch (``accepted_epoch``) before."""

    def __init__(self, status, error, message, accepted_epoch, accepted_from=""):
        super().__init__(status, error, message)
        self.accepted_epoch = accepted_epoch
        self.accepted_from = accepted_from



def base_url(host, port, scheme="http"):
    host = str(host).strip("[]")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"{scheme}://{host}:{port}"


class ServerNameAdapter(HTTPAdapter):
    """HTTPS with ``context`` (the CA and the client certificate, pki.ClientTls) that
    verifies ``server_name`` (also sent as SNI), whatever address the URL names."""

    def __init__(self, context, server_name):
        self.context, self.server_name = context, server_name  # before init_poolmanager
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(ssl_context=self.context, server_hostname=self.server_name)
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn, url, verify, cert):
        # The context holds our CA. requests' own would give each new connection certifi's
        # bundle, which urllib3 loads into the shared context: ~40 ms per connection, and
        # public CAs trusted for appliances.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = conn.ca_cert_dir = None


class ApplianceClient:
    def __init__(self, host, port=5000, token="", alive_timeout=3.0, timeout=30.0,
                 config_timeout=90.0, attempts=4, backoff_base=0.5, backoff_cap=8.0,
                 sleep=time.sleep, confirm_timeout=None, tls=None, server_name=None,
                 identity=""):
        if tls is not None and not server_name:
            raise ValueError("TLS needs the appliance's name to verify")
        self.url = base_url(host, port, "https" if tls is not None else "http")
        self.tls = tls
        self.server_name = server_name
        self.token = token
        self.identity = identity
        self.alive_timeout = alive_timeout
        self.timeout = timeout
        self.config_timeout = config_timeout
        self.attempts = max(1, attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self.confirm_timeout = confirm_timeout  # None: plain PUTs, as the original
        self._lock = threading.Lock()
        self._session = None  # requests.Session, made on first use
        self._context = None  # the TLS context its adapter was mounted with

    @classmethod
    def from_settings(cls, host, appliance_settings, tls=None, server_name=None, identity=""):
        s = appliance_settings
        return cls(host, s.port, s.token, s.alive_timeout, s.interfaces_timeout,
                   s.config_timeout, s.retry_attempts, s.retry_base, s.retry_cap,
                   confirm_timeout=s.confirm_timeout or None, tls=tls,
                   server_name=server_name, identity=identity)

    def __repr__(self):
        return f"ApplianceClient({self.url})"

    # -- calls ---------------------------------------------------------------------------------
    def is_alive(self):
        try:
            response = self._send("GET", "/v1/firewall/rules", timeout=self.alive_timeout)
        except requests.RequestException as exc:
            LOG.debug("%s not alive: %s", self.url, exc)
            return False
        return response.status_code == 200

    def status(self):
        """The appliance's own health: ``state`` (booting/ready/degraded), ``reasons``,
        ``last_error``, ``repairs``; ``{}`` when it has none to tell. One attempt, like
        ``is_alive``: it is read on every health poll, right after the liveness check (no
        retries and back-off there, and an original appliance's 404 is simply no answer)."""
        try:
            response = self._send("GET", "/v1/status/", timeout=self.alive_timeout)
            body = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError) as exc:
            LOG.debug("%s: no status: %s", self.url, exc)
            return {}
        return body if isinstance(body, dict) else {}

    def banner(self):
        return self._json(self._call("GET", "/v1/", self.timeout))

    def get_interfaces(self):
        body = self._json(self._call("GET", "/v1/system/interfaces", self.timeout))
        interfaces = body.get("interfaces", []) if isinstance(body, dict) else []
        return {str(i["lladdr"]).lower(): i["ifname"] for i in interfaces
                if isinstance(i, dict) and i.get("lladdr") and i.get("ifname")}

    def committed(self, if_none_match=None):
        """``(generation, hash)`` of the committed config; ``(None, if_none_match)`` when
        the appliance answered 304 (already at that hash)."""
        headers = {"If-None-Match": f'"{if_none_match}"'} if if_none_match else None
        response = self._call("GET", "/v1/system/config", self.timeout, headers=headers)
        if response.status_code == 304:
            return None, if_none_match
        body = self._json(response)
        return body.get("generation"), body.get("hash")

    def put_config(self, payload, epoch=None):
        """Push ``payload`` (with the ownership ``epoch``); under commit-confirm, confirm it
        over the same path at once (the push reverts by itself when the appliance can no
        longer be reached)."""
        data = json.dumps(payload).encode()
        headers = {"Content-type": "application/json"}
        if epoch is not None:
            headers[EPOCH_HEADER] = str(epoch)
        path = "/v1/system/config"
        if self.confirm_timeout:
            path += f"?confirm_timeout={int(self.confirm_timeout)}"
        response = self._call("PUT", path, self.config_timeout, data=data, headers=headers)
        body = self._json(response)
        if self.confirm_timeout:
            self.confirm()
        return body

    def renew_certificate(self, bundle):
        """``PUT /v1/system/tls`` with the bundle's certificate and key; the appliance
        reloads its API with them right after answering."""
        data = json.dumps(bundle.renewal_body()).encode()
        return self._json(self._call("PUT", "/v1/system/tls", self.timeout, data=data,
                                     headers={"Content-type": "application/json"}))

    def confirm(self):
        try:
            self._call("POST", "/v1/system/config/confirm", self.timeout)
        except ApplianceRejected as exc:
            if exc.status in (404, 405):
                return False  # an original appliance: its PUT needs no confirmation
            raise
        return True

    # -- plumbing ------------------------------------------------------------------------------
    def close(self):
        """Close the pooled connection; the next call opens a new one."""
        with self._lock:
            session, self._session, self._context = self._session, None, None
        if session is not None:
            session.close()

    def _http(self):
        """This client's Session. With TLS its adapter is mounted again when the client's
        context is a new one (a renewed client certificate: new connections present it)."""
        with self._lock:
            if self._session is None:
                self._session = requests.Session()
                self._session.trust_env = False  # no proxies: the management net is direct
            if self.tls is not None:
                context = self.tls.context()
                if context is not self._context:
                    old = self._session.adapters.get("https://")
                    self._session.mount("https://", ServerNameAdapter(context,
                                                                      self.server_name))
                    self._context = context
                    if old is not None:
                        old.close()
            return self._session

    def _send(self, method, path, timeout, data=None, headers=None):
        headers = dict(headers or {})
        if self.identity:
            headers[ORCHESTRATOR_HEADER] = self.identity
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request_id = current_fields().get("request_id")
        if request_id:  # the push's (logs.log_fields): the agent logs its work under it
            headers[REQUEST_ID_HEADER] = request_id
        return self._http().request(method, self.url + path, data=data, headers=headers,
                                    timeout=timeout, allow_redirects=False)

    def _call(self, method, path, timeout, data=None, headers=None):
        last = None
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._send(method, path, timeout, data, headers)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{method} {path}: {type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code < 500:
                    raise self._rejected(response)
                last = f"{method} {path}: HTTP {response.status_code}: " \
                       f"{self._message(response)}"
            if attempt < self.attempts:
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                LOG.info("%s: %s; retry %d/%d in %.1fs", self.url, last, attempt,
                         self.attempts - 1, delay)
                self._sleep(delay)
        raise ApplianceUnavailable(f"{self.url} {last} (after {self.attempts} attempts)")

    @staticmethod
    def _message(response):
        try:
            body = response.json()
            if isinstance(body, dict) and body.get("message"):
                return str(body["message"])
        except ValueError:
            pass
        return response.text.strip()[:500]

    def _rejected(self, response):
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"error": response.reason or "", "message": response.text.strip()[:500]}
        if response.status_code == 409 and isinstance(body.get("accepted_epoch"), int):
            return ApplianceFenced(409, body.get("error", ""), body.get("message", ""),
                                   body["accepted_epoch"], body.get("accepted_from") or "")
        return ApplianceRejected(response.status_code, body.get("error", ""),
                                 body.get("message", ""), body.get("errors") or ())

    def _json(self, response):
        try:
            return response.json()
        except ValueError:
            raise ApplianceUnavailable(
                f"{self.url}: {response.request.method} {response.request.path_url} "
                f"answered {response.status_code} without a JSON body") from None
