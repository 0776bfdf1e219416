"""The agent's Prometheus metrics (``GET /metrics``), in a registry of its own per engine
(several engines may share a test process; nothing is registered globally).

* ``astara_applies_total{result}``, ``astara_apply_seconds{result}``: transactions (pushes,
  boot and reconcile) by result — ``applied`` or ``rolled_back``;
* ``astara_subsystem_apply_seconds{subsystem}``: each subsystem's apply step;
* ``astara_refusals_total{reason}``: pushes answered with an error, by reason —
  ``invalid_payload`` (400/422 from the model), ``cannot_apply`` (other 4xx),
  ``state_directory_full`` (507), ``internal`` (5xx);
* ``astara_generation``: the committed generation;
* ``astara_reconcile_repairs_total{reason}``: the supervisor's repairs (``netlink changed``,
  ``dhcp is down``, ...); ``astara_daemon_restarts_total{subsystem}``: those that started a
  dead daemon again;
* ``astara_conntrack_entries``, ``astara_conntrack_max``: the connection tracking table of
  the appliance's network namespace, its size and its limit (``nf_conntrack_count`` and
  ``nf_conntrack_max``: two small reads, not a listing of the table; absent while the
  kernel tracks nothing in this namespace);
* ``astara_interface_{rx,tx}_{bytes,packets,errors,dropped}_total{interface,ifname,
  network_type}``: each NIC's kernel counters, by kernel name, ``geN`` and the payload's
  ``network_type`` of that interface (``""`` for a NIC no network of the committed payload
  names).

The last two are read from the kernel at each scrape (one netlink link dump, whose messages
carry the counters, and two /proc files) by a collector: always fresh, nothing polls.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .model import PayloadError
from .rtnl import LINK_COUNTERS

DOWN_SUFFIX = " is down"  # Engine.unhealthy's reasons: "<subsystem> is down"
CONNTRACK_DIR = "/proc/sys/net/netfilter"  # per network namespace
CONNTRACK_GAUGES = (("astara_conntrack_entries", "nf_conntrack_count",
                     "Connection tracking entries in the appliance's namespace"),
                    ("astara_conntrack_max", "nf_conntrack_max",
                     "Limit of the connection tracking table"))
INTERFACE_LABELS = ("interface", "ifname", "network_type")


def network_types(config):
    """``{geN: network_type}`` of the committed payload's networks (the first network that
    names an interface wins); {} without a payload."""
    found = {}
    for network in (config.networks if config is not None else ()):
        found.setdefault(network.interface.ifname, network.network_type)
    return found


def read_number(path):
    """The integer a /proc file holds; None when there is no such file."""
    try:
        with open(path) as handle:
            return int(handle.read())
    except FileNotFoundError:
        return None


class KernelCollector:
    """The conntrack gauges and the NIC counters, read when Prometheus scrapes.
    ``nics()``: ``{geN: naming.Nic}`` with counters; ``config()``: the committed
    SystemConfig (or None)."""

    def __init__(self, nics, config, conntrack_dir=CONNTRACK_DIR):
        self.nics = nics
        self.config = config
        self.conntrack_dir = conntrack_dir

    def _interface_families(self):
        return {counter: CounterMetricFamily(
            f"astara_interface_{counter}", f"Kernel counter {counter} of each NIC",
            labels=INTERFACE_LABELS) for counter in LINK_COUNTERS}

    def describe(self):  # the names, without reading the kernel at registration
        yield from (GaugeMetricFamily(name, text) for name, _, text in CONNTRACK_GAUGES)
        yield from self._interface_families().values()

    def collect(self):
        for name, filename, text in CONNTRACK_GAUGES:
            value = read_number(f"{self.conntrack_dir}/{filename}")
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        families = self._interface_families()
        roles = network_types(self.config())
        for generic, nic in self.nics().items():
            labels = (nic.kernel_name, generic, roles.get(generic, ""))
            for counter, value in (nic.counters or {}).items():
                families[counter].add_metric(labels, value)
        yield from families.values()


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, nics, config, conntrack_dir=CONNTRACK_DIR):
        """``nics``, ``config``, ``conntrack_dir``: KernelCollector's sources."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(KernelCollector(nics, config, conntrack_dir))
        self.applies = Counter("astara_applies", "Transactions by result", ["result"],
                               registry=self.registry)
        self.apply_seconds = Histogram("astara_apply_seconds", "Transaction duration",
                                       ["result"], registry=self.registry)
        self.subsystem_seconds = Histogram(
            "astara_subsystem_apply_seconds", "Apply step duration per subsystem",
            ["subsystem"], registry=self.registry)
        self.refusals = Counter("astara_refusals", "Pushes answered with an error, by reason",
                                ["reason"], registry=self.registry)
        self.generation = Gauge("astara_generation", "The committed generation",
                                registry=self.registry)
        self.repairs = Counter("astara_reconcile_repairs", "Supervisor repairs by reason",
                               ["reason"], registry=self.registry)
        self.restarts = Counter("astara_daemon_restarts", "Dead daemons started again",
                                ["subsystem"], registry=self.registry)

    def transaction(self, applied, seconds, subsystem_seconds):
        result = "applied" if applied else "rolled_back"
        self.applies.labels(result).inc()
        self.apply_seconds.labels(result).observe(seconds)
        for name, spent in subsystem_seconds.items():
            self.subsystem_seconds.labels(name).observe(spent)

    def refused(self, exc):
        status = getattr(exc, "status", 500)
        if status == 507:
            reason = "state_directory_full"
        elif status >= 500:
            reason = "internal"
        elif isinstance(exc, PayloadError):
            reason = "invalid_payload"
        else:
            reason = "cannot_apply"
        self.refusals.labels(reason).inc()

    def repaired(self, reasons):
        for reason in reasons:
            self.repairs.labels(reason).inc()
            if reason.endswith(DOWN_SUFFIX):
                self.restarts.labels(reason[:-len(DOWN_SUFFIX)]).inc()

    def render(self, generation):
        self.generation.set(generation)
        return generate_latest(self.registry)
