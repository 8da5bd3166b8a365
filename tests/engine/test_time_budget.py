"""Each plugin's time budget: its timeout, cut to the caller's deadline; cancellation
(:mod:`ringd.server.ring`)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome
from support.engine import instance, ring_config, scripted, timed_ring


async def test_a_plugin_past_its_timeout_is_cut(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper}", scripted("after")))
    )
    outcome, elapsed = await timed_ring(engine)
    # Upper bounds say "cut, not waited out" (the plugin sleeps 5 s), loose enough for a
    # busy machine; the exact budget is in the result's error text.
    assert 0.050 <= elapsed < 2.5
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "slow"
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (504, "plugin_timeout")
    result = outcome.results[0]
    assert result.outcome is PluginOutcome.TIMEOUT
    assert "timed out after 50 ms" in (result.error or "")
    assert 50 <= result.latency_ms < 2500
    assert "ran" not in outcome.context.metadata, "fail closed: nothing after the timeout ran"
    slow = instance(engine, "slow")
    stats = slow.stats
    assert (stats["invocations"], stats["timeouts"], stats["errors"]) == (1, 1, 1)
    assert slow.cancelled == 1, "the plugin's coroutine was cancelled, not left running"
    assert slow.finished == 0


async def test_config_timeout_overrides_the_class_attribute(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: quick, entrypoint: sleeper.py:PatientSleeper, timeout_ms: 30}",
                "{name: patient, entrypoint: sleeper.py:Sleeper, timeout_ms: 300,"
                " fail_policy: open, config: {sleep_s: 0.1}}",
            )
        )
    )
    engine.set_enabled("quick", False)
    outcome, elapsed = await timed_ring(engine)
    # 100 ms is past the class's 50 ms but within the entry's 300 ms: it completes.
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[1].outcome is PluginOutcome.OK
    assert elapsed >= 0.1

    # The class allows 2000 ms; the entry's 30 ms wins.
    engine.set_enabled("quick", True)
    outcome, elapsed = await timed_ring(engine)
    assert 0.030 <= elapsed < 1.5, "cut at 30 ms, not at the class's 2000 ms"
    assert outcome.results[0].outcome is PluginOutcome.TIMEOUT
    assert "timed out after 30 ms" in (outcome.results[0].error or "")
    assert instance(engine, "quick").stats["timeouts"] == 1
    assert instance(engine, "patient").stats["timeouts"] == 0


async def test_a_deadline_shorter_than_the_timeout_cuts_it_further(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 500}"))
    )
    outcome, elapsed = await timed_ring(engine, deadline=time.monotonic() + 0.03)
    assert 0.025 <= elapsed < 0.5, "cut at the 30 ms deadline, before the 500 ms timeout"
    assert "timed out after 500 ms" not in (outcome.results[0].error or "")
    assert outcome.decision is not None
    assert outcome.decision.status_code == 504
    assert outcome.results[0].outcome is PluginOutcome.TIMEOUT
    stats = instance(engine, "slow").stats
    assert (stats["timeouts"], stats["errors"]) == (1, 1)


async def test_a_deadline_spans_the_whole_ring(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: one, entrypoint: sleeper.py:Sleeper, timeout_ms: 500, config: {sleep_s: 0.06}}",
                "{name: two, entrypoint: sleeper.py:Sleeper, timeout_ms: 500, config: {sleep_s: 0.06}}",
                "{name: three, entrypoint: sleeper.py:Sleeper, timeout_ms: 500, config: {sleep_s: 0.06}}",
            )
        )
    )
    # Each plugin alone fits its 500 ms, but the three together overrun a 150 ms deadline.
    outcome, elapsed = await timed_ring(engine, deadline=time.monotonic() + 0.15)
    assert 0.15 <= elapsed < 1.5, "cut at the deadline, not after three 500 ms timeouts"
    assert [r.outcome for r in outcome.results] == [PluginOutcome.OK, PluginOutcome.OK, PluginOutcome.TIMEOUT]


async def test_a_passed_deadline_fails_without_calling_the_plugin(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, config: {sleep_s: 0}}"))
    )
    outcome, _ = await timed_ring(engine, deadline=time.monotonic() - 0.001)
    assert outcome.results[0].outcome is PluginOutcome.TIMEOUT
    assert outcome.decision is not None
    assert outcome.decision.status_code == 504
    stats = instance(engine, "slow").stats
    # The caller's deadline had passed before the plugin's turn: it was not called,
    # so the miss is not counted against the plugin.
    assert (stats["invocations"], stats["timeouts"], stats["errors"]) == (0, 0, 0)


async def test_a_timeout_under_fail_open_is_bypassed(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 20, fail_policy: open}",
                scripted("after"),
            )
        )
    )
    outcome, elapsed = await timed_ring(engine)
    assert elapsed < 2.5, "cut at 20 ms, not left to sleep its 5 s"
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is PluginOutcome.BYPASSED
    assert "timed out" in (outcome.results[0].error or "")
    assert outcome.context.metadata["ran"] == ["after"]
    stats = instance(engine, "slow").stats
    assert (stats["timeouts"], stats["errors"], stats["bypasses"]) == (1, 1, 1)


async def test_the_callers_cancellation_stops_the_ring(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 1000}"))
    )
    task = asyncio.create_task(engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert instance(engine, "slow").cancelled == 1
    assert engine.generation.inflight == 0


# --------------------------------------------------------------------------- failures
