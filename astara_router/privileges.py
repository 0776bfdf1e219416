"""What the process the agent runs as may do (README, "Least privilege").

The image runs the agent as the unprivileged ``astara-agent`` user with CAP_NET_ADMIN,
CAP_NET_RAW and CAP_NET_BIND_SERVICE only; tests and the lab run it as root. The few
operations that need more ask here first and take the unprivileged way when it is missing.
"""
import os

# Bit numbers (linux/capability.h) of the capabilities the agent is granted or asks about,
# named as setpriv and unit_capabilities write them (lower case, no "cap_").
CAPABILITY_BITS = {"setgid": 6, "net_bind_service": 10, "net_admin": 12, "net_raw": 13,
                   "sys_admin": 21}
CAP_SETGID = CAPABILITY_BITS["setgid"]  # setgroups: keepalived runs its notify script
CAP_SYS_ADMIN = CAPABILITY_BITS["sys_admin"]  # sethostname, mount namespaces


def effective_capabilities():
    """The effective capability set of this process, as a bit mask."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def capability_mask(names):
    """The bit mask (as /proc/<pid>/status shows CapEff) of capabilities named as in
    CAPABILITY_BITS."""
    return sum(1 << CAPABILITY_BITS[name] for name in names)


def has_capability(bit):
    return bool(effective_capabilities() >> bit & 1)


_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4  # linux/prctl.h
_CAPABILITY_VERSION_3 = 0x20080522  # linux/capability.h: two 32-bit words per set


def drop_all_capabilities():
    """Give up every capability this process holds (effective, permitted, inheritable,
    ambient; the bounding set needs CAP_SETPCAP, which the agent is not granted): for the
    gunicorn worker, which parses what the network sends and needs none (the master, which
    applies, keeps them). OSError when the kernel refuses."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 or libc.capset(
            ctypes.byref(Header(_CAPABILITY_VERSION_3, 0)), (Data * 2)()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot drop the capabilities: {os.strerror(errno)}")
