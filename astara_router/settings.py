"""Agent settings: defaults < ini file (``--config-file``) < command line.

Every path the agent writes (state, pid files, sockets, daemon configs) derives from
``state_dir``, so several appliances can share a host without touching each other.
Settings are checked once, here: the renderers take them as valid.
"""
import configparser
import glob
import os
import re
from dataclasses import dataclass, replace

DEFAULT_PORT = 5000
# state_dir is written into keepalived, conntrackd and strongSwan configurations: one
# plain token of their grammars.
STATE_DIR = re.compile(r"/[A-Za-z0-9_.+/-]*")


@dataclass(frozen=True)
class Settings:
    state_dir: str = "/var/lib/astara"
    bind: tuple = ()  # empty: the management address, port 5000
    port: int = DEFAULT_PORT
    enabled_services: tuple = ("router",)
    threads: int = 8
    status_interval: float = 10.0
    status_v4_target: str = ""  # empty: the default IPv4 gateway of the committed config
    status_v6_target: str = ""
    api_token: str = ""  # when set, every request except GET /v1/ needs "Bearer <token>"
    certfile: str = ""  # TLS (and mutual TLS with ca_certs) through gunicorn
    keyfile: str = ""
    ca_certs: str = ""
    etc_dir: str = ""  # hostname/hosts files; empty: see apply/hostname.py default_etc_dir
    metadata_connect_timeout: float = 5.0  # metadata proxy → orchestrator, seconds
    metadata_read_timeout: float = 30.0
    ipsec_backend: str = "auto"  # auto | render.vpn.BACKENDS (apply/vpn.py)
    reconcile_interval: float = 5.0  # seconds between supervisor rounds; 0 disables
    reconcile_max_backoff: float = 60.0  # longest pause while repairs keep being needed
    ha_advert_interval: float = 1.0  # VRRP advertisement interval, seconds (ADVERT_MIN-MAX)
    ha_preempt: bool = True  # the higher-priority instance takes the addresses back
    ha_preempt_delay: float = 0.0  # seconds it waits before it does
    log_format: str = "text"  # text | json (logs.py: request id and generation on each line)

    def path(self, *parts):
        return os.path.join(self.state_dir, *parts)

    @property
    def operator_socket(self):
        """The operator's socket: the agent serves its API there (api/local.py) and
        astara-router-ctl looks for it (cli/ctl.py), which need not import the API."""
        return self.path("run", "api.sock")


# What the checks below accept is defined here, not imported from the model and the
# renderers: the gunicorn master loads the settings, and importing the model (msgspec
# with it) and two renderers for these few constants kept them in its heap, where the
# worker's copy-on-write made most of their pages private twice (make bench: the master's
# PSS 17.2 -> 15.0 MB, the worker's +0.7). The services are the payload schema's
# (model.schema.Services; test_settings keeps the two equal).
KNOWN_SERVICES = ("router", "loadbalancer")
ADVERT_MIN, ADVERT_MAX = 0.01, 40.95  # VRRPv3: centiseconds in 12 bits (keepalived advert_int)
IPSEC_BACKENDS = ("kernel", "libipsec")  # strongSwan's, render/vpn.py


def _services(text):
    names = tuple(s.strip() for s in text.replace(",", " ").split() if s.strip())
    unknown = [n for n in names if n not in KNOWN_SERVICES]
    if unknown:
        raise ValueError(f"enabled_services: unknown service(s) {', '.join(unknown)}; "
                         f"known: {', '.join(KNOWN_SERVICES)}")
    return names


def _boolean(text, default):
    if text is None:
        return default
    try:
        return configparser.ConfigParser.BOOLEAN_STATES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a boolean: {text!r}") from None


def _ha(section, settings):
    """[ha]: the VRRP advertisement interval and preemption (README, "ha")."""
    try:
        interval = float(section.get("advert_interval", settings.ha_advert_interval))
        preempt = _boolean(section.get("preempt"), settings.ha_preempt)
        delay = float(section.get("preempt_delay", settings.ha_preempt_delay))
    except ValueError as exc:
        raise ValueError(f"[ha]: {exc}") from None
    if not ADVERT_MIN <= interval <= ADVERT_MAX:
        raise ValueError(f"[ha] advert_interval must be {ADVERT_MIN}-{ADVERT_MAX} seconds, "
                         f"not {interval}")
    if not 0 <= delay <= 1000:
        raise ValueError(f"[ha] preempt_delay must be 0-1000 seconds, not {delay}")
    return {"ha_advert_interval": interval, "ha_preempt": preempt, "ha_preempt_delay": delay}


def drop_ins(config_file):
    """``<config_file>.d/*.ini`` in name order: what boot data adds to the image's ini
    (the orchestrator's [api] TLS files, README "Mutual TLS"); later files win."""
    return sorted(glob.glob(os.path.join(glob.escape(config_file + ".d"), "*.ini")))


def _check_tls(settings):
    if (settings.keyfile or settings.ca_certs) and not settings.certfile:
        raise ValueError("[api] keyfile and ca_certs need certfile (the API's certificate)")


def load(config_file=None, **overrides):
    """Read the ini file ([DEFAULT], [api], [status], [metadata], [vpn], [supervisor], [ha])
    and its drop-ins, and apply overrides."""
    settings = Settings()
    if config_file:
        parser = configparser.ConfigParser()
        if not parser.read(config_file):
            raise ValueError(f"cannot read config file {config_file}")
        for extra in drop_ins(config_file):
            if not parser.read(extra):
                raise ValueError(f"cannot read config file {extra}")
        get = parser.defaults().get
        api = parser["api"] if parser.has_section("api") else parser.defaults()
        status = parser["status"] if parser.has_section("status") else parser.defaults()
        metadata = parser["metadata"] if parser.has_section("metadata") else parser.defaults()
        vpn = parser["vpn"] if parser.has_section("vpn") else parser.defaults()
        supervisor = (parser["supervisor"] if parser.has_section("supervisor")
                      else parser.defaults())
        ha = parser["ha"] if parser.has_section("ha") else parser.defaults()
        values = {
            "state_dir": get("state_dir", settings.state_dir),
            "enabled_services": _services(get("enabled_services", "router")),
            "bind": tuple(b for b in api.get("bind", "").split() if b),
            "port": int(api.get("port", settings.port)),
            "threads": int(api.get("threads", settings.threads)),
            "api_token": api.get("api_token", ""),
            "certfile": api.get("certfile", ""), "keyfile": api.get("keyfile", ""),
            "ca_certs": api.get("ca_certs", ""),
            "status_interval": float(status.get("interval", settings.status_interval)),
            "status_v4_target": status.get("v4_target", ""),
            "status_v6_target": status.get("v6_target", ""),
            "etc_dir": get("etc_dir", ""),
            "log_format": get("log_format", settings.log_format),
            "metadata_connect_timeout": float(metadata.get(
                "connect_timeout", settings.metadata_connect_timeout)),
            "metadata_read_timeout": float(metadata.get(
                "read_timeout", settings.metadata_read_timeout)),
            "ipsec_backend": vpn.get("ipsec_backend", settings.ipsec_backend),
            "reconcile_interval": float(supervisor.get(
                "interval", settings.reconcile_interval)),
            "reconcile_max_backoff": float(supervisor.get(
                "max_backoff", settings.reconcile_max_backoff)),
            **_ha(ha, settings),
        }
        settings = replace(settings, **values)
    clean = {k: v for k, v in overrides.items() if v not in (None, (), "")}
    if "enabled_services" in clean and isinstance(clean["enabled_services"], str):
        clean["enabled_services"] = _services(clean["enabled_services"])
    return _checked(replace(settings, **clean))


def _checked(settings):
    """``settings``, or a ValueError naming the value the daemons could not use."""
    _check_tls(settings)
    if not STATE_DIR.fullmatch(settings.state_dir) or "/../" in f"{settings.state_dir}/":
        raise ValueError(f"state_dir: {settings.state_dir!r} must be an absolute path of "
                         "letters, digits, '_', '.', '+', '-' and '/' without '..' (daemon "
                         "configurations name paths under it)")
    if settings.ipsec_backend not in ("auto", *IPSEC_BACKENDS):
        raise ValueError(f"[vpn] ipsec_backend: {settings.ipsec_backend!r} is not one of "
                         f"auto, {', '.join(IPSEC_BACKENDS)}")
    return settings
