"""``astara-router-ctl``: the appliance, for an operator who ssh'd in.

Talks to the local agent's API on its operator socket (``<state_dir>/run/api.sock``,
api/local.py), else on the address and port it listens on with its token and TLS files,
all from the agent's own ``--config-file``/``--state-dir``; ``config`` and ``generations``
read the state directory when the agent does not answer. Over TCP under mutual TLS it
needs ``--cert``/``--key``, a client certificate of the agent's ``[api] ca_certs`` (the
socket needs none).

  config                   the committed configuration and its generation
  interfaces               the interface map (geN, kernel name, MAC, addresses)
  health                   the agent's state and why it is degraded (exit 1 unless ready)
  history [-n N]           the last applies: origin, request id, result, durations, errors
  generations              the generations kept for a rollback
  diff FILE|-              a candidate payload against the running one, not applied
                           (exit 0 identical, 1 different, 2 refused)
  rollback [GENERATION]    apply a kept generation again, as a new one (default: the
                           previous); --confirm-timeout N reverts it unless confirmed
  confirm                  keep a generation that awaits confirmation
"""
import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import time

from .. import settings as settings_mod
from ..store import Store

DEFAULT_CONFIG_FILE = "/etc/astara/astara.ini"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "::1"}


class AgentUnavailable(Exception):
    pass


class AgentError(Exception):
    def __init__(self, status, body):
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")


def split_bind(bind):
    """``host:port`` / ``[v6]:port`` -> (host, port); a wildcard becomes loopback."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    return WILDCARDS.get(host, host), int(port)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Agent:
    """The local agent's API (http.client: no proxies, nothing but the standard library),
    on its operator socket (``unix``) or over TCP."""

    def __init__(self, host, port, token="", tls=None, timeout=120.0, unix=None):
        self.host, self.port, self.token, self.tls, self.timeout = host, port, token, tls, \
            timeout
        self.unix = unix

    @property
    def where(self):
        return self.unix or f"{self.host} port {self.port}"

    @classmethod
    def from_settings(cls, settings, url=None, timeout=120.0, cert=None, key=None,
                      cacert=None):
        if not url and os.path.exists(settings.operator_socket):
            return cls(None, None, settings.api_token, None, timeout, settings.operator_socket)
        if url:
            scheme, _, rest = url.partition("://")
            host, port = split_bind(rest.rstrip("/"))
            https = scheme == "https"
        else:
            from .api import default_bind
            # Store.current, not load: reading must not settle a generation that awaits
            # confirmation (load reverts it on disk, which is for the agent's start only).
            host, port = split_bind(settings.bind[0] if settings.bind else default_bind(
                settings, Store(settings.state_dir).current()))
            https = bool(settings.certfile)
        tls = None
        if https:
            tls = tls_context(cacert or settings.ca_certs or settings.certfile, cert, key)
        return cls(host, port, settings.api_token, tls, timeout)

    def request(self, method, path, body=None):
        """The decoded JSON answer; AgentError for an error status, AgentUnavailable when
        nothing answers."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.unix is not None:
            conn = UnixHTTPConnection(self.unix, self.timeout)
        elif self.tls is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.tls)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnavailable(f"the agent at {self.where} does not answer: "
                                   f"{exc}") from None
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"message": raw.decode(errors="replace")[:500]}
        if response.status >= 400:
            raise AgentError(response.status, answer)
        return answer


def tls_context(trusted, cert=None, key=None):
    """Trust ``trusted`` (by default the CA the agent requires of clients, else its own
    certificate) and present ``cert`` (with ``key``, else the key in the same file) when
    given: never the appliance's own certificate, which its CA issues for server use only
    (orchestrator_lite/pki.py), so an agent under mutual TLS would refuse it. The name is
    not checked: we connect to our own address."""
    context = ssl.create_default_context(cafile=trusted)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert:
        context.load_cert_chain(cert, key)
    return context


# -- output ---------------------------------------------------------------------------------
def when(timestamp):
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def table(rows, headers):
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


def show_config(answer, out, source=None):
    print(f"generation {answer.get('generation')}  hash {answer.get('hash')}"
          + (f"  (agent not answering: read from {source})" if source else ""), file=out)
    print(json.dumps(answer.get("configuration"), indent=2, sort_keys=True), file=out)


def show_interfaces(answer, out):
    rows = [(i.get("ifname"), i.get("kernel_name", ""), i.get("lladdr"), i.get("state"),
             i.get("mtu"), " ".join(i.get("addresses") or ()) or "-")
            for i in answer.get("interfaces", ())]
    print(table(rows, ("IFNAME", "KERNEL", "MAC", "STATE", "MTU", "ADDRESSES")), file=out)


def show_health(answer, out):
    print(f"state: {answer.get('state')}  generation: {answer.get('generation')}", file=out)
    for reason in answer.get("reasons") or ():
        print(f"  down: {reason}", file=out)
    if answer.get("last_error"):
        print(f"last error: {answer['last_error']}", file=out)
    if answer.get("awaiting_confirmation") is not None:
        print(f"awaiting confirmation: generation {answer['awaiting_confirmation']}",
              file=out)
    repairs = answer.get("repairs") or {}
    if repairs:
        print("repairs: " + ", ".join(f"{k} ({v})" for k, v in sorted(repairs.items())),
              file=out)
    targets = answer.get("targets") or {}
    for family, target in sorted(targets.items()):
        print(f"reachability {family} {target}: {'ok' if answer.get(family) else 'no answer'}"
              f" (checked {when(answer.get('checked_at'))})", file=out)


def show_history(answer, out):
    rows = []
    for entry in answer.get("history", ()):
        origin = entry["origin"] + (f" {entry['detail']}" if entry.get("detail") else "")
        rows.append((when(entry.get("started_at")), origin[:48], entry.get("request_id"),
                     entry.get("result"),
                     f"{entry.get('previous_generation')}->{entry.get('generation')}",
                     entry.get("changes"), f"{entry.get('seconds', 0):.3f}",
                     entry.get("error") or ""))
    print(table(rows, ("STARTED (UTC)", "ORIGIN", "REQUEST ID", "RESULT", "GENERATION",
                       "CHANGES", "SECONDS", "ERROR")), file=out)
    for entry in answer.get("history", ())[-1:]:
        spent = entry.get("subsystem_seconds") or {}
        if spent:
            print("last apply per subsystem: " + ", ".join(
                f"{name} {seconds:.3f} s" for name, seconds in spent.items()), file=out)


def show_generations(answer, out, source=None):
    rows = [(g["generation"], g["hash"][:16], when(g.get("committed_at")),
             "committed" if g.get("committed") else "")
            for g in answer.get("generations", ())]
    if source:
        print(f"(agent not answering: read from {source})", file=out)
    print(table(rows, ("GENERATION", "HASH", "COMMITTED (UTC)", "")), file=out)


def show_applied(answer, out, what):
    print(f"{what}: now generation {answer.get('generation')} "
          f"({answer.get('changes')} changes, hash {answer.get('hash')})", file=out)


def offline_generations(state_dir):
    store = Store(state_dir)
    current = store.current()
    number = current.number if current else None
    return {"generation": number, "generations": [
        {"generation": g.number, "hash": g.hash, "committed_at": g.committed_at,
         "committed": g.number == number} for g in store.generations()]}


def offline_config(state_dir):
    from ..engine import redact
    current = Store(state_dir).current()
    if current is None:
        return {"generation": 0, "hash": None, "configuration": {}}
    return {"generation": current.number, "hash": current.hash,
            "configuration": redact(current.payload)}


# -- commands -------------------------------------------------------------------------------
def read_candidate(path):
    """The candidate's bytes (``-``: stdin); an unreadable file is an OSError (exit 3)."""
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as handle:
        return handle.read()


def run(args, agent, settings, out):
    """One command; returns the exit status."""
    as_json = args.json

    def emit(answer, show, *extra):
        if as_json:
            print(json.dumps(answer, indent=2, sort_keys=True), file=out)
        else:
            show(answer, out, *extra)

    if args.command in ("config", "generations"):
        path = "/v1/system/config" if args.command == "config" else "/v1/system/generations"
        show = show_config if args.command == "config" else show_generations
        try:
            emit(agent.request("GET", path), show)
        except AgentUnavailable as exc:
            print(f"astara-router-ctl: {exc}", file=sys.stderr)
            offline = offline_config if args.command == "config" else offline_generations
            emit(offline(settings.state_dir), show, settings.state_dir)
        return 0
    if args.command == "interfaces":
        emit(agent.request("GET", "/v1/system/interfaces"), show_interfaces)
        return 0
    if args.command == "health":
        answer = agent.request("GET", "/v1/status/")
        emit(answer, show_health)
        return 0 if answer.get("state") == "ready" else 1
    if args.command == "history":
        emit(agent.request("GET", f"/v1/system/history?limit={args.limit}"), show_history)
        return 0
    if args.command == "diff":
        try:
            answer = agent.request("POST", "/v1/system/config/diff",
                                   read_candidate(args.file))
        except AgentError as exc:
            if exc.status in (400, 413, 422):
                emit(exc.body, show_refusal)
                return 2
            raise
        emit(answer, show_diff)
        return 0 if answer.get("identical") else 1
    if args.command == "rollback":
        path = "/v1/system/config/rollback"
        if args.confirm_timeout:
            path += f"?confirm_timeout={args.confirm_timeout}"
        body = {"generation": args.generation} if args.generation is not None else {}
        answer = agent.request("POST", path, body)
        emit(answer, show_applied, "rolled back" + (
            f" to generation {args.generation}" if args.generation is not None else ""))
        return 0
    if args.command == "confirm":
        answer = agent.request("POST", "/v1/system/config/confirm")
        emit(answer, lambda a, o: print(
            f"confirmed generation {a['confirmed']}" if a.get("confirmed") is not None
            else "no generation awaits confirmation", file=o))
        return 0
    raise AssertionError(args.command)


def show_diff(answer, out):
    if answer.get("identical"):
        print(f"identical to the running generation {answer.get('generation')}", file=out)
        return
    for line in answer.get("diff", ()):
        print(line, file=out)
    subsystems = answer.get("subsystems") or ()
    print(f"would change: {', '.join(subsystems) if subsystems else 'nothing applied'}",
          file=out)


def show_refusal(body, out):
    print(f"refused: {body.get('message') or body.get('error')}", file=out)
    for error in body.get("errors") or ():
        print(f"  {error.get('path') or '(body)'}: {error.get('message')}", file=out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="astara-router-ctl", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help=f"the agent's ini file (default "
                                              f"{DEFAULT_CONFIG_FILE} when it exists)")
    parser.add_argument("--state-dir", help="the agent's state directory (default: the "
                                            "config file's, else /var/lib/astara)")
    parser.add_argument("--url", help="the agent's API over TCP, e.g. "
                                      "https://[fdca::5]:5000 (default: its operator "
                                      "socket, else where it listens)")
    parser.add_argument("--cert", help="a client certificate signed by the agent's [api] "
                                       "ca_certs, for TCP under mutual TLS (default: none)")
    parser.add_argument("--key", help="its key (default: in the --cert file)")
    parser.add_argument("--cacert", help="the CA to verify the agent with (default: the "
                                         "agent's [api] ca_certs, else its certfile)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("config", "interfaces", "health", "generations", "confirm"):
        commands.add_parser(name)
    history = commands.add_parser("history")
    history.add_argument("-n", "--limit", type=int, default=20, help="entries (default 20)")
    diff = commands.add_parser("diff")
    diff.add_argument("file", help="the candidate payload (JSON); - for stdin")
    rollback = commands.add_parser("rollback")
    rollback.add_argument("generation", type=int, nargs="?",
                          help="a kept generation (see 'generations'); default the previous")
    rollback.add_argument("--confirm-timeout", type=int,
                          help="revert unless 'confirm' comes within this many seconds "
                               "(needed to go back to another management address)")
    args = parser.parse_args(argv)
    if args.key and not args.cert:
        parser.error("--key needs --cert")
    return args


def main(argv=None, out=sys.stdout):
    args = parse_args(argv)
    config_file = args.config_file or (DEFAULT_CONFIG_FILE
                                       if os.path.exists(DEFAULT_CONFIG_FILE) else None)
    try:
        settings = settings_mod.load(config_file, state_dir=args.state_dir)
        agent = Agent.from_settings(settings, args.url, args.timeout, args.cert, args.key,
                                    args.cacert)
        return run(args, agent, settings, out)
    except (AgentUnavailable, ValueError, OSError) as exc:
        print(f"astara-router-ctl: {exc}", file=sys.stderr)
        return 3
    except AgentError as exc:
        print(f"astara-router-ctl: {exc}", file=sys.stderr)
        for error in (exc.body.get("errors") or ()) if isinstance(exc.body, dict) else ():
            print(f"  {error.get('path') or '(body)'}: {error.get('message')}",
                  file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
