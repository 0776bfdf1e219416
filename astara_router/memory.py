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
