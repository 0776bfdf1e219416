"""nftables transactions through libnftables, in process.

``nft -f -`` forks and executes a program per transaction (~4–8 ms here before nft does any
work); libnftables — the library the ``nft`` program is a thin shell around, shipped with
it in Debian's libnftables1 — runs the same parser and the same netlink transaction in the
agent's process (~0.3 ms for a small change). This is the ctypes binding Debian ships as
python3-nftables, reduced to the two calls we need (that package is not on PyPI and does
not install into a virtualenv). Where the library cannot be loaded, the ``nft`` program is
used instead, with the same all-or-nothing semantics.
"""
import ctypes
import ctypes.util
import logging
import os
import subprocess
import threading

LOG = logging.getLogger(__name__)

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_HANDLE = 1 << 3
# A context keeps its cache of the kernel's ruleset after a successful command: after a
# full load or listing of thousands of floating-IP elements that is megabytes of C heap
# (9 MB of the worker's PSS at 5 000 floating IPs: make bench). Such a context is freed;
# small element transactions (+1 floating IP) keep theirs (a new one costs ~0.2 ms).
KEEP_CONTEXT_BELOW = 64 * 1024  # bytes of script or output


class NftError(Exception):
    pass


class _Library:
    def __init__(self, path):
        lib = ctypes.CDLL(path, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.lock = threading.Lock()  # a context is not thread-safe
        self.contexts = {}  # network namespace (inode) -> context

    def context(self):
        """The context of the calling thread's network namespace: a context's netlink
        socket stays in the namespace it was opened in."""
        netns = os.stat("/proc/thread-self/ns/net").st_ino
        ctx = self.contexts.get(netns)
        if ctx is None:
            ctx = self.lib.nft_ctx_new(NFT_CTX_DEFAULT)
            if not ctx:
                raise NftError("nft_ctx_new failed")
            self.lib.nft_ctx_buffer_output(ctx)
            self.lib.nft_ctx_buffer_error(ctx)
            self.contexts[netns] = ctx
        return ctx

    def run(self, script):
        lib = self.lib
        with self.lock:
            ctx = self.context()
            status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
            if max(len(script), len(output)) >= KEEP_CONTEXT_BELOW:
                self.release()
        return status, output, error

    def release(self):
        """Under the lock: free every context (and its cache); the next run opens a new one."""
        for ctx in self.contexts.values():
            self.lib.nft_ctx_free(ctx)
        self.contexts.clear()


def _load():
    path = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        return _Library(path)
    except OSError as exc:
        LOG.info("libnftables not loadable (%s): using the nft program", exc)
        return None


_LIBRARY = _load()


def _cli(script, check_only=False, timeout=60):
    try:
        result = subprocess.run(["nft", *(["-c"] if check_only else []), "-f", "-"],
                                input=script, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(str(exc)) from exc
    return result.returncode, result.stdout, result.stderr


def run(script, timeout=60, locate_errors=True):
    """Run an nft script (commands separated by newlines) as one transaction; return its
    output (listings). Raises NftError with nft's message when it is refused.
    ``locate_errors`` False: a refusal is reported as the library words it, without asking
    the program for the right line (a one-line listing has one line; the agent's first
    apply lists a table that does not exist yet, and the program's start cost ~5 ms)."""
    if _LIBRARY is not None:
        status, output, error = _LIBRARY.run(script)
        if status != 0 and locate_errors:
            # libnftables 1.0.6 points at the right column of the wrong line when the input
            # is a buffer; the program, in check mode (no change), names the right one.
            check_status, _, check_error = _cli(script, check_only=True, timeout=timeout)
            if check_status != 0 and check_error.strip():
                error = check_error
    else:
        status, output, error = _cli(script, timeout=timeout)
    if status != 0:
        raise NftError((error.strip() or output.strip() or f"status {status}")[-2000:])
    return output
