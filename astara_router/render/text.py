"""Payload text inside generated config files (pure).

The schema already keeps control characters out of every string (model/schema.py), but a
renderer must not depend on that: whatever reaches a ``#`` comment of dnsmasq, BIRD or nft
goes through :func:`comment`, which leaves one line with nothing a daemon could read as a
statement, a string delimiter or a block boundary.
"""
import re
from socket import inet_ntoa


_UNSAFE_IN_COMMENT = re.compile(r"[^A-Za-z0-9 _.:/,()'-]")
COMMENT_LIMIT = 80


def comment(text):
    """``text`` made safe for the rest of a comment line: characters outside a small safe
    set become ``?`` and the result is cut at ``COMMENT_LIMIT`` characters."""
    return _UNSAFE_IN_COMMENT.sub("?", str(text))[:COMMENT_LIMIT]


def address_text(address):
    """``str(address)``; an IPv4 address formatted in C (inet_ntoa writes the same dotted
    quad), in a fifth of the time: a full apply writes thousands."""
    if address.version == 4:
        return inet_ntoa(int(address).to_bytes(4, "big"))
    return str(address)


def allocation_texts(network):
    """The addresses of each of ``network``'s allocations as text, in their order (lists,
    one per allocation). Not kept: a renderer's memo keeps what it made of them, and 5 000
    allocations' texts would be 0.8 MB more for the agent to hold."""
    texts = []
    for allocation in network.allocations:
        ip = allocation.served_address  # nearly every VM: its one address
        texts.append([address_text(ip)] if ip is not None
                     else [address_text(ip) for ip, _ in allocation.ip_addresses])
    return texts
