"""What a plugin's ``execute`` returns: a :class:`PluginResponse` and its action."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_log = logging.getLogger("ringd.sdk")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class PluginResponseError(ValueError):
    """A :class:`PluginResponse` broke a validation rule.

    Raised at construction for an unknown action, and by :meth:`PluginResponse.validate`
    (which the engine calls when the ring runs) for a response it cannot serve. When a
    plugin's ``execute`` raises it, the engine counts it as that plugin's error.
    """


class PluginAction(StrEnum):
    """What a plugin tells the ring to do next.

    A string enum, as in LLMProxy: every member *is* its value, so
    ``resp.action == "block"``, ``resp.action in {"block"}``, lookups by the string
    and ``f"{resp.action}"`` behave as with plain strings (and hash in C).
    """

    PASSTHROUGH = "passthrough"
    """Continue with the next plugin; the body is kept as it is (in-place edits included)."""
    MODIFY = "modify"
    """Replace the request body with ``PluginResponse.body`` and continue."""
    BLOCK = "block"
    """Stop the ring; the gateway answers the client with ``status_code`` and an error."""
    CACHE_HIT = "cache_hit"
    """Stop the ring; the gateway answers the client with ``response`` and skips the upstream."""


_ACTIONS: dict[object, PluginAction] = {action.value: action for action in PluginAction}
_PASSTHROUGH = PluginAction.PASSTHROUGH
_MODIFY = PluginAction.MODIFY


@dataclass(slots=True)
class PluginResponse:
    """A plugin's verdict. Build it with a factory rather than by hand.

    The fields, their order and their defaults are LLMProxy's, so
    ``PluginResponse()`` is a passthrough and ``PluginResponse("block", 429)``
    a block. Construction is as lenient as LLMProxy's:

    * ``action`` must be a :class:`PluginAction` or one of its string values,
      otherwise :class:`PluginResponseError` (``Invalid PluginResponse action
      'x'. Must be one of: ...``). A string is stored as its member.
    * BLOCK with no ``status_code``, or one outside 400-599, becomes 403 with a
      warning.
    * MODIFY without a ``body`` keeps ``ctx.body`` (in-place edits included).
    * What cannot be served, such as CACHE_HIT without a ``response`` dict, is
      accepted here and is that plugin's error when the ring runs (see
      :meth:`validate`).

    Attributes:
        action: What the ring does next.
        status_code: The HTTP status the gateway answers with (BLOCK); 200 otherwise.
        error_type: A short machine-readable reason such as ``"rate_limited"`` (BLOCK).
        message: A human-readable explanation; for BLOCK it reaches the client.
        body: The new request body (MODIFY); ``None`` keeps ``ctx.body``.
        response: The answer to send the client instead of calling upstream (CACHE_HIT).
        headers: HTTP response headers for the gateway's answer (BLOCK only; ringd's
            addition), for example ``{"Retry-After": "30"}``; names are HTTP tokens,
            values strings without CR, LF or NUL. None (the default) sets none.
    """

    action: PluginAction = PluginAction.PASSTHROUGH
    status_code: int = 200
    error_type: str | None = None
    message: str | None = None
    body: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        action: Any = self.action
        if action is PluginAction.PASSTHROUGH:
            return  # nothing to check: the common case, kept cheap
        member = _ACTIONS.get(action) if isinstance(action, str) else None
        if member is None:
            valid = ", ".join(a.value for a in PluginAction)
            raise PluginResponseError(f"Invalid PluginResponse action '{action}'. Must be one of: {valid}")
        self.action = member
        if member is PluginAction.BLOCK:
            code: Any = self.status_code
            if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
                _log.warning("PluginResponse BLOCK with status_code=%r is not an HTTP error; using 403", code)
                self.status_code = 403

    def validate(self) -> None:
        """Check that the ring can serve this response; the engine calls it as the ring runs.

        Raises:
            PluginResponseError: an ``action`` set after construction that is not a
                :class:`PluginAction` value (one that is becomes its member, as at
                construction), MODIFY with a ``body`` that is not a dict, CACHE_HIT
                without a ``response`` dict, or ``headers`` that are not HTTP-safe or
                on anything but a BLOCK.
        """
        if self.action.__class__ is not PluginAction:  # a string set after construction
            self.__post_init__()  # its member, as at construction (or PluginResponseError)
        action = self.action
        if self.headers is not None:
            _check_headers(self.headers, action)
        if action is PluginAction.MODIFY:
            if self.body is not None and not isinstance(self.body, dict):
                raise PluginResponseError(
                    f"MODIFY needs body to be a dict or None, got {type(self.body).__name__}"
                )
        elif action is PluginAction.CACHE_HIT and not isinstance(self.response, dict):
            raise PluginResponseError(
                f"CACHE_HIT needs response to be a dict, got {type(self.response).__name__}"
            )

    @classmethod
    def passthrough(cls, message: str | None = None) -> PluginResponse:
        """Let the request continue; in-place edits of ``ctx.body`` are kept."""
        # Positional: a class called with keywords packs them into a dict first. Most
        # plugins answer this on most calls.
        return cls(_PASSTHROUGH, 200, None, message)

    @classmethod
    def modify(cls, body: dict[str, Any] | None = None, message: str | None = None) -> PluginResponse:
        """Replace the request body with ``body`` (``None`` keeps it) and continue the ring."""
        return cls(_MODIFY, 200, None, message, body)

    @classmethod
    def block(
        cls,
        status_code: int = 403,
        error_type: str = "plugin_block",
        message: str = "Blocked by plugin",
        headers: dict[str, str] | None = None,
    ) -> PluginResponse:
        """Stop the ring; the gateway answers the client with ``status_code``.

        A ``status_code`` outside 400-599 becomes 403 with a warning. ``headers`` go on
        the gateway's HTTP answer (e.g. ``{"Retry-After": "30"}``); names that are not
        HTTP tokens, or values with CR, LF or NUL, are this plugin's error when the
        ring runs.
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

        A missing or non-dict ``response`` is this plugin's error when the ring runs.
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
