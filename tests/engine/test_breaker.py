"""The per-plugin circuit breaker as a ring sees it (:mod:`ringd.server.breaker`)."""

from __future__ import annotations

import asyncio
import time

from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome
from support.engine import SCRIPTED, instance, ring_config, scripted, timed_ring

FLAKY = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Flaky(BasePlugin):
    name = "flaky"
    hook = PluginHook.INGRESS
    timeout_ms = 1000  # a store read: room for a busy machine

    async def execute(self, ctx):
        if await ctx.state.extra["store"].get_state("flaky_broken", False):
            raise ConnectionError("auth backend unreachable")
        return PluginResponse.passthrough()
"""

BREAKER = "circuit_breaker: {failure_threshold: 3, cooldown_s: 0.2}"


async def ingress(engine):
    return await engine.execute_ring(PluginHook.INGRESS, PluginContext())


def status(outcome):
    return outcome.decision.status_code if outcome.decision else None


async def test_breaker_opens_after_n_failures_answers_503_and_closes_after_cooldown(
    workspace, make_engine, store
):
    workspace.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        workspace.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    flaky = instance(engine, "flaky")
    assert status(await ingress(engine)) is None

    await store.set_state("flaky_broken", True)
    first_three = [await ingress(engine) for _ in range(3)]
    opened_at = time.monotonic()
    assert [status(o) for o in first_three] == [500, 500, 500]
    assert all("auth backend unreachable" in (o.results[0].error or "") for o in first_three)
    assert flaky.stats["invocations"] == 4

    # Open: fail closed answers 503 without calling the plugin.
    while_open = [await ingress(engine) for _ in range(5)]
    assert [status(o) for o in while_open] == [503] * 5
    assert all(o.decision.error_type == "plugin_unavailable" for o in while_open)
    assert all(o.results[0].outcome is PluginOutcome.ERROR for o in while_open)
    assert all("circuit open" in (o.results[0].error or "") for o in while_open)
    assert flaky.stats["invocations"] == 4

    # The backend recovers. Traffic keeps coming every 10 ms; the breaker must let a
    # call through once the cooldown since it opened has passed, not keep postponing it.
    await store.set_state("flaky_broken", False)
    recovered_after = None
    while time.monotonic() - opened_at < 1.0:
        outcome = await ingress(engine)
        if status(outcome) is None:
            recovered_after = time.monotonic() - opened_at
            break
        assert status(outcome) == 503
        await asyncio.sleep(0.01)
    assert recovered_after is not None, "the breaker never closed under steady traffic"
    assert recovered_after >= 0.2, "not before the cooldown"
    assert flaky.stats["invocations"] == 5
    assert [status(await ingress(engine)) for _ in range(3)] == [None, None, None]


async def test_a_failure_after_the_cooldown_reopens_the_breaker(workspace, make_engine, store):
    workspace.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        workspace.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    flaky = instance(engine, "flaky")
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(4)] == [500, 500, 500, 503]
    await asyncio.sleep(0.21)
    # Half-open: one trial call, which fails and reopens the breaker at once.
    assert status(await ingress(engine)) == 500
    assert flaky.stats["invocations"] == 4
    assert status(await ingress(engine)) == 503
    assert flaky.stats["invocations"] == 4


async def test_an_open_breaker_on_a_fail_open_plugin_bypasses_without_calling(workspace, make_engine, store):
    workspace.plugin("flaky.py", FLAKY)
    workspace.plugin("scripted.py", SCRIPTED)
    engine = await make_engine(
        workspace.config(
            ring_config(
                f"{{name: flaky, entrypoint: flaky.py:Flaky, fail_policy: open, {BREAKER}}}",
                scripted("after", hook="ingress"),
            )
        )
    )
    await store.set_state("flaky_broken", True)
    outcomes = [await ingress(engine) for _ in range(6)]
    assert all(o.action is PluginAction.PASSTHROUGH for o in outcomes)
    assert all(o.results[0].outcome is PluginOutcome.BYPASSED for o in outcomes)
    assert all(o.context.metadata["ran"] == ["after"] for o in outcomes)
    assert "circuit open" in (outcomes[-1].results[0].error or "")
    stats = instance(engine, "flaky").stats
    assert (stats["invocations"], stats["errors"], stats["bypasses"]) == (3, 3, 6)


async def test_a_success_resets_the_consecutive_failure_count(workspace, make_engine, store):
    workspace.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        workspace.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    statuses = []
    for broken in (True, True, False, True, True, False, True, True):
        await store.set_state("flaky_broken", broken)
        statuses.append(status(await ingress(engine)))
    assert 503 not in statuses
    assert instance(engine, "flaky").stats["invocations"] == 8


async def test_breaker_threshold_zero_never_opens(workspace, make_engine, store):
    workspace.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        workspace.config(
            ring_config(
                "{name: flaky, entrypoint: flaky.py:Flaky,"
                " circuit_breaker: {failure_threshold: 0, cooldown_s: 10}}"
            )
        )
    )
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(10)] == [500] * 10
    assert instance(engine, "flaky").stats["invocations"] == 10


async def test_the_callers_short_deadlines_do_not_open_the_breaker(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: s, entrypoint: sleeper.py:Sleeper, timeout_ms: 500, config: {sleep_s: 0.03},"
                f" {BREAKER}}}"
            )
        )
    )
    for _ in range(4):
        outcome, _ = await timed_ring(engine, deadline=time.monotonic() + 0.005)
        assert outcome.results[0].outcome is PluginOutcome.TIMEOUT
    # The plugin itself is healthy: with time to run, it runs.
    outcome, _ = await timed_ring(engine)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is PluginOutcome.OK
    assert instance(engine, "s").stats["invocations"] == 5


# --------------------------------------------------------------------------- metrics
