"""Giving the heap's free pages back to the kernel: glibc's ``malloc_trim`` and, when the
agent runs on jemalloc (cli/api.py), a purge of its arenas (which otherwise return pages
only as later allocations advance its decay clock: an idle process keeps them)."""
import ctypes

JEMALLOC_ALL_ARENAS = 4096  # MALLCTL_ARENAS_ALL


def give_back():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    mallctl = getattr(ctypes.CDLL(None), "mallctl", None)
    if mallctl is not None:
        mallctl(b"arena.%d.purge" % JEMALLOC_ALL_ARENAS, None, None, None, 0)
