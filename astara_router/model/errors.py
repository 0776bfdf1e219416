"""Errors raised while turning a request body into the model.

Every error names the JSON path of the offending field (``networks[2].interface.addresses[0]``)
so the orchestrator's operator sees exactly what to fix.
"""
import re
import typing
from dataclasses import dataclass

import msgspec

from .schema import conforms


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class PayloadError(Exception):
    """A body that cannot become a configuration. ``status`` is the HTTP answer."""

    status = 422
    title = "The configuration is not valid"

    def __init__(self, errors):
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors))

    def to_dict(self):
        return {
            "error": self.title,
            "message": str(self),
            "errors": [{"path": e.path, "message": e.message} for e in self.errors],
        }


class UnsupportedService(PayloadError):
    """The body asks for an advanced service this appliance does not run (original: 400)."""

    status = 400
    title = "This appliance cannot service the requested advanced service"


def join(path, key):
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- msgspec's first error, rewritten ---------------------------------------------------------
# msgspec says e.g. "Expected `int` >= 68 - at `$.networks[2].interface.mtu`": a path in its
# own syntax, without the value, dict keys as "[...]" or "`key` in". The path is walked in the
# body and in the schema's types together to name the field our way, show the value and say
# what was expected in words (the schema types' descriptions).
_LOCATION = re.compile(r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.S)
_TOKEN = re.compile(r"\.(\w+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD = re.compile(r"^Object (missing required|contains unknown) field `(\w+)`$")


def schema_error(exc, body, root, context=None):
    """The :class:`FieldError` for a msgspec ValidationError raised converting ``body`` to the
    type ``root``. ``context(path, body)`` may return a prefix for the message."""
    match = _LOCATION.match(str(exc))
    try:
        path, message = _explain(match, body, root)
    except Exception:  # a message this code cannot follow: msgspec's own words, never a 500
        path, message = (match["path"] or "").lstrip("."), match["what"]
    return FieldError(path, (context(path, body) if context else "") + message)


def _explain(match, body, root):
    path, value, annotation = "", body, root
    for token in _TOKEN.finditer(match["path"] or ""):
        name, index = token.group(1), token.group(2)
        if name is not None:
            key = name
        elif index is not None:
            key = int(index)
        else:  # "[...]": the first entry of the dict whose value does not convert
            key = _first_failing(value, lambda k, v: v, _dict_args(annotation, value)[1])
        annotation = _child(annotation, key, value)
        value = value[key]
        path = join(path, key)
    if match["key"]:
        key = _first_failing(value, lambda k, v: k, _dict_args(annotation, value)[0])
        path, value, annotation = join(path, key), key, _dict_args(annotation, value)[0]
    field = _FIELD.match(match["what"])
    if field:
        return join(path, field.group(2)), ("is required but missing"
                                            if field.group(1) == "missing required"
                                            else "is not allowed here")
    return path, f"must be {describe(annotation)}, not {show(value)}"


def describe(annotation):
    """What a schema type accepts, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, msgspec.Meta) and meta.description:
                return meta.description
        return describe(args[0])
    if origin is typing.Union:
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return "one of " + "|".join(map(str, args))
    if origin in (list, tuple):
        return f"a list of {len(args)} items" if origin is tuple else "a list"
    return {str: "a string", int: "an integer", bool: "true or false"}.get(
        annotation, "an object")


def _concrete(annotation, value):
    """The type behind Annotated/Optional/Union that applies to this raw value."""
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin is typing.Union:
            options = [a for a in args if a is not type(None)]
            annotation = next((a for a in options if _fits(a, value)), options[0])
        else:
            return annotation


def _fits(annotation, value):
    base = _concrete(annotation, value)
    if isinstance(value, list):
        return typing.get_origin(base) in (list, tuple)
    if isinstance(value, dict):
        return typing.get_origin(base) is dict or isinstance(base, type) and issubclass(
            base, msgspec.Struct)
    return True


def _child(annotation, key, value):
    base = _concrete(annotation, value)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is list:
        return args[0]
    if origin is tuple:
        return args[key]
    if origin is dict:
        return args[1]
    return {f.encode_name: f.type for f in msgspec.structs.fields(base)}[key]


def _dict_args(annotation, value):
    return typing.get_args(_concrete(annotation, value))


def _first_failing(mapping, pick, annotation):
    return next(key for key, item in mapping.items() if not conforms(pick(key, item), annotation))
