"""Reachability of probe targets, measured in the background and served from a cache.

The original pinged Google's resolvers inside the request. We never block a request and
never send traffic to addresses nobody configured: the targets are the committed config's
default gateways unless the operator names others.
"""
import logging
import subprocess
import threading
import time

LOG = logging.getLogger(__name__)


def ping(target, timeout=1):
    try:
        return subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", str(timeout), target],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout + 2).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class StatusProber:
    def __init__(self, settings, engine, pinger=ping):
        self.settings = settings
        self.engine = engine
        self.pinger = pinger
        self.result = {"v4": False, "v6": False, "targets": {}, "checked_at": None}
        self._stop = threading.Event()
        self._thread = None

    def targets(self):
        found = {"v4": self.settings.status_v4_target, "v6": self.settings.status_v6_target}
        config = self.engine.committed.config
        if config is not None:
            from .render.netlink import render_netlink
            for route in render_netlink(config).routes:
                if route.destination.prefixlen == 0:
                    key = f"v{route.destination.version}"
                    found[key] = found[key] or str(route.gateway)
        return {k: v for k, v in found.items() if v}

    def probe_once(self):
        targets = self.targets()
        result = {"v4": False, "v6": False, "targets": targets, "checked_at": time.time()}
        for key, target in targets.items():
            result[key] = self.pinger(target)
        self.result = result  # one assignment: readers see a whole result
        return result

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="status-prober",
                                            daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception:
                LOG.exception("status probe failed")
            self._stop.wait(self.settings.status_interval)
