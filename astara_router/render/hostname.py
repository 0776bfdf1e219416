"""``hostname`` and ``hosts`` files (pure).

Nothing is escaped or quoted here on purpose: the model only lets RFC 1123 host names
through (letters, digits, dots, inner dashes), and a name that is not one is refused
here too rather than written, so a payload can never add a line to /etc/hosts. The
management address is parsed as one (a ValueError otherwise) for the same reason: the
image's root helper reads it from a file the agent's user could rewrite.
"""
import ipaddress

from ..model.parse import valid_hostname

LOCALHOST_LINES = ("127.0.0.1  localhost", "::1  localhost ip6-localhost ip6-loopback")
NO_MANAGEMENT_ADDRESS = "127.0.1.1"  # Debian's convention for a host without a fixed address


def _checked(hostname):
    if not valid_hostname(hostname):
        raise ValueError(f"{hostname!r} is not an RFC 1123 host name")
    return hostname


def render_hostname_file(hostname):
    return _checked(hostname) + "\n"


def render_hosts(hostname, management_address):
    """localhost lines plus the host name on the management address (the original's
    layout), or on 127.0.1.1 without one, so the name always resolves locally."""
    address = (NO_MANAGEMENT_ADDRESS if management_address is None
               else str(ipaddress.ip_address(management_address)))
    return "\n".join((*LOCALHOST_LINES, f"{address}  {_checked(hostname)}")) + "\n"
