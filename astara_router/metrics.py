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
  dead daemon again.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .model import PayloadError

DOWN_SUFFIX = " is down"  # Engine.unhealthy's reasons: "<subsystem> is down"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
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
