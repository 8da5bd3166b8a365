"""What a plugin's ``execute`` returns: a :class:`PluginResponse` and its action."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_log = logging.getLogger("ringd.sdk")


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
    """

    action: PluginAction = PluginAction.PASSTHROUGH
    status_code: int = 200
    error_type: str | None = None
    message: str | None = None
    body: dict[str, Any] | None = None
    response: dict[str, Any] | None = None

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
            PluginResponseError: MODIFY with a ``body`` that is not a dict, or
                CACHE_HIT without a ``response`` dict.
        """
        action = self.action
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
        return cls(PluginAction.PASSTHROUGH, message=message)

    @classmethod
    def modify(cls, body: dict[str, Any] | None = None, message: str | None = None) -> PluginResponse:
        """Replace the request body with ``body`` (``None`` keeps it) and continue the ring."""
        return cls(PluginAction.MODIFY, body=body, message=message)

    @classmethod
    def block(
        cls,
        status_code: int = 403,
        error_type: str = "plugin_block",
        message: str = "Blocked by plugin",
    ) -> PluginResponse:
        """Stop the ring; the gateway answers the client with ``status_code``.

        A ``status_code`` outside 400-599 becomes 403 with a warning.
        """
        return cls(PluginAction.BLOCK, status_code=status_code, error_type=error_type, message=message)

    @classmethod
    def cache_hit(cls, response: dict[str, Any] | None = None, message: str | None = None) -> PluginResponse:
        """Stop the ring and answer the client with ``response``, skipping the upstream call.

        A missing or non-dict ``response`` is this plugin's error when the ring runs.
        """
        return cls(PluginAction.CACHE_HIT, response=response, message=message)
