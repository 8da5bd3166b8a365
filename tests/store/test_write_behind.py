"""The SQLite store's write-behind (``incr_later``, ``set_later``): queued writes are read
at once by this process, committed together a moment later, and written on close.

Every test uses a real SQLite file; "another process" is a second connection to it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ringd.plugins.response_cache import ResponseCacheStore
from ringd.plugins.usage_accounting import UsageAccounting
from ringd.sdk import PluginContext, PluginState, StoreError
from ringd.server import store as store_module
from ringd.server.store import SqliteStore
from support.sqlite import write_lock_held


def committed(path: Path, key: str) -> Any:
    """``key``'s raw stored value as another connection (another process) reads it."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


async def test_queued_counters_are_read_at_once_and_committed_together(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.incr_later([("a", 1), ("b", 2)])
    await sqlite_store.incr_later([("a", 3)])
    # Queued, not yet committed: another process does not see them yet ...
    assert committed(tmp_path / "ringd.db", "a") is None
    # ... this one does: a read of a queued key commits the queue first.
    assert await sqlite_store.get_state("a") == 4
    assert committed(tmp_path / "ringd.db", "a") == "4"
    assert committed(tmp_path / "ringd.db", "b") == "2"
    assert sqlite_store.flushes == 1  # both calls, one transaction
    assert sqlite_store.flushed_writes == 2  # two keys


async def test_the_queue_commits_by_itself(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    await sqlite_store.incr_later([("usage:requests", 1)])
    await sqlite_store.set_later("answer", {"text": "hi"}, ttl_s=60)
    for _ in range(500):  # the write-behind delay is 50 ms; allow a slow machine 10 s
        if sqlite_store.flushes:
            break
        await asyncio.sleep(0.02)
    assert committed(tmp_path / "ringd.db", "usage:requests") == "1"
    assert committed(tmp_path / "ringd.db", "answer") == '{"text":"hi"}'


async def test_close_writes_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "ringd.db"
    store = await SqliteStore.open(path)
    state = PluginState(extra={"store": store})
    usage = UsageAccounting({"prices": {"m": {"prompt_per_1k": 1.0}}})
    for _ in range(3):
        ctx = PluginContext(body={"model": "m", "messages": []}, metadata={"tenant": "acme"}, state=state)
        ctx.response = {"model": "m", "choices": [{}], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
        await usage.execute(ctx)
    await store.set_later("kept", [1, 2], ttl_s=300)
    await store.close()

    reopened = await SqliteStore.open(path)
    try:
        assert await reopened.get_state("usage:acme:m:requests") == 3
        assert await reopened.get_state("usage:acme:m:prompt_tokens") == 30
        assert await reopened.get_state("usage:acme:m:cost_micro_usd") == 30_000
        assert await reopened.get_state("kept") == [1, 2]
    finally:
        await reopened.close()


async def test_writes_to_one_key_keep_their_order(sqlite_store: SqliteStore) -> None:
    await sqlite_store.set_later("n", 5)
    await sqlite_store.incr_later([("n", 2)])  # after the queued set: commits it first
    assert await sqlite_store.get_state("n") == 7
    await sqlite_store.incr_later([("m", 2)])
    await sqlite_store.set_later("m", "text")  # the set replaces the queued increment
    assert await sqlite_store.get_state("m") == "text"
    await sqlite_store.set_later("m", 1)
    await sqlite_store.delete("m")  # a delete commits the queue first
    assert await sqlite_store.get_state("m") is None
    await sqlite_store.incr_later([("m", 4)])
    assert await sqlite_store.incr("m", 1) == 5
    assert await sqlite_store.incr_many([("m", 1), ("other", 1)]) == [6, 1]


async def test_a_queued_increment_of_a_non_integer_is_dropped_and_counted(
    sqlite_store: SqliteStore,
) -> None:
    await sqlite_store.set_state("text", "not a number")
    await sqlite_store.incr_later([("text", 1), ("count", 1)])
    assert await sqlite_store.flush()
    assert await sqlite_store.get_state("text") == "not a number"
    assert await sqlite_store.get_state("count") == 1
    assert sqlite_store.errors == {"incr": 1}


async def test_queued_amounts_and_values_are_checked_when_queued(sqlite_store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="integer"):
        await sqlite_store.incr_later([("n", 1.5)])  # type: ignore[list-item]
    with pytest.raises(StoreError, match="JSON"):
        await sqlite_store.set_later("k", {1, 2})
    value = {"list": [1]}
    await sqlite_store.set_later("k", value)
    value["list"].append(2)  # encoded when queued: a later change is not stored
    assert await sqlite_store.get_state("k") == {"list": [1]}
    assert await sqlite_store.get_state("n") is None


async def test_a_held_write_lock_sends_the_flush_to_the_thread(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    with write_lock_held(tmp_path / "ringd.db") as release:  # another process's writer
        await sqlite_store.incr_later([("a", 1), ("b", 1)])
        await sqlite_store.set_later("c", "x")
        flushing = asyncio.create_task(sqlite_store.flush())
        await asyncio.sleep(0.1)
        assert not flushing.done()  # waiting for the lock in the thread, not on the loop
        release.set()
        assert await flushing
    assert sqlite_store.thread_calls >= 1
    assert [await sqlite_store.get_state(key) for key in "abc"] == [1, 1, "x"]
    assert sqlite_store.flushed_writes == 3


async def test_the_cache_store_is_read_at_once_by_the_lookup(sqlite_store: SqliteStore) -> None:
    state = PluginState(extra={"store": sqlite_store})
    digest = "a" * 64
    ctx = PluginContext(body={}, metadata={"_cache_key": digest, "_cache_status": "miss"}, state=state)
    ctx.response = {"choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    await ResponseCacheStore({}).execute(ctx)
    assert ctx.metadata["_cache_stored"] is True
    assert await sqlite_store.get_state(f"response_cache:{digest}") == ctx.response


async def test_without_loop_writes_the_later_writes_are_immediate(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "full.db", synchronous="FULL")
    try:
        await store.incr_later([("n", 2)])
        await store.set_later("k", 1)
        assert committed(tmp_path / "full.db", "n") == "2"
        assert committed(tmp_path / "full.db", "k") == "1"
        assert store.flushes == 0
    finally:
        await store.close()


async def test_a_full_queue_writes_at_once(
    sqlite_store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "QUEUED_MAX", 2)
    await sqlite_store.incr_later([("a", 1), ("b", 1)])
    await sqlite_store.set_later("c", "x")  # two keys queued: the queue is full, so written now
    await sqlite_store.incr_later([("d", 1)])
    assert committed(tmp_path / "ringd.db", "c") == '"x"'
    assert committed(tmp_path / "ringd.db", "d") == "1"
    assert committed(tmp_path / "ringd.db", "a") is None  # still queued
    assert [await sqlite_store.get_state(key) for key in "abcd"] == [1, 1, "x", 1]


async def test_a_failed_commit_keeps_the_writes_and_retries_them_once(sqlite_store: SqliteStore) -> None:
    loop_conn = sqlite_store._loop_conn
    assert loop_conn is not None
    await sqlite_store.incr_later([("n", 2)])
    loop_conn.execute("PRAGMA query_only=1")  # the loop's connection now refuses every write
    assert not await sqlite_store.flush()
    with pytest.raises(StoreError, match="queued"):
        await sqlite_store.get_state("n")  # its write failed: no stale answer
    await sqlite_store.incr_later([("n", 3)])  # queued behind the failed batch
    loop_conn.execute("PRAGMA query_only=0")
    assert await sqlite_store.flush()
    assert await sqlite_store.get_state("n") == 5  # each amount once
    assert sqlite_store.errors == {"get": 1, "flush": 2}  # both failed commits counted too


async def test_processes_sharing_the_file_add_their_queues(tmp_path: Path) -> None:
    # Two stores on one file, as two --workers processes: each commits its own queue.
    path = tmp_path / "shared.db"
    first, second = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        for _ in range(50):
            await first.incr_later([("requests", 1), ("tokens", 10)])
            await second.incr_later([("requests", 1), ("tokens", 10)])
            await asyncio.sleep(0)
        assert await first.get_state("requests") >= 50  # its own queue, at once
    finally:
        await first.close()
        await second.close()
    assert committed(path, "requests") == "100"
    assert committed(path, "tokens") == "1000"


async def test_a_flush_of_large_answers_commits_in_short_transactions(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    # Ten cached answers of ~60 KB: one transaction of them all would hold the event loop
    # for 600 KB of writing; each transaction stays within FLUSH_BYTES_MAX (256 KiB).
    answers = {f"answer:{index}": "x" * 60_000 + str(index) for index in range(10)}
    for key, text in answers.items():
        await sqlite_store.set_later(key, text)
    assert await sqlite_store.flush()
    assert sqlite_store.loop_calls == 3  # 4 + 4 + 2 answers
    for key, text in answers.items():
        assert committed(tmp_path / "ringd.db", key) == f'"{text}"'


async def test_increments_queued_while_another_waits_for_the_queue_are_kept(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_later("n", 1)
    with write_lock_held(tmp_path / "ringd.db") as release:
        # An increment of a key with a queued set commits the queue first: it waits (the lock
        # is held), and another task queues an increment of the key meanwhile.
        first = asyncio.create_task(sqlite_store.incr_later([("n", 5)]))
        await asyncio.sleep(0.1)
        assert not first.done()
        await sqlite_store.incr_later([("n", 7)])
        release.set()
        await first
    assert await sqlite_store.get_state("n") == 13
