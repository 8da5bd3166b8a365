"""Store writes batched when the store can batch them (the SQLite store's ``incr_many``,
``incr_later`` and ``set_later``); one call after another on any other store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


async def incr_later(store: Store, items: Sequence[tuple[str, int]], ttl_s: float | None = None) -> None:
    """Add each ``(key, amount)``; the new values are not needed at once.

    A store with an ``incr_later`` method (the SQLite store) queues them and commits them
    a moment later with the other queued writes, in one transaction (this process reads
    the sums at once; a clean shutdown writes the queue); any other store adds them now
    (:func:`incr_all`).
    """
    queue = getattr(store, "incr_later", None)
    if queue is not None:
        await queue(items, ttl_s)
    else:
        await incr_all(store, items, ttl_s)


async def set_later(store: Store, key: str, value: Any, ttl_s: float | None = None) -> None:
    """``store.set_state(key, value, ttl_s)``, queued as :func:`incr_later` queues when
    the store can (``value`` is encoded at once); any other store sets it now."""
    queue = getattr(store, "set_later", None)
    if queue is not None:
        await queue(key, value, ttl_s)
    else:
        await store.set_state(key, value, ttl_s=ttl_s)
