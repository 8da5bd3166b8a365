"""The SQLite store's event-loop connection: short operations run on the loop and never wait.

Another connection (here a second process's writer, simulated by a thread with its own
connection) holding the write lock sends loop-side writes to the store's thread at once:
the loop keeps running and reads still answer (WAL readers do not wait for writers).
Every test uses a real SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ringd.sdk import StoreError
from ringd.server import store as store_module
from ringd.server.store import SqliteStore
from support.sqlite import write_lock_held


async def test_operations_run_on_the_loop_connection(sqlite_store: SqliteStore) -> None:
    await sqlite_store.set_state("k", {"v": 1})
    assert await sqlite_store.get_state("k") == {"v": 1}
    assert await sqlite_store.incr("n", 2) == 2
    assert await sqlite_store.incr_many([("n", 3), ("m", 1)]) == [5, 1]
    assert await sqlite_store.delete("k")
    assert sqlite_store.thread_calls == 0
    assert sqlite_store.loop_calls == 5


async def test_a_held_write_lock_sends_writes_to_the_thread_and_the_loop_runs_on(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_state("before", "kept")
    with write_lock_held(tmp_path / "ringd.db") as release:
        incr = asyncio.create_task(sqlite_store.incr("hits", 1, ttl_s=60))
        many = asyncio.create_task(sqlite_store.incr_many([("a", 1), ("b", 2)], ttl_s=60))
        written = asyncio.create_task(sqlite_store.set_state("during", 1))
        await asyncio.sleep(0.1)
        # Had a call waited for the lock on the loop, it would have held the loop until the
        # lock was released (and the lock is only released below, by this coroutine).
        assert not incr.done()
        assert not many.done()
        assert not written.done()
        # Reads do not wait for a writer: answered on the loop while the lock is held.
        assert await sqlite_store.get_state("before") == "kept"
        release.set()
        assert await incr == 1
        assert await many == [1, 2]
        await written
    assert await sqlite_store.get_state("during") == 1
    assert sqlite_store.thread_calls >= 3  # the incr, the set, the first of incr_many (then freed)


async def test_writes_keep_counting_exactly_when_the_lock_comes_and_goes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first, second = await SqliteStore.open(path), await SqliteStore.open(path)
    try:

        async def count(store: SqliteStore) -> None:
            for _ in range(200):
                await store.incr_many([("requests", 1), ("tokens", 10)])
                await store.incr("single")

        with write_lock_held(path) as release:
            running = asyncio.gather(count(first), count(second))
            await asyncio.sleep(0.05)
            release.set()
            await running
        assert await first.get_state("requests") == 400
        assert await second.get_state("tokens") == 4000
        assert await first.get_state("single") == 400
    finally:
        await first.close()
        await second.close()


COUNT_IN_A_PROCESS = """
import asyncio, json, sys
from ringd.server.store import SqliteStore

async def main():
    store = await SqliteStore.open(sys.argv[1])
    try:
        seen = [await store.incr_many([("requests", 1), ("tokens", 10)], ttl_s=600) for _ in range(300)]
    finally:
        await store.close()
    print(json.dumps({"seen": seen, "loop": store.loop_calls, "thread": store.thread_calls}))

asyncio.run(main())
"""


def test_processes_sharing_the_file_each_get_exact_counts(tmp_path: Path) -> None:
    # As --workers processes counting one tenant: every new count of each counter is
    # given to one call only (a call whose write went to the thread adds one key after
    # the other, so its two counts may be from different moments).
    path = tmp_path / "shared.db"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", COUNT_IN_A_PROCESS, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    seen = [tuple(pair) for result in results for pair in result["seen"]]
    assert sorted(requests for requests, _ in seen) == list(range(1, 901))
    assert sorted(tokens for _, tokens in seen) == list(range(10, 9001, 10))
    assert sum(result["loop"] for result in results) > 0  # the loop's increments were among them


async def test_incr_many_on_a_non_integer_names_it_and_adds_the_others(
    sqlite_store: SqliteStore,
) -> None:
    await sqlite_store.set_state("b", "text")
    with pytest.raises(StoreError, match="'b'"):
        await sqlite_store.incr_many([("a", 1), ("b", 1), ("c", 1)])
    assert await sqlite_store.get_state("a") == 1
    assert await sqlite_store.get_state("b") == "text"
    assert await sqlite_store.get_state("c") == 1


async def test_incr_many_refusing_keys_names_the_first_and_writes_the_rest(
    sqlite_store: SqliteStore,
) -> None:
    await sqlite_store.incr("live", 5, ttl_s=60)
    await sqlite_store.set_state("expired text", "old", ttl_s=0.05)
    await sqlite_store.set_state("text", "t")
    await sqlite_store.set_state("real", 2.5)
    await asyncio.sleep(0.1)
    items = [("live", 1), ("real", 1), ("new", 3), ("text", 1), ("expired text", 4)]
    with pytest.raises(StoreError, match="key 'real'"):
        await sqlite_store.incr_many(items, ttl_s=60)
    assert sqlite_store.thread_calls == 0  # all in the loop's one statement
    values = [await sqlite_store.get_state(key) for key, _ in items]
    assert values == [6, 2.5, 3, "t", 4]
    # Without the refused keys the same call answers each new value.
    assert await sqlite_store.incr_many([("live", 1), ("new", 3), ("expired text", 4)]) == [7, 6, 8]


async def test_a_key_that_is_not_text_counts_as_the_text_sqlite_keeps(
    sqlite_store: SqliteStore,
) -> None:
    # A plugin without type checks counting under an int: SQLite keeps the key as text
    # ("7"), and every call still answers the new count.
    assert await sqlite_store.incr(7, 1) == 1  # type: ignore[arg-type]
    assert await sqlite_store.incr(7, 1) == 2  # type: ignore[arg-type]
    assert await sqlite_store.incr_many([(7, 1), ("other", 1)]) == [3, 1]  # type: ignore[list-item]
    assert await sqlite_store.get_state("7") == 3


async def test_incr_many_with_a_repeated_key_adds_both(sqlite_store: SqliteStore) -> None:
    assert await sqlite_store.incr_many([("a", 1), ("a", 2), ("b", 5)], ttl_s=60) == [1, 3, 5]


async def test_incr_many_restarts_expired_counters(sqlite_store: SqliteStore) -> None:
    await sqlite_store.incr_many([("a", 5), ("b", 5)], ttl_s=0.05)
    await sqlite_store.set_state("c", 7)
    await asyncio.sleep(0.1)
    # Expired keys start over at the amount with a fresh expiry; a live one adds.
    assert await sqlite_store.incr_many([("a", 1), ("b", -2), ("c", 1)], ttl_s=60) == [1, -2, 8]
    await asyncio.sleep(0.1)
    assert await sqlite_store.get_state("a") == 1  # the new expiry is 60 s, not 0.05 s


async def test_incr_many_rejects_a_non_integer_amount(sqlite_store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="integer"):
        await sqlite_store.incr_many([("a", 1), ("b", 1.5)])  # type: ignore[list-item]
    assert await sqlite_store.get_state("a") is None


async def test_large_values_are_written_by_the_thread(sqlite_store: SqliteStore) -> None:
    big = "x" * (store_module.FAST_VALUE_BYTES + 1)
    await sqlite_store.set_state("big", big)
    assert sqlite_store.thread_calls == 1
    assert await sqlite_store.get_state("big") == big


async def test_synchronous_full_writes_in_the_thread(tmp_path: Path) -> None:
    opened = await SqliteStore.open(tmp_path / "full.db", synchronous="FULL")
    try:
        assert await opened.incr("n") == 1
        await opened.set_state("k", 1)
        assert await opened.get_state("k") == 1  # reads never wait for the disk: on the loop
        assert opened.thread_calls == 2
        assert opened.loop_calls == 1
    finally:
        await opened.close()


async def test_without_the_loop_connection_everything_goes_to_the_thread(tmp_path: Path) -> None:
    opened = await SqliteStore.open(tmp_path / "thread.db", loop_connection=False)
    try:
        assert await opened.incr_many([("a", 1), ("a", 1)]) == [1, 2]
        await opened.set_state("k", 1)
        assert await opened.get_state("k") == 1
        assert opened.loop_calls == 0
    finally:
        await opened.close()


async def test_the_wal_is_checkpointed_and_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_WRITES", 100)
    monkeypatch.setattr(store_module, "WAL_RESTART_FRAMES", 100)
    path = tmp_path / "wal.db"
    opened = await SqliteStore.open(path)
    try:
        for round_ in range(1, 41):
            for index in range(100):
                await opened.set_state(f"k{round_}-{index}", "v" * 200)
            async with asyncio.timeout(30):  # the checkpoint runs in a thread: wait for it
                while opened.checkpoints < round_:
                    await asyncio.sleep(0.01)
        wal = path.with_name(path.name + "-wal").stat().st_size
        # 4,000 writes of a page or more each: 16 MB of WAL were it never started over.
        assert wal < 4_000_000, f"the WAL grew to {wal} bytes"
        assert await opened.get_state("k40-99") == "v" * 200
    finally:
        await opened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone()[0] == 4000


async def test_after_a_checkpoint_the_write_that_starts_the_wal_over_runs_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write after a whole-log checkpoint starts the WAL over, and SQLite syncs
    the new log's header then: that write goes to the thread, not the event loop."""
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_WRITES", 50)
    path = tmp_path / "restart.db"
    wal = path.with_name(path.name + "-wal")
    opened = await SqliteStore.open(path)

    def salts() -> bytes:
        return wal.read_bytes()[16:24]  # the WAL header's salts: new ones when the log starts over

    try:
        for index in range(50):
            await opened.set_state(f"k{index}", index)
        async with asyncio.timeout(30):
            while opened.checkpoints < 1:
                await asyncio.sleep(0.01)
        before, loop_calls, thread_calls = salts(), opened.loop_calls, opened.thread_calls
        await opened.set_state("first", 1)
        assert (opened.loop_calls, opened.thread_calls) == (loop_calls, thread_calls + 1)
        restarted = salts()
        assert restarted != before  # the thread's write started the log over
        await opened.set_state("second", 2)
        assert (opened.loop_calls, opened.thread_calls) == (loop_calls + 1, thread_calls + 1)
        assert salts() == restarted  # and the loop's next write did not
        assert await opened.get_state("first") == 1
        assert await opened.get_state("second") == 2
    finally:
        await opened.close()


async def test_incr_many_past_64_bits_names_the_key_and_adds_the_others(sqlite_store: SqliteStore) -> None:
    await sqlite_store.set_state("big", 2**63 - 1)
    with pytest.raises(StoreError, match=r"'big'.*out of range"):
        await sqlite_store.incr_many([("small", 1), ("big", 1)])
    assert await sqlite_store.get_state("big") == 2**63 - 1
    assert await sqlite_store.get_state("small") == 1


async def test_incr_past_64_bits_in_the_thread_is_refused_as_on_the_loop(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_state("big", 2**63 - 1)
    calls = sqlite_store.thread_calls
    with write_lock_held(tmp_path / "ringd.db") as release:
        refused = asyncio.create_task(sqlite_store.incr("big", 1))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(StoreError, match=r"'big'.*out of range"):
            await refused
    assert sqlite_store.thread_calls > calls  # the lock was held: RETURNING's statement ran it
    assert await sqlite_store.get_state("big") == 2**63 - 1


async def test_a_stored_integer_past_64_bits_is_refused_in_the_thread_and_in_incr_many(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    await sqlite_store.set_state("huge", 2**64)
    with pytest.raises(StoreError, match=r"'huge'.*not an integer"):
        await sqlite_store.incr_many([("small", 1), ("huge", -1)])
    calls = sqlite_store.thread_calls
    with write_lock_held(tmp_path / "ringd.db") as release:
        refused = asyncio.create_task(sqlite_store.incr("huge", -1))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(StoreError, match=r"'huge'.*not an integer"):
            await refused
    assert sqlite_store.thread_calls > calls  # the lock was held: RETURNING's statement ran it
    assert await sqlite_store.get_state("huge") == 2**64
    assert await sqlite_store.get_state("small") == 1
