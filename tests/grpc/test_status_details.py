"""Errors reach a gateway as gRPC statuses with rich details (``google.rpc.Status``), read
here as a gateway would, with ``grpcio-status`` on a real client: ``BadRequest`` names the
field of a bad request, ``RetryInfo`` says when a refused call may be retried."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.rpc import context, ring_request, wait_for
from support.workspace import entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def details(error: grpc.aio.AioRpcError) -> tuple[list[error_details_pb2.BadRequest], list[float]]:
    """The BadRequest details and the RetryInfo delays (seconds) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status details on {error.code()}: {error.details()}"
    bad_requests, delays = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            bad_requests.append(bad)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delays.append(retry.retry_delay.ToNanoseconds() / 1e9)
    return bad_requests, delays


async def test_a_bad_request_names_its_field_in_a_bad_request_detail(serve):
    running = await serve([entry("guard")])
    stub = running.engine()

    bad_json = engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=context())
    bad_json.context.body_json = b"{not json"
    cases = {
        "ring": engine_pb.ExecuteRingRequest(context=context(CHAT)),
        "context.body_json": bad_json,
    }
    for field, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteRing(request, timeout=5)
        error = refused.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_requests, delays = details(error)
        assert [v.field for b in bad_requests for v in b.field_violations] == [field]
        assert bad_requests[0].field_violations[0].description == error.details()
        assert delays == [], "a bad request does not get better by retrying"


async def test_a_bad_entry_of_execute_rings_is_named_by_index(serve):
    running = await serve([entry("guard")])
    request = engine_pb.ExecuteRingsRequest(
        rings=[pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_BACKGROUND, pb.PLUGIN_HOOK_PRE_FLIGHT],
        context=context(CHAT),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.engine().ExecuteRings(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_requests, _ = details(refused.value)
    assert [v.field for v in bad_requests[0].field_violations] == ["rings[2]"]


async def test_a_full_background_queue_says_when_to_retry(serve):
    running = await serve(
        [entry("usage", "background", config={"sleep_s": 0.5})],
        server={"background_queue_size": 1, "background_workers": 1},
    )
    stub = running.engine()

    async def fill() -> None:
        for _ in range(3):  # one running, one waiting: the third at the latest finds the queue full
            await stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_BACKGROUND, CHAT), timeout=5)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fill()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_requests, delays = details(refused.value)
    assert bad_requests == []
    assert len(delays) == 1
    assert delays[0] > 0


async def test_a_draining_server_refuses_new_rings_unavailable_with_retry_info(serve, workspace):
    started = workspace.root / "started.log"
    running = await serve([entry("slow", config={"sleep_s": 1.0, "started_log": str(started)})])
    stub = running.engine()
    slow = asyncio.ensure_future(
        stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT, request_id="slow"), timeout=10)
    )
    await wait_for(started.exists)
    stopping = asyncio.create_task(running.server.stop(grace_s=10.0))

    async def refused() -> grpc.aio.AioRpcError:
        while True:  # INGRESS has no plugins: answered at once until the server drains
            try:
                await stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5)
            except grpc.aio.AioRpcError as error:
                return error
            await asyncio.sleep(0.01)

    error = await asyncio.wait_for(refused(), 10)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (error.details() or "")
    _, delays = details(error)
    assert delays == [0.0], "retry at once, on another replica"
    answer = await slow
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH, "the ring in flight finished"
    await stopping
