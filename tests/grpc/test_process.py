"""``ringd serve`` as an operator runs it: a process, signals, and its exit status.

SIGTERM under load drains (in-flight calls and the background queue finish, health
turns NOT_SERVING) and exits 0; SIGHUP reloads the config file.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.process import RingdProcess, StartRingd
from support.rpc import context, ring_request
from support.workspace import Workspace, entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def spawn(workspace: Workspace, ringd_process: StartRingd) -> Callable[[], RingdProcess]:
    """Start ``ringd serve --config ... --listen 127.0.0.1:0``; stopped at teardown if still running."""

    def start() -> RingdProcess:
        config = str(workspace.config_path)
        return ringd_process("--config", config, "--listen", "127.0.0.1:0", cwd=workspace.root)

    return start


async def exit_code(ringd: RingdProcess) -> int:
    """Wait (off the event loop) for the process to exit by itself."""
    return await asyncio.to_thread(ringd.wait, 30)


async def health_status(channel: grpc.aio.Channel) -> str:
    """SERVING / NOT_SERVING, or the status code name when the call is refused."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.aio.AioRpcError as refused:
        return refused.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_sigterm_under_load_finishes_in_flight_calls_and_exits_zero(spawn, workspace):
    started_log = workspace.root / "started.log"
    background_done = workspace.root / "background.done"
    workspace.write_config(
        [
            entry("slow", timeout_ms=5000, config={"sleep_s": 0.3, "started_log": str(started_log)}),
            entry("usage", "background", config={"sleep_s": 0.3, "touch": str(background_done)}),
        ],
        server={"grace_s": 60},
    )
    ringd = spawn()
    async with grpc.aio.insecure_channel(ringd.address) as channel:
        stub = engine_grpc.PluginEngineServiceStub(channel)
        # A watcher, as gRPC client-side health checking or a load balancer holds one.
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        calls = [
            asyncio.ensure_future(
                stub.ExecuteRing(
                    ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT, request_id=f"r{i}"), timeout=10
                )
            )
            for i in range(20)
        ]
        async with asyncio.timeout(30):  # every call is inside its plugin (a bound for a busy machine)
            while not started_log.exists() or len(started_log.read_text().split()) < 20:
                await asyncio.sleep(0.01)
        queued = await stub.ExecuteRing(
            ring_request(pb.PLUGIN_HOOK_BACKGROUND, CHAT, request_id="bg"), timeout=5
        )
        assert queued.queued  # and still running when the signal comes

        ringd.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        assert (await asyncio.wait_for(watch.read(), 30)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        answers = await asyncio.gather(*calls)
        # The watch ends once it has said NOT_SERVING, so it does not hold the drain.
        assert await asyncio.wait_for(watch.read(), 30) == grpc.aio.EOF

    assert len(answers) == 20
    for answer in answers:
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    assert await exit_code(ringd) == 0, ringd.log()
    # Ordering, not speed: the process ended once its work was done, well before the grace ran out.
    assert time.monotonic() - signalled < 40, "the drain waited for the grace time (60 s)"
    assert background_done.read_text() == "bg", "the background queue was not drained"
    assert "Traceback" not in ringd.log()


async def test_new_calls_are_refused_while_draining(spawn, workspace):
    started_log = workspace.root / "started.log"
    workspace.write_config(
        # In flight for 3 s: the new call below is refused during the drain, not after it.
        [entry("slow", timeout_ms=10000, config={"sleep_s": 3.0, "started_log": str(started_log)})],
        server={"grace_s": 30},
    )
    ringd = spawn()
    async with grpc.aio.insecure_channel(ringd.address) as channel:
        stub = engine_grpc.PluginEngineServiceStub(channel)
        in_flight = asyncio.ensure_future(
            stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT), timeout=10)
        )
        async with asyncio.timeout(30):  # bounds for a busy machine
            while not started_log.exists():
                await asyncio.sleep(0.01)
        ringd.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            while await health_status(channel) == "SERVING":
                await asyncio.sleep(0.01)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done(), "refused during the drain, with a call still in flight"
        answer = await in_flight

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert await exit_code(ringd) == 0, ringd.log()


async def test_sighup_reloads_the_config_file(spawn, workspace):
    workspace.write_config([entry("tagger", config={"set_metadata": {"gen": "one"}})], version="v1")
    ringd = spawn()
    request = engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=context(CHAT))
    async with grpc.aio.insecure_channel(ringd.address) as channel:
        stub = engine_grpc.PluginEngineServiceStub(channel)
        first = await stub.ExecuteRing(request, timeout=5)
        assert (first.config_version, first.generation) == ("v1", 1)

        workspace.write_config([entry("tagger", config={"set_metadata": {"gen": "two"}})], version="v2")
        ringd.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):  # a bound for a busy machine
            while (answer := await stub.ExecuteRing(request, timeout=5)).generation == 1:
                await asyncio.sleep(0.02)
        assert (answer.config_version, answer.generation) == ("v2", 2)
        assert answer.metadata["gen"].string_value == "two"

        # A broken file is refused: the log says why, and generation 2 keeps serving.
        workspace.write_config(
            [entry("tagger"), entry("newcomer", entrypoint="broken.py:Broken")], version="v3"
        )
        ringd.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):  # a bound for a busy machine
            while "SIGHUP reload rejected" not in ringd.log():
                await asyncio.sleep(0.02)
        assert "newcomer" in ringd.log()
        after = await stub.ExecuteRing(request, timeout=5)
        assert (after.config_version, after.generation) == ("v2", 2)

    ringd.process.send_signal(signal.SIGTERM)
    assert await exit_code(ringd) == 0, ringd.log()
    assert "Traceback" not in ringd.log()
