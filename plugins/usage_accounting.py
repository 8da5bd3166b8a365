"""BACKGROUND ``usage_accounting``: count tokens and cost per tenant and model.

Tokens come from the answer's ``usage`` (``prompt_tokens``,
``completion_tokens``); a count that is missing is estimated (4 characters per
token) from the request's messages or the answer's text. The model is the
answer's ``model``, else metadata ``route_model``, else the request's
``model``. The cost uses the first price that matches one of those names:
an exact key of ``prices`` first, then the keys as globs in config order. An
answer served from the cache (metadata ``_cache_status == "hit"``) costs 0.
Requests without an answer, or with an upstream error and no usage, are not
counted.

Store keys (integers, no expiry; on the SQLite store the four are queued and committed
a moment later, ~50 ms, with every other request's in one transaction, see
``SqliteStore.incr_later``: this process reads them at once, others once committed, and
a clean shutdown or reload writes the queue; on Redis, atomic ``incr``); ``<tenant>`` and
``<model>`` have ``%`` and ``:`` percent-encoded so the keys split cleanly on ``:``:
    ``<key_prefix>:<tenant>:<model>:requests``
    ``<key_prefix>:<tenant>:<model>:prompt_tokens``
    ``<key_prefix>:<tenant>:<model>:completion_tokens``
    ``<key_prefix>:<tenant>:<model>:cost_micro_usd`` (millionths of a dollar)

Config:
    prices (dict, default {}): ``{model or glob: {prompt_per_1k: float,
        completion_per_1k: float}}`` in dollars per 1000 tokens (both default 0).
    default_tenant (str, default ``"unknown"``): the tenant when metadata has none.
    key_prefix (str, default ``"usage"``): the first part of every store key.

Metadata written:
    ``usage`` (dict): ``{"tenant", "model", "prompt_tokens", "completion_tokens",
        "total_tokens", "cost_micro_usd", "cost_usd", "estimated": bool (a count
        was estimated), "priced": bool (a price matched), "cached": bool}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ringd.plugins._batch import incr_later
from ringd.plugins._common import (
    ConfigReader,
    as_count,
    compile_glob,
    estimate_prompt_tokens,
    glob_match,
    iter_response_texts,
    key_part,
    require_store,
    tokens_for_chars,
)
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per 1000 tokens."""

    prompt_per_1k: float
    completion_per_1k: float

    def cost_micro_usd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of a call in millionths of a dollar, rounded to the nearest."""
        # tokens / 1000 * dollars * 1_000_000 = tokens * dollars * 1000
        return round(
            prompt_tokens * self.prompt_per_1k * 1000 + completion_tokens * self.completion_per_1k * 1000
        )


class UsageAccounting(BasePlugin):
    """Adds each answer's tokens and cost to per-tenant, per-model counters in the store."""

    name: ClassVar[str] = "usage_accounting"
    hook: ClassVar[PluginHook] = PluginHook.BACKGROUND
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Token and cost totals per tenant and model"
    timeout_ms: ClassVar[int] = 200

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"prices", "default_tenant", "key_prefix"})
        self.default_tenant = reader.get_str("default_tenant", "unknown") or "unknown"
        self.key_prefix = reader.get_str("key_prefix", "usage") or "usage"
        self.exact_prices: dict[str, Price] = {}
        self.glob_prices: list[tuple[re.Pattern[str], Price]] = []
        for model, entry in reader.get_mapping("prices").items():
            label = f"prices.{model}"
            if not isinstance(entry, Mapping):
                raise reader.error(label, "a mapping with prompt_per_1k, completion_per_1k", entry)
            price_reader = ConfigReader(f"{self.name}: {label}", entry)
            price_reader.reject_unknown({"prompt_per_1k", "completion_per_1k"})
            price = Price(
                prompt_per_1k=price_reader.get_number("prompt_per_1k", 0.0, exclusive=False) or 0.0,
                completion_per_1k=price_reader.get_number("completion_per_1k", 0.0, exclusive=False) or 0.0,
            )
            self.exact_prices[model] = price
            if any(ch in model for ch in "*?["):
                self.glob_prices.append((compile_glob(model), price))

    def price(self, model: str) -> Price | None:
        """The price for ``model``: its exact entry, else the first matching glob."""
        price = self.exact_prices.get(model)
        if price is not None:
            return price
        for pattern, glob_price in self.glob_prices:
            if glob_match(pattern, model):
                return glob_price
        return None

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Compute the request's usage, add it to the store's counters, record it in metadata."""
        store = require_store(ctx, self.name)
        response = ctx.response
        if not isinstance(response, dict):
            return PluginResponse.passthrough("no upstream answer to account for")
        usage = response.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        if response.get("error") and not usage:
            return PluginResponse.passthrough("upstream error without usage")

        candidates = [
            value
            for value in (response.get("model"), ctx.metadata.get("route_model"), ctx.body.get("model"))
            if isinstance(value, str) and value
        ]
        model = candidates[0] if candidates else "unknown"
        price = next((p for p in map(self.price, candidates) if p is not None), None)

        estimated = False
        prompt_tokens = as_count(usage.get("prompt_tokens"))
        if prompt_tokens is None:
            prompt_tokens = estimate_prompt_tokens(ctx.body)
            estimated = True
        completion_tokens = as_count(usage.get("completion_tokens"))
        if completion_tokens is None:
            completion_tokens = tokens_for_chars(sum(map(len, iter_response_texts(response))))
            estimated = True

        cached = ctx.metadata.get("_cache_status") == "hit"
        cost = 0
        if price is not None and not cached:
            cost = price.cost_micro_usd(prompt_tokens, completion_tokens)
        tenant_value = ctx.metadata.get("tenant")
        tenant = str(tenant_value) if tenant_value else self.default_tenant

        prefix = f"{self.key_prefix}:{key_part(tenant)}:{key_part(model)}"
        counters = [
            (f"{prefix}:requests", 1),
            (f"{prefix}:prompt_tokens", prompt_tokens),
            (f"{prefix}:completion_tokens", completion_tokens),
            (f"{prefix}:cost_micro_usd", cost),
        ]
        await incr_later(store, counters)  # SQLite: queued, committed with other requests' counters
        ctx.metadata["usage"] = {
            "tenant": tenant,
            "model": model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "cost_micro_usd": cost,
            "cost_usd": cost / 1_000_000,
            "estimated": estimated,
            "priced": price is not None,
            "cached": cached,
        }
        return PluginResponse.passthrough()
