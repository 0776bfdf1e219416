"""Status back to Neutron, as the original did: a router's status follows its appliance
(configured -> ACTIVE, booting/up/degraded -> BUILD, down -> DOWN, error -> ERROR; the
transient replug/restart/gone keep the last status instead of the original's ``None``),
written through astara-neutron's ``dhrouterstatus`` extension (router status is read-only
in plain Neutron; without the extension the write is skipped, logged once). The router's
floating IPs follow too (ACTIVE when configured, ERROR in error, DOWN otherwise) through
the L3 plugin RPC ``update_floatingip_statuses`` when a broker is configured.

Writes only on change, from one background thread: a worker never waits on Neutron.
"""
import logging
import queue
import threading

from .. import state as st
from ..events import ROUTER

LOG = logging.getLogger(__name__)
ROUTER_STATUS = {st.DOWN: "DOWN", st.BOOTING: "BUILD", st.UP: "BUILD", st.DEGRADED: "BUILD",
                 st.CONFIGURED: "ACTIVE", st.ERROR: "ERROR"}


def floatingip_status(router_status):
    return {"ACTIVE": "ACTIVE", "ERROR": "ERROR"}.get(router_status, "DOWN")


class StatusWriter:
    def __init__(self, conn, store, l3_rpc=None):
        self.conn = conn
        self.store = store
        self.l3_rpc = l3_rpc
        self._last = {}  # router id -> status written
        self._extension = True
        self._queue = queue.Queue(10000)
        self._thread = threading.Thread(target=self._loop, name="neutron-status", daemon=True)
        self._thread.start()

    def transition(self, automaton, old, new):
        """The orchestrator's transition hook."""
        if automaton.ref.kind != ROUTER or new not in ROUTER_STATUS:
            return
        status = ROUTER_STATUS[new]
        if self._last.get(automaton.ref.id) == status:
            return
        self._last[automaton.ref.id] = status
        try:
            self._queue.put_nowait((automaton.ref.id, status))
        except queue.Full:
            LOG.warning("status queue full: %s %s not written", automaton.ref, status)

    def _loop(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            router_id, status = item
            try:
                self._write(router_id, status)
            except Exception as exc:  # noqa: BLE001 - status out is best effort
                LOG.warning("router %s: status %s not written to Neutron: %s", router_id,
                            status, exc)

    def _write(self, router_id, status):
        if self._extension:
            response = self.conn.network.put(f"/dhrouterstatus/{router_id}",
                                             json={"routerstatus": {"status": status}},
                                             raise_exc=False)
            if response.status_code == 404 and router_id not in response.text:
                self._extension = False
                LOG.warning("Neutron has no dhrouterstatus extension (astara-neutron): "
                            "router status is not written back")
            elif response.status_code >= 400:
                LOG.warning("router %s: status %s: Neutron answered %s", router_id, status,
                            response.status_code)
        fips = [f["id"] for f in self.store.snapshot().floatingips_of(router_id)]
        if self.l3_rpc is not None and fips:
            self.l3_rpc.update_floatingip_statuses(
                router_id, {fip: floatingip_status(status) for fip in fips})

    def close(self):
        self._queue.put(None)
        self._thread.join(5)
        if self.l3_rpc is not None:
            self.l3_rpc.close()
