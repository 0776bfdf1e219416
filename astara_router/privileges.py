"""What the process the agent runs as may do (README, "Least privilege").

The image runs the agent as the unprivileged ``astara-agent`` user with CAP_NET_ADMIN,
CAP_NET_RAW and CAP_NET_BIND_SERVICE only; tests and the lab run it as root. The few
operations that need more ask here first and take the unprivileged way when it is missing.
"""
CAP_SETGID = 6  # setgroups: keepalived runs its notify script as another group
CAP_SYS_ADMIN = 21  # sethostname, mount namespaces (linux/capability.h)


def effective_capabilities():
    """The effective capability set of this process, as a bit mask."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has_capability(bit):
    return bool(effective_capabilities() >> bit & 1)

