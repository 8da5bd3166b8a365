"""The store plugins persist state in: ``ctx.state.extra["store"]``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class StoreError(RuntimeError):
    """The store could not do what was asked (unreachable, or a value of the wrong type)."""


@runtime_checkable
class Store(Protocol):
    """Async key-value store shared by all plugins (and, per backend, all replicas).

    Values are anything JSON can hold. Keys are strings; prefix them with your
    plugin's name. A key whose TTL has passed reads as absent.
    """

    async def get_state(self, key: str, default: Any = None) -> Any:
        """Return the value at ``key``, or ``default`` when it is absent or expired."""
        ...

    async def set_state(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store ``value`` (JSON-serialisable) at ``key``, expiring after ``ttl_s`` seconds if given."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there."""
        ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount`` to the integer at ``key`` and return the new value.

        An absent or expired key starts from 0; ``ttl_s`` then sets its expiry. An
        existing key keeps its expiry, which makes fixed-window counters easy.

        Raises:
            StoreError: the value at ``key`` is not a 64-bit signed integer, or the sum
                would not fit in one (the value is left as it was).
        """
        ...
