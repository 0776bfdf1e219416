"""The supervisor: keeps the appliance on its committed generation between pushes.

Every ``interval`` seconds it asks the engine to reconcile (``Engine.reconcile``): the
kernel watch's drift (addresses, routes, links, the nftables table changed behind the
agent's back) and the subsystems' health (dnsmasq, BIRD, nginx and charon by PID, the
metadata proxy's accepting thread) are checked under the writer lock, and anything found is
repaired by running the transaction again with the committed configuration — the same path
a push takes, so a dead daemon is started again from the committed files and a drifted
kernel is read live and converged. Repairs are counted by reason (``GET /v1/status/``).

Back-off: while rounds keep finding something to repair (a daemon that dies again at once)
or the repair fails, the pause doubles up to ``max_backoff``; a round that finds everything
intact resets it.
"""
import logging
import threading

LOG = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings, engine):
        self.engine = engine
        self.interval = settings.reconcile_interval
        self.max_backoff = max(settings.reconcile_max_backoff, self.interval)
        self.failures = 0  # consecutive rounds that needed a repair or failed to repair
        self._stop = threading.Event()
        self._thread = None

    def run_once(self):
        """One round; returns the pause before the next."""
        try:
            repaired = self.engine.reconcile()
        except Exception as exc:  # the engine left the state degraded with the reason
            LOG.warning("reconcile failed: %s", exc)
            repaired = True
        self.failures = self.failures + 1 if repaired else 0
        if not repaired:
            return self.interval
        return min(self.max_backoff, self.interval * 2 ** (self.failures - 1))

    def start(self):
        if self.interval <= 0 or self._thread is not None:
            return  # disabled in the configuration
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        pause = self.interval
        while not self._stop.wait(pause):
            pause = self.run_once()
