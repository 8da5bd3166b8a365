"""Per-plugin metrics the engine keeps and plugins read as ``stats``."""

from __future__ import annotations

import pytest
from ringd.sdk import PluginContext, PluginHook
from support.engine import instance, ring_config


async def test_stats_are_live_and_have_percentiles(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: s, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.01}}"
            )
        )
    )
    plugin = instance(engine, "s")
    for _ in range(5):
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    stats = plugin.stats
    assert stats["invocations"] == 5
    assert stats["errors"] == 0
    assert stats["total_latency_ms"] >= 50
    assert stats["avg_latency_ms"] == pytest.approx(stats["total_latency_ms"] / 5)
    assert 10 <= stats["p50_latency_ms"] <= stats["p95_latency_ms"] <= stats["p99_latency_ms"]
    assert stats["p99_latency_ms"] <= stats["total_latency_ms"]


PACER = """
import asyncio

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Pacer(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 5000

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = 0

    async def execute(self, ctx):
        pattern = self.config["sleeps"]
        await asyncio.sleep(pattern[self.calls % len(pattern)])
        self.calls += 1
        return PluginResponse.passthrough()
"""


@pytest.mark.parametrize(
    ("sleeps", "fast", "slow"),
    [
        # Two calls, one fast and one slow: the median is the fast one (nearest rank).
        ([0, 0.5], ["p50_latency_ms"], ["p95_latency_ms", "p99_latency_ms"]),
        # Nineteen fast calls and one slow: 95% of calls were fast, so p95 is fast too.
        ([0] * 19 + [0.5], ["p50_latency_ms", "p95_latency_ms"], ["p99_latency_ms"]),
    ],
)
async def test_percentiles_are_nearest_rank(workspace, make_engine, sleeps, fast, slow):
    workspace.plugin("pacer.py", PACER)
    engine = await make_engine(
        workspace.config(
            ring_config(f"{{name: pacer, entrypoint: pacer.py:Pacer, config: {{sleeps: {sleeps}}}}}")
        )
    )
    for _ in sleeps:
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    stats = instance(engine, "pacer").stats
    assert stats["invocations"] == len(sleeps)
    for key in fast:
        assert stats[key] < 250, (key, stats)  # a sleep(0) call: far under the slow one's 500 ms
    for key in slow:
        assert stats[key] >= 500, (key, stats)
