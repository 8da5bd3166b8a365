"""Per-ring figures the ring loop keeps for the metrics endpoint: latency, actions, blocks.

One :class:`RingStats` per ring, owned by the engine's ring runner and updated once
per ring (not per plugin) on the event loop: a ``bisect`` into fixed latency buckets,
two additions and a dict increment. A scrape reads them (``ringd.server.metrics``);
nothing here is exported on the call path.
"""

from __future__ import annotations

from bisect import bisect_left

from ringd.sdk import PluginAction, PluginHook, PluginResponse
from ringd.server.results import UNENCODABLE_ERROR_TYPE

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the ring latency histogram's buckets; +Inf is implied."""


class RingStats:
    """What one ring has done since the process started (kept across reloads)."""

    __slots__ = ("actions", "blocks", "buckets", "sum_s")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        """Rings per latency bucket, not cumulative; the last is past the largest bound."""
        self.sum_s = 0.0
        self.actions = dict.fromkeys(PluginAction, 0)
        """Rings by their outcome's action."""
        self.blocks: dict[str, int] = {}
        """Rings that ended in BLOCK, by the block's ``error_type`` ("" when it has none)."""

    def observe(self, seconds: float, action: PluginAction, decision: PluginResponse | None) -> None:
        """Count one ring that took ``seconds`` and ended with ``action``."""
        self.buckets[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds
        try:
            self.actions[action] += 1
        except KeyError:
            # A response whose action a plugin overwrote with garbage: the servicer cannot
            # encode it and answers the 500 plugin_error block instead (RingOutcome.unencodable).
            self.actions[PluginAction.BLOCK] += 1
            self.blocks[UNENCODABLE_ERROR_TYPE] = self.blocks.get(UNENCODABLE_ERROR_TYPE, 0) + 1
            return
        if action is PluginAction.BLOCK:
            error_type = (decision.error_type if decision is not None else None) or ""
            self.blocks[error_type] = self.blocks.get(error_type, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.buckets)


def ring_stats() -> dict[PluginHook, RingStats]:
    """A fresh :class:`RingStats` for every ring."""
    return {ring: RingStats() for ring in PluginHook}
