"""``astara-ctl``: operate the orchestrator through its admin API.

  astara-ctl resource list|show [ID]                 state, last error, instances
  astara-ctl router|loadbalancer|resource rebuild|update|debug|manage|poll ID [--reason R]
  astara-ctl resource rebuild ID --image IMAGE [--instance NAME]   onto another image
  astara-ctl upgrade start --image IMAGE [--max-unavailable N] [--tenant T] [--resource ID]
                           [--unit-timeout S] [--wait]             rolling fleet upgrade
  astara-ctl upgrade status [--json] | stop
  astara-ctl tenant debug|manage TENANT [--reason R]
  astara-ctl global debug|manage [--reason R]
  astara-ctl poll                                    poll every resource now
  astara-ctl workers debug                           queues, workers, debug flags, polls sent
  astara-ctl ssh ID [--instance N]                   shell in the appliance: ssh as astara
                                                     (VM drivers), ip netns exec (netns)
  astara-ctl browse [--once] [--interval S]          live table of resources (q quits)
  astara-ctl debug-resource ID [--action A ...] [--follow] [--timeout S] [--json]
                                                     its state machine in the foreground:
                                                     events, steps, transitions, requests,
                                                     answers (the workers leave it alone)
  astara-ctl placement list                          per-tenant/per-resource image, driver
  astara-ctl placement set tenant|resource ID [driver=D] [image=I]
  astara-ctl placement clear tenant|resource ID

Desired state (KIND = network subnet port router floatingip loadbalancer listener pool
member ipsec_site_connection; VALUE is JSON when it parses, else a string)::

  astara-ctl KIND list [--json] | show ID | delete ID
  astara-ctl KIND create [key=VALUE ...] [--data JSON-OBJECT]
  astara-ctl KIND set ID key=VALUE ...
  astara-ctl router add-interface ROUTER SUBNET [ip_address=..] [mac_address=..]
  astara-ctl router remove-interface ROUTER PORT
  astara-ctl router set-gateway ROUTER NETWORK [fixed_ips=[...]]
  astara-ctl router clear-gateway ROUTER

The API URL and token come from the ini file (``--config``, else $ASTARA_CTL_CONFIG, else
/etc/astara/orchestrator.ini): ``[api] url``, or ``listen`` + ``port``; ``[api] token``.
"""
import argparse
import contextlib
import json
import os
import select
import shlex
import sys
import time

import requests

from .. import config
from ..config import DEFAULT_CONFIG, ApiSettings
from ..store.kinds import PLURALS

KINDS = {kind: plural for plural, kind in PLURALS.items() if kind != "appliance_port"}
RESOURCE_COMMANDS = ("rebuild", "update", "debug", "manage", "poll")
STATE_COLORS = {"configured": "32", "up": "36", "booting": "33", "degraded": "33",
                "replug": "33", "restart": "33", "down": "31", "error": "1;31",
                "gone": "2", "unknown": "2"}
LIST_COLUMNS = {
    "network": ("id", "name", "tenant_id", "mtu", "external"),
    "subnet": ("id", "network_id", "cidr", "gateway_ip", "enable_dhcp"),
    "port": ("id", "network_id", "mac_address", "fixed_ips", "device_owner", "device_id"),
    "router": ("id", "name", "tenant_id", "ha"),
    "floatingip": ("id", "router_id", "floating_ip_address", "fixed_ip_address"),
    "loadbalancer": ("id", "name", "tenant_id", "vip_address"),
    "listener": ("id", "loadbalancer_id", "protocol", "protocol_port", "default_pool_id"),
    "pool": ("id", "loadbalancer_id", "protocol", "lb_algorithm"),
    "member": ("id", "pool_id", "address", "protocol_port", "weight"),
    "ipsec_site_connection": ("id", "router_id", "peer_address", "local_subnet_ids",
                              "peer_cidrs", "admin_state_up"),
}


class CtlError(Exception):
    pass


class Client:
    def __init__(self, url, token, timeout=30):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @contextlib.contextmanager
    def _request(self, method, path, body=None, stream=False):
        """One request to the admin API (no proxies, the bearer token); an answer of 400
        or more becomes a CtlError with the API's message."""
        try:
            with requests.Session() as session:
                session.trust_env = False
                with session.request(method, self.url + path, json=body, stream=stream,
                                     timeout=(self.timeout, None) if stream else self.timeout,
                                     headers={"Authorization": f"Bearer {self.token}"}) \
                        as response:
                    if response.status_code >= 400:
                        try:
                            data = response.json()
                        except ValueError:
                            data = {"message": response.text}
                        message = data.get("message") or data if isinstance(data, dict) \
                            else data
                        raise CtlError(f"{method} {path}: {response.status_code} {message}")
                    yield response
        except requests.RequestException as exc:
            raise CtlError(f"cannot reach the orchestrator at {self.url}: {exc}") from None

    def stream(self, method, path, body=None):
        """JSON lines of a streaming answer, as they arrive."""
        with self._request(method, path, body, stream=True) as response:
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def call(self, method, path, body=None):
        with self._request(method, path, body) as response:
            if response.status_code == 204:
                return None
            try:
                return response.json()
            except ValueError:
                return {"message": response.text}


def api_settings(path):
    """The [api] section, read by the orchestrator's own loader (one parser, one set of
    defaults and checks for the server and the CLI)."""
    try:
        return config.load(path).api
    except config.ConfigError as exc:
        raise CtlError(str(exc)) from None


def parse_assignments(items):
    body = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"{item!r} is not key=value")
        try:
            body[key] = json.loads(value)
        except ValueError:
            body[key] = value
    return body


# -- output -----------------------------------------------------------------------------------

def cell(value):
    if isinstance(value, list):
        return ",".join(i.get("ip_address", json.dumps(i)) if isinstance(i, dict) else str(i)
                        for i in value)
    if value is None:
        return "-"
    return str(value)


def table(rows, columns, color_column=None, color=False):
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row, values in zip(rows, cells):
        parts = []
        for column, value, width in zip(columns, values, widths):
            text = value.ljust(width)
            if color and column == color_column:
                code = STATE_COLORS.get(row.get(column), "0")
                text = f"\x1b[{code}m{text}\x1b[0m"
            parts.append(text)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


RESOURCE_COLUMNS = ("id", "kind", "tenant_id", "state", "owner", "epoch", "instances", "paused",
                    "last_error")


def resource_table(resources, color=False):
    rows = sorted(resources, key=lambda r: (r["kind"], r["tenant_id"], r["id"]))
    # Long errors are cut here; `resource show` has the whole text.
    rows = [dict(r, last_error=(r.get("last_error") or "")[:100] or None) for r in rows]
    return table(rows, RESOURCE_COLUMNS, "state", color)


def emit(data):
    print(json.dumps(data, indent=2, sort_keys=True))


# -- commands ---------------------------------------------------------------------------------

def cmd_resource(client, args):
    if args.action == "list":
        resources = client.call("GET", "/v1/resources")["resources"]
        if args.json:
            emit(resources)
        else:
            print(resource_table(resources))
        return 0
    if not args.id:
        raise CtlError(f"resource {args.action} needs an id")
    if args.action == "show":
        emit(client.call("GET", f"/v1/resources/{args.id}")["resource"])
        return 0
    body = {"reason": args.reason or ""}
    if getattr(args, "image", None) is not None:
        body["image"] = args.image
    if getattr(args, "instance", None) is not None:
        body["instance"] = args.instance
    emit(client.call("POST", f"/v1/resources/{args.id}/{args.action}", body))
    return 0


UPGRADE_COLUMNS = ("kind", "id", "tenant_id", "status", "message")
UPGRADE_ENDED = ("finished", "halted", "stopped")


def upgrade_summary(upgrade):
    counts = ", ".join(f"{k} {v}" for k, v in sorted(upgrade["counts"].items()))
    text = (f"upgrade onto {upgrade['image'] or 'the default image'} "
            f"({upgrade['image_id']}), at most {upgrade['max_unavailable']} at a time: "
            f"{upgrade['state']}; {counts or 'no resources'}")
    if upgrade.get("reason"):
        text += f"\n  {upgrade['reason']}"
    return text


def cmd_upgrade(client, args):
    if args.action == "start":
        if args.image is None:
            raise CtlError("upgrade start needs --image (\"\" for the driver's default)")
        body = {"image": args.image, "max_unavailable": args.max_unavailable}
        if args.tenant:
            body["tenant_id"] = args.tenant
        if args.resource:
            body["resources"] = args.resource
        if args.unit_timeout:
            body["unit_timeout"] = args.unit_timeout
        upgrade = client.call("POST", "/v1/upgrades", body)["upgrade"]
        print(upgrade_summary(upgrade))
        if not args.wait:
            return 0
        last = None
        while upgrade["state"] not in UPGRADE_ENDED:
            time.sleep(args.interval)
            upgrade = client.call("GET", "/v1/upgrades")["upgrade"]
            line = upgrade_summary(upgrade)
            if line != last:
                print(line, flush=True)
                last = line
        print(table(upgrade["resources"], UPGRADE_COLUMNS))
        failed = upgrade["state"] != "finished" or upgrade["counts"].get("failed")
        return 1 if failed else 0
    if args.action == "stop":
        print(upgrade_summary(client.call("DELETE", "/v1/upgrades")["upgrade"]))
        return 0
    upgrade = client.call("GET", "/v1/upgrades")["upgrade"]
    if args.json:
        emit(upgrade)
    elif upgrade is None:
        print("no upgrade has been started")
    else:
        print(upgrade_summary(upgrade))
        print(table(upgrade["resources"], UPGRADE_COLUMNS))
    return 0


def cmd_scope(client, args):
    path = f"/v1/tenants/{args.id}/{args.action}" if args.scope == "tenant" else \
        f"/v1/global/{args.action}"
    emit(client.call("POST", path, {"reason": args.reason or ""}))
    return 0


def cmd_objects(client, args):
    kind, plural = args.kind, KINDS[args.kind]
    action = args.action
    if kind in ("router", "loadbalancer") and action in RESOURCE_COMMANDS:
        args.id = args.args[0] if args.args else None
        return cmd_resource(client, args)
    rest = list(args.args)
    if action == "list":
        objects = client.call("GET", f"/v1/{plural}")[plural]
        if args.json:
            emit(objects)
        else:
            print(table(objects, LIST_COLUMNS[kind]))
        return 0
    if action in ("show", "delete") and len(rest) != 1:
        raise CtlError(f"{kind} {action} needs exactly one id")
    if action == "show":
        emit(client.call("GET", f"/v1/{plural}/{rest[0]}")[kind])
    elif action == "delete":
        client.call("DELETE", f"/v1/{plural}/{rest[0]}")
        print(f"deleted {kind} {rest[0]}")
    elif action == "create":
        body = json.loads(args.json_body) if args.json_body else {}
        body.update(parse_assignments(rest))
        emit(client.call("POST", f"/v1/{plural}", body)[kind])
    elif action == "set":
        if not rest:
            raise CtlError(f"{kind} set needs an id")
        body = json.loads(args.json_body) if args.json_body else {}
        body.update(parse_assignments(rest[1:]))
        emit(client.call("PATCH", f"/v1/{plural}/{rest[0]}", body)[kind])
    elif kind == "router" and action == "add-interface":
        if len(rest) < 2:
            raise CtlError("router add-interface ROUTER SUBNET [key=value ...]")
        body = {"subnet_id": rest[1], **parse_assignments(rest[2:])}
        emit(client.call("POST", f"/v1/routers/{rest[0]}/interfaces", body)["port"])
    elif kind == "router" and action == "remove-interface":
        if len(rest) != 2:
            raise CtlError("router remove-interface ROUTER PORT")
        client.call("DELETE", f"/v1/routers/{rest[0]}/interfaces/{rest[1]}")
        print(f"removed interface {rest[1]}")
    elif kind == "router" and action == "set-gateway":
        if len(rest) < 2:
            raise CtlError("router set-gateway ROUTER NETWORK [fixed_ips=[...]]")
        body = {"network_id": rest[1], **parse_assignments(rest[2:])}
        emit(client.call("PUT", f"/v1/routers/{rest[0]}/gateway", body)["port"])
    elif kind == "router" and action == "clear-gateway":
        client.call("DELETE", f"/v1/routers/{rest[0]}/gateway")
        print(f"cleared the gateway of {rest[0]}")
    else:
        raise CtlError(f"unknown command: {kind} {action}")
    return 0


def cmd_poll(client, args):
    emit(client.call("POST", "/v1/poll"))
    return 0


def cmd_workers(client, args):
    emit(client.call("GET", "/v1/workers"))
    return 0


def cmd_ssh(client, args):
    resource = client.call("GET", f"/v1/resources/{args.id}")["resource"]
    instances = resource.get("instances") or []
    if not instances:
        raise CtlError(f"{args.id} has no running instance")
    if args.instance >= len(instances):
        raise CtlError(f"{args.id} has {len(instances)} instance(s)")
    command = instances[args.instance].get("shell")
    if not command:
        raise CtlError("the compute driver offers no shell for this instance")
    if sys.stdin.isatty() and sys.stdout.isatty():
        os.execvp(command[0], command)
    print(shlex.join(command))
    return 0


def trace_line(line):
    """One debug-session line for people."""
    kind = line.get("kind", "")
    rest = {k: v for k, v in line.items() if k not in ("t", "kind")}
    if kind == "step":
        text = f"{rest['step']} [{rest['state']}] -> {rest['next']}"
    elif kind == "transition":
        text = f"{rest['old']} -> {rest['new']}" + \
            (f"  ({rest['last_error']})" if rest.get("last_error") else "")
    elif kind == "event":
        text = f"{rest['action']} (from {rest['source']})"
    elif kind == "request":
        text = rest["call"]
    elif kind == "answer":
        text = f"{rest['call']} -> " + (f"ERROR {rest['error']}" if "error" in rest
                                       else rest.get("result", ""))
    else:
        text = " ".join(f"{k}={v}" for k, v in rest.items())
    return f"{line.get('t', 0):+9.3f}  {kind:<10} {text}"


def cmd_debug_resource(client, args):
    body = {"actions": args.action or ["poll"], "follow": args.follow,
            "timeout": args.timeout}
    code = 0
    for line in client.stream("POST", f"/v1/resources/{args.id}/debug-session", body):
        print(json.dumps(line, sort_keys=True) if args.json else trace_line(line), flush=True)
        if line.get("kind") == "error":
            code = 1
    return code


def cmd_placement(client, args):
    if args.action == "list":
        emit(client.call("GET", "/v1/placements"))
        return 0
    if args.scope not in ("tenant", "resource") or not args.id:
        raise CtlError(f"placement {args.action} tenant|resource ID")
    path = f"/v1/placements/{args.scope}/{args.id}"
    if args.action == "clear":
        emit(client.call("DELETE", path))
        return 0
    emit(client.call("PUT", path, parse_assignments(args.settings)))
    return 0


def render_browse(resources, color):
    stamp = time.strftime("%H:%M:%S")
    counts = {}
    for r in resources:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no resources"
    return f"astara-ctl browse  {stamp}  {summary}  (q to quit)\n\n" + \
        resource_table(resources, color)


def cmd_browse(client, args):
    color = sys.stdout.isatty() and not args.once
    if args.once:
        print(render_browse(client.call("GET", "/v1/resources")["resources"], False))
        return 0
    interactive = sys.stdin.isatty()
    saved = None
    if interactive:
        import termios
        import tty
        saved = termios.tcgetattr(sys.stdin)
        tty.setcbreak(sys.stdin.fileno())
    try:
        while True:
            try:
                text = render_browse(client.call("GET", "/v1/resources")["resources"], color)
            except CtlError as exc:
                text = f"astara-ctl browse: {exc}"
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            if interactive:
                ready, _, _ = select.select([sys.stdin], [], [], args.interval)
                if ready and sys.stdin.read(1).lower() == "q":
                    return 0
            else:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            import termios
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def build_parser():
    parser = argparse.ArgumentParser(prog="astara-ctl", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--config", default=os.environ.get("ASTARA_CTL_CONFIG", DEFAULT_CONFIG))
    parser.add_argument("--url", help="admin API URL (overrides the config)")
    parser.add_argument("--token", help="admin API token (overrides the config)")
    sub = parser.add_subparsers(dest="command", required=True)

    res = sub.add_parser("resource", help="routers and load balancers with their state")
    res.add_argument("action", choices=("list", "show") + RESOURCE_COMMANDS)
    res.add_argument("id", nargs="?")
    res.add_argument("--reason")
    res.add_argument("--json", action="store_true")
    res.add_argument("--image", help="rebuild: boot this image (driver label or path)")
    res.add_argument("--instance", help="rebuild: only this instance (e.g. one HA member)")
    res.set_defaults(func=cmd_resource)

    upg = sub.add_parser("upgrade", help="rolling upgrade of the fleet onto an image")
    upg.add_argument("action", choices=("start", "status", "stop"))
    upg.add_argument("--image", help="start: the image (driver label or path; \"\": the "
                                     "driver's default)")
    upg.add_argument("--max-unavailable", type=int, default=1,
                     help="start: appliances replaced (down) at once, at most")
    upg.add_argument("--tenant", help="start: only this tenant's resources")
    upg.add_argument("--resource", action="append", help="start: only these resources")
    upg.add_argument("--unit-timeout", type=float,
                     help="start: seconds one replacement may take before the upgrade halts")
    upg.add_argument("--wait", action="store_true", help="start: follow it to its end")
    upg.add_argument("--interval", type=float, default=2.0)
    upg.add_argument("--json", action="store_true")
    upg.set_defaults(func=cmd_upgrade)

    for scope, text in (("tenant", "pause/resume a whole tenant"),
                        ("global", "pause/resume everything")):
        p = sub.add_parser(scope, help=text)
        p.add_argument("action", choices=("debug", "manage"))
        if scope == "tenant":
            p.add_argument("id")
        p.add_argument("--reason")
        p.set_defaults(func=cmd_scope, scope=scope)

    for kind in KINDS:
        actions = ["list", "show", "create", "set", "delete"]
        if kind in ("router", "loadbalancer"):
            actions += list(RESOURCE_COMMANDS)
        if kind == "router":
            actions += ["add-interface", "remove-interface", "set-gateway", "clear-gateway"]
        p = sub.add_parser(kind, help=f"{KINDS[kind]} in the desired state")
        p.add_argument("action", choices=actions)
        p.add_argument("args", nargs="*", help="ID and/or key=VALUE")
        p.add_argument("--data", dest="json_body", help="the object as JSON (create/set)")
        p.add_argument("--reason")
        p.add_argument("--json", action="store_true", help="list: print JSON")
        if kind in ("router", "loadbalancer"):
            p.add_argument("--image", help="rebuild: boot this image")
            p.add_argument("--instance", help="rebuild: only this instance")
        p.set_defaults(func=cmd_objects, kind=kind)

    p = sub.add_parser("poll", help="poll every resource now")
    p.set_defaults(func=cmd_poll)
    p = sub.add_parser("workers", help="worker pool state")
    p.add_argument("action", choices=("debug",))
    p.set_defaults(func=cmd_workers)
    p = sub.add_parser("ssh", help="open a shell in the resource's appliance")
    p.add_argument("id")
    p.add_argument("--instance", type=int, default=0)
    p.set_defaults(func=cmd_ssh)
    p = sub.add_parser("debug-resource",
                       help="run one resource's state machine in the foreground")
    p.add_argument("id")
    p.add_argument("--action", action="append", help="event(s) to start with (default "
                                                     "poll): create update poll rebuild...")
    p.add_argument("--follow", action="store_true",
                   help="keep acting on events that arrive until --timeout")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print the raw JSON lines")
    p.set_defaults(func=cmd_debug_resource)
    p = sub.add_parser("placement", help="per-tenant/per-resource image and driver")
    p.add_argument("action", choices=("list", "set", "clear"))
    p.add_argument("scope", nargs="?", choices=("tenant", "resource"))
    p.add_argument("id", nargs="?")
    p.add_argument("settings", nargs="*", help="driver=NAME image=IMAGE")
    p.set_defaults(func=cmd_placement)
    p = sub.add_parser("browse", help="live table of every resource and its state")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--interval", type=float, default=1.0)
    p.set_defaults(func=cmd_browse)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.url and args.token:
            api = ApiSettings(url=args.url, token=args.token)
        else:
            api = api_settings(args.config)
        client = Client(args.url or api.base_url, args.token or api.token)
        return args.func(client, args)
    except CtlError as exc:
        print(f"astara-ctl: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
