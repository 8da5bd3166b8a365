"""response_cache: key normalisation, lookup and store through a real SQLite store."""

from __future__ import annotations

import asyncio

import pytest
from ringd.plugins.response_cache import ResponseCacheLookup, ResponseCacheStore, cache_key
from ringd.sdk import PluginAction, PluginContext


def test_key_ignores_key_order_and_number_form(chat) -> None:
    body = chat(("user", "hi"), temperature=0.0, max_tokens=100, tools=[{"type": "function"}])
    reordered = dict(reversed(list(body.items())))
    as_struct = {**body, "temperature": 0.0, "max_tokens": 100.0}  # a Struct sends doubles
    assert cache_key(body) == cache_key(reordered) == cache_key(as_struct)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.7},
        {"max_tokens": 101},
        {"top_p": 0.5},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"messages": [{"role": "user", "content": "hi!"}]},
    ],
)
def test_key_changes_with_what_changes_the_answer(chat, change) -> None:
    body = chat(("user", "hi"), temperature=0.0, max_tokens=100)
    assert cache_key(body) != cache_key({**body, **change})


def test_key_ignores_ignored_fields_and_separates_tenants(chat) -> None:
    body = chat(("user", "hi"))
    assert cache_key(body) == cache_key({**body, "user": "u-42", "metadata": {"x": 1}})
    assert cache_key(body, "acme") != cache_key(body, "globex")
    assert cache_key(body, None) != cache_key(body, "acme")


async def test_miss_store_hit(make_ctx, chat, completion, store) -> None:
    lookup, save = ResponseCacheLookup(), ResponseCacheStore({"ttl_s": 60})
    body = chat(("user", "What is 2 + 2?"), temperature=0)
    answer = completion("4")

    first = make_ctx(body, metadata={"tenant": "acme"})
    assert (await lookup.execute(first)).action is PluginAction.PASSTHROUGH
    assert first.metadata["_cache_status"] == "miss"
    digest = first.metadata["_cache_key"]
    assert len(digest) == 64

    # POST_FLIGHT gets the metadata the gateway carried over, and the answer.
    post = make_ctx(body, metadata=dict(first.metadata), response=answer)
    await save.execute(post)
    assert post.metadata["_cache_stored"] is True
    assert await store.get_state(f"response_cache:{digest}") == answer

    second = make_ctx(dict(reversed(list(body.items()))), metadata={"tenant": "acme"})
    hit = await lookup.execute(second)
    assert hit.action is PluginAction.CACHE_HIT
    assert hit.response == answer
    assert second.metadata["_cache_status"] == "hit"

    other_tenant = make_ctx(body, metadata={"tenant": "globex"})
    assert (await lookup.execute(other_tenant)).action is PluginAction.PASSTHROUGH


async def test_entries_expire(make_ctx, chat, completion) -> None:
    lookup, save = (
        ResponseCacheLookup(),
        ResponseCacheStore({"ttl_s": 1.0}),
    )  # a margin for a busy machine before the hit
    body = chat(("user", "ping"))
    first = make_ctx(body)
    await lookup.execute(first)
    await save.execute(make_ctx(body, metadata=first.metadata, response=completion("pong")))
    assert (await lookup.execute(make_ctx(body))).action is PluginAction.CACHE_HIT
    await asyncio.sleep(1.1)
    assert (await lookup.execute(make_ctx(body))).action is PluginAction.PASSTHROUGH


async def test_a_miss_is_remembered_in_this_process_until_its_ttl(make_ctx, chat, completion, store) -> None:
    body = chat(("user", "What is the capital of France?"), temperature=0)
    first = make_ctx(body)
    assert (await ResponseCacheLookup({"miss_ttl_s": 60}).execute(first)).action is PluginAction.PASSTHROUGH
    digest = first.metadata["_cache_key"]

    # Another replica stores the answer: this process keeps answering its remembered miss...
    await store.set_state(f"response_cache:{digest}", completion("Paris"), ttl_s=60)
    again = make_ctx(body)
    assert (await ResponseCacheLookup({"miss_ttl_s": 60}).execute(again)).action is PluginAction.PASSTHROUGH
    assert again.metadata["_cache_status"] == "miss"
    # ...which never hides the answer from a lookup that does not remember misses.
    fresh = await ResponseCacheLookup({"miss_ttl_s": 0}).execute(make_ctx(body))
    assert fresh.action is PluginAction.CACHE_HIT
    assert fresh.response == completion("Paris")


async def test_a_remembered_miss_expires_and_the_store_is_asked_again(
    make_ctx, chat, completion, store
) -> None:
    lookup = ResponseCacheLookup({"miss_ttl_s": 0.1})
    body = chat(("user", "What is the capital of Spain?"), temperature=0)
    first = make_ctx(body)
    await lookup.execute(first)
    await store.set_state(f"response_cache:{first.metadata['_cache_key']}", completion("Madrid"), ttl_s=60)
    await asyncio.sleep(0.2)
    hit = await lookup.execute(make_ctx(body))
    assert hit.action is PluginAction.CACHE_HIT
    assert hit.response == completion("Madrid")


async def test_a_store_in_this_process_ends_the_remembered_miss_at_once(make_ctx, chat, completion) -> None:
    body = chat(("user", "What is the capital of Italy?"), temperature=0)
    first = make_ctx(body)
    await ResponseCacheLookup({"miss_ttl_s": 60}).execute(first)
    post = make_ctx(body, metadata=dict(first.metadata), response=completion("Rome"))
    await ResponseCacheStore().execute(post)
    # A new lookup instance (as after a reload) shares the process's miss index.
    hit = await ResponseCacheLookup({"miss_ttl_s": 60}).execute(make_ctx(body))
    assert hit.action is PluginAction.CACHE_HIT
    assert hit.response == completion("Rome")


def test_miss_ttl_must_be_a_number_at_least_zero() -> None:
    with pytest.raises(ValueError, match=r"miss_ttl_s.*must be a number >= 0"):
        ResponseCacheLookup({"miss_ttl_s": -1})
    with pytest.raises(ValueError, match=r"miss_ttl_s.*must be a number >= 0"):
        ResponseCacheLookup({"miss_ttl_s": "soon"})


async def test_hot_requests_skip_the_cache(make_ctx, chat) -> None:
    lookup = ResponseCacheLookup({"max_temperature": 0.5})
    hot = make_ctx(chat(("user", "write a poem"), temperature=0.9))
    assert (await lookup.execute(hot)).action is PluginAction.PASSTHROUGH
    assert hot.metadata == {"_cache_status": "skipped"}
    # No temperature counts as the default, 1.0: skipped too.
    default = make_ctx(chat(("user", "write a poem")))
    await lookup.execute(default)
    assert default.metadata["_cache_status"] == "skipped"
    cold = make_ctx(chat(("user", "write a poem"), temperature=0.5))
    await lookup.execute(cold)
    assert cold.metadata["_cache_status"] == "miss"


@pytest.mark.parametrize(
    ("metadata", "response"),
    [
        ({}, {"choices": [{"message": {"content": "x"}}]}),  # no lookup ran
        ({"_cache_key": "../../api_key_auth:abc"}, {"choices": [{"message": {}}]}),
        ({"_cache_key": "a" * 64}, {"error": {"message": "upstream down"}}),
        ({"_cache_key": "a" * 64}, {"choices": []}),
        ({"_cache_key": "a" * 64}, None),
        ({"_cache_key": "a" * 64, "_cache_status": "hit"}, {"choices": [{"text": "x"}]}),
    ],
)
async def test_store_refuses(make_ctx, store, metadata, response) -> None:
    ctx = make_ctx(metadata=dict(metadata), response=response)
    await ResponseCacheStore().execute(ctx)
    assert ctx.metadata["_cache_stored"] is False
    assert await store.get_state("response_cache:" + "a" * 64) is None


async def test_store_skips_oversized_answers(make_ctx, completion, store) -> None:
    ctx = make_ctx(metadata={"_cache_key": "b" * 64}, response=completion("x" * 5000))
    await ResponseCacheStore({"max_entry_bytes": 1000}).execute(ctx)
    assert ctx.metadata["_cache_stored"] is False
    assert await store.get_state("response_cache:" + "b" * 64) is None


async def test_unicode_and_huge_bodies(make_ctx, chat, completion) -> None:
    lookup, save = ResponseCacheLookup(), ResponseCacheStore()
    body = chat(("user", "Ünïcödé 日本語 \U0001f600 " + "x" * 1_000_000))
    first = make_ctx(body)
    await lookup.execute(first)
    await save.execute(make_ctx(body, metadata=first.metadata, response=completion("ok ✓")))
    hit = await lookup.execute(make_ctx(body))
    assert hit.response == completion("ok ✓")


async def test_namespaces_must_agree(make_ctx, chat, completion) -> None:
    body = chat(("user", "hi"))
    first = make_ctx(body)
    await ResponseCacheLookup({"namespace": "a"}).execute(first)
    await ResponseCacheStore({"namespace": "b"}).execute(
        make_ctx(body, metadata=first.metadata, response=completion("x"))
    )
    outcome = await ResponseCacheLookup({"namespace": "a"}).execute(make_ctx(body))
    assert outcome.action is PluginAction.PASSTHROUGH


async def test_missing_store_is_an_error(chat) -> None:
    with pytest.raises(RuntimeError, match="response_cache: no store"):
        await ResponseCacheLookup().execute(PluginContext(body=chat(("user", "hi"))))
    with pytest.raises(RuntimeError, match="response_cache_store: no store"):
        await ResponseCacheStore().execute(PluginContext(metadata={"_cache_key": "a" * 64}))


@pytest.mark.parametrize(
    ("plugin", "config", "key"),
    [
        (ResponseCacheLookup, {"max_temperature": -1}, "max_temperature"),
        (ResponseCacheLookup, {"per_tenant": "no"}, "per_tenant"),
        (ResponseCacheLookup, {"namespace": "a:b"}, "namespace"),
        (ResponseCacheLookup, {"ignore_fields": [""]}, "ignore_fields"),
        (ResponseCacheStore, {"ttl_s": 0}, "ttl_s"),
        (ResponseCacheStore, {"max_entry_bytes": -5}, "max_entry_bytes"),
        (ResponseCacheStore, {"max_temperature": 1}, "max_temperature"),
    ],
)
def test_config_errors_name_the_key(plugin, config, key) -> None:
    with pytest.raises(ValueError, match=rf"{plugin.name}: .*'{key}'"):
        plugin(config)


async def _pre_flight(make_ctx, chat, email: str, request_id: str) -> PluginContext:
    """PRE_FLIGHT as the default pipeline runs it: pii_redactor (sealed mapping), then the lookup."""
    from ringd.plugins.pii_redactor import PiiRedactor

    ctx = make_ctx(chat(("user", f"Write to {email} please"), temperature=0), request_id=request_id)
    masked = await PiiRedactor({"restore": True}).execute(ctx)
    assert masked.body is not None
    ctx.body = masked.body
    return ctx


async def test_cache_stores_placeholders_and_restores_each_requests_own_pii(
    make_ctx, chat, completion, store
) -> None:
    from ringd.plugins.response_sanitizer import ResponseSanitizer

    lookup, save, sanitizer = (
        ResponseCacheLookup(),
        ResponseCacheStore(),
        ResponseSanitizer({"restore_pii": True}),
    )
    first = await _pre_flight(make_ctx, chat, "ana@example.com", "r1")
    assert (await lookup.execute(first)).action is PluginAction.PASSTHROUGH
    # POST_FLIGHT: the model answers with the placeholder; the sanitizer restores it.
    post = make_ctx(first.body, metadata=dict(first.metadata), response=completion("Sent to [EMAIL_1]."))
    post.request_id = "r1"
    await sanitizer.execute(post)
    assert post.response["choices"][0]["message"]["content"] == "Sent to ana@example.com."
    await save.execute(post)
    assert post.metadata["_cache_stored"] is True
    stored = await store.get_state(f"response_cache:{first.metadata['_cache_key']}")
    assert stored["choices"][0]["message"]["content"] == "Sent to [EMAIL_1]."  # no PII at rest

    # Another client, other address, same masked prompt: a hit with its own address put back.
    second = await _pre_flight(make_ctx, chat, "bo@example.org", "r2")
    hit = await lookup.execute(second)
    assert hit.action is PluginAction.CACHE_HIT
    assert hit.response is not None
    assert hit.response["choices"][0]["message"]["content"] == "Sent to bo@example.org."


async def test_cache_stores_nothing_when_the_mapping_does_not_open(make_ctx, chat, completion) -> None:
    first = await _pre_flight(make_ctx, chat, "ana@example.com", "r1")
    await ResponseCacheLookup().execute(first)
    post = make_ctx(
        first.body, metadata=dict(first.metadata), response=completion("Sent to ana@example.com.")
    )
    post.request_id = "another-request"  # the seal is bound to r1
    outcome = await ResponseCacheStore().execute(post)
    assert post.metadata["_cache_stored"] is False
    assert "does not open" in (outcome.message or "")
