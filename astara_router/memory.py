"""Giving the heap's free pages back to the kernel: glibc's ``malloc_trim`` and, when the
agent runs on jemalloc (cli/api.py), a purge of its arenas (which otherwise return pages
only as later allocations advance its decay clock: an idle process keeps them)."""
import ctypes
import functools
import threading

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


# Seconds without a poke (a push beginning, a job after an answer ending, a relayed
# request) before the pages go back. After every push that was 3 purges (one per thread of
# the work after the answer): with PUTs back to back at 1 000 floating IPs, 2 308 in 40 s
# (768 pushes), 0.3 ms of CPU each at the median, up to 50 ms on the loaded machine, for
# pages the next push takes again; and the threads serving requests then faulted fresh
# pages in and advised them away again: ~4 000 madvise calls each in 8 s against ~750
# without those purges (perf stat), each madvise a TLB shootdown that interrupts the other
# CPU (perf record of the worker: the kernel's share 39 % -> 32 %).
TRIM_QUIET = 0.05


class TrimWhenQuiet:
    """``give_back`` once ``poke()`` has not been called for ``quiet`` seconds, in a thread
    of its own (started on the first poke).

    The engine pokes as a push begins and as each thread of the work after its answer
    ends (``as_they_end``): a 5 000-floating-IP push frees tens of megabytes of parse
    temporaries, which glibc and jemalloc would keep; by the time a job's thread ends the
    request's temporaries and its own are freed too (trimming at the commit left 3 MB of
    PSS at 5 000 floating IPs: make bench), and announcements may wait seconds for DAD (a
    single trim after them left the process 2.5 MB larger until then). The worker pokes
    after each relayed request and each generation's bytes (relay.py), whose buffers (a
    5 000-floating-IP push's body and answer: ~1.2 MB each, copied on their way) it would
    otherwise keep: 21.5 MB of PSS instead of ~17 (memory probe). ``poked``: the event the
    pokes set (tests script it)."""

    def __init__(self, quiet=TRIM_QUIET, give=give_back, poked=None):
        self.quiet, self._give = quiet, give
        self._poked = poked if poked is not None else threading.Event()
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

    def as_they_end(self, threads):
        """A poke as each of ``threads`` ends, the quick ones (queued last) first
        (``engine.Background.add_last``)."""
        for thread in reversed(threads):
            thread.join()
            self.poke()

    def wait_for_quiet(self):
        """Return once poked and then not poked again for ``quiet`` seconds."""
        self._poked.wait()
        self._poked.clear()
        while self._poked.wait(self.quiet):  # poked again within the quiet time
            self._poked.clear()

    def _run(self):
        while True:
            self.wait_for_quiet()
            self._give()
