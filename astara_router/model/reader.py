"""A small typed reader for JSON payloads that records errors with their JSON path.

Parsers call ``r.str(obj, "hostname", path)`` and friends; a bad or missing field appends a
:class:`FieldError` and returns a placeholder (``None``) so one pass reports every problem.
"""
import ipaddress
import re

from .errors import FieldError, PayloadError

_MISSING = object()
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Reader:
    def __init__(self):
        self.errors = []

    # -- bookkeeping --------------------------------------------------------------------
    def error(self, path, message):
        self.errors.append(FieldError(path, message))
        return None

    def raise_if_errors(self, cls=PayloadError):
        if self.errors:
            raise cls(self.errors)

    # -- containers ---------------------------------------------------------------------
    def get(self, obj, key, path, required):
        if not isinstance(obj, dict):
            return _MISSING
        if key not in obj:
            if required:
                self.error(join(path, key), "is required but missing")
            return _MISSING
        return obj[key]

    def object(self, obj, key, path, required=True, default=None):
        value = self.get(obj, key, path, required)
        if value is _MISSING or (value is None and not required):
            return {} if default is None else default
        if not isinstance(value, dict):
            self.error(join(path, key), f"must be an object, not {_show(value)}")
            return {} if default is None else default
        return value

    def list(self, obj, key, path, required=False):
        value = self.get(obj, key, path, required)
        if value is _MISSING or (value is None and not required):
            return []
        if not isinstance(value, list):
            self.error(join(path, key), f"must be a list, not {_show(value)}")
            return []
        return value

    def objects(self, obj, key, path, required=False):
        """Yield ``(item_path, item)`` for a list of objects, reporting non-objects."""
        items = self.list(obj, key, path, required)
        for index, item in enumerate(items):
            item_path = join(join(path, key), index)
            if not isinstance(item, dict):
                self.error(item_path, f"must be an object, not {_show(item)}")
                continue
            yield item_path, item

    # -- scalars ------------------------------------------------------------------------
    def str(self, obj, key, path, required=True, default="", allow_empty=True):
        value = self.get(obj, key, path, required)
        if value is _MISSING or (value is None and not required):
            return default
        if not isinstance(value, str):
            return self.error(join(path, key), f"must be a string, not {_show(value)}")
        if not allow_empty and not value:
            return self.error(join(path, key), "must not be empty")
        return value

    def bool(self, obj, key, path, required=False, default=False):
        value = self.get(obj, key, path, required)
        if value is _MISSING or (value is None and not required):
            return default
        if not isinstance(value, bool):
            return self.error(join(path, key), f"must be true or false, not {_show(value)}")
        return value

    def int(self, obj, key, path, required=False, default=None, lo=None, hi=None):
        value = self.get(obj, key, path, required)
        if value is _MISSING or (value is None and not required):
            return default
        return self.int_value(value, join(path, key), lo, hi)

    def int_value(self, value, path, lo=None, hi=None):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)  # Neutron occasionally serialises numbers as strings
            else:
                return self.error(path, f"must be an integer, not {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return self.error(path, f"must be between {lo} and {hi}, not {value}")
        return value

    def choice(self, obj, key, path, choices, default):
        value = self.str(obj, key, path, required=False, default=default)
        if value is None:
            return None
        if value not in choices:
            return self.error(join(path, key),
                              f"must be one of {'|'.join(choices)}, not {_show(value)}")
        return value

    # -- addresses ----------------------------------------------------------------------
    def ip_value(self, value, path, version=None, context=""):
        if not isinstance(value, str):
            return self.error(path, f"{context}must be an IP address string, not {_show(value)}")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return self.error(path, f"{context}{_show(value)} is not a valid IP address")
        if version and address.version != version:
            return self.error(path, f"{context}{value} is not an IPv{version} address")
        return address

    def ip(self, obj, key, path, required=True, version=None, allow_empty=False):
        value = self.get(obj, key, path, required)
        if value is _MISSING:
            return None
        if allow_empty and value in ("", None):
            return None
        return self.ip_value(value, join(path, key), version)

    def network_value(self, value, path, context=""):
        """A CIDR with the host part zero (``10.1.0.0/24``)."""
        if not isinstance(value, str):
            return self.error(path, f"{context}must be a CIDR string, not {_show(value)}")
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            return self.error(path, f"{context}{_show(value)} is not a valid network CIDR ({exc})")

    def interface_value(self, value, path, context=""):
        """An address with its prefix length (``10.1.0.1/24``)."""
        if not isinstance(value, str) or "/" not in value:
            return self.error(path, f"{context}{_show(value)} is not an address/prefix (CIDR)")
        try:
            return ipaddress.ip_interface(value)
        except ValueError:
            return self.error(path, f"{context}{_show(value)} is not a valid address/prefix")

    def mac_value(self, value, path):
        if not isinstance(value, str) or not MAC_RE.fullmatch(value.lower()):
            return self.error(path, f"{_show(value)} is not a MAC address")
        return value.lower()
