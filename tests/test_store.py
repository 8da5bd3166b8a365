"""The SQLite store on a real file: atomic incr, persistence, TTLs, errors, WAL."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ringd.sdk import Store, StoreError
from ringd.server.store import SqliteStore, open_store


async def test_store_satisfies_the_sdk_protocol(store: SqliteStore) -> None:
    assert isinstance(store, Store)


async def test_missing_key_reads_as_default(store: SqliteStore) -> None:
    assert await store.get_state("nope") is None
    assert await store.get_state("nope", default={"d": 1}) == {"d": 1}


async def test_1000_concurrent_incr_add_up_exactly(store: SqliteStore) -> None:
    results = await asyncio.gather(*(store.incr("hits") for _ in range(1000)))
    assert await store.get_state("hits") == 1000
    # Each call saw its own new value: no two callers got the same count.
    assert sorted(results) == list(range(1, 1001))


async def test_concurrent_incr_from_two_connections_to_one_file(tmp_path) -> None:
    path = tmp_path / "shared.db"
    first, second = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        await asyncio.gather(*(store.incr("k", 2) for _ in range(200) for store in (first, second)))
        assert await first.get_state("k") == 800
        assert await second.get_state("k") == 800
    finally:
        await first.close()
        await second.close()


async def test_values_survive_closing_and_reopening(tmp_path) -> None:
    path = tmp_path / "persist.db"
    values = {
        "dict": {"a": 1, "nested": {"b": [1, 2, {"c": None}]}, "ok": True},
        "list": [1, "two", 3.5, False, None],
        "unicode": "héllo wörld ✓ 日本語 🚀",
        "int": 12345678901234,
        "float": 0.1,
        "null": None,
    }
    store = await SqliteStore.open(path)
    for key, value in values.items():
        await store.set_state(key, value)
    await store.incr("counter", 7)
    await store.close()

    reopened = await SqliteStore.open(path)
    try:
        for key, value in values.items():
            assert await reopened.get_state(key, default="absent") == value, key
        assert await reopened.incr("counter") == 8
    finally:
        await reopened.close()


async def test_set_state_overwrites(store: SqliteStore) -> None:
    await store.set_state("k", {"v": 1})
    await store.set_state("k", [2])
    assert await store.get_state("k") == [2]


async def test_set_state_ttl_expires(store: SqliteStore) -> None:
    await store.set_state("short", "v", ttl_s=0.3)
    await store.set_state("long", "v", ttl_s=60)
    assert await store.get_state("short") == "v"
    await asyncio.sleep(0.35)
    assert await store.get_state("short", default="gone") == "gone"
    assert await store.get_state("long") == "v"


async def test_set_state_without_ttl_clears_an_earlier_ttl(store: SqliteStore) -> None:
    await store.set_state("k", 1, ttl_s=0.05)
    await store.set_state("k", 2)
    await asyncio.sleep(0.08)
    assert await store.get_state("k") == 2


async def test_incr_on_expired_key_restarts_with_a_new_ttl(store: SqliteStore) -> None:
    assert await store.incr("window", ttl_s=0.3) == 1
    assert await store.incr("window", ttl_s=0.3) == 2
    await asyncio.sleep(0.35)
    assert await store.get_state("window") is None
    assert await store.incr("window", 5, ttl_s=0.3) == 5
    # The restarted key got a fresh TTL: it lives now and expires again later.
    assert await store.get_state("window") == 5
    await asyncio.sleep(0.35)
    assert await store.get_state("window") is None


async def test_incr_on_live_key_keeps_its_expiry(store: SqliteStore) -> None:
    assert await store.incr("fixed", ttl_s=0.4) == 1
    await asyncio.sleep(0.1)
    # A later ttl_s does not extend the window: the key still expires 0.4 s after creation.
    assert await store.incr("fixed", ttl_s=10) == 2
    await asyncio.sleep(0.35)
    assert await store.get_state("fixed") is None
    assert await store.incr("fixed") == 1


async def test_incr_on_a_non_integer_raises(store: SqliteStore) -> None:
    for key, value in {"s": "5", "f": 1.5, "d": {"n": 1}, "b": True, "l": [1]}.items():
        await store.set_state(key, value)
        with pytest.raises(StoreError, match="not an integer"):
            await store.incr(key)
        assert await store.get_state(key) == value, "a failed incr leaves the value alone"


async def test_incr_rejects_a_non_integer_amount(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        await store.incr("k", 1.5)  # type: ignore[arg-type]
    assert await store.get_state("k") is None


async def test_incr_negative_amount_and_existing_integer(store: SqliteStore) -> None:
    await store.set_state("n", 10)
    assert await store.incr("n", -3) == 7
    assert await store.get_state("n") == 7


async def test_incr_over_an_expired_non_integer_restarts(store: SqliteStore) -> None:
    await store.set_state("k", "text", ttl_s=0.05)
    await asyncio.sleep(0.08)
    assert await store.incr("k") == 1


async def test_delete(store: SqliteStore) -> None:
    await store.set_state("k", "v")
    assert await store.delete("k") is True
    assert await store.get_state("k") is None
    assert await store.delete("k") is False
    assert await store.delete("never") is False


async def test_delete_of_an_expired_key_reports_absent(store: SqliteStore) -> None:
    await store.set_state("k", "v", ttl_s=0.05)
    await asyncio.sleep(0.08)
    assert await store.delete("k") is False


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), {"x": b"bytes"}])
async def test_non_json_value_raises(store: SqliteStore, value: object) -> None:
    with pytest.raises(StoreError, match="JSON"):
        await store.set_state("bad", value)
    assert await store.get_state("bad", default="absent") == "absent"


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
async def test_invalid_ttl_raises(store: SqliteStore, ttl: float) -> None:
    with pytest.raises(StoreError, match="ttl_s"):
        await store.set_state("k", 1, ttl_s=ttl)


async def test_wal_mode_is_on(tmp_path) -> None:
    path = tmp_path / "wal.db"
    store = await SqliteStore.open(path)
    await store.set_state("k", 1)
    try:
        with sqlite3.connect(path) as conn:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        assert mode == "wal"
    finally:
        await store.close()


async def test_close_is_idempotent(tmp_path) -> None:
    store = await SqliteStore.open(tmp_path / "x.db")
    await store.close()
    await store.close()


async def test_open_store_resolves_relative_paths_against_base_dir(tmp_path) -> None:
    store = await open_store("sqlite:data/rel.db", base_dir=tmp_path)
    try:
        await store.set_state("k", "v")
    finally:
        await store.close()
    assert (tmp_path / "data" / "rel.db").exists()


async def test_a_second_process_sees_committed_writes(store: SqliteStore) -> None:
    await store.set_state("shared", {"from": "ringd"})
    await store.incr("count", 3)
    with sqlite3.connect(store.path) as conn:
        rows = dict(conn.execute("SELECT key, value FROM kv").fetchall())
    assert rows["shared"] == '{"from":"ringd"}'
    assert int(rows["count"]) == 3


async def test_expired_keys_are_purged_from_the_file(store: SqliteStore) -> None:
    await store.incr("window:1", 1, ttl_s=0.05)
    await store.set_state("session", {"a": 1}, ttl_s=0.05)
    await store.set_state("kept", 1)
    await asyncio.sleep(0.1)
    assert await store.purge_expired() == 2
    with sqlite3.connect(store.path) as db:
        keys = [row[0] for row in db.execute("SELECT key FROM kv")]
    assert keys == ["kept"]


async def test_the_purge_runs_by_itself(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SqliteStore, "PURGE_EVERY_S", 0.05)
    opened = await SqliteStore.open(tmp_path / "ringd.db")
    try:
        await opened.set_state("short", 1, ttl_s=0.01)

        def rows() -> int:
            with sqlite3.connect(opened.path) as db:
                return int(db.execute("SELECT count(*) FROM kv").fetchone()[0])

        # No call purges here: only the periodic task can empty the file. Polled, with a
        # bound far past its 50 ms period (a busy machine).
        async with asyncio.timeout(10):
            while rows():
                await asyncio.sleep(0.02)
    finally:
        await opened.close()


async def test_the_database_file_is_readable_by_its_owner_only(tmp_path) -> None:
    opened = await SqliteStore.open(tmp_path / "fresh" / "ringd.db")
    try:
        await opened.set_state("usage:acme", 1)
        assert (tmp_path / "fresh" / "ringd.db").stat().st_mode & 0o777 == 0o600
    finally:
        await opened.close()


async def test_existing_store_files_open_to_others_are_made_owner_only(tmp_path: Path, caplog) -> None:
    """A store (and its -wal/-shm) left at 0644 by an older ringd or a copy is brought to 0600."""
    import stat

    path = tmp_path / "ringd.db"
    other = sqlite3.connect(path)  # another process holding the store open: -wal and -shm exist
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x)")
    other.execute("INSERT INTO t VALUES (1)")
    other.commit()
    files = [path, tmp_path / "ringd.db-wal", tmp_path / "ringd.db-shm"]
    for file in files:
        file.chmod(0o644)
    try:
        store = await SqliteStore.open(path)
        await store.set_state("k", {"v": 1})
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        await store.close()
    finally:
        other.close()
    assert "was mode 0644; made it 0600" in caplog.text


async def test_aiosqlite_debug_records_never_carry_stored_values(tmp_path: Path, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    store = await SqliteStore.open(tmp_path / "ringd.db")
    try:
        await store.set_state("cache:1", {"answer": "write to ana@example.com"})
        assert await store.get_state("cache:1") == {"answer": "write to ana@example.com"}
    finally:
        await store.close()
    assert "ana@example.com" not in caplog.text


def test_a_store_open_to_others_that_cannot_be_changed_is_refused() -> None:
    """Run as another user (nobody) against a root-owned 0644 store: a clear error, no silent 0644."""
    import os
    import shutil
    import tempfile

    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) runs the store as another user"
    assert os.geteuid() == 0, "the test makes a file owned by root and opens it as nobody"
    # A folder of its own under /tmp (which anyone can reach), not under pytest's base
    # folder, whose modes other pytest sessions on the machine may change.
    with tempfile.TemporaryDirectory(prefix="ringd-shared-") as name:
        folder = Path(name)
        folder.chmod(0o777)
        _refused_as_nobody(setpriv, folder / "ringd.db")


def _refused_as_nobody(setpriv: str, store: Path) -> None:
    import subprocess
    import sys

    store.write_bytes(b"")
    store.chmod(0o644)
    script = (
        "import asyncio, sys\n"
        "from ringd.server.store import SqliteStore\n"
        "from ringd.sdk import StoreError\n"
        "try:\n"
        f"    asyncio.run(SqliteStore.open({str(store)!r}))\n"
        "except StoreError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    run = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3, run.stderr
    assert "is open to other users (mode 0644)" in run.stdout
    assert "chmod 600" in run.stdout
    assert str(store) in run.stdout


OPEN_AND_COUNT = """
import asyncio, sys
from ringd.server.store import SqliteStore

async def main():
    store = await SqliteStore.open(sys.argv[1])
    try:
        await store.incr("opened")
    finally:
        await store.close()

asyncio.run(main())
"""


def test_processes_opening_one_fresh_file_at_once_all_succeed(tmp_path) -> None:
    # As `--workers` and replicas do: every process switches the new file to WAL mode.
    path = tmp_path / "fresh.db"
    for _ in range(3):
        path.unlink(missing_ok=True)
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AND_COUNT, str(path)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        errors = [p.communicate(timeout=60)[1] for p in processes]
        assert [p.returncode for p in processes] == [0] * 6, errors
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("SELECT value FROM kv WHERE key = 'opened'").fetchone()[0] == "6"


async def test_a_file_that_is_not_a_database_is_a_store_error_naming_it(tmp_path) -> None:
    path = tmp_path / "ringd.db"
    path.write_bytes(b"not SQLite" * 1000)
    with pytest.raises(StoreError, match=f"cannot open SQLite store '{path}': file is not a database"):
        await SqliteStore.open(path)
