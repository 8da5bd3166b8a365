"""ExecuteRing and ExecuteRings over the wire, on TCP and on a unix socket.

Every action in both body forms (raw JSON bytes and Struct), the answer in the
caller's form; in-place edits; metadata carried by the caller from one ring into
the next; per-plugin results; the config version; BACKGROUND queued and run.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from support.rpc import context, metadata_of, payload, ring_request, wait_for
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}

FORMS = ["json", "struct"]
TRANSPORTS = ["tcp", "unix"]


def target(running, transport: str) -> str:
    return running.address if transport == "tcp" else running.unix_address


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("form", FORMS)
async def test_passthrough_returns_in_place_edits_in_the_callers_form(serve, form, transport):
    running = await serve(
        [
            entry("appender", config={"append_message": "be brief", "message": "appended"}),
            entry("tagger", config={"set_metadata": {"checked": True}}),
        ]
    )
    stub = running.engine(target(running, transport))

    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form=form), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.ring == PRE_FLIGHT
    assert not answer.HasField("decision")
    assert answer.decided_by == ""
    body_form, body = payload(answer, "body")
    assert body_form == form
    assert body["messages"] == [*CHAT["messages"], {"role": "system", "content": "be brief"}]
    assert body["model"] == "gpt-4o"
    assert metadata_of(answer) == {"checked": True}
    assert [(r.plugin, r.outcome, r.action) for r in answer.results] == [
        ("appender", pb.PLUGIN_OUTCOME_OK, pb.PLUGIN_ACTION_PASSTHROUGH),
        ("tagger", pb.PLUGIN_OUTCOME_OK, pb.PLUGIN_ACTION_PASSTHROUGH),
    ]
    assert answer.results[0].message == "appended"
    assert answer.config_version == "v1"
    assert answer.generation == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("form", FORMS)
async def test_modify_replaces_the_body_and_the_ring_goes_on(serve, form, transport):
    new_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "[redacted]"}]}
    running = await serve(
        [
            entry("rewriter", config={"action": "modify", "body": new_body, "message": "rewritten"}),
            entry("after", config={"append_message": "after modify"}),
        ]
    )
    stub = running.engine(target(running, transport))

    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form=form), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_MODIFY
    assert answer.decided_by == "rewriter"
    assert answer.decision.action == pb.PLUGIN_ACTION_MODIFY
    assert answer.decision.message == "rewritten"
    body_form, body = payload(answer, "body")
    assert body_form == form
    # The body is carried once, in `body`, not repeated in the decision.
    assert answer.decision.WhichOneof("body") is None
    # The next plugin ran on the replaced body.
    assert body == {
        **new_body,
        "messages": [*new_body["messages"], {"role": "system", "content": "after modify"}],
    }
    assert [r.plugin for r in answer.results] == ["rewriter", "after"]
    assert not answer.HasField("block")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("form", FORMS)
async def test_block_carries_status_error_type_and_message_and_ends_the_ring(serve, form, transport):
    running = await serve(
        [
            entry(
                "guard",
                config={
                    "action": "block",
                    "status": 429,
                    "error_type": "rate_limited",
                    "message": "slow down",
                },
            ),
            entry("never", config={"set_metadata": {"never": True}}),
        ]
    )
    stub = running.engine(target(running, transport))

    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form=form), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert (answer.block.status_code, answer.block.error_type, answer.block.message) == (
        429,
        "rate_limited",
        "slow down",
    )
    assert answer.decided_by == "guard"
    assert answer.decision.status_code == 429
    assert [r.plugin for r in answer.results] == ["guard"]
    assert answer.results[0].action == pb.PLUGIN_ACTION_BLOCK
    assert "never" not in metadata_of(answer)
    assert payload(answer, "body") == (form, CHAT)
    assert payload(answer, "cached_response") == (None, None)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("form", FORMS)
async def test_cache_hit_answers_with_the_cached_response_in_the_callers_form(serve, form, transport):
    cached = {"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    running = await serve(
        [
            entry("cache", config={"action": "cache", "response": cached, "message": "from cache"}),
            entry("never", config={"set_metadata": {"never": True}}),
        ]
    )
    stub = running.engine(target(running, transport))

    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form=form), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_CACHE_HIT
    assert answer.decided_by == "cache"
    assert payload(answer, "cached_response") == (form, cached)
    assert answer.decision.WhichOneof("response") is None  # carried once, in cached_response
    assert answer.decision.message == "from cache"
    assert not answer.HasField("block")
    assert [r.plugin for r in answer.results] == ["cache"]


@pytest.mark.parametrize("form", FORMS)
async def test_post_flight_edits_the_upstream_answer_in_the_callers_form(serve, form):
    running = await serve([entry("sanitize", "post_flight", config={"patch_response": {"sanitized": True}})])

    request = engine_pb.ExecuteRingRequest(
        ring=pb.PLUGIN_HOOK_POST_FLIGHT, context=context(CHAT, response={"content": "x"}, form=form)
    )
    answer = await running.engine().ExecuteRing(request, timeout=5)

    assert payload(answer, "response") == (form, {"content": "x", "sanitized": True})
    assert payload(answer, "body") == (form, CHAT)


async def test_a_struct_body_no_plugin_changed_comes_back_as_sent_or_as_it_encodes(serve):
    """The answer copies back a Struct body no plugin changed; one it would not encode the
    same (null-like values, too deep for an answer) is encoded as before."""
    running = await serve([entry("quiet"), entry("tagger", config={"set_metadata": {"seen": True}})])
    stub = running.engine()
    body = {**CHAT, "temperature": 0.2, "n": 2, "stream": False, "tools": [{"a": [1, [2.5, {"b": "c"}]]}]}

    same = ring_request(PRE_FLIGHT, body, form="struct")
    answer = await stub.ExecuteRing(same, timeout=5)
    assert answer.body_struct == same.context.body_struct
    assert metadata_of(answer) == {"seen": True}

    # Each alone: a Value with no kind set and a NaN are answered as null, -0.0 as 0 (as they
    # decode: None, nan, the integer 0).
    for key, setup, kind, number in [
        ("unset", lambda value: value.SetInParent(), "null_value", None),
        ("nan", lambda value: setattr(value, "number_value", math.nan), "null_value", None),
        ("zero", lambda value: setattr(value, "number_value", -0.0), "number_value", 1.0),
    ]:
        odd = ring_request(PRE_FLIGHT, CHAT, form="struct")
        setup(odd.context.body_struct.fields[key])
        answer = await stub.ExecuteRing(odd, timeout=5)
        value = answer.body_struct.fields[key]
        assert value.WhichOneof("kind") == kind, key
        if number is not None:  # the sign of the zero
            assert math.copysign(1.0, value.number_value) == number

    # 33 levels: deeper than an answer's Struct may nest (32), within the request's limit (64)
    # and what protobuf decodes (about 33).
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(32):
        deep = {"inner": deep}
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, deep, form="struct"), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert "nested deeper than 32 levels" in answer.block.message


async def test_metadata_written_by_ingress_is_read_by_pre_flight_when_the_caller_carries_it(serve):
    running = await serve(
        [
            entry("tenant", "ingress", config={"metadata_from_header": {"x-tenant": "tenant"}}),
            entry(
                "needs-tenant",
                config={"require_metadata": "tenant", "body_from_metadata": {"tenant": "user"}},
            ),
        ]
    )
    stub = running.engine()

    ingress = await stub.ExecuteRing(
        ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT, headers={"x-tenant": "acme"}, request_id="r-1"), timeout=5
    )
    assert ingress.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(ingress) == {"tenant": "acme"}

    # The server keeps nothing between calls: without the metadata the tenant is unknown...
    forgotten = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, request_id="r-1"), timeout=5)
    assert forgotten.action == pb.PLUGIN_ACTION_BLOCK
    assert forgotten.block.error_type == "missing_tenant"

    # ...and carried over by the gateway, the next ring reads it.
    carried = engine_pb.ExecuteRingRequest(ring=PRE_FLIGHT, context=context(CHAT, request_id="r-1"))
    for key, item in ingress.metadata.items():
        carried.context.metadata[key].CopyFrom(item)
    pre_flight = await stub.ExecuteRing(carried, timeout=5)
    assert pre_flight.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert payload(pre_flight, "body")[1]["user"] == "acme"
    assert metadata_of(pre_flight) == {"tenant": "acme"}


async def test_results_name_each_plugin_with_version_outcome_and_latency(serve):
    running = await serve(
        [
            entry("slow", config={"sleep_s": 0.02, "message": "slept"}),
            entry("failing", fail_policy="open", config={"action": "raise", "message": "kaput"}),
            entry("off", enabled=False),
            entry("last"),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    results = {r.plugin: r for r in answer.results}
    assert list(results) == ["slow", "failing", "off", "last"]
    assert all(r.version == "1.2.3" for r in answer.results)
    assert results["slow"].outcome == pb.PLUGIN_OUTCOME_OK
    assert results["slow"].action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert results["slow"].message == "slept"
    assert results["slow"].latency.ToNanoseconds() >= 20_000_000
    assert results["last"].latency.ToNanoseconds() > 0
    assert results["failing"].outcome == pb.PLUGIN_OUTCOME_BYPASSED
    assert results["failing"].action == pb.PLUGIN_ACTION_UNSPECIFIED
    assert "RuntimeError: kaput" in results["failing"].error
    assert "Traceback" not in results["failing"].error
    assert results["off"].outcome == pb.PLUGIN_OUTCOME_SKIPPED
    assert results["off"].latency.ToNanoseconds() == 0
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.config_version == "v1"
    assert answer.generation == 1


async def test_a_fail_closed_plugin_error_is_a_500_block_not_a_grpc_error(serve):
    running = await serve([entry("failing", config={"action": "raise", "message": "kaput"})])

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert (answer.block.status_code, answer.block.error_type) == (500, "plugin_error")
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR
    assert "kaput" in answer.results[0].error


async def test_execute_rings_runs_in_order_carrying_the_context_and_stops_at_the_first_block(serve):
    running = await serve(
        [
            entry("tenant", "ingress", config={"set_metadata": {"tenant": "acme"}, "trace": "ingress"}),
            entry("guard", config={"trace": "pre_flight", "body_from_metadata": {"tenant": "user"}}),
            entry("router", "routing", config={"trace": "routing", "set_metadata": {"upstream": "eu"}}),
        ]
    )
    stub = running.engine()
    rings = [pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT, pb.PLUGIN_HOOK_ROUTING]

    all_pass = await stub.ExecuteRings(
        engine_pb.ExecuteRingsRequest(rings=rings, context=context(CHAT)), timeout=5
    )

    assert [o.ring for o in all_pass.outcomes] == rings
    assert [o.action for o in all_pass.outcomes] == [pb.PLUGIN_ACTION_PASSTHROUGH] * 3
    last = all_pass.outcomes[-1]
    assert metadata_of(last) == {
        "tenant": "acme",
        "upstream": "eu",
        "ran": ["ingress", "pre_flight", "routing"],
    }
    assert payload(last, "body")[1]["user"] == "acme"

    # Make PRE_FLIGHT block: ROUTING must not run.
    running.workspace.write_config(
        [
            entry("tenant", "ingress", config={"set_metadata": {"tenant": "acme"}, "trace": "ingress"}),
            entry("guard", config={"action": "block", "status": 403, "error_type": "denied"}),
            entry("router", "routing", config={"trace": "routing", "set_metadata": {"upstream": "eu"}}),
        ],
        version="v2",
    )
    await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)

    blocked = await stub.ExecuteRings(
        engine_pb.ExecuteRingsRequest(rings=rings, context=context(CHAT)), timeout=5
    )

    assert [o.ring for o in blocked.outcomes] == rings[:2]
    assert blocked.outcomes[-1].action == pb.PLUGIN_ACTION_BLOCK
    assert blocked.outcomes[-1].block.error_type == "denied"
    assert "upstream" not in metadata_of(blocked.outcomes[-1])
    assert all(o.config_version == "v2" and o.generation == 2 for o in blocked.outcomes)


async def test_background_is_acknowledged_at_once_and_the_ring_runs_after(serve, workspace):
    running = await serve(
        [entry("usage", "background", config={"sleep_s": 1.0, "store_key": "usage:r-42"})],
    )
    stub = running.engine()

    answer = await stub.ExecuteRing(
        ring_request(pb.PLUGIN_HOOK_BACKGROUND, CHAT, request_id="r-42", response={"usage": 7}), timeout=5
    )

    assert answer.queued is True
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.ring == pb.PLUGIN_HOOK_BACKGROUND
    assert list(answer.results) == []
    assert (answer.config_version, answer.generation) == ("v1", 1)
    # Ordering: acknowledged before the ring (a 1 s plugin) has written its record.
    assert await asyncio.to_thread(workspace.stored, "usage:r-42") is None, "the acknowledgement waited"

    stored = await wait_for(lambda: workspace.stored("usage:r-42"))
    assert stored == {"request_id": "r-42", "body": CHAT}


async def test_one_server_serves_tcp_and_a_unix_socket_at_once(serve, workspace):
    running = await serve([entry("tagger", config={"set_metadata": {"seen": True}})])

    assert running.address.startswith("127.0.0.1:")
    assert not running.address.endswith(":0")
    assert running.unix_address == f"unix:{workspace.root / 'ringd.sock'}"
    assert (workspace.root / "ringd.sock").is_socket()
    over_tcp, over_unix = await asyncio.gather(
        running.engine(running.address).ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5),
        running.engine(running.unix_address).ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5),
    )
    for answer in (over_tcp, over_unix):
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        assert metadata_of(answer) == {"seen": True}


async def test_a_full_background_queue_answers_resource_exhausted(serve):
    running = await serve(
        [entry("usage", "background", config={"sleep_s": 0.5})],
        server={"background_queue_size": 1, "background_workers": 1},
    )
    stub = running.engine()

    outcomes = []
    for _ in range(3):  # one running, one waiting: the third at the latest finds the queue full
        try:
            outcomes.append(await stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_BACKGROUND, CHAT), timeout=5))
        except grpc.aio.AioRpcError as full:
            outcomes.append(full)
            break

    refused = outcomes[-1]
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "background queue is full" in (refused.details() or "")
    assert all(o.queued for o in outcomes[:-1])
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH


@pytest.mark.parametrize("form", ["json", "struct"])
async def test_a_queued_background_answer_carries_the_requests_body_response_and_metadata(serve, form):
    running = await serve([entry("usage", "background", config={"set_metadata": {"late": True}})])
    upstream = {"id": "chatcmpl-1", "usage": {"total_tokens": 7}}
    answer = await running.engine().ExecuteRing(
        ring_request(
            pb.PLUGIN_HOOK_BACKGROUND, CHAT, form=form, response=upstream, metadata={"tenant": "acme"}
        ),
        timeout=5,
    )

    assert answer.queued is True
    assert payload(answer, "body") == (form, CHAT)
    assert payload(answer, "response") == (form, upstream)
    assert metadata_of(answer) == {"tenant": "acme"}, "the request's metadata, not the ring's"


@pytest.mark.parametrize("form", ["json", "struct"])
async def test_a_queued_background_answer_without_a_body_answers_an_empty_one_in_the_responses_form(
    serve, form
):
    running = await serve([entry("usage", "background")])
    upstream = {"usage": {"total_tokens": 7}}
    request = ring_request(pb.PLUGIN_HOOK_BACKGROUND, form=form, response=upstream)  # no body

    answer = await running.engine().ExecuteRing(request, timeout=5)

    assert answer.queued is True
    assert answer.ring == pb.PLUGIN_HOOK_BACKGROUND
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert (answer.config_version, answer.generation) != ("", 0)
    assert payload(answer, "body") == (form, {})
    assert payload(answer, "response") == (form, upstream)
    assert list(answer.results) == []


async def test_a_queued_background_answer_gives_back_the_callers_json_bytes_as_sent(serve):
    running = await serve([entry("usage", "background", config={"set_metadata": {"late": True}})])
    # Spacing, key order and a number form that a re-encoding would all change.
    body = b'{ "messages": [ {"content": "hello", "role": "user"} ],\n  "model": "gpt-4o", "t": 1.0 }'
    upstream = b'{"usage": {"total_tokens": 7},   "id": "chatcmpl-1"}'
    request = ring_request(pb.PLUGIN_HOOK_BACKGROUND, metadata={"tenant": "acme"})
    request.context.body_json, request.context.response_json = body, upstream

    answer = await running.engine().ExecuteRing(request, timeout=5)

    assert answer.queued is True
    assert (answer.body_json, answer.response_json) == (body, upstream)
    assert metadata_of(answer) == {"tenant": "acme"}


async def test_a_queued_background_answer_of_execute_rings_carries_the_context_the_ring_got(serve):
    running = await serve(
        [
            entry("router", "routing", config={"set_metadata": {"route": "mini"}}),
            entry("usage", "background"),
        ]
    )
    request = engine_pb.ExecuteRingsRequest(
        rings=[pb.PLUGIN_HOOK_ROUTING, pb.PLUGIN_HOOK_BACKGROUND],
        context=context(CHAT, response={"usage": 7}),
    )
    answer = await running.engine().ExecuteRings(request, timeout=5)

    routed, queued = answer.outcomes
    assert not routed.queued
    assert queued.queued is True
    assert queued.ring == pb.PLUGIN_HOOK_BACKGROUND
    assert list(queued.results) == []
    assert payload(queued, "body") == ("json", CHAT)
    assert payload(queued, "response") == ("json", {"usage": 7})
    assert metadata_of(queued) == {"route": "mini"}
