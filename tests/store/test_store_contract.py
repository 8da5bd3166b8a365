"""The store contract (ringd.sdk.Store), one suite run against SQLite and against Redis.

Every test takes the parametrized ``store`` (or ``backend``) fixture, so it runs
once per backend; a difference between the two is a failure of one of them.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from ringd.sdk import Store, StoreError
from ringd.server.store import SqliteStore, open_store
from ringd.server.store_redis import RedisStore

if TYPE_CHECKING:  # fixtures' types; pytest provides the objects
    from support.fixtures import Backend, Opened

# Short TTLs keep the suite fast; the sleeps leave a wide margin past them.
TTL_S = 0.15
PAST_TTL_S = 0.35


class _Colour(enum.Enum):
    """A plain enum: not JSON (json refuses it; orjson would write its value)."""

    RED = "red"


JSON_VALUES: dict[str, Any] = {
    "dict": {"a": 1, "nested": {"b": [1, 2, {"c": None}], "deeper": {"x": {"y": {"z": "end"}}}}},
    "list": [1, "two", 3.5, False, None, [], {}],
    "unicode": 'héllo wörld ✓ 日本語 🚀 \u0000 "quotes" \\ backslash',
    "unicode_keys": {"ключ": "значение", "🔑": ["✓"]},
    "int": 12345678901234,
    "negative": -42,
    "float": 0.1,
    "true": True,
    "false": False,
    "empty_string": "",
    "null": None,
    "big_int": 2**70,
}


async def test_store_satisfies_the_sdk_protocol(store: Opened) -> None:
    assert isinstance(store, Store)


async def test_get_set_delete(store: Opened) -> None:
    assert await store.get_state("k") is None
    assert await store.get_state("k", default={"d": 1}) == {"d": 1}
    await store.set_state("k", "first")
    assert await store.get_state("k") == "first"
    await store.set_state("k", {"second": 2})
    assert await store.get_state("k", default="unused") == {"second": 2}
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get_state("k", default="gone") == "gone"


async def test_a_stored_null_is_present_not_the_default(store: Opened) -> None:
    await store.set_state("nothing", None)
    assert await store.get_state("nothing", default="default") is None
    assert await store.delete("nothing") is True


@pytest.mark.parametrize("key", sorted(JSON_VALUES))
async def test_json_values_round_trip(store: Opened, key: str) -> None:
    await store.set_state(key, JSON_VALUES[key])
    assert await store.get_state(key, default="absent") == JSON_VALUES[key]


async def test_keys_are_independent_and_may_hold_any_text(store: Opened) -> None:
    keys = ["plugin:a", "plugin:b", "with space", "ünïcödé:🔑", "a" * 500]
    for index, key in enumerate(keys):
        await store.set_state(key, index)
    assert [await store.get_state(key) for key in keys] == list(range(len(keys)))


async def test_set_state_ttl_expires(store: Opened) -> None:
    await store.set_state("session", {"user": "u1"}, ttl_s=TTL_S)
    assert await store.get_state("session") == {"user": "u1"}
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("session", default="expired") == "expired"
    assert await store.delete("session") is False


async def test_set_state_without_ttl_makes_the_key_persistent(store: Opened) -> None:
    await store.set_state("k", 1, ttl_s=TTL_S)
    await store.set_state("k", 2)
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("k") == 2


async def test_set_state_with_a_new_ttl_replaces_the_old_one(store: Opened) -> None:
    await store.set_state("k", 1, ttl_s=TTL_S)
    await store.set_state("k", 2, ttl_s=60)
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("k") == 2


@pytest.mark.parametrize("ttl_s", [0, -1, math.nan, math.inf])
async def test_a_bad_ttl_raises_store_error(store: Opened, ttl_s: float) -> None:
    with pytest.raises(StoreError, match="ttl_s"):
        await store.set_state("k", 1, ttl_s=ttl_s)
    with pytest.raises(StoreError, match="ttl_s"):
        await store.incr("n", 1, ttl_s=ttl_s)
    assert await store.get_state("k", default="unset") == "unset"
    assert await store.get_state("n", default="unset") == "unset"


async def test_incr_counts_from_zero_and_returns_the_new_value(store: Opened) -> None:
    assert await store.incr("n") == 1
    assert await store.incr("n") == 2
    assert await store.incr("n", 10) == 12
    assert await store.incr("n", -15) == -3
    assert await store.get_state("n") == -3


async def test_incr_adds_to_an_integer_written_by_set_state(store: Opened) -> None:
    await store.set_state("n", 41)
    assert await store.incr("n") == 42
    await store.set_state("n", 7)
    assert await store.incr("n", 3) == 10


async def test_incr_ttl_expires_and_the_counter_restarts_from_zero(store: Opened) -> None:
    assert await store.incr("window", 1, ttl_s=TTL_S) == 1
    assert await store.incr("window", 1, ttl_s=TTL_S) == 2
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("window", default="expired") == "expired"
    assert await store.incr("window", 5, ttl_s=60) == 5
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("window") == 5  # the restarted counter got the new TTL


async def test_a_live_key_keeps_its_expiry(store: Opened) -> None:
    assert await store.incr("window", 1, ttl_s=TTL_S) == 1
    assert await store.incr("window", 1, ttl_s=3600) == 2  # does not push the expiry out
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("window", default="expired") == "expired"


async def test_a_live_key_without_expiry_gets_none_from_incr(store: Opened) -> None:
    assert await store.incr("forever") == 1
    assert await store.incr("forever", 1, ttl_s=TTL_S) == 2
    await asyncio.sleep(PAST_TTL_S)
    assert await store.get_state("forever") == 2


async def test_1000_concurrent_incr_add_up_exactly(store: Opened) -> None:
    results = await asyncio.gather(*(store.incr("hits", ttl_s=60) for _ in range(1000)))
    assert await store.get_state("hits") == 1000
    # Each call saw its own new value: no two callers got the same count.
    assert sorted(results) == list(range(1, 1001))


async def test_concurrent_incr_from_two_stores_on_the_same_data(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    await asyncio.gather(*(s.incr("k", 2) for _ in range(200) for s in (first, second)))
    assert await first.get_state("k") == 800
    assert await second.get_state("k") == 800


@pytest.mark.parametrize("value", ["text", 1.5, {"a": 1}, [1], True, None, "12"])
async def test_incr_on_a_non_integer_raises_store_error(store: Opened, value: Any) -> None:
    await store.set_state("k", value)
    with pytest.raises(StoreError, match=r"'k'.*not an integer"):
        await store.incr("k")
    assert await store.get_state("k", default="absent") == value  # left as it was


@pytest.mark.parametrize(("start", "amount"), [(2**63 - 1, 1), (-(2**63), -1), (2**62, 2**62)])
async def test_incr_past_64_bits_raises_store_error_and_keeps_the_count(
    store: Opened, start: int, amount: int
) -> None:
    await store.set_state("k", start)
    with pytest.raises(StoreError, match=r"'k'.*out of range"):
        await store.incr("k", amount)
    assert await store.get_state("k") == start  # left as it was, still counting
    assert await store.incr("k", -amount) == start - amount


@pytest.mark.parametrize(("stored", "amount"), [(2**64, -1), (2**63, -1), (-(2**63) - 1, 1), (10**30, 0)])
async def test_incr_of_a_stored_integer_past_64_bits_raises_store_error_and_keeps_it(
    store: Opened, stored: int, amount: int
) -> None:
    # set_state stores any JSON integer; SQLite's CAST read one past 64 bits as the nearest
    # bound, and counted on from there (2**64 - 1 answered 2**63 - 2). Redis refuses it.
    await store.set_state("k", stored)
    with pytest.raises(StoreError, match=r"'k'.*not an integer"):
        await store.incr("k", amount)
    assert await store.get_state("k") == stored


@pytest.mark.parametrize("amount", [1.5, "1", True, None])
async def test_incr_with_a_non_integer_amount_raises_store_error(store: Opened, amount: Any) -> None:
    with pytest.raises(StoreError, match="amount"):
        await store.incr("k", amount)
    assert await store.get_state("k", default="absent") == "absent"


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        math.nan,
        math.inf,
        {"nested": [b"bytes"]},
        {("tuple", "key"): 1},
        {"answer": {"scores": [0.5, -math.inf]}},
        {"when": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)},
        {"id": uuid.UUID(int=7)},
        {"colour": _Colour.RED},
    ],
    ids=["object", "set", "nan", "inf", "bytes", "tuple-key", "nested-infinity", "datetime", "uuid", "enum"],
)
async def test_a_non_json_value_raises_store_error(store: Opened, value: Any) -> None:
    with pytest.raises(StoreError, match=r"'k'.*JSON"):
        await store.set_state("k", value)
    assert await store.get_state("k", default="absent") == "absent"


async def test_values_survive_closing_and_reopening(backend: Backend) -> None:
    store = await backend.open()
    for key, value in JSON_VALUES.items():
        await store.set_state(key, value)
    await store.set_state("long_ttl", "still here", ttl_s=3600)
    await store.set_state("short_ttl", "gone", ttl_s=TTL_S)
    assert await store.incr("counter", 7, ttl_s=3600) == 7
    await store.close()

    reopened = await backend.open()
    for key, value in JSON_VALUES.items():
        assert await reopened.get_state(key, default="absent") == value, key
    assert await reopened.get_state("long_ttl") == "still here"
    assert await reopened.incr("counter") == 8
    await asyncio.sleep(PAST_TTL_S)
    assert await reopened.get_state("short_ttl", default="expired") == "expired"


# ---------------------------------------------------------------- opening by URL


async def test_open_store_keeps_sqlite_the_default(tmp_path: Path) -> None:
    store = await open_store("ringd.db", base_dir=tmp_path)
    try:
        assert isinstance(store, SqliteStore)
        assert Path(store.path) == tmp_path / "ringd.db"
    finally:
        await store.close()


async def test_open_store_opens_redis_urls(redis_url: str) -> None:
    store = await open_store(redis_url, base_dir=Path("/nonexistent"))
    try:
        assert isinstance(store, RedisStore)
        await store.set_state("k", [1, 2])
        assert await store.get_state("k") == [1, 2]
    finally:
        await store.close()


async def test_redis_keys_carry_the_prefix(redis_url: str) -> None:
    default = await RedisStore.open(redis_url)
    team_a = await open_store(f"{redis_url}?key_prefix=team-a:")
    team_b = await RedisStore.open(redis_url, key_prefix="team-b:")
    try:
        assert default.key_prefix == "ringd:"
        await default.set_state("k", "default")
        await team_a.set_state("k", "a")
        await team_b.incr("k", 5)
        assert [await s.get_state("k") for s in (default, team_a, team_b)] == ["default", "a", 5]
        raw = default._client
        assert sorted(await raw.keys("*")) == ["ringd:k", "team-a:k", "team-b:k"]
        assert await raw.get("ringd:k") == '"default"'  # JSON text, readable with redis-cli
    finally:
        for store in (default, team_a, team_b):
            await store.close()


async def test_a_bad_redis_url_fails_at_open_naming_the_url() -> None:
    with pytest.raises(StoreError, match=r"redis://127\.0\.0\.1:1/0"):
        await open_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match=r"invalid redis store URL.*notaport"):
        await open_store("redis://127.0.0.1:notaport/0")


async def test_a_redis_password_is_not_shown_in_errors() -> None:
    with pytest.raises(StoreError) as failure:
        await open_store("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in str(failure.value)
    assert "redis://user:***@127.0.0.1:1/0" in str(failure.value)
