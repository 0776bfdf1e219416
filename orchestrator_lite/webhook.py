"""Status out: POST each state transition as JSON to a configured URL (best effort).

A bounded queue and one sender thread keep workers from ever waiting on the receiver;
when the receiver is slow or down, transitions are dropped (and logged), never retried.
Body: ``{"resource": {"kind", "id", "tenant_id"}, "state", "previous_state",
"last_error", "time"}``.
"""
import logging
import queue
import threading
import time

import requests

LOG = logging.getLogger(__name__)


def transition_body(automaton, old, new):
    ref = automaton.ref
    return {"resource": {"kind": ref.kind, "id": ref.id, "tenant_id": ref.tenant_id},
            "state": new, "previous_state": old, "last_error": automaton.last_error,
            "time": time.time()}


class Webhook:
    def __init__(self, url, timeout=2.0, max_queue=1000):
        self.url = url
        self.timeout = timeout
        self._queue = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._send_loop, name="webhook", daemon=True)
        self._thread.start()

    def notify(self, automaton, old, new):
        try:
            self._queue.put_nowait(transition_body(automaton, old, new))
        except queue.Full:
            LOG.warning("webhook queue full: dropped %s %s -> %s", automaton.ref, old, new)

    def close(self):
        self._queue.put(None)
        self._thread.join(self.timeout + 1)

    def _send_loop(self):
        while True:
            body = self._queue.get()
            if body is None:
                return
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    response = session.post(self.url, json=body, timeout=self.timeout)
                if response.status_code >= 300:
                    LOG.warning("webhook %s answered %s", self.url, response.status_code)
            except requests.RequestException as exc:
                LOG.warning("webhook %s failed: %s", self.url, exc)
