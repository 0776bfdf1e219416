"""Orchestrator settings: one ini file (``astara-orchestrator --config FILE``), typed once.

Every knob has a default, so an ini with only ``[api] token`` (and, for the netns driver,
the ``[netns]`` names the lab chose) is enough to run. Sections and keys::

  [DEFAULT] host, state_dir, database, log_file, log_level
  [api] listen, port, token, url, threads
  [management] network_id, subnet_id, prefix, gateway_ip, mtu, orchestrator_address,
               metadata_port
  [router] asn, neighbor_asn, provider_rules_path
  [appliance] port, token, alive_timeout, interfaces_timeout, config_timeout,
              confirm_timeout (commit-confirm seconds; 0: plain PUTs), retry_attempts,
              retry_base, retry_cap, ntp_servers
  [health] period, jitter, dead_grace, degraded_grace, boot_timeout, boot_check_interval,
           max_boot_attempts, boot_backoff_base, boot_backoff_cap, error_cooldown,
           delete_timeout, hotplug_timeout, max_push_failures, push_backoff_base,
           push_backoff_cap
  [workers] threads
  [database] connection, watch_interval
  [coordination] backend_url, group, heartbeat
  [webhook] url, timeout
  [compute] driver, drivers             (netns, openstack, qemu; drivers: more for
                                         placements)
  [openstack] cloud, auth_url, username, password, project_name, user_domain_name,
              project_domain_name, region_name, interface, image, flavor,
              availability_zone, ssh_public_key, boot_command, port_security,
              server_group_policy, api_timeout
  [neutron] desired_state, router_flavor_id, resync_period, status, events_url, exchange,
            topic, queue, queue_expires
  [netns] prefix, fabric, management_bridge, bridges, auto_bridges, state_root, python,
          enabled_services, management_mtu
  [qemu] fabric, management_bridge, bridges, auto_bridges, state_root, image, images,
         accel, binary, machine, cpus, memory, max_nics, ssh_public_key, ssh_identity,
         kernel_args, unplug_timeout
  [tls] enabled, directory, lifetime_days, renew_before_days   (pki.py, README "Mutual TLS")
"""
import configparser
import ipaddress
import os
import socket
from dataclasses import dataclass, field, replace

from .drivers import DRIVERS, QEMU_ACCELS

DEFAULT_CONFIG = "/etc/astara/orchestrator.ini"
DEFAULT_MGMT_NETWORK_ID = "b308b496-94cb-45bf-b7a7-0cacb4e0465a"  # the contract's ids
DEFAULT_MGMT_SUBNET_ID = "3480da23-b6b4-4ef4-89dc-e1a4ce98692f"
DEFAULT_MGMT_PREFIX = "fdca:3ba5:a17a:acda::/64"


class ConfigError(ValueError):
    """The ini file is missing, unreadable or has a bad value (message names the key)."""


@dataclass(frozen=True)
class ApiSettings:
    listen: str = "127.0.0.1"
    port: int = 44250
    token: str = ""
    url: str = ""  # what astara-ctl calls; default derived from listen/port
    threads: int = 8  # the admin API server's thread pool

    @property
    def base_url(self):
        if self.url:
            return self.url.rstrip("/")
        host = self.listen
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class ManagementSettings:
    network_id: str = DEFAULT_MGMT_NETWORK_ID
    subnet_id: str = DEFAULT_MGMT_SUBNET_ID
    prefix: str = DEFAULT_MGMT_PREFIX
    gateway_ip: str = ""  # empty: the prefix's first address (Neutron's default)
    mtu: int = 1450
    orchestrator_address: str = "fdca:3ba5:a17a:acda::2"
    metadata_port: int = 9697

    @property
    def network(self):
        return ipaddress.ip_network(self.prefix)

    @property
    def gateway(self):
        return self.gateway_ip or str(self.network.network_address + 1)


@dataclass(frozen=True)
class RouterSettings:
    asn: int = 64512
    neighbor_asn: int = 64512
    provider_rules_path: str = ""


@dataclass(frozen=True)
class ApplianceSettings:
    port: int = 5000
    token: str = ""  # the agent's [api] api_token, if it has one
    alive_timeout: float = 3.0
    interfaces_timeout: float = 30.0
    config_timeout: float = 90.0
    confirm_timeout: int = 60  # commit-confirm: the agent reverts unless confirmed in time
    retry_attempts: int = 4
    retry_base: float = 0.5
    retry_cap: float = 8.0
    ntp_servers: str = ""  # given to VM appliances in their user data (comma-separated)

    @property
    def ntp_server_list(self):
        return tuple(s for s in self.ntp_servers.replace(",", " ").split() if s)


@dataclass(frozen=True)
class HealthSettings:
    period: float = 60.0  # health poll period per resource
    jitter: float = 0.2  # fraction of the period each poll is moved by, at random
    dead_grace: float = 30.0  # liveness lost this long -> rebuild
    degraded_grace: float = 300.0  # appliance reports degraded this long -> rebuild
    boot_timeout: float = 300.0  # created but not answering this long -> failed boot
    boot_check_interval: float = 2.0
    max_boot_attempts: int = 5
    boot_backoff_base: float = 5.0
    boot_backoff_cap: float = 120.0
    error_cooldown: float = 30.0
    delete_timeout: float = 60.0
    hotplug_timeout: float = 10.0
    max_push_failures: int = 5  # transient push failures in a row -> error
    push_backoff_base: float = 2.0
    push_backoff_cap: float = 60.0


@dataclass(frozen=True)
class DatabaseSettings:
    connection: str = ""  # sqlite:///PATH or postgresql://...; default the SQLite file
    watch_interval: float = 0.5  # catching up with other writers: poll (SQLite) / safety net


@dataclass(frozen=True)
class CoordinationSettings:
    backend_url: str = ""  # tooz URL; empty: this orchestrator runs alone
    group: str = "astara-orchestrators"
    heartbeat: float = 1.0  # seconds between coordination rounds


@dataclass(frozen=True)
class NetnsSettings:
    prefix: str = ""  # lab prefix: ast + 6 hex digits
    fabric: str = ""  # namespace holding the bridges; default <prefix>-fab
    management_bridge: str = "b-mgmt"
    bridges: dict = field(default_factory=dict)  # network id -> bridge name
    auto_bridges: bool = True  # unmapped network -> bridge b-<8 hex of its id>
    state_root: str = ""  # per-appliance state dirs; default <state_dir>/appliances
    python: str = ""  # interpreter for the agent; default this one
    enabled_services: str = "router,loadbalancer"
    management_mtu: int = 1450

    @property
    def fabric_name(self):
        return self.fabric or f"{self.prefix}-fab"


@dataclass(frozen=True)
class OpenStackSettings:
    """The cloud (``[compute] driver = openstack`` and/or ``[neutron] desired_state``)."""
    cloud: str = ""  # a clouds.yaml entry; else the explicit auth below
    auth_url: str = ""
    username: str = ""
    password: str = ""
    project_name: str = ""
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str = ""
    interface: str = "public"
    image: str = ""  # Glance image name or id of the appliance
    flavor: str = ""  # Nova flavor name or id
    availability_zone: str = ""
    ssh_public_key: str = ""  # file with the key for the astara user (optional)
    boot_command: str = "astara-configure-management"
    port_security: bool = False  # data ports: off (astara), or on with allowed-address-pairs
    server_group_policy: str = "anti-affinity"  # HA pairs
    api_timeout: float = 60.0


@dataclass(frozen=True)
class NeutronSettings:
    desired_state: bool = False  # read routers, ports, subnets, floating IPs from Neutron
    router_flavor_id: str = ""  # only routers of this Neutron L3 flavor (empty: all)
    resync_period: float = 300.0  # full re-read (the fallback for lost notifications)
    status: bool = True  # write router and floating IP status back to Neutron
    events_url: str = ""  # amqp://user:pass@host:5672/ of Neutron's notifications
    exchange: str = "neutron"
    topic: str = "notifications"
    queue: str = ""  # default astara-orchestrator.<host>: one queue per orchestrator
    queue_expires: float = 3600.0  # an orchestrator gone this long loses its queue


@dataclass(frozen=True)
class TlsSettings:
    """Mutual TLS with the appliances (orchestrator_lite/pki.py). Off: plain HTTP, the
    original orchestrator's way, for appliance images that know no TLS."""
    enabled: bool = True
    directory: str = ""  # the CA and the client certificate; default <state_dir>/pki
    lifetime_days: float = 30.0  # of each appliance certificate (and the client's)
    renew_before_days: float = 10.0  # re-issued when this close to expiry


@dataclass(frozen=True)
class QemuSettings:
    """The QEMU driver (drivers/qemu.py): VMs of the built image, taps in ``fabric``."""
    fabric: str = ""  # namespace holding the bridges (required: never the root namespace)
    management_bridge: str = "b-mgmt"
    bridges: dict = field(default_factory=dict)  # network id -> bridge name
    auto_bridges: bool = True
    state_root: str = ""  # instances and image copies; default <state_dir>/qemu
    image: str = ""  # default image: X.qcow2 (+ X.vmlinuz, X.initrd); default out/astara.qcow2
    images: dict = field(default_factory=dict)  # label -> X.qcow2 (rebuild/upgrade --image)
    accel: str = "auto"  # auto: KVM when a probe boots a guest with it, else TCG
    binary: str = "qemu-system-x86_64"
    machine: str = "pc"  # pc: ACPI PCI hot-plug; q35: PCIe root ports are pre-created
    cpus: int = 1
    memory: int = 1024  # MiB
    max_nics: int = 8  # NIC slots (management + data), the hot-plug limit
    ssh_public_key: str = ""  # file: the operator's key, for the "astara" user
    ssh_identity: str = ""  # private key astara-ctl ssh uses (default: ssh's own)
    kernel_args: str = ""  # appended to the kernel command line
    unplug_timeout: float = 30.0  # seconds the guest gets to release a NIC


@dataclass(frozen=True)
class Settings:
    host: str = field(default_factory=socket.gethostname)
    state_dir: str = "/var/lib/astara-orchestrator"
    database: str = ""  # default <state_dir>/orchestrator.sqlite
    log_file: str = ""
    log_level: str = "INFO"
    api: ApiSettings = field(default_factory=ApiSettings)
    management: ManagementSettings = field(default_factory=ManagementSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    appliance: ApplianceSettings = field(default_factory=ApplianceSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    threads: int = 4
    webhook_url: str = ""
    webhook_timeout: float = 2.0
    compute_driver: str = "netns"
    compute_drivers: tuple = ()  # more drivers placements may name ([compute] drivers)
    netns: NetnsSettings = field(default_factory=NetnsSettings)
    openstack: OpenStackSettings = field(default_factory=OpenStackSettings)
    neutron: NeutronSettings = field(default_factory=NeutronSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    db: DatabaseSettings = field(default_factory=DatabaseSettings)
    coordination: CoordinationSettings = field(default_factory=CoordinationSettings)
    qemu: QemuSettings = field(default_factory=QemuSettings)

    @property
    def database_path(self):
        return self.database or os.path.join(self.state_dir, "orchestrator.sqlite")

    @property
    def pki_directory(self):
        return self.tls.directory or os.path.join(self.state_dir, "pki")

    @property
    def database_connection(self):
        """The store's URL: ``[database] connection``, else the SQLite file."""
        return self.db.connection or f"sqlite:///{os.path.abspath(self.database_path)}"


def _typed(section_cls, section, prefix):
    """Build ``section_cls`` from an ini section, converting to each field's type."""
    values = {}
    for name, spec in section_cls.__dataclass_fields__.items():
        if name not in section:
            continue
        raw = section[name].strip()
        key = f"{prefix}{name}"
        kind = spec.type
        try:
            if kind is dict:
                values[name] = parse_mapping(raw)
            elif kind is bool:
                values[name] = _bool(raw)
            elif kind is int:
                values[name] = int(raw)
            elif kind is float:
                values[name] = float(raw)
            else:
                values[name] = raw
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return section_cls(**values)


def _bool(raw):
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


def parse_mapping(raw):
    """``a=b, c=d`` (commas or whitespace/newlines between pairs) -> ``{"a": "b", ...}``."""
    mapping = {}
    for item in raw.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{item!r} is not key=value")
        mapping[key] = value
    return mapping


def load(path=None, **overrides):
    """Read ``path`` (default DEFAULT_CONFIG) and return Settings; ``overrides`` replace
    top-level fields (used by tests)."""
    path = path or DEFAULT_CONFIG
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_parser(parser, **overrides)


def from_parser(parser, **overrides):
    defaults = parser.defaults()
    top = {}
    for name in ("host", "state_dir", "database", "log_file", "log_level"):
        if name in defaults:
            top[name] = defaults[name].strip()
    webhook = _own(parser, "webhook")
    try:
        settings = Settings(
            **top,
            api=_typed(ApiSettings, _own(parser, "api"), "api."),
            management=_typed(ManagementSettings, _own(parser, "management"), "management."),
            router=_typed(RouterSettings, _own(parser, "router"), "router."),
            appliance=_typed(ApplianceSettings, _own(parser, "appliance"), "appliance."),
            health=_typed(HealthSettings, _own(parser, "health"), "health."),
            threads=int(_own(parser, "workers").get("threads", 4)),
            webhook_url=webhook.get("url", "").strip(),
            webhook_timeout=float(webhook.get("timeout", 2.0)),
            compute_driver=_own(parser, "compute").get("driver", "netns").strip(),
            compute_drivers=tuple(n for n in _own(parser, "compute").get(
                "drivers", "").replace(",", " ").split()),
            netns=_typed(NetnsSettings, _own(parser, "netns"), "netns."),
            openstack=_typed(OpenStackSettings, _own(parser, "openstack"), "openstack."),
            neutron=_typed(NeutronSettings, _own(parser, "neutron"), "neutron."),
            tls=_typed(TlsSettings, _own(parser, "tls"), "tls."),
            db=_typed(DatabaseSettings, _own(parser, "database"), "database."),
            coordination=_typed(CoordinationSettings, _own(parser, "coordination"),
                                "coordination."),
            qemu=_typed(QemuSettings, _own(parser, "qemu"), "qemu."),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = replace(settings, **overrides)
    validate(settings)
    return settings


def _own(parser, name):
    """Section ``name`` ({} when absent). Only the section's dataclass fields are read, and
    no section field shares a name with the [DEFAULT] keys, so inheritance is harmless."""
    return parser[name] if parser.has_section(name) else {}


def validate(settings):
    try:
        settings.management.network
        ipaddress.ip_address(settings.management.gateway)
        if settings.management.orchestrator_address:
            ipaddress.ip_address(settings.management.orchestrator_address)
    except ValueError as exc:
        raise ConfigError(f"management: {exc}") from None
    for key, name in [("driver", settings.compute_driver),
                      *(("drivers", n) for n in settings.compute_drivers)]:
        if name not in DRIVERS:
            raise ConfigError(f"compute.{key}: unknown driver {name!r} "
                              f"({', '.join(DRIVERS)})")
    if "qemu" in (settings.compute_driver, *settings.compute_drivers) \
            and not settings.qemu.fabric:
        raise ConfigError("qemu.fabric: the namespace holding the bridges is required")
    if settings.qemu.accel not in QEMU_ACCELS:
        raise ConfigError(f"qemu.accel must be one of {', '.join(QEMU_ACCELS)}")
    if settings.threads < 1:
        raise ConfigError("workers.threads must be at least 1")
    if settings.health.period <= 0:
        raise ConfigError("health.period must be positive")
    if not 0 <= settings.health.jitter < 1:
        raise ConfigError("health.jitter must be in [0, 1)")
    if settings.tls.lifetime_days <= 0 or \
            not 0 <= settings.tls.renew_before_days < settings.tls.lifetime_days:
        raise ConfigError("tls.renew_before_days must be at least 0 and less than "
                          "tls.lifetime_days (which must be positive)")
    connection = settings.db.connection
    if connection and not connection.startswith(("sqlite:///", "postgresql://",
                                                 "postgresql+psycopg://", "postgres://")):
        raise ConfigError("database.connection must be sqlite:///PATH or postgresql://...")
    if settings.coordination.heartbeat <= 0:
        raise ConfigError("coordination.heartbeat must be positive")
    if settings.coordination.backend_url and "://" not in settings.coordination.backend_url:
        raise ConfigError("coordination.backend_url must be a tooz URL, e.g. "
                          "redis://127.0.0.1:6379")
