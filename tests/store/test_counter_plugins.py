"""The counting plugins on both backends: SQLite adds a plugin's counters in one
transaction (``incr_many``), Redis one ``incr`` after another; the counts are the same."""

from __future__ import annotations

import uuid
from typing import Any

from ringd.plugins.rate_limiter import RateLimiter
from ringd.plugins.usage_accounting import UsageAccounting
from ringd.sdk import PluginAction, PluginContext, PluginState

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}  # ~100 tokens


async def test_rate_limiter_counts_both_limits_and_gives_refused_requests_back(store: Any) -> None:
    state = PluginState(extra={"store": store})
    limiter = RateLimiter({"requests_per_window": 3, "tokens_per_window": 10_000, "window_s": 60})
    limiter._clock = lambda: 1_000_020.0  # one fixed window, whatever the time the test runs
    tenant = uuid.uuid4().hex  # Redis is shared by the tests
    seen = []
    for _ in range(5):
        ctx = PluginContext(body=CHAT, metadata={"tenant": tenant}, state=state)
        response = await limiter.execute(ctx)
        info = ctx.metadata["_rate_limiter"]
        seen.append((response.action, info["requests"], info["tokens"]))
    cost = seen[0][2]
    assert cost > 0
    assert seen == [
        (PluginAction.PASSTHROUGH, 1, cost),
        (PluginAction.PASSTHROUGH, 2, 2 * cost),
        (PluginAction.PASSTHROUGH, 3, 3 * cost),
        (PluginAction.BLOCK, 3, 3 * cost),  # refused: both counts given back
        (PluginAction.BLOCK, 3, 3 * cost),
    ]


async def test_usage_accounting_adds_all_four_counters(store: Any) -> None:
    state = PluginState(extra={"store": store})
    prefix = f"usage-{uuid.uuid4().hex}"
    plugin = UsageAccounting(
        {"key_prefix": prefix, "prices": {"m": {"prompt_per_1k": 1.0, "completion_per_1k": 2.0}}}
    )
    answer = {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20},
    }
    for _ in range(2):
        ctx = PluginContext(body=CHAT, metadata={"tenant": "acme"}, state=state)
        ctx.response = answer
        await plugin.execute(ctx)
    assert await store.get_state(f"{prefix}:acme:m:requests") == 2
    assert await store.get_state(f"{prefix}:acme:m:prompt_tokens") == 20
    assert await store.get_state(f"{prefix}:acme:m:completion_tokens") == 40
    # 10 x $1/1k + 20 x $2/1k = $0.05 a call: 50,000 millionths, twice.
    assert await store.get_state(f"{prefix}:acme:m:cost_micro_usd") == 100_000
