"""The checks that follow the schema: addresses are parsed with the standard library's
``ipaddress`` (the schema only knows their shape), and every problem is kept with its JSON
path so that one pass reports them all."""
import functools
import ipaddress
from socket import AF_INET, inet_pton

from .errors import FieldError, PayloadError


class TwoParses:
    """A memo whose entries live for the parse that made or used them and the next one
    (``next_parse``): a push repeats nearly everything of the previous one, and what the
    last parse did not use is forgotten, so memory stays bounded by two payloads. (An
    lru_cache of 16 384 floating IPs kept that many, ~1 KB each with their derived forms,
    whatever the payload: 12 pushes each moving 1 000 of 5 000 left 30 MB live, 17.7 MB
    this way.)"""
    memos = []

    def __init__(self):
        self.current, self.previous = {}, {}
        TwoParses.memos.append(self)

    def get(self, key):
        value = self.current.get(key)
        if value is None:
            value = self.previous.get(key)
            if value is not None:
                self.current[key] = value
        return value

    def put(self, key, value):
        self.current[key] = value

    def put_all(self, pairs):
        """``put`` each (key, value) of ``pairs`` (an iterator made in C, for thousands)."""
        self.current.update(pairs)

    def remembers_any(self):
        return bool(self.current or self.previous)


def next_parse():
    """A parse begins: what the one before the last did not use is forgotten."""
    for memo in TwoParses.memos:
        memo.current, memo.previous = {}, memo.current


def forget_unused():
    """A parse succeeded: what it did not use can serve no later parse (each consults only
    the one before it), so it goes now rather than at the next parse — a push that changes
    every floating IP would otherwise keep two configurations' objects until the next."""
    for memo in TwoParses.memos:
        memo.previous = {}


CACHE_SIZE = 1 << 14


IPv4Address = ipaddress.IPv4Address
_new_object = object.__new__
_from_bytes = int.from_bytes


def new_address(text):
    """An IP address; IPv4 through ``inet_pton``, as strict as ``ipaddress`` (no leading zeros,
    exactly four parts) and a quarter of its time, which counts for 5 000 floating IPs.
    The IPv4Address is given its integer directly, as its constructor does with packed
    bytes after checking their type and length, which inet_pton fixes (2 000 addresses:
    0.9 ms instead of 1.8). A new object each time: ``parse_ip`` is the remembered one."""
    if ":" in text:
        return ipaddress.IPv6Address(text)
    try:
        packed = inet_pton(AF_INET, text)
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None
    address = _new_object(IPv4Address)
    address._ip = _from_bytes(packed, "big")
    return address


class _ParsedAddresses(dict):
    """text -> ``new_address(text)``, made on the first lookup (``parse_ip``). Looked up in
    C like an lru_cache, a third of its time on a hit, without its linked-list entry per
    address (5 000 allocations: 0.32 MB). Bounded like that cache was: when full, it starts
    over (what the payload still names is parsed again as it is met)."""
    __slots__ = ()

    def __missing__(self, text):
        address = new_address(text)
        if len(self) >= CACHE_SIZE:
            self.clear()
        self[text] = address
        return address


# Parsed addresses are immutable: the same text gives the same object, and a push that
# repeats thousands of addresses (every push repeats nearly all) parses only the new ones:
# 15 000 hits per push at 5 000 floating IPs, each a dictionary lookup in C.
parse_ip = _ParsedAddresses().__getitem__


IPV6_ABOVE = 1 << 128  # address_key: every IPv6 address above every IPv4 one


def address_key(address):
    """One integer per address, IPv4 ones below IPv6 ones: a key hashed in C and sorted
    like the addresses (FloatingIP.key's form). An IPv4 address's is its own integer
    object: nothing is allocated for thousands of floating IPs (a (version, integer) tuple
    each held 0.3 MB at 5 000)."""
    return int(address) if address.version == 4 else IPV6_ABOVE + int(address)


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_network(text):
    return ipaddress.ip_network(text, strict=True)


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse_interface(text):
    return ipaddress.ip_interface(text)


class Problems:
    def __init__(self):
        self.errors = []

    def add(self, path, message):
        self.errors.append(FieldError(path, message))

    def raise_if_any(self):
        if self.errors:
            raise PayloadError(self.errors)

    # Each returns the parsed value, or None after recording the problem.
    def ip(self, text, path, context=""):
        try:
            return parse_ip(text)
        except ValueError:
            self.add(path, f"{context}{text!r} is not a valid IP address")
            return None

    def network(self, text, path, context=""):
        """A CIDR with the host part zero (``10.1.0.0/24``)."""
        try:
            return parse_network(text)
        except ValueError as exc:
            self.add(path, f"{context}{text!r} is not a valid network CIDR ({exc})")
            return None

    def interface(self, text, path, context=""):
        """An address with its prefix length (``10.1.0.1/24``)."""
        try:
            return parse_interface(text)
        except ValueError:
            self.add(path, f"{context}{text!r} is not a valid address/prefix")
            return None
