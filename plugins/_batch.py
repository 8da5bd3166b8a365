"""Several counters in one store call, when the store can (SQLite's ``incr_many``)."""

from __future__ import annotations

from collections.abc import Sequence

from ringd.sdk import Store


async def incr_all(store: Store, items: Sequence[tuple[str, int]], ttl_s: float | None = None) -> list[int]:
    """``store.incr`` of each ``(key, amount)``, in order; the new values.

    A store with an ``incr_many`` method (the SQLite store: one transaction, one commit)
    does them in one call; any other :class:`~ringd.sdk.Store` one ``incr`` after another.
    """
    incr_many = getattr(store, "incr_many", None)
    if incr_many is not None:
        values: list[int] = await incr_many(items, ttl_s)
        return values
    return [await store.incr(key, amount, ttl_s=ttl_s) for key, amount in items]
