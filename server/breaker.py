"""The circuit breaker of one plugin: trips on a failure rate, probes before it closes.

Modelled on Envoy's outlier detection and resilience4j's count/time window: a
concurrent burst of failures (a 0.2 s store stall under load) is a small share of
the calls in the window and does not trip it; a dependency that is down does.

* **Closed.** Calls and failures are counted over a sliding window of ``window_s``
  (ten buckets). On a failure, with at least ``minimum_calls`` calls in the window
  and ``failures / calls >= failure_rate``, the breaker opens.
* **Open** for a cooldown that starts at ``cooldown_s`` and doubles on each trip
  that follows a failed probe, up to ``max_cooldown_s``: calls are refused (the
  plugin counts as failed: 503 under fail_policy closed, bypassed under open).
* **Half-open** after the cooldown: up to ``half_open_calls`` probe calls go
  through, the rest are refused; when that many probes succeed it closes (window
  and backoff reset), and any probe failure opens it again with a longer cooldown.

Calls are not counted twice: the window reads the plugin's invocation counter
(:class:`~ringd.sdk.PluginMetrics`), so a successful call costs the engine one
float comparison here (``started >= breaker.next_check``).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Protocol

from ringd.server.config import BreakerSettings

_BUCKETS = 10


class BreakerState(Enum):
    """Where a breaker is."""

    __hash__ = object.__hash__

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _Invocations(Protocol):
    """What the breaker reads of the plugin's metrics: a monotonic call counter."""

    @property
    def invocations(self) -> int: ...


CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN


class CircuitBreaker:
    """Failure-rate breaker of one plugin (see the module docstring and :class:`BreakerSettings`).

    Times are in the caller's clock (the engine passes ``time.perf_counter()`` seconds).
    """

    __slots__ = (
        "_base",
        "_epoch",
        "_fails",
        "_metrics",
        "_probes",
        "_probes_ok",
        "_settings",
        "bucket_s",
        "next_check",
        "open_until",
        "state",
        "trips",
    )

    def __init__(self, settings: BreakerSettings, metrics: _Invocations) -> None:
        self._settings = settings
        self._metrics = metrics
        self.bucket_s = settings.window_s / _BUCKETS
        self._epoch = [-1] * _BUCKETS
        self._fails = [0] * _BUCKETS
        self._base = [0] * _BUCKETS
        self.state = CLOSED
        self.next_check = -math.inf
        """A success at or after this time takes the slow path (bucket roll, half-open)."""
        self.open_until = 0.0
        self.trips = 0
        self._probes = 0
        self._probes_ok = 0

    # ------------------------------------------------------------- window

    def _roll(self, now: float) -> int:
        """Make ``now``'s bucket current; returns its slot."""
        index = int(now // self.bucket_s)
        slot = index % _BUCKETS
        if self._epoch[slot] != index:
            self._epoch[slot] = index
            self._fails[slot] = 0
            # Called for a call the metrics have counted already: the bucket starts before it.
            self._base[slot] = self._metrics.invocations - 1
        if self.state is CLOSED:
            self.next_check = (index + 1) * self.bucket_s
        return slot

    def window(self, now: float) -> tuple[int, int]:
        """``(calls, failures)`` in the window ending at ``now``."""
        oldest = int(now // self.bucket_s) - _BUCKETS + 1
        live = [slot for slot in range(_BUCKETS) if self._epoch[slot] >= oldest]
        if not live:
            return 0, 0
        base = min(self._base[slot] for slot in live)
        return self._metrics.invocations - base, sum(self._fails[slot] for slot in live)

    def _reset_window(self) -> None:
        self._epoch = [-1] * _BUCKETS
        self._fails = [0] * _BUCKETS

    # ------------------------------------------------------------- engine calls

    def admit(self, now: float) -> bool:
        """Whether a call may run now; called only while the state is not CLOSED."""
        if self.state is OPEN:
            if now < self.open_until:
                return False
            self.state = HALF_OPEN
            self._probes = self._probes_ok = 0
        elif self._probes >= self._settings.half_open_calls:
            if now < self.open_until + self.cooldown_s():
                return False
            # The probes went away unsettled (their callers left): try again.
            self._probes = self._probes_ok = 0
            self.open_until = now
        self._probes += 1
        self.next_check = -math.inf
        return True

    def on_success(self, now: float) -> None:
        """A call succeeded; the engine calls this only when ``now >= next_check``."""
        if self.state is HALF_OPEN:
            self._probes_ok += 1
            if self._probes_ok >= self._settings.half_open_calls:
                self.state = CLOSED
                self.trips = 0
                self._reset_window()
                self._roll(now)
            return
        self._roll(now)

    def on_failure(self, now: float) -> None:
        """A call failed (error or the plugin's own timeout)."""
        if self.state is HALF_OPEN:
            self._trip(now)
            return
        slot = self._roll(now)
        self._fails[slot] += 1
        settings = self._settings
        if not settings.enabled or self.state is not CLOSED:
            return
        calls, failures = self.window(now)
        if calls >= settings.minimum_calls and failures >= settings.failure_rate * calls:
            self._trip(now)

    def _trip(self, now: float) -> None:
        cooldown = self.cooldown_s()
        self.trips += 1
        self.state = OPEN
        self.open_until = now + cooldown
        self.next_check = -math.inf

    def cooldown_s(self) -> float:
        """The cooldown the next trip starts: ``cooldown_s`` doubled per failed probe, capped."""
        settings = self._settings
        return min(settings.cooldown_s * 2.0 ** min(self.trips, 32), settings.max_cooldown_s)

    # ------------------------------------------------------------- reading

    def is_open(self, now: float) -> bool:
        """True while calls are refused (open, or half-open with every probe taken)."""
        if self.state is OPEN:
            return now < self.open_until
        return self.state is HALF_OPEN and self._probes >= self._settings.half_open_calls

    def retry_in(self, now: float) -> float:
        """Seconds until the breaker lets a probe through."""
        return max(0.0, self.open_until - now) if self.state is OPEN else 0.0

    def describe(self, now: float) -> str:
        """Why calls are refused, for a plugin result's error text."""
        calls, failures = self.window(now)
        return (
            f"circuit open ({failures} of {calls} calls in the last {self._settings.window_s:g} s failed);"
            f" retry in {self.retry_in(now):.2f} s"
        )
