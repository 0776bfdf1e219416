"""The orchestrator's Prometheus metrics (``GET /metrics`` on the admin API, token required
like every route but the banner), in a registry of its own per orchestrator (several may
share a test process; nothing is registered globally).

* ``astara_orchestrator_resources{state}``: routers and load balancers by state machine
  state (``unknown``: in the store, not looked at yet), counted when scraped;
* ``astara_orchestrator_pushes_total{result}``: configuration PUTs to appliances —
  ``applied``, ``rejected`` (4xx: the payload; never retried), ``failed`` (no usable answer
  after the client's retries: timeouts, connection errors, 5xx);
* ``astara_orchestrator_boots_total{result}``: instances created — ``created``/``failed``;
* ``astara_orchestrator_timeouts_total{kind}``: ``boot`` (no answer within boot_timeout),
  ``delete`` (instances not gone within delete_timeout), ``hotplug`` (NICs not reported
  within hotplug_timeout);
* ``astara_orchestrator_health_polls_total``: polls the health monitor sent;
* with Neutron's notifications (OpenStack mode): ``astara_orchestrator_notifications_total``
  (messages taken from the broker), ``astara_orchestrator_notification_batches_total``
  (batches applied: a router gets at most one push per batch, so their ratio shows the
  batching working), ``astara_orchestrator_broker_connections_total`` (the first connection
  and every reconnection) and ``astara_orchestrator_broker_connected`` (1 while consuming).
"""
import collections

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


class OrchestratorMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.pushes = Counter("astara_orchestrator_pushes", "Configuration pushes by result",
                              ["result"], registry=self.registry)
        self.boots = Counter("astara_orchestrator_boots", "Instances created, by result",
                             ["result"], registry=self.registry)
        self.timeouts = Counter("astara_orchestrator_timeouts", "Timeouts by kind", ["kind"],
                                registry=self.registry)

    def observe(self, orchestrator):
        """Count what the orchestrator holds only when scraped (resources, health polls)."""
        self.registry.register(_Observed(orchestrator))

    def pushed(self, result):
        self.pushes.labels(result).inc()

    def booted(self, result):
        self.boots.labels(result).inc()

    def timed_out(self, kind):
        self.timeouts.labels(kind).inc()

    def render(self):
        return generate_latest(self.registry)


class _Observed:
    def __init__(self, orchestrator):
        self.orchestrator = orchestrator

    def describe(self):
        return []  # collected only when scraped (auto_describe would call collect early)

    def collect(self):
        states = collections.Counter(row["state"] for row in self.orchestrator.resources())
        resources = GaugeMetricFamily("astara_orchestrator_resources",
                                      "Routers and load balancers by state", labels=["state"])
        for state, count in sorted(states.items()):
            resources.add_metric([state], count)
        yield resources
        yield CounterMetricFamily("astara_orchestrator_health_polls",
                                  "Health polls sent",
                                  value=self.orchestrator.health.polls_total)
        events = self.orchestrator.neutron_events
        if events is not None:
            yield CounterMetricFamily("astara_orchestrator_notifications",
                                      "Neutron notifications received",
                                      value=events.received)
            yield CounterMetricFamily("astara_orchestrator_notification_batches",
                                      "Batches of notifications applied",
                                      value=events.batches)
            yield CounterMetricFamily("astara_orchestrator_broker_connections",
                                      "Connections to the message broker, reconnections "
                                      "included", value=events.connections)
            yield GaugeMetricFamily("astara_orchestrator_broker_connected",
                                    "1 while notifications are consumed",
                                    value=int(events.connected.is_set()))


class Discard:
    """For an instance manager or state machine made without an orchestrator's metrics
    (tests, tools): counts nothing."""

    def pushed(self, result):
        pass

    def booted(self, result):
        pass

    def timed_out(self, kind):
        pass


DISCARD = Discard()
