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

The text is Prometheus's text exposition format, written here line for line as
prometheus_client's ``generate_latest`` writes it (label names sorted, values as Go formats
them, each counter's and histogram's ``_created`` series after it) and served with the
content type that library gives it (test_agent_metrics compares both): importing it
(with wsgiref, urllib.request and gzip) held about 2 MB of the worker's PSS for a few
counters (README, "Decisions").
"""
import math
import threading
import time

from .model import PayloadError
from .rtnl import LINK_COUNTERS

CONTENT_TYPE_LATEST = "text/plain; version=1.0.0; charset=utf-8"  # prometheus_client 0.26's
# prometheus_client's default histogram buckets (seconds), +Inf last
BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf)
DOWN_SUFFIX = " is down"  # Engine.unhealthy's reasons: "<subsystem> is down"
CONNTRACK_DIR = "/proc/sys/net/netfilter"  # per network namespace
CONNTRACK_GAUGES = (("astara_conntrack_entries", "nf_conntrack_count",
                     "Connection tracking entries in the appliance's namespace"),
                    ("astara_conntrack_max", "nf_conntrack_max",
                     "Limit of the connection tracking table"))
INTERFACE_LABELS = ("interface", "ifname", "network_type")


# -- the exposition format --------------------------------------------------------------------

def go_float(value):
    """A sample value as Go (and so Prometheus) writes a float64: ``1.0``, ``+Inf``,
    ``1.5e+07`` (Go switches to an exponent sooner than Python's repr)."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _label_value(text):
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def sample_line(name, labels, value):
    """One sample: ``name{label="value",...} value`` with the label names sorted."""
    if labels:
        pairs = ",".join(f'{key}="{_label_value(val)}"' for key, val in sorted(labels.items()))
        return f"{name}{{{pairs}}} {go_float(value)}\n"
    return f"{name} {go_float(value)}\n"


def _header(name, kind, text):
    escaped = text.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {escaped}\n# TYPE {name} {kind}\n"


class Family:
    """A metric family: ``kind`` counter, gauge or histogram; ``samples`` (name, labels,
    value) as they are written; ``created`` the counter's or histogram's ``_created``
    samples (labels, time), written after it as a gauge of their own."""

    def __init__(self, name, kind, text, samples=(), created=()):
        self.name, self.kind, self.text = name, kind, text
        self.samples, self.created = list(samples), list(created)

    def add_metric(self, labels, value):
        """A counter's (or gauge's) sample with the values of ``labels`` (in the order
        of INTERFACE_LABELS)."""
        self.samples.append((self.sample_name, dict(zip(INTERFACE_LABELS, labels)), value))

    @property
    def sample_name(self):
        return f"{self.name}_total" if self.kind == "counter" else self.name

    def text_lines(self):
        yield _header(self.sample_name, self.kind, self.text)
        for name, labels, value in self.samples:
            yield sample_line(name, labels, value)
        if self.created:
            yield _header(f"{self.name}_created", "gauge", self.text)
            for labels, value in self.created:
                yield sample_line(f"{self.name}_created", labels, value)


def exposition(families):
    return "".join(line for family in families for line in family.text_lines()).encode()


class LabelledCounter:
    """A counter per value of one label (``label``), created at its first increment."""

    def __init__(self, name, text, label):
        self.name, self.text, self.label = name, text, label
        self.values = {}  # label value -> [count, created]
        self.lock = threading.Lock()

    def inc(self, value):
        with self.lock:
            entry = self.values.setdefault(value, [0.0, time.time()])
            entry[0] += 1

    def family(self):
        with self.lock:
            values = [(value, count, created)
                      for value, (count, created) in self.values.items()]
        return Family(self.name, "counter", self.text,
                      [(f"{self.name}_total", {self.label: v}, count)
                       for v, count, _ in values],
                      [({self.label: v}, created) for v, _, created in values])


class LabelledHistogram:
    """A histogram of durations (BUCKETS) per value of one label."""

    def __init__(self, name, text, label):
        self.name, self.text, self.label = name, text, label
        self.values = {}  # label value -> [bucket counts, sum, created]
        self.lock = threading.Lock()

    def observe(self, value, amount):
        with self.lock:
            entry = self.values.setdefault(value, [[0.0] * len(BUCKETS), 0.0, time.time()])
            for i, bound in enumerate(BUCKETS):
                if amount <= bound:
                    entry[0][i] += 1
                    break
            entry[1] += amount

    def family(self):
        family = Family(self.name, "histogram", self.text)
        with self.lock:
            values = [(value, list(counts), total, created)
                      for value, (counts, total, created) in self.values.items()]
        for value, counts, total, created in values:
            cumulative = 0.0
            for bound, count in zip(BUCKETS, counts):
                cumulative += count
                family.samples.append((f"{self.name}_bucket",
                                       {self.label: value, "le": go_float(bound)}, cumulative))
            family.samples += [(f"{self.name}_count", {self.label: value}, cumulative),
                               (f"{self.name}_sum", {self.label: value}, total)]
            family.created.append(({self.label: value}, created))
        return family


# -- the agent's metrics ----------------------------------------------------------------------

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
        return {counter: Family(f"astara_interface_{counter}", "counter",
                                f"Kernel counter {counter} of each NIC")
                for counter in LINK_COUNTERS}

    def collect(self):
        for name, filename, text in CONNTRACK_GAUGES:
            value = read_number(f"{self.conntrack_dir}/{filename}")
            if value is not None:
                yield Family(name, "gauge", text, [(name, {}, value)])
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
        self.kernel = KernelCollector(nics, config, conntrack_dir)
        self.applies = LabelledCounter("astara_applies", "Transactions by result", "result")
        self.apply_seconds = LabelledHistogram("astara_apply_seconds", "Transaction duration",
                                               "result")
        self.subsystem_seconds = LabelledHistogram(
            "astara_subsystem_apply_seconds", "Apply step duration per subsystem", "subsystem")
        self.refusals = LabelledCounter("astara_refusals",
                                        "Pushes answered with an error, by reason", "reason")
        self.repairs = LabelledCounter("astara_reconcile_repairs",
                                       "Supervisor repairs by reason", "reason")
        self.restarts = LabelledCounter("astara_daemon_restarts",
                                        "Dead daemons started again", "subsystem")

    def transaction(self, applied, seconds, subsystem_seconds):
        result = "applied" if applied else "rolled_back"
        self.applies.inc(result)
        self.apply_seconds.observe(result, seconds)
        for name, spent in subsystem_seconds.items():
            self.subsystem_seconds.observe(name, spent)

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
        self.refusals.inc(reason)

    def repaired(self, reasons):
        for reason in reasons:
            self.repairs.inc(reason)
            if reason.endswith(DOWN_SUFFIX):
                self.restarts.inc(reason[:-len(DOWN_SUFFIX)])

    def render(self, generation):
        """The exposition text (bytes), in the order prometheus_client's registry gave it."""
        return exposition([
            *self.kernel.collect(), self.applies.family(), self.apply_seconds.family(),
            self.subsystem_seconds.family(), self.refusals.family(),
            Family("astara_generation", "gauge", "The committed generation",
                   [("astara_generation", {}, generation)]),
            self.repairs.family(), self.restarts.family()])
