"""The one place that turns ringd's errors into gRPC statuses, with rich details.

Domain code raises :class:`ringd.server.exceptions.RingdError` subclasses; the
servicers hand whatever they caught to :func:`abort`. The status carries a
developer-facing message and, as ``google.rpc.Status`` details (``grpcio-status``):
``BadRequest`` field violations for a bad request, ``RetryInfo`` when retrying
later can succeed (overload, a full queue, a draining server). Anything unexpected
is logged with its traceback and answered INTERNAL with no internals.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from ringd.server.exceptions import (
    AnswerTooLargeError,
    AuthError,
    ConfigError,
    MetadataTooLargeError,
    OverloadedError,
    PermissionDeniedError,
    QueueFullError,
    ReloadError,
    RequestError,
    RingdError,
    ShuttingDownError,
    StreamLimitError,
    UnknownPluginError,
)

_log = logging.getLogger("ringd.server")
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Most specific first: the first class ``exc`` is an instance of decides.
_TABLE: tuple[tuple[type[RingdError], grpc.StatusCode], ...] = (
    (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (AuthError, grpc.StatusCode.UNAUTHENTICATED),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AnswerTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MetadataTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (ReloadError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownPluginError, grpc.StatusCode.NOT_FOUND),
)


def status_for(exc: Exception, what: str) -> status_pb2.Status:
    """The ``google.rpc.Status`` for ``exc`` raised while serving ``what`` (a message name)."""
    if isinstance(exc, DecodeError):  # protobuf's: the request bytes are not the message
        exc = RequestError(f"request is not a valid {what}: {exc}", field="")
    if isinstance(exc, RingdError):
        for kind, code in _TABLE:
            if isinstance(exc, kind):
                return _status(code, str(exc), _details(exc))
    _log.error("unexpected error serving %s", what, exc_info=exc)
    return _status(grpc.StatusCode.INTERNAL, f"internal error serving {what}; see the ringd log", [])


def _details(exc: RingdError) -> list[any_pb2.Any]:
    details: list[any_pb2.Any] = []
    if isinstance(exc, RequestError):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=str(exc))
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if exc.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(exc.retry_after_s * 1e9))
        details.append(_packed(retry))
    return details


def _packed(message: error_details_pb2.BadRequest | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _status(code: grpc.StatusCode, message: str, details: list[any_pb2.Any]) -> status_pb2.Status:
    number: int = code.value[0]
    return status_pb2.Status(code=number, message=message, details=details)


async def abort(context: grpc.aio.ServicerContext[object, object], exc: Exception, what: str) -> NoReturn:
    """End the call with the status :func:`status_for` gives ``exc``, details included."""
    status = status_for(exc, what)
    if not status.details:  # no details: no trailer to build
        await context.abort(_BY_NUMBER[status.code], status.message)
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
