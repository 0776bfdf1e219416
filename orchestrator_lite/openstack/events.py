"""Neutron's notifications from RabbitMQ (kombu), and the L3 RPC cast for floating IP status.

Neutron's notifier (oslo.messaging, ``messagingv2``) publishes on the topic exchange
``neutron`` with routing key ``notifications.info``. Each orchestrator binds its **own**
queue (``astara-orchestrator.<host>`` unless ``[neutron] queue`` says otherwise) to that key,
so every member of a cluster sees every event, and the queues of other consumers of the
topic (ceilometer's ``notifications.info``...) lose nothing. The queue is not durable and
expires ``queue_expires`` seconds after its orchestrator went away, so a retired host leaves
no queue filling up. A lost connection is retried for ever (kombu's ConsumerMixin, with
back-off); what was missed meanwhile is caught by NeutronStore's periodic resync.

Notifications are applied in batches, once the stream has been quiet for ``quiet`` seconds
(at the latest ``max_delay`` after the first of a batch). Each changes one object **by id**
in NeutronStore (create/update: the object;
delete: its id; router/port events are re-read from Neutron because a tenant's
notification hides admin-only fields such as ``ha`` and ``binding:*``), and the store's
impact analysis turns that into update events for exactly the routers it affects, one per
router per batch however many notifications touched it; the scheduler coalesces further
per resource. A burst costs a push per router, not one per notification.
"""
import json
import logging
import threading
import time
import uuid

import kombu
from kombu.mixins import ConsumerMixin

from ..events import UPDATE
from .neutron import NEUTRON_KINDS

LOG = logging.getLogger(__name__)
REREAD_KINDS = ("router", "port")  # their notification payloads lack admin-only fields
L3_PLUGIN_TOPIC = "q-l3-plugin"


def unwrap(body):
    """(event_type, payload) of an oslo.messaging notification (v2 envelope or v1)."""
    if isinstance(body, (bytes, str)):
        body = json.loads(body)
    if isinstance(body, dict) and "oslo.message" in body:
        body = json.loads(body["oslo.message"])
    return body.get("event_type", ""), body.get("payload") or {}


def apply_notification(store, event_type, payload, publish=True):
    """Apply one Neutron notification to ``store`` (a NeutronStore); returns the resource
    events it caused ([] for notifications that change nothing we render)."""
    parts = event_type.split(".")
    kind = parts[0]
    if kind == "router" and len(parts) > 1 and parts[1] == "interface":
        interface = payload.get("router_interface") or {}
        port_id = interface.get("port_id")
        return store.refresh("port", port_id, publish) if port_id else []
    if kind not in NEUTRON_KINDS or parts[-1] != "end" or len(parts) != 3:
        return []
    action = parts[1]
    obj = payload.get(kind) if isinstance(payload.get(kind), dict) else {}
    obj_id = obj.get("id") or payload.get(f"{kind}_id")
    if not obj_id:
        LOG.debug("%s without an id: ignored", event_type)
        return []
    if action == "delete":
        return store.remove(kind, obj_id, publish)
    if kind in REREAD_KINDS or not obj:
        return store.refresh(kind, obj_id, publish)
    try:
        return store.upsert(kind, obj, publish)
    except (KeyError, TypeError):  # not the whole object: read it
        return store.refresh(kind, obj_id, publish)


class NotificationListener(ConsumerMixin):
    """Consumes Neutron's notifications into a NeutronStore, in a thread of its own."""

    def __init__(self, url, store, queue, exchange="neutron", topic="notifications",
                 expires=3600.0, quiet=0.05, max_delay=1.0):
        self.url = url
        self.store = store
        self.quiet = quiet
        self.max_delay = max_delay
        self._pending = []  # (event type, payload) waiting for the stream to go quiet
        self._first_pending = None
        self._last_message = 0.0
        # on_message notifies when the queue stops being empty, stop() when it is time to
        # go: the flusher sleeps without a timeout while nothing is pending
        self._pending_changed = threading.Condition()
        self._flusher = None
        self.connection = kombu.Connection(url, heartbeat=10, connect_timeout=5)
        self.exchange = kombu.Exchange(exchange, type="topic", durable=False,
                                       auto_delete=False)
        self.queue = kombu.Queue(queue, exchange=self.exchange, routing_key=f"{topic}.info",
                                 durable=False, auto_delete=False,
                                 queue_arguments={"x-expires": int(expires * 1000)})
        self.received = 0
        self.batches = 0  # flushed: a router gets at most one update event per batch
        self.connected = threading.Event()
        self.connections = 0  # successful (re)connections
        self._thread = None

    def get_consumers(self, Consumer, channel):
        return [Consumer(queues=[self.queue], callbacks=[self.on_message],
                         accept=["json", "text/plain", "application/data"])]

    def on_connection_revived(self):
        self.connections += 1
        LOG.info("Neutron notifications: connected to %s (queue %s)",
                 self.connection.as_uri(), self.queue.name)

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self.connected.set()

    def on_connection_error(self, exc, interval):
        self.connected.clear()
        LOG.warning("Neutron notifications: broker unreachable (%s); retry in %.1fs", exc,
                    interval)

    def on_message(self, body, message):
        self.received += 1
        try:
            event_type, payload = unwrap(body)
        except (ValueError, TypeError, AttributeError):
            LOG.warning("not a notification: %r", body)
            message.ack()
            return
        with self._pending_changed:
            now = time.monotonic()
            if not self._pending:
                self._first_pending = now
                self._pending_changed.notify()  # later messages only push the deadline back
            self._last_message = now
            self._pending.append((event_type, payload))
        message.ack()

    def _next_batch(self):
        """Wait until the pending notifications are due (the stream quiet for ``quiet``
        seconds, or ``max_delay`` after the first) and take them; None once stopping."""
        with self._pending_changed:
            while not self.should_stop:
                if not self._pending:
                    self._pending_changed.wait()
                    continue
                due = min(self._last_message + self.quiet, self._first_pending + self.max_delay)
                now = time.monotonic()
                if now >= due:
                    batch, self._pending = self._pending, []
                    return batch
                self._pending_changed.wait(due - now)
            return None

    def _flush_loop(self):
        while (batch := self._next_batch()) is not None:
            self.flush(batch)

    def flush(self, batch):
        """Apply a batch of notifications, then hand the scheduler one event per resource:
        the desired state and the events change together, so a health poll in between
        never sees half a burst."""
        self.batches += 1
        events = {}
        for event_type, payload in batch:
            try:
                for event in apply_notification(self.store, event_type, payload,
                                                publish=False):
                    previous = events.get(event.ref.key)
                    if previous is None or event.action != UPDATE:
                        events[event.ref.key] = event  # create/delete win over update
            except Exception:  # noqa: BLE001 - one bad message must not stop the rest
                LOG.exception("cannot apply %s", event_type)
        if events:
            LOG.debug("%d notifications -> %s", len(batch), sorted(map(str, events)))
            self.store.publish(list(events.values()))

    def start(self):
        self._thread = threading.Thread(target=self.run, name="neutron-events", daemon=True)
        self._thread.start()
        self._flusher = threading.Thread(target=self._flush_loop, name="neutron-events-flush",
                                         daemon=True)
        self._flusher.start()
        return self

    def stop(self):
        with self._pending_changed:
            self.should_stop = True
            self._pending_changed.notify_all()
        for thread in (self._thread, self._flusher):
            if thread is not None:
                thread.join(10)
        self.connection.release()


class L3RpcClient:
    """Casts to Neutron's L3 plugin RPC (what the L3 agent does): floating IP statuses.
    Neutron's REST API has no writable floating IP status; this is its only way in."""

    def __init__(self, url, exchange="neutron", topic=L3_PLUGIN_TOPIC):
        self.url = url
        self.exchange = kombu.Exchange(exchange, type="topic", durable=False,
                                       auto_delete=False)
        self.topic = topic
        self._lock = threading.Lock()
        self._connection = None

    def cast(self, method, version="1.1", **args):
        message = {"method": method, "args": args, "version": version,
                   "_unique_id": uuid.uuid4().hex, "_context_is_admin": True,
                   "_context_roles": ["admin"], "_context_request_id":
                   f"req-{uuid.uuid4()}", "_context_user_id": None,
                   "_context_project_id": None, "_context_tenant_id": None}
        envelope = {"oslo.version": "2.0", "oslo.message": json.dumps(message)}
        with self._lock:
            if self._connection is None:
                self._connection = kombu.Connection(self.url, connect_timeout=5)
            producer = self._connection.Producer(serializer="json")
            publish = self._connection.ensure(producer, producer.publish, max_retries=3)
            publish(envelope, exchange=self.exchange, routing_key=self.topic,
                    declare=[self.exchange])

    def update_floatingip_statuses(self, router_id, statuses):
        self.cast("update_floatingip_statuses", router_id=router_id, fip_statuses=statuses)

    def close(self):
        with self._lock:
            if self._connection is not None:
                self._connection.release()
                self._connection = None
