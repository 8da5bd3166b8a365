"""The Redis store: one store shared by ringd replicas on many machines.

Chosen by ``store: redis://host:port/db`` (or ``rediss://`` for TLS) in the config.
It keeps the semantics of :class:`ringd.sdk.Store` and of the SQLite store: JSON
values, expired keys read as absent, and an atomic ``incr`` whose TTL is set when
the key is created and kept while it lives (a Lua script, so INCRBY and PEXPIRE
happen as one step for every replica).

Failure behaviour: every call that cannot reach Redis raises
:class:`ringd.sdk.StoreError` ``"redis store unreachable at redis://…: …"`` within
about a second (short connect timeout, two quick retries), so a plugin under
``fail_policy: closed`` blocks with that error and one under ``open`` is bypassed.
Nothing has to be restarted when Redis comes back: the connection pool opens new
connections on the next call, and the incr script is loaded again if Redis lost it.

A retry happens only on a connection error, never on a read timeout, so a command
that Redis may already have run is not sent twice; an ``incr`` can still count
twice if a connection breaks between Redis running it and ringd reading the reply.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from ringd.sdk import StoreError
from ringd.server.store import _encode, failure_counters

DEFAULT_KEY_PREFIX = "ringd:"

# KEYS[1] the key; ARGV[1] the amount; ARGV[2] the TTL in ms, or "" for none. Redis
# runs a script atomically, so no other client sees the key between INCRBY and PEXPIRE.
# An expired key is absent for EXISTS, so it starts again from 0 with a fresh TTL.
# INCRBY on a value that is not an integer raises, and the script writes nothing. The new
# value is answered as GET's text: INCRBY's answer is a Lua number (a double) in the
# script, inexact past 2**53.
_INCR_SCRIPT = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
"""


def _ttl_ms(ttl_s: float | None) -> int | None:
    """A TTL in whole milliseconds (at least 1), validated as the SQLite store does."""
    if ttl_s is None:
        return None
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise StoreError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
    return max(1, math.ceil(ttl_s * 1000))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def _split_prefix(url: str, default: str) -> tuple[str, str]:
    """Take a ``key_prefix`` query parameter out of ``url``; redis-py would reject it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = default
    rest = []
    for name, value in query:
        if name == "key_prefix":
            prefix = value
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class RedisStore:
    """The store on a Redis server, for replicas on many machines.

    Open it with :meth:`open` (which pings, so a bad URL fails at startup) and
    :meth:`close` it on shutdown. Every key is stored under ``key_prefix``
    (default ``"ringd:"``), so several deployments can share one Redis.
    """

    def __init__(self, client: Redis, url: str, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._client = client
        self.url = redact_url(url)
        self.key_prefix = key_prefix
        self._incr = client.register_script(_INCR_SCRIPT)
        self.errors: dict[str, int] = {}
        """Failures the store raised, by operation (get, set, delete, incr)."""
        self._counted = failure_counters(self.errors)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        key_prefix: str | None = None,
        max_connections: int = 64,
        connect_timeout_s: float = 0.5,
        command_timeout_s: float = 1.0,
        retries: int = 2,
    ) -> RedisStore:
        """Connect to the Redis at ``url`` and check it answers PING.

        Args:
            url: ``redis://[user:password@]host:port/db`` or ``rediss://…`` (TLS); a
                ``key_prefix`` query parameter sets the prefix (``?key_prefix=team-a:``).
            key_prefix: prefix of every key; overrides the URL's (default ``"ringd:"``).
            max_connections: connections in the pool; further calls wait for a free one.
            connect_timeout_s: how long a connection attempt may take.
            command_timeout_s: how long one command may wait for its reply.
            retries: extra attempts after a connection error, with jittered backoff.

        Raises:
            StoreError: the URL is invalid or Redis does not answer; names the URL.
        """
        connect_url, url_prefix = _split_prefix(url, DEFAULT_KEY_PREFIX)
        shown = redact_url(url)
        retry = Retry(
            ExponentialWithJitterBackoff(cap=0.1, base=0.01),
            retries,
            supported_errors=(redis_errors.ConnectionError,),
        )
        try:
            pool = BlockingConnectionPool.from_url(
                connect_url,
                max_connections=max_connections,
                timeout=max(command_timeout_s, 1.0),
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=command_timeout_s,
                retry=retry,
                decode_responses=True,
            )
        except (ValueError, TypeError) as exc:
            raise StoreError(f"invalid redis store URL {shown!r}: {exc}") from exc
        client = Redis.from_pool(pool)
        try:
            await client.ping()
        except redis_errors.RedisError as exc:
            await client.aclose()
            raise StoreError(f"cannot open redis store at {shown}: {exc}") from exc
        return cls(client, url, url_prefix if key_prefix is None else key_prefix)

    async def close(self) -> None:
        """Close every connection of the pool (idempotent)."""
        await self._client.aclose()

    def _failure(self, key: str, exc: redis_errors.RedisError) -> StoreError:
        """A StoreError for redis-py's ``exc``, naming the server (and the key)."""
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
            return StoreError(f"redis store unreachable at {self.url}: {exc}")
        return StoreError(f"redis store at {self.url} failed on key {key!r}: {exc}")

    async def get_state(self, key: str, default: Any = None) -> Any:
        with self._counted["get"]:
            try:
                raw = await self._client.get(self.key_prefix + key)
            except redis_errors.RedisError as exc:
                raise self._failure(key, exc) from exc
            if raw is None:
                return default
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise StoreError(f"value at key {key!r} in {self.url} is not JSON: {exc}") from exc

    async def set_state(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        with self._counted["set"]:
            encoded = _encode(key, value)
            ttl_ms = _ttl_ms(ttl_s)
            try:
                await self._client.set(self.key_prefix + key, encoded, px=ttl_ms)
            except redis_errors.RedisError as exc:
                raise self._failure(key, exc) from exc

    async def delete(self, key: str) -> bool:
        with self._counted["delete"]:
            try:
                removed = await self._client.delete(self.key_prefix + key)
            except redis_errors.RedisError as exc:
                raise self._failure(key, exc) from exc
            return int(removed) > 0

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        with self._counted["incr"]:
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise StoreError(f"incr amount must be an integer, got {amount!r}")
            ttl_ms = _ttl_ms(ttl_s)
            args = [amount, "" if ttl_ms is None else ttl_ms]
            try:
                value = await self._incr(keys=[self.key_prefix + key], args=args)
            except redis_errors.ResponseError as exc:
                # INCRBY's "value is not an integer or out of range", or "... would overflow"
                if "not an integer" in str(exc) or "would overflow" in str(exc):
                    raise StoreError(
                        f"cannot incr key {key!r}: its value is not an integer (or the sum is out of range)"
                    ) from exc
                raise self._failure(key, exc) from exc
            except redis_errors.RedisError as exc:
                raise self._failure(key, exc) from exc
            return int(value)


__all__ = ["DEFAULT_KEY_PREFIX", "RedisStore", "redact_url"]
