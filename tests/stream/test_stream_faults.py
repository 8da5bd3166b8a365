"""Limits and faults of StreamRing on a real server: bounds, cancel, deadline, failing plugins."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support.stream import END, STREAMER, chunk, chunk_message, chunks_of, open_message, read_all, stream_call
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import plugin_pb2 as pb


def streamer(name: str, **fields: object) -> dict[str, object]:
    config = fields.pop("config", {})
    return entry(
        name, "post_flight", entrypoint="streamer.py:Streamer", config={"tag": name, **config}, **fields
    )


@pytest.fixture
def streaming(workspace):
    workspace.plugin("streamer.py", STREAMER)
    return workspace


async def settled(running) -> tuple[int, int]:
    """The generation's streams in flight and the admission's calls in flight, once they settle."""
    generation = running.server.engine.generation
    for _ in range(200):
        if generation.inflight == 0 and running.server._admission.inflight == 0:
            break
        await asyncio.sleep(0.02)
    return generation.inflight, running.server._admission.inflight


async def test_held_back_text_past_the_limit_is_resource_exhausted_naming_it(serve, streaming):
    running = await serve(
        [streamer("hoarder", config={"window": 10_000})], server={"stream_max_held_chars": 100}
    )
    upstream = [chunk("", role="assistant"), *[chunk("x" * 30) for _ in range(5)]]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream_call(running.engine(), upstream)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server.stream_max_held_chars (100)" in raised.value.details()
    assert await settled(running) == (0, 0)


async def test_pending_chunks_past_the_limit_are_resource_exhausted_naming_it(serve, streaming):
    running = await serve(
        [entry("moderator", "post_flight", stream_mode="buffer")],
        server={"stream_max_pending_chunks": 3},
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream_call(running.engine(), chunks_of("one two three four", cuts=[4, 8, 14]))

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server.stream_max_pending_chunks (3)" in raised.value.details()


async def test_a_gateway_that_goes_away_cancels_the_stream_and_frees_it(serve, streaming):
    marker = streaming.root / "cancelled"
    started = streaming.root / "started"
    config = {"hang_on": "wait", "cancelled_marker": str(marker), "started_marker": str(started)}
    running = await serve([streamer("waiter", config=config, timeout_ms=60_000)])
    call = running.engine().StreamRing(timeout=60)
    await call.write(open_message())
    await call.write(chunk_message(chunk("please wait")))
    for _ in range(250):  # until the plugin is inside on_chunk, waiting
        if started.exists():
            break
        await asyncio.sleep(0.02)
    assert running.server.engine.generation.inflight == 1

    call.cancel()

    for _ in range(250):
        if marker.exists():
            break
        await asyncio.sleep(0.02)
    assert marker.read_text() == "cancelled"  # the plugin's call was cancelled, not left running
    assert await settled(running) == (0, 0)


async def test_a_deadline_ends_the_stream_cleanly(serve, streaming):
    running = await serve([streamer("swap", config={"window": 4})])
    call = running.engine().StreamRing(timeout=1.0)
    await call.write(open_message())
    await call.write(chunk_message(chunk("some text")))
    # ... and the upstream stalls: no more chunks, no end.

    assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await settled(running) == (0, 0)
    # the server serves the next stream as usual
    answer = await stream_call(running.engine(), chunks_of("next one"))
    assert answer.text == "next one"


async def test_a_raising_fail_open_plugin_lets_the_text_through_and_says_so(serve, streaming):
    running = await serve([streamer("flaky", config={"raise_on": "boom", "replace": {"a": "A"}})])

    answer = await stream_call(running.engine(), chunks_of("a boom b", cuts=[2]))

    # "a " went through the plugin; its failed call on "boom b" changed nothing
    assert answer.text == "A boom b"
    result = answer.last.done.results[0]
    assert result.outcome == pb.PLUGIN_OUTCOME_BYPASSED
    assert "RuntimeError: streamer refuses boom" in result.error


async def test_a_raising_fail_closed_plugin_blocks_the_stream(serve, streaming):
    running = await serve([streamer("strict", config={"raise_on": "boom"}, fail_policy="closed")])

    answer = await stream_call(running.engine(), chunks_of("fine, then boom", cuts=[6]))

    block = answer.last.block
    assert (block.block.status_code, block.block.error_type, block.decided_by) == (
        500,
        "plugin_error",
        "strict",
    )
    assert answer.text == "fine, "
    assert block.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR


async def test_a_plugin_that_suspends_on_some_chunks_rewrites_them_as_one_that_does_not(serve, streaming):
    # "first" suspends on the chunks holding "s" (its call is awaited, not settled inline),
    # then "second" runs inline on what it released: the mix keeps order and hold-back.
    running = await serve(
        [
            streamer(
                "first", config={"window": 4, "suspend_on": "s", "replace": {"cat": "dog"}}, priority=10
            ),
            streamer("second", config={"window": 4, "replace": {"dog": "wolf"}}, priority=20),
        ]
    )
    text = "a cat sat; this cat is the cat of us all"

    answer = await stream_call(running.engine(), chunks_of(text, cuts=[3, 4, 9, 14, 15, 22, 30]))

    assert answer.text == text.replace("cat", "wolf")
    results = answer.last.done.results
    assert [(r.plugin, r.outcome) for r in results] == [
        ("first", pb.PLUGIN_OUTCOME_OK),
        ("second", pb.PLUGIN_OUTCOME_OK),
    ]


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_a_plugin_that_suspends_then_raises_follows_its_fail_policy(serve, streaming, policy):
    config = {"suspend_on": "", "raise_on": "boom", "replace": {"a": "A"}}
    running = await serve([streamer("flaky", config=config, fail_policy=policy)])

    answer = await stream_call(running.engine(), chunks_of("a boom b", cuts=[2]))

    if policy == "open":  # as when it raises without suspending: through unchanged, and said
        assert answer.text == "A boom b"
        result = answer.last.done.results[0]
        assert result.outcome == pb.PLUGIN_OUTCOME_BYPASSED
    else:
        block = answer.last.block
        assert (block.block.status_code, block.block.error_type) == (500, "plugin_error")
        assert answer.text == "A "
        result = block.results[0]
        assert result.outcome == pb.PLUGIN_OUTCOME_ERROR
    assert "RuntimeError: streamer refuses boom" in result.error


async def test_a_hanging_plugin_times_out_by_its_policy_without_stalling_other_streams(serve, streaming):
    running = await serve([streamer("slow", config={"hang_on": "HANG"}, timeout_ms=1500)])
    order: list[str] = []

    async def hanging() -> None:
        answer = await stream_call(running.engine(), chunks_of("HANG here"))
        order.append("hanging")
        assert answer.text == "HANG here"  # fail-open: through unchanged after the timeout
        assert answer.last.done.results[0].outcome == pb.PLUGIN_OUTCOME_BYPASSED
        assert "timed out after 1500 ms" in answer.last.done.results[0].error

    async def others() -> None:
        for _ in range(5):
            answer = await stream_call(running.engine(), chunks_of("quick one", cuts=[3]))
            assert answer.text == "quick one"
        order.append("others")

    await asyncio.gather(hanging(), others())

    assert order == ["others", "hanging"]


async def test_a_hanging_fail_closed_plugin_blocks_504(serve, streaming):
    running = await serve(
        [streamer("slow", config={"hang_on": "HANG"}, timeout_ms=300, fail_policy="closed")]
    )

    answer = await stream_call(running.engine(), chunks_of("HANG"))

    assert answer.last.block.block.status_code == 504
    assert answer.last.block.block.error_type == "plugin_timeout"


async def test_streams_count_against_the_concurrency_limit(serve, streaming):
    running = await serve([streamer("swap")], server={"max_concurrent_rings": 1})
    first = running.engine().StreamRing(timeout=10)
    await first.write(open_message())
    await first.write(chunk_message(chunk("held open")))
    await first.read()

    second = running.engine().StreamRing(timeout=10)  # refused when it starts

    assert await second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await first.write(END)
    replies = await read_all(first)
    assert replies[-1].WhichOneof("kind") == "done"


async def test_the_breaker_counts_chunk_calls_and_opens(serve, streaming):
    running = await serve(
        [
            streamer(
                "flaky",
                config={"raise_on": "x"},
                circuit_breaker={"failure_rate": 1.0, "minimum_calls": 2, "cooldown_s": 60},
            )
        ]
    )

    answer = await stream_call(running.engine(), chunks_of("x x x x x", cuts=[2, 4, 6, 8]))

    assert answer.text == "x x x x x"  # fail-open: every chunk went through unchanged
    result = answer.last.done.results[0]
    assert result.outcome == pb.PLUGIN_OUTCOME_BYPASSED
    assert "circuit open (2 of 2 calls" in result.error
    plugins = (await running.admin().ListPlugins(admin_pb.ListPluginsRequest())).plugins
    assert plugins[0].status == pb.PLUGIN_STATUS_CIRCUIT_OPEN


async def test_a_run_in_thread_streaming_plugin_streams_on_a_worker_thread(serve, streaming):
    running = await serve(
        [streamer("threaded", config={"window": 6, "replace": {"cat": "dog"}}, run_in_thread=True)]
    )

    answer = await stream_call(running.engine(), chunks_of("a cat, a cat", cuts=[3, 4, 9]))

    assert answer.text == "a dog, a dog"
    assert answer.last.done.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    assert "seen_threaded" in answer.last.done.metadata  # its ctx edits came back from the thread


LATE_BLOCK = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class LateBlock(BasePlugin):
    name = "late_block"
    hook = PluginHook.POST_FLIGHT

    async def execute(self, ctx):
        return PluginResponse.passthrough()

    async def on_chunk(self, ctx, text):
        if "secret" not in text:
            return text
        response = PluginResponse(status_code=451, error_type="late", message="no secret")
        response.action = "block"  # a string, set after construction
        return response
"""


async def test_a_block_whose_action_was_set_as_a_string_blocks_the_stream(serve, streaming):
    streaming.plugin("late_block.py", LATE_BLOCK)
    running = await serve([entry("late", "post_flight", entrypoint="late_block.py:LateBlock")])

    answer = await stream_call(running.engine(), chunks_of("fine, then secret", cuts=[6]))

    block = answer.last.block
    assert (block.block.status_code, block.block.error_type, block.decided_by) == (451, "late", "late")
    assert "secret" not in answer.text
