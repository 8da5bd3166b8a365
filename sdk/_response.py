"""What a plugin's ``execute`` returns: a :class:`PluginResponse` and its action."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

_log = logging.getLogger("ringd.sdk")

# RFC 9110 token characters: what an HTTP header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class PluginResponseError(ValueError):
    """A :class:`PluginResponse` broke a validation rule.

    Raised at construction time. When a plugin's ``execute`` raises it, the
    engine counts it as that plugin's error, like any other exception.
    """


class PluginAction(Enum):
    """What a plugin tells the ring to do next."""

    # Members are singletons compared by identity: hash them by identity too, in C,
    # not by Enum's Python-level hash of the name (they key hot-path lookup tables).
    __hash__ = object.__hash__

    PASSTHROUGH = "passthrough"
    """Continue with the next plugin; the body is kept as it is (in-place edits included)."""
    MODIFY = "modify"
    """Replace the request body with ``PluginResponse.body`` and continue."""
    BLOCK = "block"
    """Stop the ring; the gateway answers the client with ``status_code`` and an error."""
    CACHE_HIT = "cache_hit"
    """Stop the ring; the gateway answers the client with ``response`` and skips the upstream."""


@dataclass(slots=True)
class PluginResponse:
    """A plugin's verdict. Build it with a factory rather than by hand.

    Validation rules (checked on construction):
        * ``action`` must be a :class:`PluginAction` (or one of its string values),
          otherwise :class:`PluginResponseError`.
        * BLOCK needs ``status_code >= 400``; a lower code becomes 403 with a warning.
        * MODIFY needs a ``body`` dict and CACHE_HIT a ``response`` dict, otherwise
          :class:`PluginResponseError`.

    Attributes:
        action: What the ring does next.
        body: The new request body (MODIFY).
        response: The answer to send the client instead of calling upstream (CACHE_HIT).
        status_code: The HTTP status the gateway answers with (BLOCK).
        error_type: A short machine-readable reason such as ``"rate_limited"`` (BLOCK).
        message: A human-readable explanation; for BLOCK it reaches the client.
        headers: HTTP response headers for the gateway's answer (BLOCK only), for
            example ``{"Retry-After": "30"}``; names are HTTP tokens, values strings
            without CR or LF. None (the default) sets none.
    """

    action: PluginAction
    body: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    status_code: int | None = None
    error_type: str | None = None
    message: str | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        action: Any = self.action
        if action is PluginAction.PASSTHROUGH and self.headers is None:
            return  # nothing to check: the common case, kept cheap
        if not isinstance(action, PluginAction):
            try:
                action = PluginAction(action)
            except ValueError:
                valid = ", ".join(a.value for a in PluginAction)
                raise PluginResponseError(
                    f"invalid action {self.action!r}: expected one of {valid}"
                ) from None
            self.action = action
        if self.headers is not None:
            _check_headers(self.headers, action)
        if action is PluginAction.BLOCK:
            code = self.status_code
            if not isinstance(code, int) or isinstance(code, bool):
                raise PluginResponseError(f"BLOCK needs an integer status_code, got {code!r}")
            if code < 400 or code > 599:
                _log.warning("BLOCK status_code %s is not an HTTP error; using 403", code)
                self.status_code = 403
        elif action is PluginAction.MODIFY:
            if not isinstance(self.body, dict):
                raise PluginResponseError(f"MODIFY needs body to be a dict, got {type(self.body).__name__}")
        elif action is PluginAction.CACHE_HIT and not isinstance(self.response, dict):
            raise PluginResponseError(
                f"CACHE_HIT needs response to be a dict, got {type(self.response).__name__}"
            )

    @classmethod
    def passthrough(cls, message: str | None = None) -> PluginResponse:
        """Let the request continue; in-place edits of ``ctx.body`` are kept."""
        return cls(PluginAction.PASSTHROUGH, message=message)

    @classmethod
    def modify(cls, body: dict[str, Any] | None = None, message: str | None = None) -> PluginResponse:
        """Replace the request body with ``body`` and continue the ring.

        Raises:
            PluginResponseError: ``body`` is not a dict.
        """
        return cls(PluginAction.MODIFY, body=body, message=message)

    @classmethod
    def block(
        cls,
        status_code: int = 403,
        error_type: str = "blocked",
        message: str = "",
        headers: dict[str, str] | None = None,
    ) -> PluginResponse:
        """Stop the ring; the gateway answers the client with ``status_code``.

        A ``status_code`` below 400 (or above 599) becomes 403 with a warning.
        ``headers`` go on the gateway's HTTP answer (e.g. ``{"Retry-After": "30"}``).

        Raises:
            PluginResponseError: a header name is not an HTTP token, or a value is
                not a string or contains CR, LF or NUL.
        """
        return cls(
            PluginAction.BLOCK,
            status_code=status_code,
            error_type=error_type,
            message=message,
            headers=headers,
        )

    @classmethod
    def cache_hit(cls, response: dict[str, Any] | None = None, message: str | None = None) -> PluginResponse:
        """Stop the ring and answer the client with ``response``, skipping the upstream call.

        Raises:
            PluginResponseError: ``response`` is not a dict.
        """
        return cls(PluginAction.CACHE_HIT, response=response, message=message)


def _check_headers(headers: Any, action: PluginAction) -> None:
    """Response headers travel on a BLOCK only, as HTTP-safe names and values."""
    if action is not PluginAction.BLOCK:
        raise PluginResponseError(f"headers are for BLOCK responses only, not {action.value.upper()}")
    if not isinstance(headers, dict):
        raise PluginResponseError(f"headers must be a dict of strings, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise PluginResponseError(f"header name {name!r} is not an HTTP token")
        if not isinstance(value, str):
            raise PluginResponseError(f"header {name!r} has a {type(value).__name__} value, not a string")
        if "\r" in value or "\n" in value or "\0" in value:
            raise PluginResponseError(f"header {name!r} has CR, LF or NUL in its value")
