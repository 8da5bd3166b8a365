"""max_tokens_clamp: ceilings per model, defaults, and MODIFY only on change."""

from __future__ import annotations

import copy
import math

import pytest
from ringd.plugins.max_tokens_clamp import MaxTokensClamp
from ringd.sdk import PluginAction
from ringd.testing import run_plugin


async def test_clamps_above_the_ceiling(make_ctx, chat) -> None:
    body = chat(("user", "hi"), max_tokens=100_000)
    original = copy.deepcopy(body)
    ctx = make_ctx(body)
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 4096}), ctx)
    assert outcome.action is PluginAction.MODIFY
    assert outcome.body == {**original, "max_tokens": 4096}
    assert ctx.metadata["_max_tokens_clamp"] == {"max_tokens": {"requested": 100_000, "applied": 4096}}
    assert body == original


@pytest.mark.parametrize("value", [1, 4095, 4096, 4096.0])
async def test_within_the_ceiling_passes(make_ctx, chat, value) -> None:
    ctx = make_ctx(chat(("user", "hi"), max_tokens=value))
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 4096}), ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert "_max_tokens_clamp" not in ctx.metadata


async def test_both_fields_and_struct_doubles(make_ctx, chat) -> None:
    body = chat(("user", "hi"), max_tokens=9000.0, max_completion_tokens=20_000)
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 8192}), make_ctx(body))
    assert outcome.body is not None
    assert outcome.body["max_tokens"] == 8192
    assert isinstance(outcome.body["max_tokens"], int)
    assert outcome.body["max_completion_tokens"] == 8192


async def test_per_model_ceilings_first_match_wins(make_ctx, chat) -> None:
    clamp = MaxTokensClamp(
        {"max_tokens": 4096, "models": {"gpt-4o-mini*": 1000, "gpt-4o*": 16_384, "o1": 100_000}}
    )
    cases = [("gpt-4o-mini-2024-07-18", 1000), ("gpt-4o", 16_384), ("o1", 50_000), ("other", 4096)]
    for model, expected in cases:
        outcome = await run_plugin(clamp, make_ctx(chat(("user", "x"), model=model, max_tokens=50_000)))
        applied = (outcome.body or {}).get("max_tokens", 50_000)
        assert applied == expected, model


async def test_model_without_ceiling_is_left_alone(make_ctx, chat) -> None:
    clamp = MaxTokensClamp({"models": {"gpt-4o*": 1000}})
    outcome = await run_plugin(clamp, make_ctx(chat(("user", "x"), model="llama", max_tokens=99_999)))
    assert outcome.action is PluginAction.PASSTHROUGH


async def test_default_when_absent(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "x")))
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 512, "default_max_tokens": 2048}), ctx)
    assert outcome.body is not None
    assert outcome.body["max_tokens"] == 512  # the default is lowered to the ceiling
    assert ctx.metadata["_max_tokens_clamp"] == {"max_tokens": {"requested": None, "applied": 512}}

    clamp = MaxTokensClamp({"default_max_tokens": 256, "default_field": "max_completion_tokens"})
    outcome = await run_plugin(clamp, make_ctx(chat(("user", "x"))))
    assert outcome.body is not None
    assert outcome.body["max_completion_tokens"] == 256
    assert "max_tokens" not in outcome.body

    # A request that sets either field gets no default.
    present = make_ctx(chat(("user", "x"), max_completion_tokens=10))
    assert (await run_plugin(clamp, present)).action is PluginAction.PASSTHROUGH


@pytest.mark.parametrize("value", ["lots", None, True, -5, [100]])
async def test_odd_values_are_left_for_the_upstream(make_ctx, chat, value) -> None:
    ctx = make_ctx(chat(("user", "x"), max_tokens=value))
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 10}), ctx)
    assert outcome.action is PluginAction.PASSTHROUGH


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"model": None, "max_tokens": 50}])
async def test_bodies_without_model_or_messages(make_ctx, body) -> None:
    outcome = await run_plugin(MaxTokensClamp({"max_tokens": 10}), make_ctx(body))
    expected = PluginAction.MODIFY if "max_tokens" in body else PluginAction.PASSTHROUGH
    assert outcome.action is expected


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "4k"}, "max_tokens"),
        ({"models": {"gpt-4o": -1}}, "models.gpt-4o"),
        ({"models": ["gpt-4o"]}, "models"),
        ({"default_max_tokens": 1.5}, "default_max_tokens"),
        ({"max_tokens": 10, "default_field": "tokens"}, "default_field"),
        ({"max_token": 10}, "max_token"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"max_tokens_clamp: .*'{key}'"):
        MaxTokensClamp(config)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_value_is_rejected_naming_the_field(make_ctx, chat, value) -> None:
    ctx = make_ctx(chat(("user", "x"), max_completion_tokens=value))
    outcome = await MaxTokensClamp({"max_tokens": 4096}).execute(ctx)
    assert outcome.action is PluginAction.BLOCK
    assert (outcome.status_code, outcome.error_type) == (400, "invalid_max_tokens")
    assert "max_completion_tokens must be a finite number" in (outcome.message or "")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
async def test_non_finite_struct_number_over_the_wire_never_reaches_the_upstream(
    serve_default, value
) -> None:
    """A Struct body may carry NaN/inf; the answer must not hand the upstream ``max_tokens: null``."""
    import grpc

    from ringd.v1 import engine_service_pb2 as engine_pb
    from ringd.v1 import engine_service_pb2_grpc as engine_grpc
    from ringd.v1 import plugin_pb2 as pb

    server = await serve_default()
    request = engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_PRE_FLIGHT)
    request.context.body_struct.update(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": value}
    )
    assert not math.isfinite(request.context.body_struct["max_tokens"])  # the Struct carries it
    async with grpc.aio.insecure_channel(server.addresses[0]) as channel:
        answer = await engine_grpc.PluginEngineServiceStub(channel).ExecuteRing(request, timeout=10)
    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert answer.decided_by == "max_tokens_clamp"
    assert (answer.decision.status_code, answer.decision.error_type) == (400, "invalid_max_tokens")
    assert "max_tokens must be a finite number" in answer.decision.message
