"""INGRESS ``rate_limiter``: fixed-window request and token limits per tenant or per key.

Time is cut into windows of ``window_s`` seconds (window ``n`` covers
``[n * window_s, (n + 1) * window_s)`` in Unix time). Each request adds 1 to its
caller's request counter and its estimated prompt tokens (message text, about 4
characters per token) to the token counter of the current window, with the
store's atomic ``incr``; the counters expire after ``window_s``. A request that
takes a counter over its limit is refused with 429 ``rate_limited`` and its
counts are given back, so refused requests do not use up the window.

The caller is metadata ``tenant`` (``scope: tenant``) or metadata
``api_key_id`` (``scope: api_key``), as ``api_key_auth`` writes them; requests
without one share the bucket ``_anonymous``. In store keys, ``%`` and ``:`` in
the caller are percent-encoded.

Store keys (integers with a TTL of ``window_s``):
    ``rate_limiter:<scope>:<caller>:<window index>:requests``
    ``rate_limiter:<scope>:<caller>:<window index>:tokens``

Config (at least one limit):
    requests_per_window (int | None, default None): requests per window.
    tokens_per_window (int | None, default None): estimated prompt tokens per window.
    window_s (float, default 60): the window length in seconds.
    scope (str, default ``"tenant"``): ``"tenant"`` or ``"api_key"``.
    overrides (dict, default {}): per caller, ``{caller: {requests_per_window,
        tokens_per_window}}`` replacing the limits given (an omitted limit keeps
        the default; null removes it for that caller).

Metadata written:
    ``_rate_limiter`` (dict): ``{"scope", "caller", "window_s", "reset_s" (seconds
        until the window ends), "requests", "requests_limit", "requests_remaining",
        "tokens", "tokens_limit", "tokens_remaining"}``; limits not configured are
        null. A gateway can turn it into ``X-RateLimit-*`` headers.
    ``retry_after_s`` (int): when refused, whole seconds until the window ends.

Response headers: a refusal (429) carries ``Retry-After`` (the same whole seconds) in
the block's headers; the example gateways set it on their HTTP answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ringd.plugins._batch import incr_all
from ringd.plugins._common import ConfigReader, estimate_prompt_tokens, key_part, require_store
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_ANONYMOUS = "_anonymous"
_LIMIT_KEYS = ("requests_per_window", "tokens_per_window")
_KEYS_KEPT = 4096
"""Callers whose store keys are kept between requests (all are dropped past it)."""
_CALLER_KEPT_CHARS = 256
"""Longer callers' keys are made for each request: the caller is whatever the gateway sends
(up to a message's size), and 4096 of them would be kept three times over."""


class RateLimiter(BasePlugin):
    """Refuses requests over a fixed-window request or token budget with 429."""

    name: ClassVar[str] = "rate_limiter"
    hook: ClassVar[PluginHook] = PluginHook.INGRESS
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Fixed-window request and token limits"
    timeout_ms: ClassVar[int] = 50

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({*_LIMIT_KEYS, "window_s", "scope", "overrides"})
        self.requests_per_window = reader.get_int("requests_per_window", None)
        self.tokens_per_window = reader.get_int("tokens_per_window", None)
        if self.requests_per_window is None and self.tokens_per_window is None:
            raise ValueError(f"{self.name}: config needs 'requests_per_window' or 'tokens_per_window'")
        self.window_s = reader.get_number("window_s", 60.0) or 60.0
        self.scope = reader.get_choice("scope", "tenant", ("tenant", "api_key"))
        self.overrides: dict[str, tuple[int | None, int | None]] = {}
        for caller, limits in reader.get_mapping("overrides").items():
            label = f"overrides.{caller}"
            if not isinstance(limits, Mapping):
                raise reader.error(label, "a mapping of limits", limits)
            limit_reader = ConfigReader(f"{self.name}: {label}", limits)
            limit_reader.reject_unknown(set(_LIMIT_KEYS))
            requests = self.requests_per_window
            tokens = self.tokens_per_window
            if "requests_per_window" in limits:
                requests = limit_reader.get_int("requests_per_window", None)
            if "tokens_per_window" in limits:
                tokens = limit_reader.get_int("tokens_per_window", None)
            self.overrides[caller] = (requests, tokens)
        self._limits = (self.requests_per_window, self.tokens_per_window)
        self._caller_field = "tenant" if self.scope == "tenant" else "api_key_id"
        self._clock: Callable[[], float] = time.time  # replaceable in tests
        self._keys: dict[str, tuple[int, str, str]] = {}
        """Per caller: the window its keys are of, its requests key and its tokens key."""

    def _window_keys(self, caller: str, window: int) -> tuple[int, str, str]:
        """The store keys of ``caller`` in ``window``, kept for the next requests of the window
        (unless ``caller`` is longer than :data:`_CALLER_KEPT_CHARS`)."""
        prefix = f"rate_limiter:{self.scope}:{key_part(caller)}:{window}"
        keys = (window, prefix + ":requests", prefix + ":tokens")
        if len(caller) <= _CALLER_KEPT_CHARS:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys.clear()
            self._keys[caller] = keys
        return keys

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Count the request in its window; 429 when a limit is passed."""
        store = require_store(ctx, self.name)
        caller_value = ctx.metadata.get(self._caller_field)
        caller = str(caller_value) if caller_value else _ANONYMOUS
        requests_limit, tokens_limit = self.overrides.get(caller, self._limits)
        now = self._clock()
        window = math.floor(now / self.window_s)
        reset_s = (window + 1) * self.window_s - now
        keys = self._keys.get(caller)
        if keys is None or keys[0] != window:
            keys = self._window_keys(caller, window)
        _, requests_key, tokens_key = keys

        # The counters this caller has limits for, requests then tokens, in one store call.
        items: list[tuple[str, int]] = []
        if requests_limit is not None:
            items.append((requests_key, 1))
        cost = 0
        if tokens_limit is not None:
            cost = estimate_prompt_tokens(ctx.body)
            items.append((tokens_key, cost))
        values = await incr_all(store, items, ttl_s=self.window_s)
        requests = values[0] if requests_limit is not None else 0
        tokens = values[-1] if tokens_limit is not None else 0

        over_requests = requests_limit is not None and requests > requests_limit
        over_tokens = tokens_limit is not None and tokens > tokens_limit
        if over_requests or over_tokens:
            # Give the counts back: a refused request does not use up the window.
            refund = [(key, -amount) for key, amount in items if amount]
            returned = await incr_all(store, refund, ttl_s=self.window_s)
            given_back = dict(zip([key for key, _ in refund], returned, strict=True))
            requests = given_back.get(requests_key, requests)
            tokens = given_back.get(tokens_key, tokens)

        ctx.metadata["_rate_limiter"] = {
            "scope": self.scope,
            "caller": caller,
            "window_s": self.window_s,
            "reset_s": round(reset_s, 3),
            "requests": requests if requests_limit is not None else None,
            "requests_limit": requests_limit,
            "requests_remaining": (max(requests_limit - requests, 0) if requests_limit is not None else None),
            "tokens": tokens if tokens_limit is not None else None,
            "tokens_limit": tokens_limit,
            "tokens_remaining": max(tokens_limit - tokens, 0) if tokens_limit is not None else None,
        }
        if not (over_requests or over_tokens):
            return PluginResponse.passthrough()

        retry_after_s = max(1, math.ceil(reset_s))
        ctx.metadata["retry_after_s"] = retry_after_s
        window_text = f"{self.window_s:g} s"
        if over_requests:
            reason = f"{requests_limit} requests per {window_text}"
        elif tokens_limit is not None and cost > tokens_limit:
            reason = (
                f"this request's ~{cost} tokens exceed the limit of {tokens_limit} tokens per "
                f"{window_text}, so it cannot pass in any window"
            )
        else:
            reason = f"{tokens_limit} tokens per {window_text}"
        return PluginResponse.block(
            status_code=429,
            error_type="rate_limited",
            message=(
                f"rate limit exceeded for {self.scope} {caller!r}: {reason}; retry after {retry_after_s} s"
            ),
            headers={"Retry-After": str(retry_after_s)},
        )
