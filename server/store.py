"""The plugin store: ``ctx.state.extra["store"]``. SQLite (WAL) by default, Redis for replicas.

Both backends keep the semantics of :class:`ringd.sdk.Store`: JSON values, an
atomic ``incr`` with a TTL that is set when the key is created, and expired keys
that read as absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiosqlite
from ringd.sdk import StoreError

_log = logging.getLogger("ringd.store")

if TYPE_CHECKING:  # store_redis imports this module's helpers, so import it lazily at run time
    from ringd.server.store_redis import RedisStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
) WITHOUT ROWID
"""


class CountFailures:
    """``with counter:`` counts an exception leaving the block under its operation name.

    Each store keeps one per operation, all sharing the store's ``errors`` dict (read by
    the metrics endpoint); the exception goes on unchanged. A cancellation is not a
    failure of the store and is not counted.
    """

    __slots__ = ("counts", "operation")

    def __init__(self, counts: dict[str, int], operation: str) -> None:
        self.counts = counts
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, Exception):
            self.counts[self.operation] = self.counts.get(self.operation, 0) + 1


def failure_counters(errors: dict[str, int]) -> dict[str, CountFailures]:
    """One :class:`CountFailures` per store operation, counting into ``errors``."""
    return {op: CountFailures(errors, op) for op in ("get", "set", "delete", "incr", "purge")}


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
"""``json.dumps(value, allow_nan=False, separators=(",", ":"))`` without making an encoder
per call (~1 us of a 2 KB answer's ~5 us)."""


def _encode(key: str, value: Any) -> str:
    """Compact JSON text of ``value``: JSON types only, no NaN or infinity (the SDK's rules).

    ``json``, not orjson: orjson also encodes UUIDs, enums and more, and writes NaN as
    ``null``, so the store would accept values the contract refuses.
    """
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value for key {key!r} is not JSON-serialisable: {exc}") from exc


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _amount(amount: Any) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise StoreError(f"incr amount must be an integer, got {amount!r}")
    if not _INT64_MIN <= amount <= _INT64_MAX:  # SQLite cannot bind it (OverflowError)
        raise StoreError(f"incr amount must fit in a 64-bit signed integer, got {amount!r}")
    return amount


def _not_an_integer(key: Any) -> str:
    """The error of an increment the store refused (the words of the Redis store's)."""
    return f"cannot incr key {key!r}: its value is not an integer (or the sum is out of range)"


def _queueable_key(key: str) -> str:
    """``key``, checked to be one SQLite can bind: a queued write SQLite refuses to bind
    would fail every flush (and with it every write queued with it), so it is refused
    when queued, as the direct write refuses it when made."""
    if isinstance(key, str):
        try:
            key.encode()
        except UnicodeEncodeError as exc:
            raise StoreError(f"key {key!r} is not valid UTF-8 text: {exc}") from exc
    return key


def _expiry(ttl_s: float | None) -> float | None:
    if ttl_s is None:
        return None
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise StoreError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return time.time() + ttl_s


class _NoStatementDebug(logging.Filter):
    """Drops aiosqlite's DEBUG records: they quote every statement with its parameters,
    which hold cached answers, tenants and key records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def quiet_aiosqlite() -> None:
    """Keep request content out of the log: aiosqlite logs each call's arguments at DEBUG.

    Idempotent; applied where a store is opened, so ``--log-level DEBUG`` and a
    host application's own DEBUG logging both stay free of stored values.
    """
    logger = logging.getLogger("aiosqlite")
    if not any(isinstance(existing, _NoStatementDebug) for existing in logger.filters):
        logger.addFilter(_NoStatementDebug())


def make_owner_only(path: Path, what: str) -> None:
    """Bring an existing file to mode 0600 (owner read/write only).

    Raises:
        StoreError: it is open to other users and its mode cannot be changed (another
            owner, a read-only file system); the message names the file and the fix.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StoreError(
            f"{what} {str(path)!r} is open to other users (mode {mode:04o}) and ringd cannot make it "
            f"owner-only ({exc.strerror}); run `chmod 600` on it (and its -wal/-shm files) as its owner"
        ) from exc
    _log.warning("%s %s was mode %04o; made it 0600 (owner only)", what, path, mode)


BUSY_TIMEOUT_S = 30.0
"""How long a statement waits for another connection's (or process's) lock."""

FAST_VALUE_BYTES = 64 * 1024
"""Values up to this size (encoded) are written on the event loop; larger ones in the thread."""

CHECKPOINT_EVERY_WRITES = 1000
"""Writes on the event loop between two WAL checkpoints (run in a thread, never on the loop)."""

WAL_RESTART_FRAMES = 4096
"""A WAL this long (16 MiB in 4 KiB pages) is checkpointed in RESTART mode, so it starts over."""

CHECKPOINT_BUSY_S = 0.2
"""How long a RESTART checkpoint waits for other connections' locks before it gives up."""

WRITE_BEHIND_S = 0.05
"""How long :meth:`SqliteStore.incr_later` and :meth:`SqliteStore.set_later` writes wait
to be committed together (one transaction for all the writes queued meanwhile)."""

FLUSH_STATEMENTS_MAX = 128
"""Statements of a flush committed in one transaction (a larger queue takes several)."""

FLUSH_BYTES_MAX = 256 * 1024
"""Encoded values a transaction of a flush writes at most (past the first statement), so
one transaction on the loop stays short when the queue holds large cached answers."""

QUEUED_MAX = 10_000
"""Keys queued at most; past it (commits failing for a while) writes go at once."""

FLUSH_RETRY_S = 1.0
"""How long after a failed flush of queued writes the next one retries them."""

_GET = "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_SET = (
    "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_DELETE = "DELETE FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
_DELETE_RETURNING = f"{_DELETE} RETURNING 1"  # on the loop's connection: rows, not a rowcount
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_INCR_ROWS_MAX = 16


class _Queued:
    """A write queued by ``incr_later`` (``value`` the amount to add) or ``set_later``
    (``value`` the encoded JSON); ``expires_at`` of the key it creates or sets."""

    __slots__ = ("expires_at", "is_incr", "value")

    def __init__(self, is_incr: bool, value: Any, expires_at: float | None) -> None:
        self.is_incr = is_incr
        self.value = value
        self.expires_at = expires_at


class _Statement(NamedTuple):
    """One statement of a flush: it writes ``keys``; an increment's RETURNING names the
    keys it changed (one whose value is not an integer is missing)."""

    sql: str
    params: list[Any]
    keys: list[str]
    is_incr: bool


def _queued_statements(batch: dict[str, _Queued], now: float) -> list[_Statement]:
    """The statements writing ``batch``: each ``set_later`` one, the increments with one
    expiry in statements of up to :data:`_INCR_ROWS_MAX` keys."""
    statements: list[_Statement] = []
    increments: dict[float | None, list[tuple[str, int]]] = {}
    for key, queued in batch.items():
        if queued.is_incr:
            increments.setdefault(queued.expires_at, []).append((key, queued.value))
        else:
            statements.append(_Statement(_SET, [key, queued.value, queued.expires_at], [key], False))
    for expires_at, items in increments.items():
        for start in range(0, len(items), _INCR_ROWS_MAX):
            chunk = items[start : start + _INCR_ROWS_MAX]
            params: list[Any] = [expires_at, now]
            for key, amount in chunk:
                params += (key, amount)
            statements.append(_Statement(_incr_rows(len(chunk)), params, [key for key, _ in chunk], True))
    return statements


def _transaction_size(statements: list[_Statement]) -> int:
    """How many of ``statements`` (one at least) go into the next transaction of a flush:
    up to :data:`FLUSH_STATEMENTS_MAX`, while their values stay within :data:`FLUSH_BYTES_MAX`."""
    size = 0
    for count, statement in enumerate(statements[:FLUSH_STATEMENTS_MAX]):
        if not statement.is_incr:  # a set_later statement: its value is the second parameter
            size += len(statement.params[1])
            if size > FLUSH_BYTES_MAX and count:
                return count
    return min(len(statements), FLUSH_STATEMENTS_MAX)


@functools.lru_cache(maxsize=_INCR_ROWS_MAX)
def _incr_rows(count: int) -> str:
    """The increment of ``count`` distinct keys in one statement (``incr`` is ``count=1``).

    One statement, so it is atomic for every connection and process sharing the file:
    a missing or expired key starts at its amount with a fresh expiry; a live integer
    grows and keeps its expiry; anything else updates no row and is absent from what
    RETURNING gives, ``(key, value)`` rows. Parameters: ``?1`` the expiry of new keys,
    ``?2`` now, then each key and amount.
    """
    return _incr_statement(count, "{}", "") + "RETURNING key, CAST(value AS INTEGER)\n"


_SEEN_FUNCTION = "ringd_incr_seen"
"""The SQL function :func:`_incr_rows_seen` calls with each live key it adds to and its
new value; the loop's connection has it (:func:`_seen_recorder`, registered when the
store is made)."""

_REFUSED_FUNCTION = "ringd_incr_refused"
"""The SQL function :func:`_incr_rows_seen` calls with each live key it leaves as it is
(its value is not an integer); registered with :data:`_SEEN_FUNCTION`
(:func:`_refusal_recorder`)."""

_REFUSED: Final = object()
"""What :data:`_REFUSED_FUNCTION` notes for a key, in place of a new value."""


@functools.lru_cache(maxsize=_INCR_ROWS_MAX)
def _incr_rows_seen(count: int) -> str:
    """:func:`_incr_rows` without RETURNING, for the loop's connection: a live key's new
    value goes through :data:`_SEEN_FUNCTION` (its key, the value), a live key holding
    something else than an integer (or whose sum would pass 64 bits) through
    :data:`_REFUSED_FUNCTION` (the last term of the DO UPDATE's WHERE: SQLite evaluates
    an OR's terms in order, stopping at the first true, and the SET only for the rows the
    WHERE keeps), and a key neither names was new or expired: its value is its amount.
    All noted while the statement holds the write lock, so what is noted is what was
    written, whatever other processes do after.

    The same statement, as atomic. RETURNING's result table, opened and filled on every
    call, was ~8 us of the statement's ~40 in the plugins bench; a call of the function
    costs ~1 us.
    """
    return _incr_statement(count, _SEEN_FUNCTION + "(kv.key, {})", f"\n       OR {_REFUSED_FUNCTION}(kv.key)")


def _incr_statement(count: int, value: str, refused: str) -> str:
    """The upsert of :func:`_incr_rows`, its live integer's sum written as ``value``
    (``{}`` standing for the sum), ``refused`` after its DO UPDATE's WHERE, no RETURNING."""
    rows = ", ".join(f"(?{3 + 2 * index}, ?{4 + 2 * index}, ?1)" for index in range(count))
    # A live value is a count when it is the text of a 64-bit integer: CAST reads a longer
    # one (another process, or set_state, stored it) as the nearest bound, which the sum
    # would then start from. SQLite turns a sum past 64 bits into a float. Either row is
    # refused, as Redis's INCRBY refuses it.
    a_count = "CAST(CAST(kv.value AS INTEGER) AS TEXT) = kv.value"
    total = "CAST(kv.value AS INTEGER) + CAST(excluded.value AS INTEGER)"
    added = value.format(total)
    # Only numbered placeholders and this module's constants are formatted in; keys and
    # amounts are bound.
    return f"""
INSERT INTO kv (key, value, expires_at) VALUES {rows}
ON CONFLICT (key) DO UPDATE SET
    value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?2
                 THEN excluded.value
                 ELSE {added} END,
    expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?2
                      THEN excluded.expires_at
                      ELSE kv.expires_at END
    WHERE (kv.expires_at IS NOT NULL AND kv.expires_at <= ?2)
       OR ({a_count} AND typeof({total}) = 'integer'){refused}
"""  # noqa: S608


def _seen_recorder(seen: dict[str, Any]) -> Callable[[str, Any], Any]:
    """The Python side of :data:`_SEEN_FUNCTION`: notes ``key``'s new ``value`` in ``seen``
    and gives the value back (the value written)."""

    def note(key: str, value: Any) -> Any:
        seen[key] = value
        return value

    return note


def _refusal_recorder(seen: dict[str, Any]) -> Callable[[str], int]:
    """The Python side of :data:`_REFUSED_FUNCTION`: notes ``key`` in ``seen`` as refused
    (:data:`_REFUSED`) and answers 0 (false: the row is left as it is)."""

    def note(key: str) -> int:
        seen[key] = _REFUSED
        return 0

    return note


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused for a lock another connection holds (SQLITE_BUSY or _LOCKED,
    extended codes included): the statement did nothing, and the thread may retry it."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


def _open_loop_connection(target: str, synchronous: str) -> sqlite3.Connection:
    """The connection used on the event loop: it never waits for a lock, never checkpoints.

    ``busy_timeout=0``: a lock held by another connection answers SQLITE_BUSY at once
    (the call then goes to the thread). ``wal_autocheckpoint=0``: a commit here never
    copies the WAL back into the database; :class:`SqliteStore` runs checkpoints in
    its thread instead. Used on the loop thread only (made in a worker thread, hence
    ``check_same_thread=False``).
    """
    conn = sqlite3.connect(target, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


async def _enter_wal(conn: aiosqlite.Connection) -> None:
    """Switch the file to WAL mode (a no-op when it is already), riding out other openers.

    Processes opening one fresh file at once (``--workers``, replicas) all change its
    journal mode. SQLite answers SQLITE_BUSY at once, without the busy handler, to
    a connection that would otherwise deadlock with another one upgrading its lock,
    so "database is locked" is retried here until the busy timeout has passed.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


def _prepare_file(path: Path) -> None:
    """Create the database file's folder, and the file owner-only: plugins keep tenants'
    data in it (usage, cached answers, key records). An existing file and its -wal and
    -shm files are brought to 0600 (SQLite gives new -wal/-shm files the database's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.touch(mode=0o600, exist_ok=True)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        make_owner_only(file, "SQLite store file")


def _checkpoint_file(target: str) -> None:
    """Copy the WAL back into the database, on a connection of its own (in a worker thread).

    PASSIVE first: it waits for nothing and blocks nobody. Writes on the event loop go
    on meanwhile, so under steady traffic the WAL is never wholly copied at the moment
    a write starts, which is when SQLite starts the log over; once it is
    :data:`WAL_RESTART_FRAMES` long, a RESTART checkpoint holds the write lock while it
    copies the rest (writes meanwhile get SQLITE_BUSY and go to the store's thread) and
    the next write starts the log from the beginning.
    """
    conn = sqlite3.connect(target, timeout=CHECKPOINT_BUSY_S, isolation_level=None)
    try:
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= WAL_RESTART_FRAMES:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        conn.close()


class SqliteStore:
    """The default store: one SQLite file in WAL mode, shared by worker processes.

    Open it once with :meth:`open` and :meth:`close` it on shutdown. Every write
    commits before it returns, so an acknowledged write survives the process
    being killed; except :meth:`incr_later` and :meth:`set_later`, which queue their
    writes and commit them together a moment later (within :data:`WRITE_BEHIND_S`;
    :meth:`close` writes the queue).

    Two connections to the file: short operations (every read, and writes of values up
    to :data:`FAST_VALUE_BYTES` when ``synchronous`` is OFF or NORMAL, so a commit does
    not wait for the disk; the write that starts the WAL over after one of this store's
    checkpoints, which syncs the new log's header, goes to the thread) run directly on
    the event loop, a few microseconds of C each,
    on a connection that never waits for a lock (``busy_timeout=0``) and never
    checkpoints. When another connection or process holds the lock it needs, SQLite
    answers SQLITE_BUSY at once, nothing was done, and the call goes to aiosqlite's
    worker thread, whose connection waits for locks up to :data:`BUSY_TIMEOUT_S`.
    Large values, ``synchronous`` FULL or EXTRA and the purge run in that thread, the
    WAL checkpoints (every :data:`CHECKPOINT_EVERY_WRITES` writes on the loop, see
    :func:`_checkpoint_file`) in another one.
    """

    PURGE_EVERY_S = 60.0
    """How often keys past their TTL are deleted (they read as absent before that)."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: str,
        loop_conn: sqlite3.Connection | None = None,
        *,
        loop_writes: bool = False,
    ) -> None:
        self._conn = conn
        self.path = path
        self._loop_conn = loop_conn
        self._loop_writes = loop_conn is not None and loop_writes
        self._unchecked_writes = 0
        self._checkpointer: asyncio.Task[None] | None = None
        self._restart_pending = False
        """A checkpoint ended: writes go to the thread until one has started the WAL over there
        (SQLite syncs the new log's header then, which the event loop must not wait for)."""
        self.loop_calls = 0
        """Operations done on the event loop's connection."""
        self.thread_calls = 0
        """Operations sent to the worker thread (a busy lock, a large value, no loop connection)."""
        self.checkpoints = 0
        """WAL checkpoints run for the loop's writes (finished or failed)."""
        self._purger: asyncio.Task[None] | None = None
        self._queued: dict[str, _Queued] = {}
        """Writes of ``incr_later``/``set_later`` not yet handed to a flush, by key."""
        self._flushing: dict[str, _Queued] = {}
        """The writes the running flush is committing (a read of one of them waits for it)."""
        self._flusher: asyncio.Task[bool] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._batches = 0
        """Queues handed to a flush so far (each becomes one batch)."""
        self.flushes = 0
        """Flushes of queued writes that committed: each commits one batch, in order, so
        this is also the number of the last batch committed."""
        self.flushed_writes = 0
        """Queued writes those flushes committed."""
        self.flush_s = 0.0
        """Time those flushes took (on the loop, or waiting for the thread), in seconds."""
        self.errors: dict[str, int] = {}
        """Failures the store raised, by operation (get, set, delete, incr, purge), and failed
        commits of queued writes (``flush``; retried, see :meth:`flush`)."""
        self._counted = failure_counters(self.errors)
        self._seen: dict[str, Any] = {}
        """The live keys the last increment on the loop's connection added to, with their new
        values, and those it refused, with :data:`_REFUSED` (see :func:`_incr_rows_seen`)."""
        if loop_conn is not None:
            loop_conn.create_function(_SEEN_FUNCTION, 2, _seen_recorder(self._seen))
            loop_conn.create_function(_REFUSED_FUNCTION, 1, _refusal_recorder(self._seen))

    @classmethod
    async def open(
        cls, path: str | Path, *, synchronous: str = "NORMAL", loop_connection: bool = True
    ) -> SqliteStore:
        """Open (creating if needed) the database at ``path``.

        ``loop_connection=False`` sends every operation to the worker thread (the
        event-loop connection is never made; ``:memory:`` never has one either: each
        connection to it is a database of its own).
        """
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise StoreError(f"store synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        quiet_aiosqlite()
        target = str(path)
        if target != ":memory:":
            await asyncio.to_thread(_prepare_file, Path(target))
        try:
            conn = await aiosqlite.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except Exception as exc:  # any open failure is reported as the store's, naming the file
            raise StoreError(f"cannot open SQLite store {target!r}: {exc}") from exc
        try:
            # The busy timeout first: every later statement waits for other processes' locks.
            await conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            await _enter_wal(conn)
            await conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            await conn.execute(_SCHEMA)
        except Exception as exc:  # not a database, locked for too long, read-only ...: the store's error
            # aiosqlite's connection thread is not a daemon: left open, it would keep the
            # process alive after the error (a worker that never exits).
            await conn.close()
            raise StoreError(f"cannot open SQLite store {target!r}: {exc}") from exc
        loop_conn = None
        if loop_connection and target != ":memory:":
            try:
                loop_conn = await asyncio.to_thread(_open_loop_connection, target, synchronous.upper())
            except Exception as exc:  # as the thread's connection: the store's error, naming the file
                await conn.close()
                raise StoreError(f"cannot open SQLite store {target!r}: {exc}") from exc
        store = cls(conn, target, loop_conn, loop_writes=synchronous.upper() in {"OFF", "NORMAL"})
        await store.purge_expired()
        store._purger = asyncio.create_task(store._purge_periodically(), name="ringd-store-purge")
        return store

    async def purge_expired(self) -> int:
        """Delete the keys whose TTL has passed (per-window counters pile up otherwise)."""
        with self._counted["purge"]:
            cursor = await self._conn.execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (time.time(),)
            )
            return cursor.rowcount

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.PURGE_EVERY_S)
            try:
                await self.purge_expired()
            except Exception as exc:  # a failed purge only delays the clean-up: log and retry later
                _log.warning("SQLite store %s: purging expired keys failed: %s", self.path, exc)

    def _count_write(self, writes: int = 1) -> None:
        """Count writes (on the loop's connection, or the thread's); every so many, checkpoint."""
        self._unchecked_writes += writes
        if self._unchecked_writes >= CHECKPOINT_EVERY_WRITES and self._checkpointer is None:
            self._unchecked_writes = 0
            self._checkpointer = asyncio.create_task(self._checkpoint(), name="ringd-store-checkpoint")

    def _wrote_in_thread(self) -> None:
        """Count a write done in the thread; the first after a checkpoint started the WAL over."""
        self._restart_pending = False
        if self._loop_writes:  # otherwise the thread's connection checkpoints by itself
            self._count_write()

    async def _checkpoint(self) -> None:
        try:
            await asyncio.to_thread(_checkpoint_file, self.path)
            self._restart_pending = True
        except Exception as exc:  # a missed checkpoint only lets the WAL grow until the next one
            _log.warning("SQLite store %s: WAL checkpoint failed: %s", self.path, exc)
        finally:
            self._checkpointer = None
            self.checkpoints += 1

    async def close(self) -> None:
        """Write the queued writes, stop the purge and close the connections (idempotent)."""
        flushed = await self.flush()
        while flushed and self._queued:  # queued by other tasks while that flush was running
            flushed = await self.flush()
        self._loop_writes = False  # no more writes on the loop, so no new checkpoint or flush starts
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not flushed:
            _log.error(
                "SQLite store %s: %d queued writes could not be written and are lost",
                self.path,
                len(self._queued) + len(self._flushing),
            )
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        while self._checkpointer is not None:
            with contextlib.suppress(Exception):
                await self._checkpointer
        loop_conn, self._loop_conn = self._loop_conn, None
        if loop_conn is not None:
            await asyncio.to_thread(loop_conn.close)
        await self._conn.close()

    def _on_loop(self, sql: str, params: Any, *, write: bool = True) -> list[Any] | None:
        """One statement on the event loop's connection, in autocommit; its rows.

        None when it cannot run there (the connection is off, writes go to the thread,
        or another connection holds the lock: with ``busy_timeout=0`` SQLITE_BUSY comes
        at once and the statement changed nothing): the caller then uses the thread.
        ``fetchall`` finishes the statement in one step: a statement left open between
        calls would hold a transaction (and its snapshot) open.
        """
        loop_conn = self._loop_conn
        if loop_conn is None or (write and (self._restart_pending or not self._loop_writes)):
            return None
        try:
            rows: list[Any] = loop_conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return None
        self.loop_calls += 1
        if write:
            self._count_write()
        return rows

    async def get_state(self, key: str, default: Any = None) -> Any:
        if key in self._queued or key in self._flushing:
            await self._settle("get")
        with self._counted["get"]:
            params = (key, time.time())
            rows: Any = self._on_loop(_GET, params, write=False)
            if rows is not None:
                return default if not rows else json.loads(rows[0][0])
            self.thread_calls += 1
            # execute_fetchall finishes the statement in one step: a statement left open
            # between calls would hold SQLite's implicit transaction open, and other
            # rings' acknowledged writes would join it uncommitted.
            rows = await self._conn.execute_fetchall(_GET, params)
            return default if not rows else json.loads(next(iter(rows))[0])

    async def set_state(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        if key in self._queued or key in self._flushing:
            await self._settle("set")
        with self._counted["set"]:
            params = (key, _encode(key, value), _expiry(ttl_s))
            if len(params[1]) <= FAST_VALUE_BYTES and self._on_loop(_SET, params) is not None:
                return
            self.thread_calls += 1
            await self._conn.execute(_SET, params)
            self._wrote_in_thread()

    async def delete(self, key: str) -> bool:
        if key in self._queued or key in self._flushing:
            await self._settle("delete")
        with self._counted["delete"]:
            params = (key, time.time())
            rows = self._on_loop(_DELETE_RETURNING, params)
            if rows is not None:
                return bool(rows)
            self.thread_calls += 1
            cursor = await self._conn.execute(_DELETE, params)
            self._wrote_in_thread()
            return cursor.rowcount > 0

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        if key in self._queued or key in self._flushing:
            await self._settle("incr")
        with self._counted["incr"]:
            params = (_expiry(ttl_s), time.time(), key, _amount(amount))
            # A key of another type is kept as text, which _incr_on_loop would not find
            # its noted sum under: RETURNING's statement, in the thread.
            values = self._incr_on_loop(params, 1) if type(key) is str else None
            if values is not None:
                return values[0]
            self.thread_calls += 1
            rows = await self._conn.execute_fetchall(_incr_rows(1), params)
            self._wrote_in_thread()
            row = next(iter(rows), None)
            if row is None:
                raise StoreError(_not_an_integer(key))
            return int(row[1])

    async def incr_many(self, items: Sequence[tuple[str, int]], ttl_s: float | None = None) -> list[int]:
        """``incr`` of each ``(key, amount)`` with one ``ttl_s``; the new values, in order.

        Not part of :class:`ringd.sdk.Store` (the built-in plugins use it when a store has
        it). On the event loop's connection, distinct keys are one statement: one lock,
        one commit instead of one each, atomic as a whole. Otherwise (the lock is busy,
        writes go to the thread, a key repeats) one ``incr`` after another. Either way a
        key whose value is not an integer raises :class:`StoreError` naming it; on the
        loop the other keys were added.
        """
        keys = [key for key, _ in items]
        if (self._queued or self._flushing) and not (
            self._queued.keys().isdisjoint(keys) and self._flushing.keys().isdisjoint(keys)
        ):
            await self._settle("incr")
        if 1 < len(keys) <= _INCR_ROWS_MAX and len(set(keys)) == len(keys):
            with self._counted["incr"]:
                params: list[Any] = [_expiry(ttl_s), time.time()]
                for key, amount in items:
                    if type(key) is not str:  # kept as text: one incr after another (see incr)
                        break
                    # _amount's check, without its call when the amount is a plain int in range
                    plain = type(amount) is int and _INT64_MIN <= amount <= _INT64_MAX
                    params += (key, amount if plain else _amount(amount))
                else:
                    values = self._incr_on_loop(params, len(keys))
                    if values is not None:
                        return values
        return [await self.incr(key, amount, ttl_s) for key, amount in items]

    def _incr_on_loop(self, params: Sequence[Any], count: int) -> list[int] | None:
        """The increment of ``count`` distinct keys (``params`` as :func:`_incr_rows` takes
        them) on the loop's connection, in autocommit; the new values, in order. None when
        it cannot run there (see :meth:`_on_loop`): nothing was written.

        The keys are ``str``: the functions note the key SQLite stored, which for a key of
        another type (an int) is its text. A key :data:`_SEEN_FUNCTION` noted was a live
        integer (its value: the sum), one :data:`_REFUSED_FUNCTION` noted holds something
        else than an integer (not written), any other was written with its amount (new
        or expired).

        Raises:
            StoreError: a key's value is not an integer (the other keys were added).
        """
        seen = self._seen
        seen.clear()
        if self._on_loop(_incr_rows_seen(count), params) is None:
            return None
        values: list[int] = list(params[3::2])  # a new or expired key's value: its amount
        if seen:
            for index, key in enumerate(params[2::2]):
                value = seen.get(key)
                if value is None:  # new or expired
                    continue
                if value is _REFUSED:
                    raise StoreError(_not_an_integer(key))
                values[index] = value  # a live key: its sum
        return values

    # Write-behind: writes committed together, a moment later.

    async def incr_later(self, items: Sequence[tuple[str, int]], ttl_s: float | None = None) -> None:
        """Queue ``incr`` of each ``(key, amount)``: committed within :data:`WRITE_BEHIND_S`,
        with every other write queued meanwhile, in one transaction.

        Not part of :class:`ringd.sdk.Store`; for counters nobody needs the new value of
        at once (``usage_accounting``). This process sees the sums at once: any operation
        on a queued key writes the queue first. Other processes sharing the file see them
        once committed. :meth:`close` (shutdown; a reload keeps the store) writes the
        queue; a process killed outright loses what it queued in the last
        :data:`WRITE_BEHIND_S`. The expiry of a key the write creates counts from the first
        queued ``incr``. A key whose stored value is not an integer is not changed (the
        write is dropped, logged and counted as an ``incr`` error). Without writes on the
        loop (``synchronous`` FULL or EXTRA, no loop connection), or with
        :data:`QUEUED_MAX` keys queued (commits failing), it is :meth:`incr_many`.

        Raises:
            StoreError: an amount is not an integer (nothing is queued).
        """
        if not self._loop_writes or len(self._queued) >= QUEUED_MAX:
            await self.incr_many(items, ttl_s)
            return
        with self._counted["incr"]:
            amounts = [(_queueable_key(key), _amount(amount)) for key, amount in items]
            expires_at = _expiry(ttl_s)
        for key, amount in amounts:
            while True:
                queued = self._queued.get(key)
                if queued is None:
                    self._queued[key] = _Queued(True, amount, expires_at)
                    break
                if (
                    queued.is_incr
                    and (queued.expires_at is None) == (expires_at is None)
                    and _INT64_MIN <= queued.value + amount <= _INT64_MAX
                ):
                    queued.value += amount
                    break
                # A queued set_state, a TTL where the queued one has none (or none where it
                # has one), a sum SQLite cannot bind: write that first.
                # Other tasks may queue writes of the key meanwhile, so look again after.
                await self._settle("incr")
        self._flush_soon()

    async def set_later(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Queue ``set_state(key, value, ttl_s)``, committed as :meth:`incr_later`'s writes
        are (a later queued write of the key replaces it). For values losing which costs
        little (``response_cache_store``'s answers). ``value`` is encoded now: changing
        it afterwards does not change what is stored. Values over :data:`FAST_VALUE_BYTES`
        (encoded), and any value while :data:`QUEUED_MAX` keys are queued, are written at
        once, as :meth:`set_state` writes them.

        Raises:
            StoreError: ``value`` is not JSON or ``ttl_s`` is not a positive number.
        """
        with self._counted["set"]:
            encoded = _encode(_queueable_key(key), value)
            expires_at = _expiry(ttl_s)
        if not self._loop_writes or len(encoded) > FAST_VALUE_BYTES or len(self._queued) >= QUEUED_MAX:
            await self.set_state(key, value, ttl_s)
            return
        self._queued[key] = _Queued(False, encoded, expires_at)
        self._flush_soon()

    def _flush_soon(self, delay_s: float = WRITE_BEHIND_S) -> None:
        if self._flush_timer is None and self._flusher is None and self._loop_writes:
            self._flush_timer = asyncio.get_running_loop().call_later(delay_s, self._start_flush)

    def _start_flush(self) -> asyncio.Task[bool]:
        """The running flush, or a new one when there is none."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="ringd-store-flush")
        return self._flusher

    async def flush(self) -> bool:
        """Commit the writes queued before the call now; whether they were.

        A flush that fails keeps its writes, and the next one (a second later, or the
        next call) retries them before anything queued after them.
        """
        target = self._batches + (1 if self._queued else 0)
        while self.flushes < target or self._flushing:
            if not await asyncio.shield(self._start_flush()):
                return False
        return True

    async def _settle(self, operation: str) -> None:
        """Before ``operation`` on a queued key: commit the queue, so the operation reads
        or overwrites what was queued (this process sees its own writes at once)."""
        if not await self.flush():
            self.errors[operation] = self.errors.get(operation, 0) + 1
            raise StoreError(f"SQLite store {self.path!r}: the writes queued before this {operation} failed")

    async def _flush(self) -> bool:
        """Commit what a failed flush left, else the queue (which becomes the batch)."""
        if not self._flushing:
            if not self._queued:
                return True
            self._flushing, self._queued = self._queued, {}
            self._batches += 1
        batch = self._flushing
        writes = len(batch)
        failed = False
        started = time.perf_counter()
        try:
            await self._write_statements(_queued_statements(batch, time.time()))
        except Exception as exc:  # what was not committed stays, retried before newer writes
            failed = True
            self.errors["flush"] = self.errors.get("flush", 0) + 1
            _log.warning(
                "SQLite store %s: writing %d queued writes failed (retried in %g s): %s",
                self.path,
                len(self._flushing),
                FLUSH_RETRY_S,
                exc,
            )
            return False
        else:
            self.flushes += 1
            self.flushed_writes += writes
            self.flush_s += time.perf_counter() - started
            return True
        finally:
            self._flusher = None
            if self._flushing or self._queued:
                self._flush_soon(FLUSH_RETRY_S if failed else WRITE_BEHIND_S)

    def _committed(self, statement: _Statement, rows: Sequence[Any]) -> None:
        """``statement`` committed: its keys leave the batch; an increment it refused (the
        key holds something else than an integer) is logged and counted, and dropped."""
        for key in statement.keys:
            del self._flushing[key]
        if statement.is_incr and len(rows) < len(statement.keys):
            written = {row[0] for row in rows}
            for key in statement.keys:
                if key not in written:
                    self.errors["incr"] = self.errors.get("incr", 0) + 1
                    _log.warning(
                        "SQLite store %s: queued incr dropped: %s",
                        self.path,
                        _not_an_integer(key),
                    )

    async def _write_statements(self, statements: list[_Statement]) -> None:
        """Run a flush's statements; each one's keys leave the batch once it is committed.

        On the loop's connection, :data:`FLUSH_STATEMENTS_MAX` statements a transaction
        (the loop runs other tasks between two), when it can write there; otherwise the
        first in the thread (each statement atomic and committed by itself; after a
        checkpoint, that write starts the WAL over) and the rest tried on the loop again.
        """
        while statements:
            chunk = statements[: _transaction_size(statements)]
            results = self._flush_on_loop(chunk)
            if results is not None:
                for statement, rows in zip(chunk, results, strict=True):
                    self._committed(statement, rows)
                del statements[: len(chunk)]
                if statements:
                    await asyncio.sleep(0)  # the loop's other tasks run between two transactions
                continue
            statement = statements.pop(0)
            self.thread_calls += 1
            written = await self._conn.execute_fetchall(statement.sql, statement.params)
            self._wrote_in_thread()
            self._committed(statement, list(written))

    def _flush_on_loop(self, statements: list[_Statement]) -> list[list[Any]] | None:
        """``statements`` in one transaction on the loop's connection; each one's rows.
        None when it cannot run there (see :meth:`_on_loop`): nothing was written."""
        conn = self._loop_conn
        if conn is None or self._restart_pending or not self._loop_writes:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return None
        try:
            results = [conn.execute(statement.sql, statement.params).fetchall() for statement in statements]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.loop_calls += 1
        self._count_write(len(statements))
        return results


async def open_store(url: str, *, base_dir: Path | None = None) -> SqliteStore | RedisStore:
    """Open the store a config names: SQLite by default, Redis for replicas on many machines.

    ``redis://[user:password@]host:port/db`` or ``rediss://…`` (TLS) opens a
    :class:`~ringd.server.store_redis.RedisStore` (``?key_prefix=…`` sets its key
    prefix). Anything else is a SQLite path (``sqlite:///abs``, ``sqlite:rel``, a bare
    path); relative paths are resolved against ``base_dir`` (the config file's folder).

    Raises:
        StoreError: the store cannot be opened (the message names the file or URL).
    """
    if url.startswith(("redis://", "rediss://")):
        from ringd.server.store_redis import RedisStore

        return await RedisStore.open(url)
    path = url.removeprefix("sqlite://").removeprefix("sqlite:")
    if path != ":memory:" and base_dir is not None and not Path(path).is_absolute():
        path = str(base_dir / path)
    return await SqliteStore.open(path)


__all__ = ["SqliteStore", "StoreError", "open_store"]
