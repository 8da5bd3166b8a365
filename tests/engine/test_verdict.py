"""The engine's verdict is complete (who decided, what, why), over one ring and over a run
of rings on one generation (:mod:`ringd.server.results`, :meth:`Engine.run_rings`)."""

from __future__ import annotations

import contextlib

from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome
from support.engine import chat_body, ring_config, scripted

PRE = PluginHook.PRE_FLIGHT


async def test_an_unencodable_ring_becomes_the_engines_500_block_on_the_last_plugin_that_ran(
    with_scripted, make_engine
):
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("first"), scripted("second"), scripted("dormant", enabled="false"))
        )
    )
    outcome = await engine.execute_ring(PRE, PluginContext(body=chat_body()))

    blocked = outcome.unencodable("metadata['x'] is a set, which JSON cannot carry")

    assert blocked.action is PluginAction.BLOCK
    assert blocked.ended
    assert blocked.decided_by == "second", "the last plugin that ran, not the skipped one"
    assert blocked.decision is not None
    assert blocked.decision.status_code == 500
    assert blocked.decision.error_type == "plugin_error"
    assert "metadata['x'] is a set" in (blocked.decision.message or "")
    assert blocked.context_withheld
    assert [r.outcome for r in blocked.results] == [
        PluginOutcome.OK,
        PluginOutcome.OK,
        PluginOutcome.SKIPPED,
    ]
    assert outcome.action is PluginAction.PASSTHROUGH, "the ring's own outcome is left as it was"


async def test_run_rings_flows_the_context_and_stops_after_the_ring_that_ends(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("tag", hook="ingress", config={"do": "note"}),
                scripted("guard", config={"do": "block", "status": 429, "error_type": "slow_down"}),
                scripted("router", hook="routing"),
            )
        )
    )
    ctx = PluginContext(body=chat_body())
    rings = [PluginHook.INGRESS, PRE, PluginHook.ROUTING]
    outcomes = [outcome async for outcome in engine.run_rings(rings, ctx)]

    assert [o.ring for o in outcomes] == [PluginHook.INGRESS, PRE], "ROUTING never ran"
    assert ctx.metadata["seen"]["guard"]["meta"] == "from tag", "INGRESS's metadata reached PRE_FLIGHT"
    assert (outcomes[-1].action, outcomes[-1].decided_by) == (PluginAction.BLOCK, "guard")
    assert engine.generation.inflight == 0


async def test_run_rings_holds_one_generation_across_a_reload(with_scripted, make_engine):
    first = ring_config(scripted("a", hook="ingress"), scripted("b"))
    engine = await make_engine(with_scripted.config(first))
    ctx = PluginContext(body=chat_body())
    run = engine.run_rings([PluginHook.INGRESS, PRE], ctx)
    async with contextlib.aclosing(run):
        ingress = await anext(run)
        await engine.reload(with_scripted.config(first.replace("test-1", "test-2")))
        pre_flight = await anext(run)

    assert (ingress.generation, pre_flight.generation) == (1, 1)
    assert pre_flight.config_version == "test-1"
    assert engine.generation.number == 2


async def test_a_caller_that_stops_early_releases_the_generation(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(ring_config(scripted("a", hook="ingress"), scripted("b")))
    )
    generation = engine.generation
    run = engine.run_rings([PluginHook.INGRESS, PRE], PluginContext(body=chat_body()))
    async with contextlib.aclosing(run):
        async for _ in run:
            assert generation.inflight == 1
            break
    assert generation.inflight == 0


async def test_a_queued_outcome_names_the_current_generation_and_echoes_the_context(
    with_scripted, make_engine
):
    engine = await make_engine(with_scripted.config(ring_config(scripted("usage", hook="background"))))
    ctx = PluginContext(body=chat_body(), metadata={"tenant": "acme"})

    queued = engine.queued(ctx)

    assert queued.queued
    assert (queued.ring, queued.action) == (PluginHook.BACKGROUND, PluginAction.PASSTHROUGH)
    assert queued.results == []
    assert queued.context is ctx
    assert (queued.config_version, queued.generation) == ("test-1", 1)
    assert ctx.metadata == {"tenant": "acme"}, "nothing ran"
