"""ringd's one exception family: every error a caller or an operator can meet.

Domain code raises these; :mod:`ringd.server.errors` is the one place that turns
them into gRPC statuses (with rich details), so this module imports no gRPC.
Each class says what the caller can do about it: fix the request (``field`` names
what is wrong), retry later (``retry_after_s``), or ask an operator.
"""

from __future__ import annotations


class RingdError(Exception):
    """Base of every ringd error; ``retry_after_s`` is set when retrying later can succeed."""

    retry_after_s: float | None = None


# ---------------------------------------------------------------- the caller's request


class RequestError(RingdError, ValueError):
    """The request is malformed (INVALID_ARGUMENT); ``field`` is the path of the bad field."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AuthError(RingdError):
    """Admin access refused: no credentials presented (UNAUTHENTICATED)."""


class PermissionDeniedError(AuthError):
    """Admin access refused: the credentials presented are not valid (PERMISSION_DENIED)."""


# ---------------------------------------------------------------- capacity


class OverloadedError(RingdError):
    """Too many rings in flight; the caller should back off and retry."""

    retry_after_s = 0.1


class QueueFullError(RingdError):
    """The background queue is at its bound; the caller should back off and retry."""

    retry_after_s = 0.5


class ShuttingDownError(RingdError):
    """The server is draining: the caller should retry on another replica."""

    retry_after_s = 0.0


class MetadataTooLargeError(RingdError):
    """The call's gRPC metadata (HTTP/2 headers) is over ``server.max_call_metadata_bytes``."""


class AnswerTooLargeError(RingdError):
    """The encoded answer is larger than the server may send (``max_message_bytes``)."""


class StreamLimitError(RingdError):
    """A stream holds more than a ``server.stream_*`` limit allows; the message names it."""


# ---------------------------------------------------------------- config and plugins


class ConfigError(RingdError, ValueError):
    """The config file is invalid; the message names the file, entry and field."""


class PluginLoadError(RingdError):
    """A plugin's entrypoint could not be imported or is not a plugin."""


class ReloadError(RingdError):
    """A reload was rejected; nothing changed. ``errors`` maps plugin name to its error."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        detail = "; ".join(f"{name}: {error}" for name, error in errors.items())
        super().__init__(f"reload rejected, the current generation keeps serving: {detail}")


class UnknownPluginError(RingdError, LookupError):
    """No plugin of that name is loaded; ``name`` is the name asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no plugin named {name!r} in the current generation")
        self.name = name


class EncodeError(RingdError, ValueError):
    """A ring left something in the context that the wire cannot carry; names where.

    Never sent to a caller as a status: the engine turns it into the ring's
    500 ``plugin_error`` block (:meth:`ringd.server.results.RingOutcome.unencodable`).
    """


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception raised by plugin code, safe if its ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:  # a plugin's exception whose __str__ raises: name its type only
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
