"""rate_limiter: fixed windows of requests and tokens, counted atomically in the store."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from ringd.plugins._common import estimate_prompt_tokens, iter_message_texts, tokens_for_chars
from ringd.plugins.rate_limiter import RateLimiter
from ringd.sdk import PluginAction, PluginContext

T0 = 1_700_000_030.0  # 50 s into a 60 s window: 1_699_999_980 is a multiple of 60


def limiter(config: dict, now: float = T0) -> RateLimiter:
    plugin = RateLimiter(config)
    plugin._clock = lambda: now
    return plugin


async def test_requests_per_window(make_ctx, chat, store) -> None:
    plugin = limiter({"requests_per_window": 2, "window_s": 60})
    outcomes = []
    for _ in range(3):
        ctx = make_ctx(chat(("user", "hi")), metadata={"tenant": "acme"})
        outcomes.append((await plugin.execute(ctx), ctx))
    assert [o.action for o, _ in outcomes] == [
        PluginAction.PASSTHROUGH,
        PluginAction.PASSTHROUGH,
        PluginAction.BLOCK,
    ]
    refused, ctx = outcomes[2]
    assert refused.status_code == 429
    assert refused.error_type == "rate_limited"
    window_end = (T0 // 60 + 1) * 60
    assert ctx.metadata["retry_after_s"] == int(window_end - T0)
    assert refused.headers == {"Retry-After": str(int(window_end - T0))}
    assert f"retry after {int(window_end - T0)} s" in (refused.message or "")
    assert ctx.metadata["_rate_limiter"]["requests_remaining"] == 0
    # The counter lives in the store under the window's index; refused requests gave theirs back.
    window = int(T0 // 60)
    assert await store.get_state(f"rate_limiter:tenant:acme:{window}:requests") == 2


async def test_tenants_are_counted_apart(make_ctx, chat) -> None:
    plugin = limiter({"requests_per_window": 1})
    first = await plugin.execute(make_ctx(chat(("user", "a")), metadata={"tenant": "acme"}))
    other = await plugin.execute(make_ctx(chat(("user", "a")), metadata={"tenant": "globex"}))
    again = await plugin.execute(make_ctx(chat(("user", "a")), metadata={"tenant": "acme"}))
    assert first.action is PluginAction.PASSTHROUGH
    assert other.action is PluginAction.PASSTHROUGH
    assert again.action is PluginAction.BLOCK


async def test_next_window_starts_fresh(make_ctx, chat) -> None:
    plugin = limiter({"requests_per_window": 1, "window_s": 10})
    assert (await plugin.execute(make_ctx(chat(("user", "a"))))).action is PluginAction.PASSTHROUGH
    assert (await plugin.execute(make_ctx(chat(("user", "a"))))).action is PluginAction.BLOCK
    plugin._clock = lambda: T0 + 10
    assert (await plugin.execute(make_ctx(chat(("user", "a"))))).action is PluginAction.PASSTHROUGH


async def test_tokens_per_window(make_ctx, chat) -> None:
    plugin = limiter({"tokens_per_window": 100})
    big = chat(("user", "x" * 300))  # ~75 tokens
    small = chat(("user", "y" * 80))  # ~20 tokens
    assert (await plugin.execute(make_ctx(big))).action is PluginAction.PASSTHROUGH
    refused = make_ctx(big)
    outcome = await plugin.execute(refused)
    assert outcome.action is PluginAction.BLOCK
    assert "100 tokens per 60 s" in (outcome.message or "")
    # The refused request did not use up the window: a small one still fits.
    assert (await plugin.execute(make_ctx(small))).action is PluginAction.PASSTHROUGH
    assert (await plugin.execute(make_ctx(small))).action is PluginAction.BLOCK


async def test_request_bigger_than_the_window(make_ctx, chat) -> None:
    plugin = limiter({"tokens_per_window": 10})
    outcome = await plugin.execute(make_ctx(chat(("user", "Ünïcödé " * 100))))
    assert outcome.action is PluginAction.BLOCK
    assert "cannot pass in any window" in (outcome.message or "")


async def test_per_key_scope_and_overrides(make_ctx, chat) -> None:
    plugin = limiter(
        {
            "scope": "api_key",
            "requests_per_window": 1,
            "overrides": {"key-gold": {"requests_per_window": 3}},
        }
    )
    for key, allowed in (("key-1", 1), ("key-gold", 3)):
        actions = [
            (await plugin.execute(make_ctx(chat(("user", "a")), metadata={"api_key_id": key}))).action
            for _ in range(allowed + 1)
        ]
        assert actions == [PluginAction.PASSTHROUGH] * allowed + [PluginAction.BLOCK], key


async def test_requests_without_caller_share_a_bucket(make_ctx) -> None:
    plugin = limiter({"requests_per_window": 1})
    assert (await plugin.execute(make_ctx({}))).action is PluginAction.PASSTHROUGH
    ctx = make_ctx({"messages": None})
    assert (await plugin.execute(ctx)).action is PluginAction.BLOCK
    assert ctx.metadata["_rate_limiter"]["caller"] == "_anonymous"


async def test_concurrent_requests_never_exceed_the_limit(make_ctx, chat) -> None:
    plugin = limiter({"requests_per_window": 5})
    outcomes = await asyncio.gather(
        *(plugin.execute(make_ctx(chat(("user", "a")), metadata={"tenant": "t"})) for _ in range(20))
    )
    assert sum(o.action is PluginAction.PASSTHROUGH for o in outcomes) == 5


async def test_huge_body(make_ctx, chat) -> None:
    plugin = limiter({"tokens_per_window": 1_000_000})
    ctx = make_ctx(chat(("user", "z" * 1_000_000)))
    assert (await plugin.execute(ctx)).action is PluginAction.PASSTHROUGH
    assert ctx.metadata["_rate_limiter"]["tokens"] == 250_000


async def test_missing_store_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="rate_limiter: no store"):
        await RateLimiter({"requests_per_window": 1}).execute(PluginContext())


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "requests_per_window"),
        ({"requests_per_window": -1}, "requests_per_window"),
        ({"requests_per_window": 1.5}, "requests_per_window"),
        ({"tokens_per_window": "many"}, "tokens_per_window"),
        ({"requests_per_window": 1, "window_s": 0}, "window_s"),
        ({"requests_per_window": 1, "scope": "ip"}, "scope"),
        ({"requests_per_window": 1, "overrides": {"a": {"rpm": 1}}}, "rpm"),
        ({"requests_per_window": 1, "overrides": {"a": 5}}, "overrides.a"),
        ({"requests_per_minute": 1}, "requests_per_minute"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"rate_limiter.*'{key}'"):
        RateLimiter(config)


def test_error_message_matches_the_brief() -> None:
    with pytest.raises(ValueError) as caught:
        RateLimiter({"requests_per_window": -1})
    assert str(caught.value) == (
        "rate_limiter: config 'requests_per_window' must be a positive integer, got -1"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "x" * 9}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": "abc"}, "not a message", {"role": "tool"}]},
        {"messages": [{"content": "a"}, {"content": [{"type": "text", "text": "x" * 11}, {"type": "file"}]}]},
        {"messages": [{"content": "abcde"}], "prompt": "x" * 20},
        {"messages": [{"content": "abcde"}, {"content": 7}]},
        {"messages": "not a list", "prompt": ["ab", "cd"]},
        {},
    ],
)
def test_token_estimate_counts_every_message_text(body: dict) -> None:
    # The estimate's string-content shortcut agrees with the text walk for every shape.
    chars = sum(len(text) for _, text in iter_message_texts(body))
    assert estimate_prompt_tokens(body) == tokens_for_chars(chars)


async def test_long_callers_are_not_kept_after_their_request(make_ctx, chat) -> None:
    # A caller is whatever the gateway sends as tenant (up to a message's size): the
    # plugin keeps short callers' store keys for their window, never megabytes of them.
    plugin = limiter({"requests_per_window": 5})
    caller_chars = 64 * 1024
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(64):
            tenant = f"{index}:" + "t" * caller_chars
            outcome = await plugin.execute(make_ctx(chat(("user", "a")), metadata={"tenant": tenant}))
            assert outcome.action is PluginAction.PASSTHROUGH
            del tenant
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Kept, they would be 64 x 3 x 64 KB (the caller, its two keys): 12 MB.
    assert kept - before < 2 * 1024 * 1024
