"""Per-plugin metrics, kept by the engine and read through ``BasePlugin.stats``."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

_WINDOW = 2048  # latencies kept for the percentiles: the most recent calls


class PluginMetrics:
    """Counters and a latency window for one plugin; survives reloads of an unchanged plugin."""

    __slots__ = (
        "blocks",
        "bypasses",
        "errors",
        "invocations",
        "recent_ms",
        "stalls",
        "timeouts",
        "total_latency_ms",
    )

    def __init__(self) -> None:
        self.invocations = 0
        self.errors = 0
        self.blocks = 0
        self.timeouts = 0
        self.bypasses = 0
        self.stalls = 0
        self.total_latency_ms = 0.0
        self.recent_ms: deque[float] = deque(maxlen=_WINDOW)

    def observe(self, latency_ms: float) -> None:
        """Count one call of ``execute`` that took ``latency_ms``."""
        self.invocations += 1
        self.total_latency_ms += latency_ms
        self.recent_ms.append(latency_ms)

    def snapshot(self) -> dict[str, Any]:
        """The metrics as a plain dict, percentiles over the most recent calls."""
        ordered = sorted(self.recent_ms)
        return {
            "invocations": self.invocations,
            "errors": self.errors,
            "blocks": self.blocks,
            "timeouts": self.timeouts,
            "bypasses": self.bypasses,
            "stalls": self.stalls,
            "total_latency_ms": self.total_latency_ms,
            "avg_latency_ms": self.total_latency_ms / self.invocations if self.invocations else 0.0,
            "p50_latency_ms": _percentile(ordered, 0.50),
            "p95_latency_ms": _percentile(ordered, 0.95),
            "p99_latency_ms": _percentile(ordered, 0.99),
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    # Nearest rank: the smallest value with at least q of the values at or below it.
    # (The epsilon keeps float noise such as 0.29 * 100 = 28.999... from moving a rank.)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered) - 1e-9) - 1))
    return ordered[rank]
