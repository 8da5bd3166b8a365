"""The one table that turns ringd's exceptions into gRPC statuses.

Domain code raises typed exceptions; servicers hand whatever they caught to
:func:`abort`. Anything unexpected is logged with its traceback and answered
INTERNAL with no internals.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError
from ringd.server.background import QueueFullError
from ringd.server.config import ConfigError
from ringd.server.convert import RequestError
from ringd.server.engine import ReloadError, UnknownPluginError

_log = logging.getLogger("ringd.server")


class OverloadedError(Exception):
    """Too many rings in flight; the caller should back off and retry."""


class AnswerTooLargeError(Exception):
    """The encoded answer is larger than the server may send (``max_message_bytes``)."""


class ShuttingDownError(Exception):
    """The server is draining: the caller should retry on another replica."""


class AuthError(Exception):
    """Admin access refused; ``code`` is UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


_TABLE: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (AnswerTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ReloadError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownPluginError, grpc.StatusCode.NOT_FOUND),
)


def status_for(exc: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """The status and developer-facing message for ``exc`` raised while serving ``what``."""
    if isinstance(exc, AuthError):
        return exc.code, str(exc)
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            if isinstance(exc, DecodeError):
                return code, f"request is not a valid {what}: {exc}"
            if isinstance(exc, UnknownPluginError):
                return code, f"no plugin named {exc.args[0]!r} in the current generation"
            return code, str(exc)
    _log.error("unexpected error serving %s", what, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error serving {what}; see the ringd log"


async def abort(context: grpc.aio.ServicerContext[object, object], exc: Exception, what: str) -> NoReturn:
    """End the call with the status :func:`status_for` gives ``exc``."""
    code, message = status_for(exc, what)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
