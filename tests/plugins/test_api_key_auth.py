"""api_key_auth: keys from headers, digests in config and store, anonymous access."""

from __future__ import annotations

import hashlib

import pytest
from ringd.plugins.api_key_auth import ApiKeyAuth
from ringd.sdk import PluginAction, PluginContext, RequestInfo

KEY = "rk-live-0123456789abcdef"
STORED_KEY = "rk-live-stored-key-fedcba"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = {"keys": [{"id": "key-1", "tenant": "acme", "sha256": sha(KEY)}]}


@pytest.mark.parametrize(
    ("headers", "source"),
    [
        ({"authorization": f"Bearer {KEY}"}, "authorization"),
        ({"authorization": f"bearer   {KEY}  "}, "authorization"),
        ({"x-api-key": KEY}, "x-api-key"),
        ({"authorization": "Basic dXNlcjpwYXNz", "x-api-key": KEY}, "x-api-key"),
    ],
)
async def test_configured_key(make_ctx, headers, source) -> None:
    ctx = make_ctx(headers=headers)
    outcome = await ApiKeyAuth(CONFIG).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert ctx.metadata == {"tenant": "acme", "api_key_id": "key-1", "_api_key_auth_source": source}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"authorization": "Bearer "}, "missing"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "missing"),
        ({"authorization": "Bearer wrong-key"}, "invalid"),
        ({"x-api-key": KEY.upper()}, "invalid"),
        ({"x-api-key": "ключ-🔑"}, "invalid"),
    ],
)
async def test_refused(make_ctx, headers, reason) -> None:
    ctx = make_ctx(headers=headers, metadata={"tenant": "spoofed"})
    outcome = await ApiKeyAuth({**CONFIG, "store_lookup": False}).execute(ctx)
    assert outcome.action is PluginAction.BLOCK
    assert outcome.status_code == 401
    assert outcome.error_type == "unauthorized"
    assert reason in (outcome.message or "")
    if reason == "invalid":
        presented = next(iter(headers.values())).split()[-1]
        assert presented not in (outcome.message or "")  # the key is never echoed
    assert "api_key_id" not in ctx.metadata


async def test_store_keys(make_ctx, store) -> None:
    await store.set_state(f"api_key_auth:{sha(STORED_KEY)}", {"id": "db-7", "tenant": "globex"})
    ctx = make_ctx(headers={"authorization": f"Bearer {STORED_KEY}"})
    outcome = await ApiKeyAuth(CONFIG).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert ctx.metadata["tenant"] == "globex"
    assert ctx.metadata["api_key_id"] == "db-7"


async def test_disabled_store_key(make_ctx, store) -> None:
    record = {"id": "db-7", "tenant": "globex", "disabled": True}
    await store.set_state(f"api_key_auth:{sha(STORED_KEY)}", record)
    outcome = await ApiKeyAuth().execute(make_ctx(headers={"x-api-key": STORED_KEY}))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.status_code == 401


async def test_store_lookup_off(make_ctx, store) -> None:
    await store.set_state(f"api_key_auth:{sha(STORED_KEY)}", {"id": "db-7", "tenant": "globex"})
    plugin = ApiKeyAuth({**CONFIG, "store_lookup": False})
    outcome = await plugin.execute(make_ctx(headers={"x-api-key": STORED_KEY}))
    assert outcome.action is PluginAction.BLOCK


async def test_malformed_store_record_is_an_error(make_ctx, store) -> None:
    await store.set_state(f"api_key_auth:{sha(STORED_KEY)}", ["not", "a", "record"])
    with pytest.raises(RuntimeError, match="api_key_auth: store entry"):
        await ApiKeyAuth().execute(make_ctx(headers={"x-api-key": STORED_KEY}))


async def test_missing_store_is_an_error() -> None:
    ctx = PluginContext(request=RequestInfo(headers={"x-api-key": "unknown"}))
    with pytest.raises(RuntimeError, match="api_key_auth: no store"):
        await ApiKeyAuth(CONFIG).execute(ctx)


async def test_configured_key_needs_no_store() -> None:
    ctx = PluginContext(request=RequestInfo(headers={"x-api-key": KEY}))
    outcome = await ApiKeyAuth(CONFIG).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH


async def test_anonymous(make_ctx) -> None:
    plugin = ApiKeyAuth({**CONFIG, "allow_anonymous": True, "anonymous_tenant": "demo"})
    ctx = make_ctx()
    assert (await plugin.execute(ctx)).action is PluginAction.PASSTHROUGH
    assert ctx.metadata == {"tenant": "demo", "api_key_id": None, "_api_key_auth_source": "anonymous"}
    # A wrong key is refused even when anonymous requests are allowed.
    wrong = await plugin.execute(make_ctx(headers={"x-api-key": "guess"}))
    assert wrong.action is PluginAction.BLOCK


def test_uppercase_digest_is_accepted() -> None:
    plugin = ApiKeyAuth({"keys": [{"id": "k", "tenant": "t", "sha256": sha(KEY).upper()}]})
    assert plugin.keys[0].sha256 == sha(KEY)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"keys": [{"id": "k", "tenant": "t", "sha256": KEY}]}, r"keys\[0\].sha256"),
        ({"keys": [{"id": "k", "tenant": "t"}]}, r"keys\[0\]"),
        ({"keys": [{"id": "k", "tenant": "t", "sha256": sha("a"), "secret": "a"}]}, "secret"),
        ({"keys": "abc"}, "keys"),
        (
            {
                "keys": [
                    {"id": "k", "tenant": "t", "sha256": sha("a")},
                    {"id": "k", "tenant": "u", "sha256": sha("b")},
                ]
            },
            "keys",
        ),
        ({"allow_anonymous": "true"}, "allow_anonymous"),
        ({"store_lookup": False}, "store_lookup"),  # nothing could ever authenticate
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"api_key_auth.*{key}"):
        ApiKeyAuth(config)
