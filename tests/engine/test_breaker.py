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

# Trips at half of at least 4 calls failing; a 3 s first cooldown (long enough that the
# calls a test makes while it is open fit in it on a busy machine), doubled per failed probe.
BREAKER = (
    "circuit_breaker: {failure_rate: 0.5, minimum_calls: 4, window_s: 60,"
    " cooldown_s: 3.0, max_cooldown_s: 12.0, half_open_calls: 2}"
)


async def ingress(engine):
    return await engine.execute_ring(PluginHook.INGRESS, PluginContext())


def status(outcome):
    return outcome.decision.status_code if outcome.decision else None


async def flaky_engine(workspace, make_engine, breaker=BREAKER, **entry):
    workspace.plugin("flaky.py", FLAKY)
    extra = "".join(f", {key}: {value}" for key, value in entry.items())
    return await make_engine(
        workspace.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {breaker}{extra}}}"))
    )


async def test_breaker_opens_on_a_failure_rate_answers_503_then_probes_and_closes(
    workspace, make_engine, store
):
    engine = await flaky_engine(workspace, make_engine)
    flaky = instance(engine, "flaky")
    assert [status(await ingress(engine)) for _ in range(2)] == [None, None]

    await store.set_state("flaky_broken", True)
    # 2 of 3 calls failed, but the window has fewer than minimum_calls: still closed.
    assert status(await ingress(engine)) == 500
    # 2 of 4 failed: the rate reaches 0.5 with enough calls, and the breaker opens.
    assert status(await ingress(engine)) == 500
    opened_at = time.monotonic()
    assert flaky.stats["invocations"] == 4

    # Open: fail closed answers 503 without calling the plugin, and says why.
    while_open = [await ingress(engine) for _ in range(5)]
    assert [status(o) for o in while_open] == [503] * 5
    assert all(o.decision.error_type == "plugin_unavailable" for o in while_open)
    assert all(o.results[0].outcome is PluginOutcome.ERROR for o in while_open)
    assert "circuit open (2 of 4 calls in the last 60 s failed)" in (while_open[0].results[0].error or "")
    assert flaky.stats["invocations"] == 4
    assert engine.status(engine.generation.slots["flaky"]) == "circuit_open"

    # The backend recovers. Traffic keeps coming every 10 ms; the breaker must let
    # probes through once the cooldown since it opened has passed.
    await store.set_state("flaky_broken", False)
    recovered_after = None
    while time.monotonic() - opened_at < 30.0:  # a bound far past the cooldown, for a busy machine
        outcome = await ingress(engine)
        if status(outcome) is None:
            recovered_after = time.monotonic() - opened_at
            break
        assert status(outcome) == 503
        await asyncio.sleep(0.01)
    assert recovered_after is not None, "the breaker never let a probe through under steady traffic"
    assert recovered_after >= 2.9, "not before the cooldown"  # it opened a moment before opened_at
    # Two probes succeed: closed, and the old failures are forgotten.
    assert [status(await ingress(engine)) for _ in range(3)] == [None, None, None]
    assert engine.status(engine.generation.slots["flaky"]) == "active"
    await store.set_state("flaky_broken", True)
    assert status(await ingress(engine)) == 500  # one failure after closing does not reopen it
    assert status(await ingress(engine)) == 500


async def test_a_failed_probe_reopens_with_a_longer_cooldown(workspace, make_engine, store):
    engine = await flaky_engine(workspace, make_engine)
    flaky = instance(engine, "flaky")
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(5)] == [500, 500, 500, 500, 503]
    breaker = engine.generation.slots["flaky"].loaded.breaker
    first_open = breaker.open_until
    await asyncio.sleep(3.05)
    # Half-open: the probe fails and reopens the breaker at once, for twice as long.
    assert status(await ingress(engine)) == 500
    assert flaky.stats["invocations"] == 5
    assert status(await ingress(engine)) == 503
    assert flaky.stats["invocations"] == 5
    assert breaker.open_until - time.perf_counter() > 3.0  # the second cooldown is 6 s
    assert breaker.open_until > first_open


async def test_a_concurrent_burst_of_failures_in_a_busy_window_does_not_trip(workspace, make_engine, store):
    # The store stalls for a moment under concurrent load: many calls fail at once,
    # but they are a small share of the window's calls. A consecutive-failure
    # breaker opened here and turned a blip into an outage.
    engine = await flaky_engine(workspace, make_engine, "circuit_breaker: {minimum_calls: 20}")
    for _ in range(200):
        assert status(await ingress(engine)) is None
    await store.set_state("flaky_broken", True)
    burst = await asyncio.gather(*(ingress(engine) for _ in range(16)))
    assert [status(o) for o in burst] == [500] * 16
    await store.set_state("flaky_broken", False)
    assert status(await ingress(engine)) is None
    assert engine.status(engine.generation.slots["flaky"]) == "active"


async def test_an_open_breaker_on_a_fail_open_plugin_bypasses_without_calling(workspace, make_engine, store):
    workspace.plugin("scripted.py", SCRIPTED)
    workspace.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        workspace.config(
            ring_config(
                f"{{name: flaky, entrypoint: flaky.py:Flaky, fail_policy: open, {BREAKER}}}",
                scripted("after", hook="ingress"),
            )
        )
    )
    await store.set_state("flaky_broken", True)
    outcomes = [await ingress(engine) for _ in range(7)]
    assert all(o.action is PluginAction.PASSTHROUGH for o in outcomes)
    assert all(o.results[0].outcome is PluginOutcome.BYPASSED for o in outcomes)
    assert all(o.context.metadata["ran"] == ["after"] for o in outcomes)
    assert "circuit open" in (outcomes[-1].results[0].error or "")
    stats = instance(engine, "flaky").stats
    assert (stats["invocations"], stats["errors"], stats["bypasses"]) == (4, 4, 7)


async def test_a_disabled_breaker_never_opens(workspace, make_engine, store):
    engine = await flaky_engine(workspace, make_engine, "circuit_breaker: {enabled: false, minimum_calls: 1}")
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(30)] == [500] * 30
    assert instance(engine, "flaky").stats["invocations"] == 30


async def test_the_callers_short_deadlines_do_not_open_the_breaker(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: s, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.3},"
                f" {BREAKER}}}"
            )
        )
    )
    for _ in range(8):  # 50 ms: the plugin is called (a busy machine), and cut well before its 300 ms
        outcome, _ = await timed_ring(engine, deadline=time.monotonic() + 0.05)
        assert outcome.results[0].outcome is PluginOutcome.TIMEOUT
    # The plugin itself is healthy: with time to run, it runs.
    outcome, _ = await timed_ring(engine)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is PluginOutcome.OK
    assert instance(engine, "s").stats["invocations"] == 9


# --------------------------------------------------------------------------- metrics
