"""Event monitors for tests: ``ip monitor`` / ``nft monitor`` in a namespace, synchronised by
markers instead of sleeps.

A monitor subscribes some time after its process starts, and writes an event some time after
it happened. Both are observed rather than waited for: the monitor makes a harmless change of
its own (a marker) and waits until the marker is in the log. At start, a marker that shows up
means the subscription is live; at stop, it means every earlier event has been written
(the kernel delivers a socket's events in order). Marker lines are left out of ``lines()``.
"""
import time

POLL = 0.005
RETRY = 0.1  # a marker made before the subscription is lost: make another one


class EventMonitor:
    def __init__(self, lab, ns, argv, name, timeout=20):
        self.ns = ns
        self.path = lab.tmpdir(name) / "events.log"
        self.proc = lab.spawn(ns, argv, log_path=self.path)
        self._serial = 0
        self.sync(timeout)

    # -- to be provided by each kind of monitor -------------------------------------------
    def mark(self, serial):
        """Make a harmless change that prints ``self.token(serial)``."""
        raise NotImplementedError

    def token(self, serial):
        raise NotImplementedError

    def is_marker(self, line):
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def _raw(self):
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def sync(self, timeout=20):
        """Return once a marker made now has been written by the monitor."""
        deadline = time.monotonic() + timeout
        while True:
            self._serial += 1
            token = self.token(self._serial)
            self.mark(self._serial)
            retry_at = time.monotonic() + RETRY
            while time.monotonic() < retry_at:
                if token in self._raw():
                    return
                time.sleep(POLL)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.proc.args!r} never reported its marker")

    def lines(self):
        return [line for line in self._raw().splitlines()
                if line.strip() and not self.is_marker(line)]

    def wait_for(self, predicate, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.lines()):
                return
            time.sleep(POLL)
        raise TimeoutError(f"events never matched; saw {self.lines()[-5:]}")

    def stop(self):
        """Every event up to now, once the monitor has written them all."""
        self.sync()
        self.proc.terminate()
        self.proc.wait(5)
        return self.lines()


class NetlinkMonitor(EventMonitor):
    """``ip -o monitor link address route``: one line per link/address/route change. Markers
    are a /32 from 198.19.255.0/24 added to and removed from ``lo``."""

    PREFIX = "198.19.255."

    def __init__(self, lab, ns, name="monitor"):
        super().__init__(lab, ns, ["ip", "-o", "monitor", "link", "address", "route"], name)

    def token(self, serial):
        return f"{self.PREFIX}{serial % 250 + 1}/32"

    def mark(self, serial):
        address = self.token(serial)
        self.ns.ip("addr", "add", address, "dev", "lo")
        self.ns.ip("addr", "del", address, "dev", "lo")

    def is_marker(self, line):
        return f" {self.PREFIX}" in line


class NftMonitor(EventMonitor):
    """``nft monitor ruleset``: every ruleset change. Markers are an empty table
    ``inet astara_test_marker_<n>`` added and deleted."""

    NAME = "astara_test_marker_"

    def __init__(self, lab, ns, name="nftmon"):
        super().__init__(lab, ns, ["nft", "monitor", "ruleset"], name)

    def token(self, serial):
        return f"{self.NAME}{serial}"

    def mark(self, serial):
        self.ns.run(["nft", "add table inet", self.token(serial), ";",
                     "delete table inet", self.token(serial)])

    def is_marker(self, line):
        return self.NAME in line
