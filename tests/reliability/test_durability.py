"""Store durability: SIGKILL a ``ringd serve`` process in the middle of a stream of store
writes, restart it on the same SQLite file, and find every acknowledged write there and
the database intact (``PRAGMA integrity_check``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import grpc
from support.process import RingdProcess, health_check
from support.rpc import context, metadata_of
from support.workspace import Workspace, entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

WRITER = f"{Path(__file__).parent / 'plugins' / 'writer.py'}:Writer"
WORKERS = 16
KILL_AFTER_ACKS = 400


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def stored_keys(path: Path) -> dict[str, dict]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key, value FROM kv WHERE key LIKE 'w:%'").fetchall()
    return {key.removeprefix("w:"): json.loads(value) for key, value in rows}


def counter(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM kv WHERE key = 'count'").fetchone()
    return int(row[0])


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    workspace.write_config(
        [entry("writer", entrypoint=WRITER)],
        version="durable",
        server={"plugin_dirs": [str(Path(__file__).parent / "plugins")]},  # a folder allowed explicitly
    )
    ringd = RingdProcess.for_config(workspace.config_path).start()
    acknowledged: list[str] = []
    failed: list[grpc.StatusCode] = []
    killed = asyncio.Event()

    async def stream(worker: int, stub: engine_grpc.PluginEngineServiceStub) -> None:
        sequence = 0
        while not killed.is_set():
            request_id = f"w{worker}-{sequence}"
            sequence += 1
            request = engine_pb.ExecuteRingRequest(
                ring=pb.PLUGIN_HOOK_PRE_FLIGHT,
                context=context({"n": sequence}, request_id=request_id),
            )
            try:
                answer = await stub.ExecuteRing(request, timeout=5)
            except grpc.aio.AioRpcError as error:
                failed.append(error.code())  # in flight when the process died: not acknowledged
                continue
            if answer.action == pb.PLUGIN_ACTION_PASSTHROUGH and answer.results[0].message == "written":
                acknowledged.append(request_id)
                if len(acknowledged) >= KILL_AFTER_ACKS and not killed.is_set():
                    os.kill(ringd.pid, signal.SIGKILL)  # mid-stream: the other workers are in flight
                    killed.set()

    try:
        async with grpc.aio.insecure_channel(ringd.address) as channel:
            stub = engine_grpc.PluginEngineServiceStub(channel)
            await asyncio.wait_for(asyncio.gather(*(stream(i, stub) for i in range(WORKERS))), 60)
        assert ringd.process is not None
        assert ringd.process.wait(10) == -signal.SIGKILL
        assert len(acknowledged) >= KILL_AFTER_ACKS
        assert set(failed) <= {grpc.StatusCode.UNAVAILABLE}, failed

        # Restart on the same store file.
        restarted = RingdProcess.for_config(workspace.config_path, name="restarted").start()
        try:
            assert health_check(restarted.address) == "SERVING"
            assert integrity(workspace.store_path) == "ok"
            stored = stored_keys(workspace.store_path)
            missing = [request_id for request_id in acknowledged if request_id not in stored]
            assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
            for request_id in acknowledged:
                assert stored[request_id]["request_id"] == request_id
            assert counter(workspace.store_path) >= len(acknowledged)
            print(
                f"acknowledged {len(acknowledged)}, failed {len(failed)}, stored {len(stored)}, "
                f"count {counter(workspace.store_path)}"
            )

            # The restarted server reads them through the store, and writes on.
            async with grpc.aio.insecure_channel(restarted.address) as channel:
                stub = engine_grpc.PluginEngineServiceStub(channel)
                last = acknowledged[-1]
                read = await stub.ExecuteRing(
                    engine_pb.ExecuteRingRequest(
                        ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=context({"read": f"w:{last}"})
                    ),
                    timeout=5,
                )
                assert metadata_of(read)["value"]["request_id"] == last
                assert metadata_of(read)["count"] >= len(acknowledged)
                after = await stub.ExecuteRing(
                    engine_pb.ExecuteRingRequest(
                        ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=context({"n": 0}, request_id="after-restart")
                    ),
                    timeout=5,
                )
                assert after.results[0].message == "written"
        finally:
            assert restarted.stop() == 0, restarted.log()
        assert integrity(workspace.store_path) == "ok"
        assert "after-restart" in stored_keys(workspace.store_path)
        assert "Traceback" not in restarted.log()
    finally:
        ringd.kill()
