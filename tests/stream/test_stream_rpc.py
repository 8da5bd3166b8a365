"""StreamRing on a real server (port 0): hold-back, deltas in order, the assembled answer, BACKGROUND."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from support.stream import (
    STREAMER,
    chunk,
    chunk_message,
    chunks_of,
    open_message,
    read_all,
    released_text,
    stream_call,
)
from support.workspace import entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb


def streamer(name: str, **config: object) -> dict[str, object]:
    return entry(name, "post_flight", entrypoint="streamer.py:Streamer", config={"tag": name, **config})


@pytest.fixture
def streaming(workspace):
    workspace.plugin("streamer.py", STREAMER)
    return workspace


async def test_a_word_split_across_chunks_is_rewritten_within_the_window(serve, streaming):
    running = await serve([streamer("swap", window=8, replace={"secret": "[gone]"})])

    # "secret" arrives cut in three: no chunk holds it whole.
    answer = await stream_call(running.engine(), chunks_of("my secret is out", cuts=[5, 7, 11]))

    assert answer.text == "my [gone] is out"
    done = answer.last.done
    assert json.loads(done.answer_json)["choices"][0]["message"] == {
        "role": "assistant",
        "content": "my [gone] is out",
    }
    assert [r.plugin for r in done.results] == ["swap"]
    assert done.results[0].outcome == pb.PLUGIN_OUTCOME_OK


async def test_two_streaming_plugins_run_in_priority_order_and_release_only_what_both_saw(serve, streaming):
    running = await serve(
        [
            streamer("first", window=4, replace={"cat": "dog"}, priority=10),
            streamer("second", window=4, replace={"dog": "wolf"}, priority=20),
        ]
    )

    answer = await stream_call(running.engine(), chunks_of("a cat and a cat", cuts=[3, 4, 9, 13]))

    assert answer.text == "a wolf and a wolf"
    seen = json.loads(answer.last.done.answer_json)["choices"][0]["message"]["content"]
    assert seen == "a wolf and a wolf"
    # the second plugin never saw "cat": it gets only what the first released
    metadata = answer.last.done.metadata
    assert all("cat" not in text.string_value for text in metadata["seen_second"].list_value.values)


async def test_role_tool_call_and_finish_deltas_pass_intact_and_in_order(serve, streaming):
    running = await serve([streamer("swap", window=16, replace={"x": "y"})])
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    upstream = [
        chunk("", role="assistant"),
        chunk("xx"),
        chunk("x", tool_calls=[call]),
        chunk(tool_calls=[more]),
        chunk(finish="tool_calls"),
    ]

    answer = await stream_call(running.engine(), upstream)

    deltas = [choice["delta"] for released in answer.chunks for choice in released["choices"]]
    assert deltas[0]["role"] == "assistant"
    text_before_call = "".join(
        d.get("content") or ""
        for d in deltas[: next(i for i, d in enumerate(deltas) if "tool_calls" in d) + 1]
    )
    assert text_before_call == "yyy"
    assert [d["tool_calls"] for d in deltas if "tool_calls" in d] == [[call], [more]]
    assert answer.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    message = json.loads(answer.last.done.answer_json)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert message["content"] == "yyy"


async def test_choices_are_held_back_each_on_their_own(serve, streaming):
    running = await serve([streamer("swap", window=6, replace={"apple": "pear"})])
    upstream = [
        chunk("an ap", index=0),
        chunk("one ap", index=1),
        chunk("ple", index=0),
        chunk("ple", index=1),
        chunk(finish="stop", index=0),
        chunk(finish="stop", index=1),
    ]

    answer = await stream_call(running.engine(), upstream)

    assert released_text(answer.chunks, 0) == "an pear"
    assert released_text(answer.chunks, 1) == "one pear"
    choices = json.loads(answer.last.done.answer_json)["choices"]
    assert [c["message"]["content"] for c in choices] == ["an pear", "one pear"]


async def test_raw_sse_events_and_the_done_marker_are_accepted(serve, streaming):
    running = await serve([streamer("swap", replace={"a": "b"})])
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks_of("aaa", cuts=[1])] + [
        b"data: [DONE]\n\n"
    ]

    answer = await stream_call(running.engine(), events)

    assert answer.text == "bbb"
    assert answer.last.WhichOneof("kind") == "done"


async def test_every_chunk_gets_one_answer_and_held_text_comes_with_end(serve, streaming):
    running = await serve([streamer("hold", window=100)])

    answer = await stream_call(running.engine(), chunks_of("short", cuts=[2])[:-1])

    kinds = [reply.WhichOneof("kind") for reply in answer.replies]
    assert kinds == ["release", "release", "release", "release", "done"]
    assert [len(reply.release.chunks) for reply in answer.replies[1:3]] == [0, 0]
    assert answer.text == "short"
    assert answer.replies[3].release.chunks  # the text held back, released at end


async def test_usage_from_the_last_chunk_is_in_the_answer_and_background_records_it(serve, streaming):
    audit = streaming.root / "audit.jsonl"
    running = await serve(
        [
            streamer("swap", replace={"Hi": "Hello"}),
            entry(
                "usage_accounting", "background", entrypoint="ringd.plugins.usage_accounting:UsageAccounting"
            ),
            entry(
                "audit_log",
                "background",
                entrypoint="ringd.plugins.audit_log:AuditLog",
                config={"path": str(audit), "include_content": True},
            ),
        ]
    )
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    upstream = [*chunks_of("Hi there", cuts=[3]), chunk(usage=usage)]

    answer = await stream_call(running.engine(), upstream, request_id="req-stream-1")

    done = answer.last.done
    assert json.loads(done.answer_json)["usage"] == usage
    assert done.background_queued
    for _ in range(200):
        if audit.exists() and audit.read_text().strip():
            break
        await asyncio.sleep(0.05)
    record = json.loads(audit.read_text().splitlines()[-1])
    assert record["request_id"] == "req-stream-1"
    assert "Hello there" in json.dumps(record)
    assert record["metadata"]["usage"]["completion_tokens"] == 3


async def test_a_whole_answer_plugin_runs_after_release_and_its_block_ends_the_stream(serve, streaming):
    running = await serve(
        [
            streamer("swap", replace={"a": "a"}, priority=10),
            entry(
                "judge",
                "post_flight",
                priority=20,
                config={"action": "block", "status": 422, "error_type": "judged"},
            ),
        ]
    )

    answer = await stream_call(running.engine(), chunks_of("all fine", cuts=[4]))

    assert answer.text == "all fine"  # released before the judge ran
    block = answer.last.block
    assert (block.block.status_code, block.block.error_type, block.decided_by) == (422, "judged", "judge")
    assert block.released_chunks == 4
    assert block.background_queued


async def test_stream_mode_buffer_runs_before_anything_is_released(serve, streaming):
    running = await serve(
        [
            streamer("swap", replace={"a": "a"}, priority=10),
            entry(
                "moderator",
                "post_flight",
                priority=20,
                stream_mode="buffer",
                config={"action": "block", "status": 451, "error_type": "moderated"},
            ),
        ]
    )

    answer = await stream_call(running.engine(), chunks_of("bad words", cuts=[4]))

    assert answer.chunks == []
    assert answer.last.block.released_chunks == 0
    assert answer.last.block.block.error_type == "moderated"
    assert not answer.last.block.background_queued


async def test_stream_mode_buffer_releases_the_answer_it_rewrote(serve, streaming):
    running = await serve(
        [
            entry(
                "patcher",
                "post_flight",
                stream_mode="buffer",
                config={
                    "patch_response": {
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "patched"},
                                "finish_reason": "stop",
                            }
                        ]
                    }
                },
            ),
        ]
    )

    answer = await stream_call(running.engine(), chunks_of("original", cuts=[3]))

    assert answer.text == "patched"
    assert json.loads(answer.last.done.answer_json)["choices"][0]["message"]["content"] == "patched"


async def test_a_streaming_plugin_block_ends_the_stream_at_once(serve, streaming):
    running = await serve([streamer("guard", window=16, block_on="forbidden")])

    answer = await stream_call(running.engine(), chunks_of("this is forbidden text", cuts=[8, 12]))

    assert answer.last.WhichOneof("kind") == "block"
    assert answer.last.block.block.status_code == 451
    assert answer.last.block.decided_by == "guard"
    assert "forbidden" not in answer.text


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([chunk_message(chunk("x"))], "open"),
        ([open_message(), chunk_message(b"{not json")], "chunk[0]"),
        ([open_message(), chunk_message(b'{"choices": [{"index": "0"}]}')], "chunk[0]"),
        (
            [open_message(), chunk_message(b'{"choices": [{"index": 0, "delta": {"content": 5}}]}')],
            "chunk[0]",
        ),
        ([open_message(), open_message()], "open"),
        ([open_message(response={"choices": []})], "open.context.response_json"),
    ],
)
async def test_malformed_streams_are_refused_naming_the_problem(serve, streaming, messages, field):
    running = await serve([streamer("swap")])
    call = running.engine().StreamRing(timeout=10)
    try:
        for message in messages:  # each is refused before an end is needed
            await call.write(message)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server has already refused the stream: its status says why

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in await call.details()


@pytest.mark.parametrize("opened", [False, True])
async def test_bytes_that_are_not_a_stream_message_are_refused(serve, streaming, opened):
    running = await serve([streamer("swap")])
    call = running.channel().stream_stream("/ringd.v1.PluginEngineService/StreamRing")(timeout=10)
    messages = [open_message().SerializeToString(), b"\xff\xff\xff"] if opened else [b"\xff\xff\xff"]
    try:
        for message in messages:
            await call.write(message)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server has already refused the stream: its status says why

    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ringd.v1.StreamRingRequest" in await call.details()


async def test_a_stream_closed_without_end_is_refused(serve, streaming):
    running = await serve([streamer("swap")])
    call = running.engine().StreamRing(timeout=10)
    await call.write(open_message())
    await call.done_writing()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_all(call)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "end" in raised.value.details()


def test_stream_mode_on_another_ring_is_a_config_error(workspace):
    from ringd.server.exceptions import ConfigError

    plugin = "{name: a, hook: %s, entrypoint: 'scripted.py:Scripted', stream_mode: %s}"
    with pytest.raises(ConfigError, match=r"stream_mode.*post_flight plugins only"):
        workspace.config("version: v\nplugins:\n  - " + plugin % ("pre_flight", "buffer") + "\n")
    with pytest.raises(ConfigError, match=r"stream_mode"):
        workspace.config("version: v\nplugins:\n  - " + plugin % ("post_flight", "later") + "\n")
    assert engine_pb.StreamRingRequest  # the contract is importable as generated


async def test_a_stream_has_a_server_span_and_a_span_per_plugin(serve, streaming):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    running = await serve(
        [streamer("swap", window=4, replace={"a": "b"}), entry("after", "post_flight")],
        tracer_provider=provider,
    )

    await stream_call(running.engine(), chunks_of("a a a a a a", cuts=[2, 4, 6]))

    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"ringd.v1.PluginEngineService/StreamRing", "plugin swap", "plugin after"}
    server = spans["ringd.v1.PluginEngineService/StreamRing"]
    assert server.attributes["ringd.ring"] == "post_flight"
    assert spans["plugin swap"].parent.span_id == server.context.span_id
    assert spans["plugin swap"].attributes["ringd.plugin.outcome"] == "ok"
