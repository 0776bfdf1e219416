"""Giving the heap's free pages back to the kernel: glibc's ``malloc_trim`` and, when the
agent runs on jemalloc (cli/api.py), a purge of its arenas (which otherwise return pages
only as later allocations advance its decay clock: an idle process keeps them)."""
import ctypes
import functools
import threading
import time

JEMALLOC_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL


@functools.cache
def _allocator_calls():
    """(malloc_trim or None, mallctl or None), looked up once: a CDLL per call leaves a
    cycle for the collector after every push."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        trim = None
    return trim, getattr(ctypes.CDLL(None), "mallctl", None)


def give_back():
    trim, mallctl = _allocator_calls()
    if trim is not None:
        trim(0)
    if mallctl is not None:
        mallctl(b"arena.%d.purge" % JEMALLOC_ALL_ARENAS, None, None, None, 0)


# Seconds without a new push before the pages go back. After every push that was 3
# purges (one per thread of the work after the answer): with PUTs back to back at 1 000
# floating IPs, 2 308 in 40 s (768 pushes), 0.3 ms of CPU each at the median, up to 50 ms on the
# loaded machine, for pages the next push takes again; and the threads serving requests
# then faulted fresh pages in and advised them away again: ~4 000 madvise calls each in
# 8 s against ~750 without those purges (perf stat), each madvise a TLB shootdown that
# interrupts the other CPU (perf record of the worker: the kernel's share 39 % -> 32 %).
TRIM_QUIET = 0.05


class QuietTrims:
    """``give_back`` after pushes, once they pause: ``queue()`` makes the job (for
    ``engine.Background.add_last``) that gives back as each of the work-after-the-answer
    threads ends, each time when no push began for ``quiet`` seconds; it stops as soon as
    a later push queues its own.

    Without it glibc keeps the free pages, and a 5 000-floating-IP push frees tens of
    megabytes of parse temporaries. As each thread ends, because by then the request's
    temporaries and its are freed too (trimming at the commit left 3 MB of the worker's
    PSS at 5 000 floating IPs: make bench); the quick ones first (queued last: releasing
    the last generation and the pushed body), because announcements may wait seconds for
    DAD, and a single trim after them left the worker 2.5 MB larger until then. Even
    router-basic's first apply leaves 1.3 MB to give back."""

    def __init__(self, quiet=TRIM_QUIET, give=give_back, sleep=time.sleep):
        self.quiet, self._give, self._sleep = quiet, give, sleep
        self.began = 0  # pushes begun (push_began)
        self.queued = 0  # jobs queued: the last one gives back

    def push_began(self):
        self.began += 1

    def queue(self):
        self.queued += 1
        number = self.queued
        return lambda threads: self._run(threads, number)

    def _run(self, threads, number):
        for thread in reversed(threads):  # the quick ones (queued last) first
            thread.join()
            if not self._paused(number):
                return
            self._give()

    def _paused(self, number):
        """Wait until no push began for ``quiet`` seconds; False once a later job is
        queued (it gives back after its own push)."""
        while True:
            seen = self.began
            self._sleep(self.quiet)
            if self.queued != number:
                return False
            if self.began == seen:
                return True


class TrimWhenQuiet:
    """``give_back`` once ``poke()`` has not been called for ``quiet`` seconds: in the
    agent's worker after each relayed request and each generation's bytes (relay.py),
    whose buffers (a 5 000-floating-IP push's body and answer: ~1.2 MB each, copied
    on their way) jemalloc would otherwise keep: 21.5 MB of PSS instead of ~17 (memory
    probe). A thread of its own, started on the first poke."""

    def __init__(self, quiet=TRIM_QUIET, give=give_back):
        self.quiet, self._give = quiet, give
        self._poked = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def poke(self):
        self._poked.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="trim-when-quiet")
                    self._thread.start()

    def _run(self):
        while True:
            self._poked.wait()
            self._poked.clear()
            while self._poked.wait(self.quiet):  # poked again within the quiet time
                self._poked.clear()
            self._give()
