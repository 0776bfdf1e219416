"""Structured logs: every line carries the fields of the work it belongs to.

``log_fields(request_id=..., generation=...)`` binds fields to the current context (a
``contextvars`` variable, so each request thread has its own); ``configure()`` installs one
handler on the root logger whose filter stamps them on every record, whatever module logs
it. Two formats: ``text`` (the usual line, the fields appended as ``key=value``) and
``json`` (one object per line). The orchestrator uses the same module for its pushes, so a
request id can be followed from the orchestrator's log into the agent's.
"""
import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import uuid

FIELDS = contextvars.ContextVar("astara_log_fields", default=None)
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# The header that carries a request id from the orchestrator to the agent and back (both
# import it from here: the agent's api/ imports Flask, which the orchestrator has not).
REQUEST_ID_HEADER = "X-Request-Id"
# What an X-Request-Id may be (it reaches log lines and a response header): the
# ``req-<uuid>`` ids both sides generate and what common proxies send.
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]+")


def new_request_id():
    return f"req-{uuid.uuid4()}"


def valid_request_id(text):
    return bool(text) and REQUEST_ID.fullmatch(text) is not None


@contextlib.contextmanager
def log_fields(**fields):
    """Bind ``fields`` (added to the ones already bound) for the block; yields the dict, which
    the block may update (e.g. the generation once it is committed)."""
    merged = {**(FIELDS.get() or {}), **fields}
    token = FIELDS.set(merged)
    try:
        yield merged
    finally:
        FIELDS.reset(token)


def current_fields():
    return dict(FIELDS.get() or {})


class ContextFilter(logging.Filter):
    """Stamps the bound fields on each record (as ``record.fields``)."""

    def filter(self, record):
        if not hasattr(record, "fields"):
            record.fields = current_fields()
        return True


def _text_value(value):
    text = str(value)
    return text if PLAIN_VALUE.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    def __init__(self, fmt=TEXT_FORMAT):
        super().__init__(fmt)

    def format(self, record):
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} {extra}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "pid": record.process,
                 "thread": record.threadName, "message": record.getMessage()}
        entry.update((k, v) for k, v in (getattr(record, "fields", None) or {}).items()
                     if v is not None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def make_handler(fmt="text", stream=None, text_format=TEXT_FORMAT, handler=None):
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = handler or logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text_format))
    return handler


def configure(fmt="text", level=logging.INFO, stream=None, text_format=TEXT_FORMAT,
              handler=None):
    """The root logger writes through one handler in format ``fmt`` (text or json)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt, stream, text_format, handler))
    root.setLevel(level)
