"""``response_cache``: answer repeated requests from the store (exact match).

Two plugins share one key function:

``ResponseCacheLookup`` (name ``response_cache``, PRE_FLIGHT)
    Hashes the request and answers CACHE_HIT with the stored response when there
    is one. Place it after ``pii_redactor`` (higher ``priority``): the key is
    then made from the masked prompt, the one the model sees, and when the
    request carries ``pii_redactor``'s sealed ``_pii_mapping`` the stored answer's
    placeholders (``[EMAIL_1]``...) are replaced by this request's originals
    before it is served (a CACHE_HIT ends the request without a POST_FLIGHT ring).
    A mapping that does not open makes the lookup a miss.
``ResponseCacheStore`` (name ``response_cache_store``, POST_FLIGHT by default,
    also usable in BACKGROUND)
    Stores ``ctx.response`` under the key the lookup put in metadata (on the SQLite
    store the write is queued and committed a moment later, ~50 ms, with other
    requests' writes, see ``SqliteStore.set_later``; this process reads it at once,
    other ``--workers`` processes and replicas once committed). Place it
    after ``response_sanitizer``. No personal data is stored: when the request
    carries a sealed ``_pii_mapping``, every original value that
    ``response_sanitizer`` restored is put back into its placeholder in the
    stored copy (the answer as the model wrote it); when the mapping does not
    open, nothing is stored. Without a key in metadata (no lookup ran, or it
    skipped) it stores nothing; it never rehashes the body, which earlier rings
    may have changed.

The key is the SHA-256 of the canonical JSON of the request body (keys sorted,
whole floats written as integers, ``ignore_fields`` left out) together with the
tenant (metadata ``tenant``) when ``per_tenant`` is on. So the model, messages
and every parameter (temperature, max_tokens, top_p, tools, stop, seed,
response_format, stream...) must be equal for a hit; key order is not.

Config of ``response_cache`` (lookup):
    namespace (str, default ``"response_cache"``): prefix of the store keys,
        ``<namespace>:<sha256 hex>``; must equal the store plugin's.
    max_temperature (float | None, default None): skip the cache (no lookup,
        no key, nothing stored) when the request's temperature is above it.
    default_temperature (float, default 1.0): the temperature of a request that
        sets none, for ``max_temperature``.
    per_tenant (bool, default true): key on the tenant too, so tenants never
        see each other's answers.
    ignore_fields (list[str], default ``["user", "metadata", "store",
        "stream_options", "service_tier"]``): top-level body fields left out of
        the key.
    pii_key (str | None, default None): the key that opens ``_pii_mapping``, as
        ``pii_redactor``'s (``RINGD_PII_KEY`` when unset).
    miss_ttl_s (float, default 1.0): how long a miss is remembered in this
        process (see "Misses" below); 0 asks the store every time.

Config of ``response_cache_store``:
    namespace (str, default ``"response_cache"``): as above.
    ttl_s (float, default 300): how long an answer stays in the cache.
    max_entry_bytes (int, default 1048576): answers whose JSON is larger are
        not stored.
    pii_key (str | None, default None): as above.

Misses: a lookup that finds nothing is remembered in this process for
``miss_ttl_s``, so a repeated miss is answered without a round trip to the store
(SQLite's worker thread, or Redis). This is safe because a remembered miss can only
ever turn a would-be hit into a miss (one more upstream call), never serve a wrong or
stale answer: hits are always read from the store, so expiry, other replicas' writes
and deletions are seen as before. ``response_cache_store`` in this process forgets the
key when it stores an answer, so this process sees its own writes at once; an answer
stored by another replica (or another ``--workers`` process) is seen within
``miss_ttl_s``, which is shorter than the upstream call that would produce one. The
index lives in the shared :class:`PluginState` (``extra["response_cache.misses"]``),
keyed by namespace, so it outlives a reload; it holds at most 10,000 keys.

Metadata written:
    ``_cache_key`` (str): the key's SHA-256 hex digest (lookup; absent when skipped).
    ``_cache_status`` (str): ``"hit"``, ``"miss"`` or ``"skipped"`` (lookup).
    ``_cache_stored`` (bool): whether the answer was stored (store).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import orjson
from ringd.plugins._batch import set_later
from ringd.plugins._common import ConfigReader, map_response_texts, require_store
from ringd.plugins._seal import (
    CONFIG_KEY,
    KeySource,
    SealError,
    mask_originals,
    open_sealed,
    originals_pattern,
    restore_placeholders,
)
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_log = logging.getLogger("plugin.response_cache")

DEFAULT_NAMESPACE = "response_cache"
DEFAULT_IGNORED_FIELDS = ("user", "metadata", "store", "stream_options", "service_tier")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
MISSES_KEY = "response_cache.misses"
"""Where the in-process miss indexes live in ``PluginState.extra`` (one per namespace)."""
MISS_INDEX_SIZE = 10_000


class RecentMisses:
    """Keys this process looked up and did not find, each remembered until a deadline.

    ``writes`` counts the keys forgotten because an answer was stored: a lookup whose
    store read overlapped such a write does not remember its miss (the answer may have
    landed just after the read).
    """

    __slots__ = ("_until", "writes")

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self.writes = 0

    def __contains__(self, digest: str) -> bool:
        until = self._until.get(digest)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._until[digest]
        return False

    def remember(self, digest: str, until: float) -> None:
        """Remember a miss of ``digest`` until ``until`` (``time.monotonic()`` seconds)."""
        entries = self._until
        if len(entries) >= MISS_INDEX_SIZE and digest not in entries:
            del entries[next(iter(entries))]  # the oldest: dicts keep insertion order
        entries[digest] = until

    def forget(self, digest: str) -> None:
        """An answer for ``digest`` is being stored: ask the store again from now on."""
        self.writes += 1
        self._until.pop(digest, None)


def recent_misses(state: Any, namespace: str) -> RecentMisses:
    """The miss index of ``namespace`` in the shared plugin state (made on first use)."""
    indexes: dict[str, RecentMisses] = state.extra.setdefault(MISSES_KEY, {})
    index = indexes.get(namespace)
    if index is None:
        index = indexes[namespace] = RecentMisses()
    return index


def _canonical(value: Any) -> Any:
    """``value`` with whole floats as ints: ``1.0`` and ``1`` hash alike (protobuf Structs
    carry every number as a double)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    # Strings, most of a chat body, are taken as they are without a call each.
    if isinstance(value, dict):
        return {key: item if type(item) is str else _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item if type(item) is str else _canonical(item) for item in value]
    return value


def cache_key(
    body: Mapping[str, Any],
    tenant: str | None = None,
    ignore_fields: Iterable[str] = DEFAULT_IGNORED_FIELDS,
) -> str:
    """The SHA-256 hex digest identifying ``body`` (for ``tenant``) in the cache."""
    ignored = ignore_fields if isinstance(ignore_fields, frozenset | set) else frozenset(ignore_fields)
    request = {key: _canonical(value) for key, value in body.items() if key not in ignored}
    keyed = {"request": request, "tenant": tenant}
    try:
        canonical = orjson.dumps(keyed, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # what orjson refuses (a lone surrogate, a huge int): the slow path
        canonical = json.dumps(
            keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode("utf-8", "surrogatepass")
    return hashlib.sha256(canonical).hexdigest()


def _namespace(reader: ConfigReader) -> str:
    namespace = reader.get_str("namespace", DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE
    if ":" in namespace:
        raise reader.error("namespace", "a prefix without ':'", namespace)
    return namespace


class ResponseCacheLookup(BasePlugin):
    """PRE_FLIGHT: answers CACHE_HIT when an equal request's answer is in the store."""

    name: ClassVar[str] = "response_cache"
    hook: ClassVar[PluginHook] = PluginHook.PRE_FLIGHT
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Answers repeated requests from the cache"
    timeout_ms: ClassVar[int] = 50

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown(
            {
                "namespace",
                "max_temperature",
                "default_temperature",
                "per_tenant",
                "ignore_fields",
                "miss_ttl_s",
                CONFIG_KEY,
            }
        )
        self.namespace = _namespace(reader)
        self.max_temperature = reader.get_number("max_temperature", None, exclusive=False)
        self.default_temperature = reader.get_number("default_temperature", 1.0, exclusive=False)
        self.per_tenant = reader.get_bool("per_tenant", True)
        self.ignore_fields = frozenset(
            reader.get_str_list("ignore_fields", list(DEFAULT_IGNORED_FIELDS)) or ()
        )
        self.keys = KeySource(reader)
        self.miss_ttl_s = reader.get_number("miss_ttl_s", 1.0, exclusive=False) or 0.0

    def _cacheable(self, body: Mapping[str, Any]) -> bool:
        if self.max_temperature is None:
            return True
        temperature = body.get("temperature", self.default_temperature)
        if temperature is None:
            temperature = self.default_temperature
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            return False  # the upstream will reject it; nothing worth caching
        return temperature <= self.max_temperature

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Look the request up; CACHE_HIT with the stored answer, else continue."""
        store = require_store(ctx, self.name)
        if not self._cacheable(ctx.body):
            ctx.metadata["_cache_status"] = "skipped"
            return PluginResponse.passthrough()
        tenant = ctx.metadata.get("tenant") if self.per_tenant else None
        digest = cache_key(ctx.body, str(tenant) if tenant is not None else None, self.ignore_fields)
        ctx.metadata["_cache_key"] = digest
        misses = recent_misses(ctx.state, self.namespace) if self.miss_ttl_s else None
        if misses is not None and digest in misses:
            ctx.metadata["_cache_status"] = "miss"
            return PluginResponse.passthrough()
        writes = misses.writes if misses is not None else 0
        cached = await store.get_state(f"{self.namespace}:{digest}")
        if cached is None and misses is not None and misses.writes == writes:
            misses.remember(digest, time.monotonic() + self.miss_ttl_s)
        sealed = ctx.metadata.get("_pii_mapping")
        if isinstance(cached, dict) and sealed is not None:
            try:
                mapping = open_sealed(sealed, key=self.keys.cipher(ctx), request_id=ctx.request_id)
            except SealError as exc:
                _log.warning(
                    "%s: cannot restore PII in a cached answer, treated as a miss: %s", self.name, exc
                )
                cached = None
            else:
                map_response_texts(cached, lambda text: restore_placeholders(text, mapping)[0])
        if isinstance(cached, dict):
            ctx.metadata["_cache_status"] = "hit"
            return PluginResponse.cache_hit(response=cached, message="answered from the cache")
        ctx.metadata["_cache_status"] = "miss"
        return PluginResponse.passthrough()


def _successful(response: Any) -> bool:
    if not isinstance(response, dict) or response.get("error"):
        return False
    choices = response.get("choices")
    return isinstance(choices, list) and len(choices) > 0


def _json_copy(value: Any) -> Any:
    """A deep copy of a JSON value (an upstream answer): an orjson round trip, ~4x faster
    than ``copy.deepcopy``; ``deepcopy`` for what orjson refuses or would change."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return copy.deepcopy(value)
    # orjson writes NaN and infinities as null: such an answer is deep-copied as it is
    # (and the store then refuses it, as it refuses any non-JSON value).
    return orjson.loads(encoded) if b"null" not in encoded else copy.deepcopy(value)


class ResponseCacheStore(BasePlugin):
    """POST_FLIGHT (or BACKGROUND): stores the upstream answer under the lookup's key."""

    name: ClassVar[str] = "response_cache_store"
    hook: ClassVar[PluginHook] = PluginHook.POST_FLIGHT
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Stores upstream answers for response_cache"
    timeout_ms: ClassVar[int] = 100

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"namespace", "ttl_s", "max_entry_bytes", CONFIG_KEY})
        self.namespace = _namespace(reader)
        self.ttl_s = reader.get_number("ttl_s", 300.0) or 300.0
        self.max_entry_bytes = reader.get_int("max_entry_bytes", 1_048_576) or 1_048_576
        self.keys = KeySource(reader)

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Store a successful answer under metadata ``_cache_key``; never changes the answer."""
        store = require_store(ctx, self.name)
        ctx.metadata["_cache_stored"] = False
        digest = ctx.metadata.get("_cache_key")
        # The key comes back from the gateway; only a digest may name a store key.
        if ctx.metadata.get("_cache_status") == "hit" or not isinstance(digest, str):
            return PluginResponse.passthrough()
        if not _HEX_DIGEST.fullmatch(digest) or not _successful(ctx.response):
            return PluginResponse.passthrough()
        stored = ctx.response
        sealed = ctx.metadata.get("_pii_mapping")
        if sealed is not None:
            try:
                mapping = open_sealed(sealed, key=self.keys.cipher(ctx), request_id=ctx.request_id)
            except SealError as exc:
                return PluginResponse.passthrough(f"not stored: {exc}")
            pattern = originals_pattern(mapping)
            stored = _json_copy(ctx.response)
            map_response_texts(stored, lambda text: mask_originals(text, mapping, pattern))
        try:
            size = len(orjson.dumps(stored))  # compact UTF-8, as the store's JSON but ~15x faster
        except orjson.JSONEncodeError:  # what orjson refuses (a lone surrogate, a huge int)
            encoded = json.dumps(stored, separators=(",", ":"), ensure_ascii=False)
            size = len(encoded.encode("utf-8", "surrogatepass"))
        if size > self.max_entry_bytes:
            return PluginResponse.passthrough(f"answer too large to cache ({size} bytes)")
        misses = recent_misses(ctx.state, self.namespace)
        misses.forget(digest)
        await set_later(store, f"{self.namespace}:{digest}", stored, ttl_s=self.ttl_s)
        misses.forget(digest)  # a lookup that read while the write was on its way
        ctx.metadata["_cache_stored"] = True
        return PluginResponse.passthrough()
