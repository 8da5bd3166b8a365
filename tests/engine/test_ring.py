"""The ring loop's semantics: the four actions, order, metadata, in-place edits,
stop_chain, disabled plugins and the shared state (:mod:`ringd.server.ring`)."""

from __future__ import annotations

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome, UnknownPluginError
from support.engine import chat_body, instance, ring_config, scripted


async def test_passthrough_ring_runs_every_plugin_and_keeps_the_body(with_scripted, make_engine):
    engine = await make_engine(with_scripted.config(ring_config(scripted("a"), scripted("b"))))
    ctx = PluginContext(body=chat_body())
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert not outcome.ended
    assert outcome.decision is None
    assert outcome.decided_by is None
    assert outcome.context is ctx
    assert ctx.body == chat_body()
    assert ctx.metadata["ran"] == ["a", "b"]
    assert [(r.plugin, r.outcome, r.action) for r in outcome.results] == [
        ("a", PluginOutcome.OK, PluginAction.PASSTHROUGH),
        ("b", PluginOutcome.OK, PluginAction.PASSTHROUGH),
    ]
    assert [r.message for r in outcome.results] == ["a ok", "b ok"]
    assert all(r.version == "1.2.3" and r.error is None for r in outcome.results)
    assert all(r.latency_ms >= 0 for r in outcome.results)
    assert outcome.config_version == "test-1"
    assert instance(engine, "a").stats["invocations"] == 1


async def test_modify_replaces_the_body_for_later_plugins(with_scripted, make_engine):
    new_body = {"model": "small-model", "messages": []}
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("first"),
                scripted("rewriter", config={"do": "modify", "body": new_body}),
                scripted("last"),
            )
        )
    )
    ctx = PluginContext(body=chat_body())
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    assert outcome.action is PluginAction.MODIFY
    assert outcome.context.body == new_body
    assert ctx.metadata["seen"]["first"]["model"] == "gpt-4o"
    assert ctx.metadata["seen"]["last"]["model"] == "small-model"
    assert outcome.results[1].action is PluginAction.MODIFY
    assert outcome.results[1].message == "rewritten"
    # MODIFY does not end the ring, but the verdict names who changed the body.
    assert outcome.decided_by == "rewriter"
    assert outcome.decision is not None
    assert outcome.decision.action is PluginAction.MODIFY
    assert outcome.decision.message == "rewritten"


async def test_in_place_body_edits_are_kept(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("x", config={"do": "append"}), scripted("y", config={"do": "append"}))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.context.body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "x"},
        {"role": "system", "content": "y"},
    ]


async def test_metadata_passes_between_plugins_and_from_the_caller(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("reader_before"), scripted("writer", config={"do": "note"}), scripted("reader")
            )
        )
    )
    ctx = PluginContext(body=chat_body(), metadata={"_from_gateway": 7})
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    seen = outcome.context.metadata["seen"]
    assert seen["reader_before"]["meta"] is None
    assert seen["reader"]["meta"] == "from writer"
    assert outcome.context.metadata["_from_gateway"] == 7


async def test_block_ends_the_ring_with_its_status_and_error_type(with_scripted, make_engine):
    block = {"do": "block", "status": 429, "error_type": "rate_limited", "message": "slow down"}
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("before"), scripted("limiter", config=block), scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.ended
    assert outcome.decided_by == "limiter"
    assert outcome.decision is not None
    assert outcome.decision.status_code == 429
    assert outcome.decision.error_type == "rate_limited"
    assert outcome.decision.message == "slow down"
    assert outcome.context.metadata["ran"] == ["before", "limiter"]
    assert [r.plugin for r in outcome.results] == ["before", "limiter"]
    assert instance(engine, "after").stats["invocations"] == 0
    stats = instance(engine, "limiter").stats
    assert (stats["blocks"], stats["errors"]) == (1, 0)


async def test_cache_hit_ends_the_ring_with_the_response(with_scripted, make_engine):
    cached = {"id": "chatcmpl-cached", "choices": [{"message": {"content": "hello"}}]}
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("cache", config={"do": "cache", "response": cached}), scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.CACHE_HIT
    assert outcome.ended
    assert outcome.decided_by == "cache"
    assert outcome.decision is not None
    assert outcome.decision.response == cached
    assert outcome.context.metadata["ran"] == ["cache"]
    assert instance(engine, "cache").stats["blocks"] == 0


async def test_priority_orders_the_ring_and_ties_keep_config_order(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("p20", priority=20),
                scripted("p10_first", priority=10),
                scripted("p10_second", priority=10),
                scripted("p5", priority=5),
                scripted("default"),  # priority 100
                scripted("negative", priority=-1),
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    expected = ["negative", "p5", "p10_first", "p10_second", "p20", "default"]
    assert outcome.context.metadata["ran"] == expected
    assert [r.plugin for r in outcome.results] == expected


async def test_stop_chain_ends_the_ring_as_a_block_carrying_ctx_error(with_scripted, make_engine):
    stop = {"do": "stop", "error": "prompt injection detected"}
    engine = await make_engine(
        with_scripted.config(ring_config(scripted("guard", config=stop), scripted("after")))
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "guard"
    assert outcome.decision is not None
    assert outcome.decision.status_code >= 400
    assert outcome.decision.message == "prompt injection detected"
    assert outcome.context.metadata["ran"] == ["guard"]
    assert instance(engine, "guard").stats["blocks"] == 1


async def test_disabled_in_config_is_skipped_and_not_run(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("first"), scripted("disabled", enabled="false"), scripted("last"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["first", "last"]
    assert [(r.plugin, r.outcome) for r in outcome.results] == [
        ("first", PluginOutcome.OK),
        ("disabled", PluginOutcome.SKIPPED),
        ("last", PluginOutcome.OK),
    ]
    assert outcome.results[1].action is None
    assert instance(engine, "disabled").stats["invocations"] == 0


async def test_set_enabled_turns_a_plugin_off_and_on(with_scripted, make_engine):
    engine = await make_engine(with_scripted.config(ring_config(scripted("a"), scripted("b"))))
    engine.set_enabled("a", False)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["b"]
    assert outcome.results[0].outcome is PluginOutcome.SKIPPED
    assert instance(engine, "a").stats["invocations"] == 0

    engine.set_enabled("a", True)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["a", "b"]
    assert instance(engine, "a").stats["invocations"] == 1

    with pytest.raises(UnknownPluginError):
        engine.set_enabled("nope", False)


async def test_a_disabled_blocker_does_not_block(with_scripted, make_engine):
    block = {"do": "block", "status": 403, "error_type": "denied"}
    engine = await make_engine(
        with_scripted.config(ring_config(scripted("deny", config=block, enabled="false"), scripted("b")))
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.context.metadata["ran"] == ["b"]


async def test_each_ring_runs_only_its_own_plugins(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("auth", hook="ingress"),
                scripted("pii"),  # the class attribute: pre_flight
                scripted("router", hook="ROUTING"),
            )
        )
    )
    ran = {}
    for hook in PluginHook:
        outcome = await engine.execute_ring(hook, PluginContext())
        ran[hook] = outcome.context.metadata.get("ran", [])
    assert ran == {
        PluginHook.INGRESS: ["auth"],
        PluginHook.PRE_FLIGHT: ["pii"],
        PluginHook.ROUTING: ["router"],
        PluginHook.POST_FLIGHT: [],
        PluginHook.BACKGROUND: [],
    }


async def test_engine_injects_the_shared_state_with_the_store(workspace, make_engine, store):
    workspace.plugin(
        "counter.py",
        """
        from ringd.sdk import BasePlugin, PluginHook, PluginResponse

        class Counter(BasePlugin):
            name = "counter"
            hook = PluginHook.PRE_FLIGHT

            async def execute(self, ctx):
                count = await ctx.state.extra["store"].incr("requests")
                ctx.metadata["count"] = count
                return PluginResponse.passthrough()
        """,
    )
    engine = await make_engine(
        workspace.config(ring_config("{name: counter, entrypoint: counter.py:Counter, timeout_ms: 1000}"))
    )
    outcomes = [await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()) for _ in range(3)]
    assert [o.context.metadata["count"] for o in outcomes] == [1, 2, 3]
    assert await store.get_state("requests") == 3


# --------------------------------------------------------------------------- timeouts
