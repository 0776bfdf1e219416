"""Giving the heap's free pages back to the kernel: glibc's ``malloc_trim`` and, when the
agent runs on jemalloc (cli/api.py), a purge of its arenas (which otherwise return pages
only as later allocations advance its decay clock: an idle process keeps them)."""
import ctypes
import functools

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


MADV_PAGEOUT = 21  # Linux >= 5.4


def page_out_alone():
    """Reclaim the pages of files (libraries' code and read-only data) that no other process
    maps: the kernel leaves every page another process maps too (madvise(2),
    MADV_PAGEOUT), so what this process shares stays. For an idle process whose start
    touched pages it will not touch again (the gunicorn master: libstdc++'s initialisers,
    which jemalloc pulls in, ~0.7 MB). Returns the number of mappings advised."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not fields[5].startswith("/") or "w" in fields[1]:
                continue  # anonymous (nowhere to page out to without swap) or writable
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if madvise(start, end - start, MADV_PAGEOUT) == 0:
                advised += 1
    return advised
