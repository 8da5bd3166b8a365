"""The per-plugin circuit breaker: consecutive failures open it, a cooldown half-opens it."""

from __future__ import annotations

from ringd.server.config import BreakerSettings


class CircuitBreaker:
    """Consecutive-failure breaker of one plugin (see :class:`BreakerSettings`).

    While open the plugin counts as failed (its fail_policy decides: 503 block or
    bypass), so a fail-closed plugin is never silently skipped. After the cooldown
    the next call is tried (half-open): a success closes the breaker, a failure
    opens it again at once.
    """

    __slots__ = ("cooldown_s", "failures", "opened_at", "threshold")

    def __init__(self, settings: BreakerSettings) -> None:
        self.threshold = settings.failure_threshold
        self.cooldown_s = settings.cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    def allows(self, now: float) -> bool:
        """False while open; after the cooldown the next calls are tried (half-open)."""
        return self.opened_at is None or now - self.opened_at >= self.cooldown_s

    def is_open(self, now: float) -> bool:
        """True while calls are refused."""
        return not self.allows(now)

    def retry_in(self, now: float) -> float:
        """Seconds until the breaker lets a call through again."""
        return 0.0 if self.opened_at is None else max(0.0, self.cooldown_s - (now - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        half_open = self.opened_at is not None
        if self.threshold and (half_open or self.failures >= self.threshold):
            self.opened_at = now
