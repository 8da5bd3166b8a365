"""What a caller can get wrong, and the server's limits: each bad request gets a status that
names the problem (never a traceback), and the server answers the next call normally.

Also: a ring answers before the caller's deadline, and the bound on concurrent rings.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from support.rpc import context, metadata_of, payload, ring_request
from support.workspace import entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
EXECUTE_RING = "/ringd.v1.PluginEngineService/ExecuteRing"
LIMITS = {"max_message_bytes": 65536, "max_metadata_keys": 8, "max_json_depth": 8, "max_message_parts": 5}
SIX_MESSAGES = {"messages": [{"role": "user", "content": "hi"}] * 6}
FIVE_PARTS = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}] * 5}]}  # 1 + 5
SIX_PROMPTS = {"prompt": ["hi"] * 6}


def nested(depth: int) -> dict:
    data: dict = {"leaf": True}
    for _ in range(depth - 1):
        data = {"child": data}
    return data


def nested_lists(depth: int) -> list:
    data: list = ["leaf"]
    for _ in range(depth - 1):
        data = [data]
    return data


def nested_mixed(depth: int) -> dict | list:
    """Objects in lists in objects ... (``depth`` levels), every kind of value beside them."""
    data: dict | list = {"leaf": "x", "n": 2.5, "i": 3, "t": True, "z": None}
    for level in range(depth - 1):
        data = [data, "s", 1, False, None] if level % 2 == 0 else {"child": data, "s": "t"}
    return data


def raw_body(body_json: bytes) -> engine_pb.ExecuteRingRequest:
    return engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=pb.PluginContext(body_json=body_json))


def with_metadata(metadata: dict) -> engine_pb.ExecuteRingRequest:
    return engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(CHAT, metadata=metadata))


BAD_REQUESTS = {
    "ring unspecified": (
        engine_pb.ExecuteRingRequest(context=context(CHAT)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["ring", "PLUGIN_HOOK_UNSPECIFIED"],
    ),
    "ring unknown": (
        engine_pb.ExecuteRingRequest(ring=42, context=context(CHAT)),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["ring", "42"],
    ),
    "body not JSON": (
        raw_body(b'{"model": "gpt-4o", '),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json", "not valid"],
    ),
    "body not UTF-8": (
        raw_body(b'{"model": "\xff\xfe"}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json", "byte 0xff at offset 11 is not UTF-8"],  # was "char 0": no position
    ),
    "body a JSON array": (
        raw_body(b'[{"role": "user"}]'),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json", "JSON object", "array"],
    ),
    "body a JSON string": (
        raw_body(b'"hello"'),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json", "JSON object", "string"],
    ),
    "body JSON nested too deep": (
        raw_body(json.dumps(nested(20)).encode()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json", "nested deeper than 8"],
    ),
    "body Struct nested too deep": (
        engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(nested(20), form="struct")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_struct", "nested deeper than 8"],
    ),
    "response not JSON": (
        engine_pb.ExecuteRingRequest(
            ring=pb.PLUGIN_HOOK_POST_FLIGHT, context=pb.PluginContext(response_json=b"NaN")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.response_json"],
    ),
    "metadata nested too deep": (
        with_metadata({"deep": nested(20)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.metadata['deep']", "nested deeper than 8"],
    ),
    "metadata list nested too deep": (
        with_metadata({"deep": [[[[[[[[[[["x"]]]]]]]]]]]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.metadata['deep']", "nested deeper than 8"],
    ),
    "too many metadata keys": (
        with_metadata({f"key{i}": i for i in range(9)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.metadata", "9 keys", "limit is 8"],
    ),
    "too many messages": (
        raw_body(json.dumps(SIX_MESSAGES).encode()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json has more than 5 messages and content parts", "server.max_message_parts (5)"],
    ),
    "too many content parts": (  # 100,000 parts in one message held the loop as long as messages
        raw_body(json.dumps(FIVE_PARTS).encode()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json has more than 5", "server.max_message_parts (5)"],
    ),
    "too many prompt entries": (
        raw_body(json.dumps(SIX_PROMPTS).encode()),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_json has more than 5", "server.max_message_parts (5)"],
    ),
    "too many messages, Struct": (
        engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(SIX_MESSAGES, form="struct")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_struct has more than 5", "server.max_message_parts (5)"],
    ),
    "too many content parts, Struct": (
        engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(FIVE_PARTS, form="struct")),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["context.body_struct has more than 5", "server.max_message_parts (5)"],
    ),
    "oversize message": (
        raw_body(json.dumps({"prompt": "x" * 100_000}).encode()),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        ["larger than max", "65536"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_is_refused_with_a_message_naming_the_problem(serve, case):
    request, code, words = BAD_REQUESTS[case]
    running = await serve([entry("tagger", config={"set_metadata": {"ok": True}})], server=LIMITS)
    stub = running.engine()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ExecuteRing(request, timeout=5)

    assert refused.value.code() == code, refused.value.details()
    details = refused.value.details() or ""
    for word in words:
        assert word in details
    assert "Traceback" not in details
    assert 'File "' not in details
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(answer) == {"ok": True}


async def test_the_limits_allow_what_is_within_them(serve):
    running = await serve([entry("tagger", config={"set_metadata": {"ok": True}})], server=LIMITS)
    metadata = {f"key{i}": nested(7) for i in range(8)}  # the metadata map is the first level

    answer = await running.engine().ExecuteRing(
        engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(nested(7), metadata=metadata)),
        timeout=5,
    )

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert payload(answer, "body")[1] == nested(7)
    assert metadata_of(answer) == {**metadata, "ok": True}
    four_parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}] * 4}]}
    for fits in ({"messages": [{"role": "user", "content": "hi"}] * 5}, four_parts, {"prompt": ["hi"] * 5}):
        for form in ("json", "struct"):
            request = engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(fits, form=form))
            answer = await running.engine().ExecuteRing(request, timeout=5)
            assert payload(answer, "body")[1] == fits


@pytest.mark.parametrize("shape", ["objects", "arrays", "mixed"])
@pytest.mark.parametrize("where", ["body_json", "body_struct", "metadata"])
async def test_the_depth_limit_counts_levels_alike_in_every_form(serve, where, shape):
    running = await serve([entry("tagger")], server=LIMITS)
    stub = running.engine()

    def request(levels: int) -> engine_pb.ExecuteRingRequest:
        # An object of `levels` levels: a top object holding `levels - 1` more, and an empty array.
        inner = {"objects": nested, "arrays": nested_lists, "mixed": nested_mixed}[shape](levels - 1)
        if where == "metadata":  # the metadata map is the top object
            return with_metadata({"a": inner, "b": []})
        body = {"a": inner, "b": []}
        return engine_pb.ExecuteRingRequest(
            ring=PRE_FLIGHT, context=context(body, form=where.removeprefix("body_"))
        )

    answer = await stub.ExecuteRing(request(8), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    if where != "metadata":  # decoded and encoded again, the body is what was sent
        inner = {"objects": nested, "arrays": nested_lists, "mixed": nested_mixed}[shape](7)
        assert payload(answer, "body")[1] == {"a": inner, "b": []}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ExecuteRing(request(9), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested deeper than 8 levels" in (refused.value.details() or "")


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff\xff", b"\x12\x05\x0a", b"\x08"],
    ids=["garbage", "truncated-context", "truncated-varint"],
)
async def test_bytes_that_are_not_a_protobuf_get_invalid_argument(serve, raw):
    running = await serve([entry("tagger", config={"set_metadata": {"ok": True}})])
    channel = running.channel()
    call = channel.unary_unary(EXECUTE_RING)  # no serializers: the bytes go out as they are

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(raw, timeout=5)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "ExecuteRingRequest" in details
    assert "Traceback" not in details
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert metadata_of(answer) == {"ok": True}


async def test_execute_rings_names_the_bad_entry(serve):
    running = await serve([entry("tagger")])
    stub = running.engine()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ExecuteRings(
            engine_pb.ExecuteRingsRequest(rings=[pb.PLUGIN_HOOK_INGRESS, 0], context=context(CHAT)), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rings[1]" in (refused.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.ExecuteRings(engine_pb.ExecuteRingsRequest(context=context(CHAT)), timeout=5)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rings" in (empty.value.details() or "")


@pytest.mark.parametrize(
    ("rings", "named", "words"),
    [
        ([pb.PLUGIN_HOOK_ROUTING] * 200_000, "rings", "200000 entries; each ring may appear at most once"),
        ([pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_INGRESS], "rings[1]", "INGRESS after INGRESS"),
        ([pb.PLUGIN_HOOK_ROUTING, pb.PLUGIN_HOOK_PRE_FLIGHT], "rings[1]", "PRE_FLIGHT after ROUTING"),
        ([pb.PLUGIN_HOOK_BACKGROUND, pb.PLUGIN_HOOK_INGRESS], "rings[1]", "INGRESS after BACKGROUND"),
    ],
    ids=["200k-rings", "repeated", "out-of-order", "background-not-last"],
)
async def test_execute_rings_runs_each_ring_once_in_gateway_order(serve, rings, named, words):
    running = await serve([entry("counter", "ingress", config={"trace": "ran"})])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.engine().ExecuteRings(
            engine_pb.ExecuteRingsRequest(rings=rings, context=context(CHAT)), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert details.startswith(named)
    assert words in details
    # Nothing ran: the request was refused before any plugin saw it.
    answer = await running.engine().ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5)
    assert metadata_of(answer) == {"ran": ["ran"]}


async def test_too_many_request_headers_are_refused_naming_the_limit(serve):
    running = await serve([entry("tagger")], server={"max_headers": 8})
    request = ring_request(PRE_FLIGHT, CHAT, headers={f"x-h{i}": "v" for i in range(9)})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.engine().ExecuteRing(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "context.request.headers has 9 entries; the limit is 8"
    fine = ring_request(PRE_FLIGHT, CHAT, headers={f"x-h{i}": "v" for i in range(8)})
    assert (await running.engine().ExecuteRing(fine, timeout=5)).action == pb.PLUGIN_ACTION_PASSTHROUGH


async def test_the_plugin_timeout_block_arrives_before_the_callers_deadline(serve):
    running = await serve(
        [entry("slow", timeout_ms=20000, fail_policy="closed", config={"sleep_s": 10.0})],
        server={"deadline_margin_ms": 3000},
    )
    stub = running.engine()
    await stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5)  # connect first

    # An answer at all is the point: past the caller's deadline it would be DEADLINE_EXCEEDED.
    # The server cuts the ring 3 s before the caller's 5 s deadline: time for the answer
    # to travel back even when a busy machine stalls this process for a second or more
    # (the CPU-load runs saw 1 s stalls with a 0.5 s margin).
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5.0)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert (answer.block.status_code, answer.block.error_type) == (504, "plugin_timeout")
    assert answer.decided_by == "slow"
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_TIMEOUT
    assert answer.results[0].latency.ToMilliseconds() < 5000  # cut at the deadline, not its 10 s sleep


async def test_rings_past_the_concurrency_bound_get_resource_exhausted(serve):
    running = await serve(
        [entry("slow", config={"sleep_s": 0.3})],
        server={"max_concurrent_rings": 2},
    )
    stub = running.engine()

    answers = await asyncio.gather(
        *(stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5) for _ in range(6)),
        return_exceptions=True,
    )

    served = [a for a in answers if isinstance(a, engine_pb.ExecuteRingResponse)]
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(served) == 2
    assert len(refused) == 4
    assert all(a.action == pb.PLUGIN_ACTION_PASSTHROUGH for a in served)
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many rings in flight (limit 2)" in (error.details() or "")
    # The slots are free again once the rings are done.
    again = await asyncio.gather(
        *(stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5) for _ in range(2))
    )
    assert all(a.action == pb.PLUGIN_ACTION_PASSTHROUGH for a in again)
