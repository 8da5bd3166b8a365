"""usage_accounting: tokens and cost per tenant and model, counted in the store."""

from __future__ import annotations

import pytest
from ringd.plugins.usage_accounting import UsageAccounting
from ringd.sdk import PluginContext

PRICES = {
    "prices": {
        "gpt-4o-mini": {"prompt_per_1k": 0.00015, "completion_per_1k": 0.0006},
        "gpt-4o*": {"prompt_per_1k": 0.0025, "completion_per_1k": 0.01},
    }
}


async def counters(store, tenant: str, model: str) -> dict[str, int]:
    names = ("requests", "prompt_tokens", "completion_tokens", "cost_micro_usd")
    return {name: await store.get_state(f"usage:{tenant}:{model}:{name}") for name in names}


async def test_counts_reported_usage(make_ctx, chat, completion, store) -> None:
    plugin = UsageAccounting(PRICES)
    for _ in range(2):
        usage = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
        ctx = make_ctx(
            chat(("user", "hi")),
            metadata={"tenant": "acme"},
            response=completion("hello", model="gpt-4o-2024-08-06", usage=usage),
        )
        await plugin.execute(ctx)
    # 1000 * 0.0025 / 1000 + 500 * 0.01 / 1000 = 0.0075 $ = 7500 micro-dollars per request
    assert ctx.metadata["usage"] == {
        "tenant": "acme",
        "model": "gpt-4o-2024-08-06",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "cost_micro_usd": 7500,
        "cost_usd": 0.0075,
        "estimated": False,
        "priced": True,
        "cached": False,
    }
    assert await counters(store, "acme", "gpt-4o-2024-08-06") == {
        "requests": 2,
        "prompt_tokens": 2000,
        "completion_tokens": 1000,
        "cost_micro_usd": 15000,
    }


async def test_exact_price_beats_glob(make_ctx, completion) -> None:
    usage = {"prompt_tokens": 10_000, "completion_tokens": 10_000}
    ctx = make_ctx(response=completion("x", model="gpt-4o-mini", usage=usage))
    await UsageAccounting(PRICES).execute(ctx)
    assert ctx.metadata["usage"]["cost_micro_usd"] == 7500  # 1500 + 6000


async def test_estimates_without_usage(make_ctx, chat, completion, store) -> None:
    ctx = make_ctx(
        chat(("user", "a" * 400), model="gpt-4o-mini"),
        response=completion("b" * 200, model="gpt-4o-mini"),
    )
    await UsageAccounting(PRICES).execute(ctx)
    usage = ctx.metadata["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (100, 50)
    assert usage["estimated"] is True
    assert usage["tenant"] == "unknown"
    assert (await counters(store, "unknown", "gpt-4o-mini"))["requests"] == 1


async def test_struct_doubles_and_unpriced_models(make_ctx, completion, store) -> None:
    usage = {"prompt_tokens": 12.0, "completion_tokens": 3.0}
    ctx = make_ctx(metadata={"tenant": "t"}, response=completion("x", model="llama-3", usage=usage))
    await UsageAccounting(PRICES).execute(ctx)
    assert ctx.metadata["usage"]["prompt_tokens"] == 12
    assert ctx.metadata["usage"]["priced"] is False
    assert await counters(store, "t", "llama-3") == {
        "requests": 1,
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "cost_micro_usd": 0,
    }


async def test_routed_model_prices_a_response_without_model(make_ctx, store) -> None:
    response = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 1000}}
    ctx = make_ctx(metadata={"route_model": "gpt-4o-mini"}, response=response)
    await UsageAccounting(PRICES).execute(ctx)
    assert ctx.metadata["usage"]["model"] == "gpt-4o-mini"
    # 1000 prompt tokens: 150; "ok" is one estimated completion token: 0.6, rounded to 1.
    assert ctx.metadata["usage"]["cost_micro_usd"] == 151


async def test_cache_hits_cost_nothing(make_ctx, completion) -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}
    ctx = make_ctx(metadata={"_cache_status": "hit"}, response=completion("x", model="gpt-4o", usage=usage))
    await UsageAccounting(PRICES).execute(ctx)
    assert ctx.metadata["usage"]["cost_micro_usd"] == 0
    assert ctx.metadata["usage"]["cached"] is True


async def test_colons_in_names_are_escaped(make_ctx, completion, store) -> None:
    ctx = make_ctx(
        metadata={"tenant": "org:acme"},
        response=completion("x", model="ft:gpt-4o-mini:acme", usage={"prompt_tokens": 1}),
    )
    await UsageAccounting().execute(ctx)
    assert await store.get_state("usage:org%3Aacme:ft%3Agpt-4o-mini%3Aacme:requests") == 1


@pytest.mark.parametrize("response", [None, {"error": {"message": "rate limited upstream"}}])
async def test_nothing_to_account_for(make_ctx, store, response) -> None:
    ctx = make_ctx(metadata={"tenant": "acme"}, response=response)
    await UsageAccounting(PRICES).execute(ctx)
    assert "usage" not in ctx.metadata
    assert await store.get_state("usage:acme:unknown:requests") is None


async def test_missing_store_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="usage_accounting: no store"):
        await UsageAccounting().execute(PluginContext(response={"choices": []}))


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"prices": {"m": {"prompt_per_1k": -1}}}, "prompt_per_1k"),
        ({"prices": {"m": {"prompt_per_1m": 1}}}, "prompt_per_1m"),
        ({"prices": {"m": 0.5}}, "prices.m"),
        ({"prices": ["m"]}, "prices"),
        ({"default_tenant": ""}, "default_tenant"),
        ({"key_prefx": "u"}, "key_prefx"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"usage_accounting.*'{key}'"):
        UsageAccounting(config)
