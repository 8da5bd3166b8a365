"""INGRESS ``api_key_auth``: authenticate the client by API key and name its tenant.

The key is read from ``Authorization: Bearer <key>`` or, failing that, from
``x-api-key``. Keys are never configured in clear: the config and the store
hold the SHA-256 hex digest of each key (``printf %s "$KEY" | sha256sum``).

The presented key's digest is compared with every configured digest using
``hmac.compare_digest``, without stopping at a match, so the time taken does not
depend on which key (if any) matched. When no configured key matches and
``store_lookup`` is on, the store is asked for ``api_key_auth:<sha256 hex>``,
whose value is ``{"id": str, "tenant": str, "disabled": bool (optional)}``; a
lookup by digest reveals nothing about other keys. A disabled key is refused
like a wrong one.

A request without a key is refused with 401 ``unauthorized``, unless
``allow_anonymous`` lets it through as ``anonymous_tenant``; a request with a
wrong key is always refused.

Config:
    keys (list[dict], default []): ``{id: str, tenant: str, sha256: str}``
        entries; ``sha256`` is the key's 64-hex-digit digest.
    store_lookup (bool, default true): look keys up in the store too (then the
        store must be present).
    allow_anonymous (bool, default false): let requests without a key in.
    anonymous_tenant (str, default ``"anonymous"``): their tenant.

Metadata written (on success):
    ``tenant`` (str): the key's tenant (or ``anonymous_tenant``).
    ``api_key_id`` (str | None): the key's id; None for an anonymous request.
    ``_api_key_auth_source`` (str): ``"authorization"``, ``"x-api-key"`` or
        ``"anonymous"``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ringd.plugins._common import ConfigReader, require_store
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse, StoreError

STORE_PREFIX = "api_key_auth:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its id, tenant and the SHA-256 hex digest of the key."""

    id: str
    tenant: str
    sha256: str


def presented_key(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """``(key, source)`` from the request headers, or None when there is no key."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), "authorization"
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key, "x-api-key"
    return None


class ApiKeyAuth(BasePlugin):
    """Checks the request's API key against SHA-256 digests in config and store."""

    name: ClassVar[str] = "api_key_auth"
    hook: ClassVar[PluginHook] = PluginHook.INGRESS
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "API key authentication; sets the tenant"
    timeout_ms: ClassVar[int] = 50

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"keys", "store_lookup", "allow_anonymous", "anonymous_tenant"})
        self.store_lookup = reader.get_bool("store_lookup", True)
        self.allow_anonymous = reader.get_bool("allow_anonymous", False)
        self.anonymous_tenant = reader.get_str("anonymous_tenant", "anonymous") or "anonymous"
        entries = self.config.get("keys", [])
        if not isinstance(entries, list):
            raise reader.error("keys", "a list of {id, tenant, sha256}", entries)
        self.keys: list[ApiKey] = []
        for index, entry in enumerate(entries):
            label = f"keys[{index}]"
            if not isinstance(entry, Mapping):
                raise reader.error(label, "a mapping {id, tenant, sha256}", entry)
            entry_reader = ConfigReader(f"{self.name}: {label}", entry)
            entry_reader.reject_unknown({"id", "tenant", "sha256"})
            key_id = entry_reader.get_str("id", None)
            tenant = entry_reader.get_str("tenant", None)
            digest = entry_reader.get_str("sha256", None)
            if key_id is None or tenant is None or digest is None:
                raise reader.error(label, "a mapping with id, tenant and sha256", entry)
            digest = digest.lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise reader.error(f"{label}.sha256", "a SHA-256 hex digest (64 hex digits)", entry["sha256"])
            self.keys.append(ApiKey(id=key_id, tenant=tenant, sha256=digest))
        for field in ("id", "sha256"):
            seen: set[str] = set()
            for key in self.keys:
                value = getattr(key, field)
                if value in seen:
                    raise reader.error("keys", f"entries with distinct {field}s", value)
                seen.add(value)
        if not self.keys and not self.store_lookup and not self.allow_anonymous:
            raise ValueError(
                f"{self.name}: config has no 'keys', 'store_lookup' is false and "
                "'allow_anonymous' is false: every request would be refused"
            )

    def _configured(self, digest: str) -> ApiKey | None:
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: the time must not tell which key matched
            if hmac.compare_digest(key.sha256, digest):
                found = key
        return found

    async def _stored(self, ctx: PluginContext, digest: str) -> ApiKey | None:
        store = require_store(ctx, self.name)
        record = await store.get_state(STORE_PREFIX + digest)
        if record is None:
            return None
        if not isinstance(record, Mapping) or not isinstance(record.get("tenant"), str):
            raise StoreError(
                f'{self.name}: store entry {STORE_PREFIX}{digest[:8]}... is not {{"id": str, "tenant": str}}'
            )
        if record.get("disabled") is True:
            return None
        key_id = record.get("id")
        return ApiKey(
            id=key_id if isinstance(key_id, str) and key_id else digest[:12],
            tenant=record["tenant"],
            sha256=digest,
        )

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Authenticate; write tenant and key id to metadata, or answer 401."""
        presented = presented_key(ctx.request.headers)
        if presented is None:
            if self.allow_anonymous:
                ctx.metadata["tenant"] = self.anonymous_tenant
                ctx.metadata["api_key_id"] = None
                ctx.metadata["_api_key_auth_source"] = "anonymous"
                return PluginResponse.passthrough()
            return PluginResponse.block(
                status_code=401,
                error_type="unauthorized",
                message="missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            )
        key, source = presented
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        match = self._configured(digest)
        if match is None and self.store_lookup:
            match = await self._stored(ctx, digest)
        if match is None:
            return PluginResponse.block(status_code=401, error_type="unauthorized", message="invalid API key")
        ctx.metadata["tenant"] = match.tenant
        ctx.metadata["api_key_id"] = match.id
        ctx.metadata["_api_key_auth_source"] = source
        return PluginResponse.passthrough()
