"""Connections, streams and call metadata a caller can hold (issue 15, item 6): the gRPC
server options bound them, refusals are RESOURCE_EXHAUSTED with a message, and oversized
call metadata gets a clear answer without a gRPC core log line per call.

The wire checks speak HTTP/2 over a raw socket (in a thread: the server runs on this
test's event loop), so they see what the server sends, not what a client library makes of it.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct

import grpc
import pytest
from support.process import RingdProcess
from support.rpc import ring_request
from support.workspace import entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY = 1, 3, 4, 7
END_STREAM, END_HEADERS = 0x1, 0x4
SETTINGS_MAX_CONCURRENT_STREAMS = 3
WAIT_S = 30.0  # generous: the machine is slow and shared; the checks wait for an event, not a time


def h2_connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    sock.sendall(PREFACE + struct.pack(">I", 0)[1:] + bytes([SETTINGS, 0]) + struct.pack(">I", 0))
    return sock


def frames_until_closed(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(type, payload) of every frame the server sends until it closes the connection.

    Raises:
        TimeoutError: the server kept the connection open for WAIT_S.
    """
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    frames = []
    offset = 0
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        frames.append((data[offset + 3], data[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return frames


def first_settings(sock: socket.socket) -> dict[int, int]:
    header = b""
    while len(header) < 9:
        header += sock.recv(9 - len(header))
    length, kind = int.from_bytes(header[:3], "big"), header[3]
    payload = b""
    while len(payload) < length:
        payload += sock.recv(length - len(payload))
    assert kind == SETTINGS
    return {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, len(payload), 6)
    }


async def test_an_idle_connection_is_closed_with_goaway(serve):
    running = await serve([entry("guard")], server={"max_connection_idle_s": 0.5})

    def idle() -> list[int]:
        with h2_connect(running.address) as sock:
            return [kind for kind, _ in frames_until_closed(sock)]

    kinds = await asyncio.to_thread(idle)  # before the fix: still open after WAIT_S (TimeoutError)

    assert GOAWAY in kinds


async def test_an_old_connection_is_closed_with_goaway(serve):
    running = await serve(
        [entry("guard")],
        server={"max_connection_idle_s": 0, "max_connection_age_s": 0.5, "max_connection_age_grace_s": 0.5},
    )

    def old() -> list[int]:
        with h2_connect(running.address) as sock:
            return [kind for kind, _ in frames_until_closed(sock)]

    kinds = await asyncio.to_thread(old)  # idle never closes it here: only its age does

    assert GOAWAY in kinds


async def test_streams_per_connection_are_announced_and_connections_are_capped(serve):
    running = await serve([entry("guard")], server={"max_concurrent_streams": 7, "max_connections": 2})

    def connect_three() -> tuple[dict[int, int], list[int]]:
        first, second = h2_connect(running.address), h2_connect(running.address)
        try:
            settings = first_settings(first)
            first_settings(second)
            with h2_connect(running.address) as third:
                return settings, [kind for kind, _ in frames_until_closed(third)]
        finally:
            first.close()
            second.close()

    settings, third = await asyncio.to_thread(connect_three)

    assert settings[SETTINGS_MAX_CONCURRENT_STREAMS] == 7
    assert SETTINGS not in third  # the third connection was closed without being served


async def test_every_refusal_past_the_inflight_limit_is_resource_exhausted_with_a_message(serve):
    running = await serve(
        [entry("slow", config={"sleep_s": 0.5})], server={"max_concurrent_rings": 8, "max_open_calls": 5000}
    )
    # 40 connections with 75 calls each: under max_concurrent_streams (100) per connection,
    # whose excess a client sees as UNAVAILABLE (REFUSED_STREAM), a different limit.
    channels = [
        grpc.aio.insecure_channel(running.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(40)
    ]
    stubs = [engine_grpc.PluginEngineServiceStub(channel) for channel in channels]
    request = ring_request(PRE_FLIGHT, {"model": "m"})

    async def one(index: int) -> tuple[str, str]:
        try:
            await stubs[index % len(stubs)].ExecuteRing(request, timeout=60)
        except grpc.aio.AioRpcError as refused:
            return refused.code().name, refused.details() or ""
        return "OK", ""

    try:
        answers = await asyncio.gather(*(one(i) for i in range(3000)))
    finally:
        for channel in channels:
            await channel.close()

    codes = collections.Counter(code for code, _ in answers)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, (codes, {t for c, t in answers if c == "UNAVAILABLE"})
    assert codes["RESOURCE_EXHAUSTED"] > 0
    assert all("too many rings in flight (limit 8)" in text for code, text in answers if code != "OK")


def literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name (lengths under 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


class UnfinishedCalls:
    """A connection holding ExecuteRing calls whose 1 MiB request stops after 1 KiB.

    gRPC's limiter counts a finished call until its server task is done, a moment after
    the caller has the answer: a call arriving then is refused although a slot is about
    to be free. :meth:`replace_refused` opens a new unfinished call for each refused one,
    so the connection ends up holding as many as it asked for.
    """

    def __init__(self, address: str, count: int) -> None:
        self.address = address
        self.sock = h2_connect(address)
        self.open: set[int] = set()
        self.next_stream = 1
        self.received = b""
        for _ in range(count):
            self._open_one()

    def _open_one(self) -> None:
        block = b"".join(
            literal(name, value)
            for name, value in (
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/ringd.v1.PluginEngineService/ExecuteRing"),
                (":authority", self.address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            )
        )
        body = b"\x00" + struct.pack(">I", 1 << 20) + b"x" * 1024
        stream = struct.pack(">I", self.next_stream)
        self.sock.sendall(struct.pack(">I", len(block))[1:] + bytes([HEADERS, END_HEADERS]) + stream + block)
        self.sock.sendall(struct.pack(">I", len(body))[1:] + bytes([0, 0]) + stream + body)
        self.open.add(self.next_stream)
        self.next_stream += 2

    def replace_refused(self) -> int:
        """Open a new unfinished call for each one the server has answered; how many."""
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                self.received += chunk
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        closed = 0
        while len(self.received) >= 9:
            length = int.from_bytes(self.received[:3], "big")
            if len(self.received) < 9 + length:
                break
            kind, flags = self.received[3], self.received[4]
            stream = int.from_bytes(self.received[5:9], "big") & 0x7FFFFFFF
            self.received = self.received[9 + length :]
            ended = (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM
            if ended and stream in self.open:
                self.open.discard(stream)
                closed += 1
        for _ in range(closed):
            self._open_one()
        return closed

    def close(self) -> None:
        self.sock.close()


async def test_calls_whose_request_never_finishes_are_capped_by_max_open_calls(serve):
    running = await serve([entry("guard")], server={"max_open_calls": 3})
    stub = running.engine()
    await stub.ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=10)  # connected before the slots fill

    slowloris = await asyncio.to_thread(UnfinishedCalls, running.address, 3)
    try:
        refused = None
        for _ in range(400):  # until the server holds all three (it reads them on its own time)
            try:
                await stub.ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=10)
            except grpc.aio.AioRpcError as error:
                refused = error
                break
            await asyncio.sleep(0.05)
            await asyncio.to_thread(slowloris.replace_refused)
        assert refused is not None, "the unfinished calls held no slot"  # before the fix: all served
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.details()
    finally:
        slowloris.close()
    for _ in range(400):  # the slots are freed when that connection goes
        try:
            await stub.ExecuteRing(ring_request(PRE_FLIGHT, {}), timeout=10)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the slots were not freed after the connection closed")


async def test_oversized_call_metadata_gets_a_clear_answer_and_no_core_log_line(workspace):
    path = workspace.write_config([entry("guard")])
    ringd = RingdProcess.for_config(path).start()
    try:
        many = tuple((f"x-key-{index}", "v") for index in range(1000))
        async with grpc.aio.insecure_channel(ringd.address) as channel:
            stub = engine_grpc.PluginEngineServiceStub(channel)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ExecuteRing(ring_request(PRE_FLIGHT, {}), metadata=many, timeout=10)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                message = refused.value.details() or ""
                assert "call metadata is " in message, message  # before the fix: an empty message
                assert "server.max_call_metadata_bytes (16384)" in message
            answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, {}), metadata=many[:50], timeout=10)
            assert isinstance(answer, engine_pb.ExecuteRingResponse)
    finally:
        assert ringd.stop() == 0
    log = ringd.log()
    assert "metadata" not in log.lower(), log  # before the fix: a gRPC core line per call
    assert "hpack" not in log.lower(), log
