"""Several orchestrators on one host, sharing one PostgreSQL store and one coordination
backend (redis-server or etcd), for the lab (``astara-lab up --orchestrators N``), the
cluster tests and the bench.

Everything runs in the lab's controller namespace: the servers on its private loopback,
the orchestrators (``orch-1`` ... ``orch-N``, admin API on 127.0.0.1:44250+i-1) with the
netns driver on the lab's fabric and one *shared* appliance state root (the netns and
QEMU drivers keep their instance records on the host, which is why those drivers need the
orchestrators on one host; Nova's are found through its API anywhere), and one shared
``[tls] directory``: the members are one CA to the appliances.

Also: the routers the tests and the bench create (``populate``), reading the appliances'
push logs (``push: applied|unchanged|refused|failed ... (from orchestrator=X epoch=N)`` for
a push the agent took, ``config push from orchestrator=X epoch=N refused`` for one its epoch
fence refused; the same lines from the real agent and the stand-in) and the check that no
appliance ever took pushes from two owners in one interval.
"""
import contextlib
import os
import pathlib
import re
import signal
import sys

from .appliance import REPO_ROOT
from .orchestrator import ADMIN_PORT, AdminApiError, OrchestratorError, \
    OrchestratorProcess, write_config
from .services import EtcdServer, PostgresServer, RedisServer
from orchestrator_lite.health import INSTANCE_NAME

REDIS_PORT = 6379
ETCD_PORT = 2379
POSTGRES_PORT = 5432
EXT_NET = "e0000000-0000-4000-8000-000000000000"  # the external network of populate()
# The summary line of a push the agent took (history.py) and the line of one its epoch
# fence refused first (api/__init__.py); both name the sender as fencing.push_sender does.
PUSH_LINE = re.compile(r"push: (?P<outcome>applied|unchanged|refused|failed) in [^\n]*"
                       r"\(from orchestrator=(?P<who>\S+) epoch=(?P<epoch>[^\s)]+)\)")
FENCED_LINE = re.compile(r"config push from orchestrator=(?P<who>\S+) epoch=(?P<epoch>\S+) "
                         r"refused")


def coordination_url(server, timeout):
    """The tooz URL with membership and lock timeouts (seconds)."""
    return f"{server.url}?timeout={timeout}&membership_timeout={timeout}" \
           f"&lock_timeout={timeout}"


def standin_interpreter(directory):
    """A wrapper "interpreter" for ``[netns] python``: the management boot runs for real,
    the agent is the stand-in (test/bench/standin_agent.py)."""
    wrapper = pathlib.Path(directory) / "agent-python"
    wrapper.write_text(
        "#!/bin/sh\n# The netns driver's interpreter: the management boot runs for real, "
        "the agent is the stand-in.\n"
        'for arg in "$@"; do\n'
        '  if [ "$arg" = astara_router.cli.api ]; then\n'
        f'    exec {sys.executable} {REPO_ROOT}/test/bench/standin_agent.py "$@"\n'
        "  fi\ndone\n"
        f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


class Cluster:
    """``count`` orchestrators in ``ctl`` (a Netns) against PostgreSQL + ``backend``
    ("redis", "etcd"; None: one orchestrator alone on its SQLite file, no servers — the
    default deployment, for comparisons).

    ``sections``: extra ini sections for every member (health, management, netns
    bridges...); ``standin``: stand-in appliances instead of real agents."""

    def __init__(self, lab_prefix, fabric_name, ctl, directory, count=3, backend="redis",
                 token="cluster-token", sections=None, standin=False, timeout=5,
                 heartbeat=1.0, log_level="INFO"):
        self.prefix = lab_prefix
        self.fabric = fabric_name
        self.ctl = ctl
        self.dir = pathlib.Path(directory)
        self.count = count
        self.backend = backend
        self.token = token
        self.sections = sections or {}
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.log_level = log_level
        self.python = standin_interpreter(self.dir) if standin else None
        self.appliances = self.dir / "appliances"
        # Mutual TLS: one CA for all members (a new owner must be trusted by, and trust, the
        # appliances another member booted); stand-ins speak plain HTTP.
        self.pki = None if standin else self.dir / "pki"
        self.postgres = PostgresServer(self.dir / "postgres", POSTGRES_PORT, ctl.name) \
            if backend else None
        self.coordination = {"redis": lambda: RedisServer(self.dir / "redis", REDIS_PORT,
                                                          ctl.name),
                             "etcd": lambda: EtcdServer(self.dir / "etcd", ETCD_PORT,
                                                        ctl.name),
                             None: lambda: None}[backend]()
        self.members = {}  # identity -> OrchestratorProcess

    # -- servers and members -------------------------------------------------------------------
    @staticmethod
    def identity(index):
        return f"orch-{index}"

    @staticmethod
    def index(identity):
        """``identity``'s member number (``orch-2``: 2)."""
        return int(identity.rsplit("-", 1)[1])

    @staticmethod
    def admin_port(index):
        """Member ``index``'s admin API port (on the controller's loopback)."""
        return ADMIN_PORT + index - 1

    def start_servers(self):
        if self.backend:
            self.postgres.start(timeout=60)
            self.coordination.start(timeout=30)

    def write_configs(self):
        for index in range(1, self.count + 1):
            self.member(index)

    def member(self, index):
        name = self.identity(index)
        if name in self.members:
            return self.members[name]
        directory = self.dir / name
        directory.mkdir(parents=True, exist_ok=True)
        sections = {
            "DEFAULT": {"host": name, "state_dir": f"{directory}/state",
                        "log_level": self.log_level},
            "api": {"listen": "127.0.0.1", "port": self.admin_port(index),
                    "token": self.token},
            "compute": {"driver": "netns"},
            "netns": {"prefix": self.prefix, "fabric": self.fabric,
                      "management_bridge": "b-mgmt", "state_root": str(self.appliances),
                      "python": self.python},
            "tls": {"enabled": "false"} if self.pki is None else
                   {"enabled": "true", "directory": str(self.shared_ca())},
        }
        if self.backend:
            sections["database"] = {"connection": self.postgres.url}
            sections["coordination"] = {
                "backend_url": coordination_url(self.coordination, self.timeout),
                "heartbeat": self.heartbeat}
        for section, values in self.sections.items():
            sections[section] = dict(sections.get(section, {}), **values)
        ini = write_config(directory / "orchestrator.ini", sections)
        process = OrchestratorProcess(self.ctl.name, ini, directory / "orchestrator.log",
                                      api_timeout=60)
        self.members[name] = process
        return process

    def shared_ca(self):
        """The members' one ``[tls] directory``, with the CA and the client certificate
        made before any member starts (so no two members create them at once)."""
        if not (self.pki / "client.crt").exists():
            from orchestrator_lite.pki import CertificateAuthority
            CertificateAuthority(self.pki)
        return self.pki

    def upgrade_store(self):
        """``astara-orchestrator db upgrade`` once, before any member starts."""
        if not self.backend:
            return "SQLite: upgraded by the orchestrator at start"
        member = self.member(1)
        result = self.ctl.run([sys.executable, "-m", "orchestrator_lite.cli.server", "db",
                               "upgrade", "--config", str(member.config)], check=False)
        if result.returncode != 0:
            raise OrchestratorError(f"db upgrade failed: {result.stderr or result.stdout}")
        return result.stdout.strip()

    def start(self, index=None, timeout=60):
        for i in ([index] if index else range(1, self.count + 1)):
            self.member(i).start(timeout=timeout)

    def signal(self, index, sig):
        os.kill(self.member(index).pid, sig)

    def kill(self, index):
        """kill -9: no clean leave, no lock released."""
        process = self.member(index)
        self.signal(index, signal.SIGKILL)
        process.stop(timeout=5)  # reaps it

    def stop(self, index=None):
        for i in ([index] if index else range(1, self.count + 1)):
            self.member(i).stop(timeout=20)

    def running(self):
        return [i for i in range(1, self.count + 1)
                if self.member(i).pid and self.member(i).exit_status() is None]

    def close(self):
        """Stop the members and the servers, then delete the appliances (they outlive the
        orchestrators on purpose)."""
        for index in range(1, self.count + 1):
            with contextlib.suppress(Exception):
                if self.member(index).pid:  # a SIGSTOPped one must wake to stop
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.member(index).pid, signal.SIGCONT)
                self.member(index).stop(timeout=20)
        if self.backend:
            self.coordination.stop()
            self.postgres.stop()
        delete_appliances(self.prefix, self.appliances, self.fabric)

    # -- the admin APIs --------------------------------------------------------------------------
    def api(self, index, method, path, body=None):
        return self.member(index).api(method, path, body)

    def any_api(self, method, path, body=None):
        last = None
        for index in self.running():
            try:
                return self.api(index, method, path, body)
            except (OSError, AdminApiError) as exc:
                last = exc
        raise OrchestratorError(f"no member answered {method} {path}: {last}")

    def resources(self, indexes=None):
        """{identity: [resource rows]} from each running member's API."""
        return {self.identity(i): self.api(i, "GET", "/v1/resources")["resources"]
                for i in (indexes or self.running())}

    def workers(self, index):
        return self.api(index, "GET", "/v1/workers")

    def ownership(self, indexes=None):
        """{resource id: (owner, epoch, state)} as the store says, and {resource id:
        [members working on it]} as the members (``indexes``: which to ask) say."""
        views = self.resources(indexes)
        stored = {}
        local = {}
        for identity, rows in views.items():
            for row in rows:
                stored[row["id"]] = (row["owner"], row["epoch"], row["state"])
                if row["local"]:
                    local.setdefault(row["id"], []).append(identity)
        return stored, local

    def resource(self, resource_id):
        """The full view of a resource from its owner (instances, hashes)."""
        row = self.any_api("GET", f"/v1/resources/{resource_id}")["resource"]
        return from_owner(row, {identity: member.admin
                                for identity, member in self.members.items()})

    # -- the appliances --------------------------------------------------------------------------
    def instances(self):
        """{instance name: (namespace, agent pid, log path)} from the shared records."""
        from orchestrator_lite.drivers.netns import NetnsDriver
        driver = NetnsDriver(self.prefix, self.appliances, fabric=self.fabric)
        return {i.name: (i.id, i.details.get("agent_pid"), i.details.get("log"))
                for i in driver.list("ak-")}


def from_owner(row, apis):
    """A resource's full view (instances, hashes) is its owner's: ``row`` is what some
    member answered; unless that member owns it (or nobody does), ask the owner through
    ``apis`` ({identity: AdminApi}; an owner not in it: ``row`` stands)."""
    owner = row.get("owner")
    if row.get("local") or owner not in apis:
        return row
    return apis[owner].resource(row["id"])


def delete_appliances(prefix, state_root, fabric):
    from orchestrator_lite.drivers.netns import NetnsDriver
    if not pathlib.Path(state_root).is_dir():
        return
    driver = NetnsDriver(prefix, state_root, fabric=fabric)
    for instance in driver.list("ak-"):
        with contextlib.suppress(Exception):
            driver.delete(instance.id)


# -- routers for the tests and the bench ------------------------------------------------------

def router_id(i):
    return f"{0xa000 + i:04x}0000-0000-4000-8000-{i:012d}"  # distinct 4 hex: netns names


def tenant_network_id(i):
    return f"{0xc000 + i:04x}0000-0000-4000-8000-{i:012d}"  # distinct 8 hex: bridge names


def router_of(instance_name):
    """The resource id in an appliance's name (``ak-router-<id>_<n>``)."""
    return INSTANCE_NAME.match(instance_name)["id"]


def populate(api, count):
    """``count`` routers (``router_id(i)``), each with a gateway on one external network and
    one tenant network of its own, through ``api(method, path, body)`` (any member)."""
    api("POST", "/v1/networks", {"id": EXT_NET, "external": True, "mtu": 1500})
    api("POST", "/v1/subnets", {"id": "ext4", "network_id": EXT_NET,
                                "cidr": "198.51.100.0/24", "gateway_ip": "198.51.100.1",
                                "enable_dhcp": False})
    for i in range(count):
        rid, net = router_id(i), tenant_network_id(i)
        api("POST", "/v1/networks", {"id": net, "tenant_id": f"t{i}", "mtu": 1450})
        api("POST", "/v1/subnets", {"id": f"sub-{i}", "network_id": net,
                                    "cidr": f"10.{i // 250}.{i % 250}.0/24"})
        api("POST", "/v1/routers", {"id": rid, "tenant_id": f"t{i}"})
        api("PUT", f"/v1/routers/{rid}/gateway", {"network_id": EXT_NET})
        api("POST", f"/v1/routers/{rid}/interfaces", {"subnet_id": f"sub-{i}"})


def push_log(path):
    """``[(orchestrator, epoch or None, accepted?)]`` in the order the appliance saw them
    (a push with neither header, the original orchestrator's, names no sender)."""
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return []
    found = sorted([*PUSH_LINE.finditer(text), *FENCED_LINE.finditer(text)],
                   key=lambda m: m.start())
    return [(m["who"], None if m["epoch"] == "-" else int(m["epoch"]),
             m.groupdict().get("outcome") in ("applied", "unchanged")) for m in found]


def push_violations(pushes):
    """What breaks "never two owners at once" in one appliance's push log: an accepted
    push with a lower epoch than one accepted before, or one epoch used by two
    orchestrators (two owners would be taking turns in the same interval)."""
    problems = []
    highest = None
    owners = {}
    for who, epoch, accepted in pushes:
        if not accepted or epoch is None:
            continue
        if highest is not None and epoch < highest:
            problems.append(f"accepted epoch {epoch} from {who} after epoch {highest}")
        if owners.setdefault(epoch, who) != who:
            problems.append(f"epoch {epoch} used by {owners[epoch]} and {who}")
        highest = epoch if highest is None else max(highest, epoch)
    return problems
