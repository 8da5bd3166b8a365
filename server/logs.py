"""Log output: text for a terminal, or one JSON object per line for a log collector.

The request a log line belongs to travels in a :class:`contextvars.ContextVar`:
the servicer calls :func:`bind_request` once it has decoded a call's context, and
every line logged by that call's task afterwards (ringd's own, a plugin's
``self.logger``) carries its ``request_id`` and ring. A plugin's logger is named
``plugin.<name>``, so its lines name the plugin too.

Each gRPC call runs in its own task, and a task starts with a copy of the context,
so one call's request id never leaks into another's lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from enum import Enum
from typing import Any, NamedTuple, TextIO

_PLUGIN_LOGGER_PREFIX = "plugin."
MAX_REQUEST_ID = 128
"""Characters of a request id written to a log line (the caller chooses its length)."""


class LogFormat(Enum):
    """How log lines look: ``text`` (the default) or ``json`` (one object per line)."""

    TEXT = "text"
    JSON = "json"


class LogContext(NamedTuple):
    """What a log line says about the request it belongs to; empty fields are left out.

    A named tuple, not a dataclass: the servicer builds one per call, and a tuple is
    the cheapest immutable record to build.
    """

    request_id: str = ""
    ring: str = ""


_CURRENT: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "ringd_log_context", default=None
)


def bind_request(request_id: str, ring: str) -> None:
    """Tag the current task's log lines with a request id and ring (the servicer calls this)."""
    _CURRENT.set(LogContext(request_id, ring))


def current() -> LogContext | None:
    """The current task's log context, if a request was bound."""
    return _CURRENT.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the
    request's ``request_id``, ``ring`` and ``plugin`` where known; ``exception`` holds a
    traceback when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _CURRENT.get()
        if bound is not None:
            if bound.request_id:
                line["request_id"] = _clip(bound.request_id)
            if bound.ring:
                line["ring"] = bound.ring
        if record.name.startswith(_PLUGIN_LOGGER_PREFIX):
            line["plugin"] = record.name.removeprefix(_PLUGIN_LOGGER_PREFIX).split(".", 1)[0]
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON (an object's repr) never loses the line.
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, with ``[request_id=… ring=…]`` when a request is bound."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        bound = _CURRENT.get()
        if bound is None or not bound.request_id:
            return text
        first, newline, rest = text.partition("\n")
        # repr: the id is the caller's text, and a newline in it must not forge a log line.
        return f"{first} [request_id={_clip(bound.request_id)!r} ring={bound.ring}]{newline}{rest}"


def _clip(request_id: str) -> str:
    """The caller chooses the id: at most ``MAX_REQUEST_ID`` characters of it reach a line."""
    if len(request_id) <= MAX_REQUEST_ID:
        return request_id
    return request_id[:MAX_REQUEST_ID] + "..."


def _iso_utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure(level: str, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Send the root logger's lines to ``stream`` (stderr) at ``level`` in ``log_format``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
