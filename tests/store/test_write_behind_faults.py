"""Faults of the SQLite write-behind found in review: a write SQLite cannot bind must not
block the queue, writes queued while ``close`` flushes are written, failed commits are
counted. Real SQLite files; "another process" is a second connection to the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from ringd.sdk import StoreError
from ringd.server.store import SqliteStore


def committed(path: Path) -> dict[str, str]:
    """Every stored key's raw value, as another process reads them."""
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, value FROM kv"))
    finally:
        conn.close()


async def test_an_amount_past_64_bits_is_refused_and_the_queue_still_commits(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match="64-bit"):
        await sqlite_store.incr_later([("huge", 2**63)])
    with pytest.raises(StoreError, match="64-bit"):
        await sqlite_store.incr("huge", -(2**63) - 1)  # the direct write says the same
    await sqlite_store.incr_later([("n", 1)])
    assert await sqlite_store.flush()
    assert committed(tmp_path / "ringd.db") == {"n": "1"}


async def test_queued_amounts_summing_past_64_bits_do_not_block_the_queue(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.incr_later([("big", 2**62), ("n", 1)])
    await sqlite_store.incr_later([("big", 2**62), ("n", 1)])  # each fits; their sum does not
    assert await sqlite_store.flush()
    # The second 2**62 would take the stored count past 64 bits: dropped and counted.
    assert committed(tmp_path / "ringd.db") == {"big": str(2**62), "n": "2"}
    assert sqlite_store.errors == {"incr": 1}


async def test_a_queued_incr_summing_past_64_bits_with_the_stored_value_is_dropped_and_counted(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_state("big", 2**63 - 1)
    await sqlite_store.incr_later([("big", 1), ("n", 1)])
    assert await sqlite_store.flush()
    assert committed(tmp_path / "ringd.db") == {"big": str(2**63 - 1), "n": "1"}
    assert sqlite_store.errors == {"incr": 1}


async def test_a_queued_incr_of_a_stored_integer_past_64_bits_is_dropped_and_counted(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_state("huge", -(2**64))
    await sqlite_store.incr_later([("huge", 1), ("n", 1)])
    assert await sqlite_store.flush()
    assert committed(tmp_path / "ringd.db") == {"huge": str(-(2**64)), "n": "1"}
    assert sqlite_store.errors == {"incr": 1}


async def test_a_key_that_is_not_utf8_is_refused_and_the_queue_still_commits(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    bad = "tenant-\ud800"  # a lone surrogate, as json.loads gives for "\\ud800"
    with pytest.raises(StoreError, match="UTF-8"):
        await sqlite_store.incr_later([("n", 1), (bad, 1)])
    with pytest.raises(StoreError, match="UTF-8"):
        await sqlite_store.set_later(bad, "x")
    await sqlite_store.incr_later([("n", 1)])
    assert await sqlite_store.flush()
    assert committed(tmp_path / "ringd.db") == {"n": "1"}


async def test_close_writes_what_is_queued_while_its_flush_waits(tmp_path: Path) -> None:
    path = tmp_path / "ringd.db"
    store = await SqliteStore.open(path)
    holder = sqlite3.connect(path, isolation_level=None)  # another process's writer
    try:
        await store.incr_later([("a", 1)])
        holder.execute("BEGIN IMMEDIATE")
        closing = asyncio.create_task(store.close())
        for _ in range(1000):  # until close's flush has taken the queue (it waits for the lock)
            if store._flushing:
                break
            await asyncio.sleep(0.01)
        assert store._flushing
        await store.incr_later([("b", 1), ("a", 1)])  # a request finishing during shutdown
        holder.execute("COMMIT")
        await closing
    finally:
        holder.close()
    assert committed(path) == {"a": "2", "b": "1"}


async def test_a_failed_commit_is_counted_and_each_amount_written_once(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    path = tmp_path / "ringd.db"
    await sqlite_store.incr_later([("n", 2), ("m", 1)])
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("ALTER TABLE kv RENAME TO kv_away")  # every write now fails: no table
        assert not await sqlite_store.flush()
        assert sqlite_store.errors == {"flush": 1}
        await sqlite_store.incr_later([("n", 3)])
        other.execute("ALTER TABLE kv_away RENAME TO kv")
    finally:
        other.close()
    assert await sqlite_store.flush()
    assert committed(path) == {"n": "5", "m": "1"}
