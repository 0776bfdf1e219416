"""Payload text inside generated config files (pure).

The schema already keeps control characters out of every string (model/schema.py), but a
renderer must not depend on that: whatever reaches a ``#`` comment of dnsmasq, BIRD or nft
goes through :func:`comment`, which leaves one line with nothing a daemon could read as a
statement, a string delimiter or a block boundary.
"""
import re

_UNSAFE_IN_COMMENT = re.compile(r"[^A-Za-z0-9 _.:/,()'-]")
COMMENT_LIMIT = 80


def comment(text):
    """``text`` made safe for the rest of a comment line: characters outside a small safe
    set become ``?`` and the result is cut at ``COMMENT_LIMIT`` characters."""
    return _UNSAFE_IN_COMMENT.sub("?", str(text))[:COMMENT_LIMIT]
