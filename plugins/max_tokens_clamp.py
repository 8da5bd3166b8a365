"""PRE_FLIGHT ``max_tokens_clamp``: cap the completion length a request may ask for.

Lowers ``max_tokens`` and ``max_completion_tokens`` (whichever the request sets)
to the ceiling for the request's model, and fills in a default when the request
sets neither. A non-finite value (``NaN`` or infinity, which a protobuf Struct can
carry and JSON cannot: it would reach the upstream as ``null``, meaning no limit)
is rejected with 400 ``invalid_max_tokens`` naming the field. Other values that
are not positive numbers are left for the upstream to reject. Answers MODIFY only
when it changed something, PASSTHROUGH otherwise.

Config (at least one of ``max_tokens``, ``models``, ``default_max_tokens``):
    max_tokens (int | None, default None): the ceiling for models without an
        entry in ``models``; None means no ceiling for them.
    models (dict[str, int], default {}): per-model ceilings keyed by model name
        or glob (``gpt-4o*``); the first matching entry, in config order, wins.
    default_max_tokens (int | None, default None): set when the request has
        neither field (lowered to the ceiling if above it).
    default_field (str, default ``"max_tokens"``): the field the default goes
        into: ``"max_tokens"`` or ``"max_completion_tokens"``.

Metadata written (only when something changed):
    ``_max_tokens_clamp`` (dict): per changed field, ``{"requested": <the
        request's value, or null when the default was set>, "applied": <int>}``.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from ringd.plugins._common import ConfigReader, compile_glob, glob_match
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_FIELDS = ("max_tokens", "max_completion_tokens")


class MaxTokensClamp(BasePlugin):
    """Lowers max_tokens / max_completion_tokens to a per-model ceiling, sets a default."""

    name: ClassVar[str] = "max_tokens_clamp"
    hook: ClassVar[PluginHook] = PluginHook.PRE_FLIGHT
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Caps max_tokens per model and sets a default"
    timeout_ms: ClassVar[int] = 5

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"max_tokens", "models", "default_max_tokens", "default_field"})
        self.max_tokens = reader.get_int("max_tokens", None)
        self.models: list[tuple[re.Pattern[str], int]] = [
            (compile_glob(pattern), reader.as_int(f"models.{pattern}", ceiling))
            for pattern, ceiling in reader.get_mapping("models").items()
        ]
        self.default_max_tokens = reader.get_int("default_max_tokens", None)
        self.default_field = reader.get_choice("default_field", "max_tokens", _FIELDS)
        if self.max_tokens is None and not self.models and self.default_max_tokens is None:
            raise ValueError(
                f"{self.name}: config needs at least one of 'max_tokens', 'models', 'default_max_tokens'"
            )

    def ceiling(self, model: str) -> int | None:
        """The ceiling for ``model``: its first matching ``models`` entry, else ``max_tokens``."""
        for pattern, ceiling in self.models:
            if glob_match(pattern, model):
                return ceiling
        return self.max_tokens

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Clamp or default the token limit fields; MODIFY if any changed."""
        body = ctx.body
        model = body.get("model")
        ceiling = self.ceiling(model if isinstance(model, str) else "")
        changes: dict[str, dict[str, Any]] = {}
        present = False
        for field in _FIELDS:
            value = body.get(field)
            if value is None:
                continue
            present = True
            if isinstance(value, float) and not math.isfinite(value):
                return PluginResponse.block(
                    status_code=400,
                    error_type="invalid_max_tokens",
                    message=f"{field} must be a finite number of tokens, got {value!r}",
                )
            if ceiling is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if value > ceiling:
                changes[field] = {"requested": value, "applied": ceiling}
        if not present and self.default_max_tokens is not None:
            default = self.default_max_tokens
            if ceiling is not None:
                default = min(default, ceiling)
            changes[self.default_field] = {"requested": None, "applied": default}
        if not changes:
            return PluginResponse.passthrough()
        ctx.metadata["_max_tokens_clamp"] = changes
        new_body = {**body, **{field: change["applied"] for field, change in changes.items()}}
        return PluginResponse.modify(body=new_body, message=f"set {', '.join(changes)}")
