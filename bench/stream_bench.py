"""`make bench` (streams): StreamRing against a bare grpc.aio bidirectional echo, same client.

Each run opens ``--streams`` concurrent bidirectional streams and sends ``--chunks``
``chat.completion.chunk`` messages on each, lockstep (the next chunk once the answer
to the last has arrived, as a gateway relaying an upstream would), then the end
message. ringd runs POST_FLIGHT with two streaming plugins (``response_sanitizer``,
128-character look-ahead, and a rewrite plugin, 32); the echo server answers every
message with itself. Reported: chunks per second and ringd's ratio to the echo,
each server's CPU time per chunk (all its threads, from ``/proc``: less noisy than
throughput on a shared machine), and the latency ringd adds per chunk (its per-chunk
round trip minus the echo's), p50 and p99, under that load and on a single stream. Every ringd stream must end
with its ``done`` message and the expected text, or the benchmark fails (exit 1).

    python bench/stream_bench.py            # 50 streams x 200 chunks, median of 5 rounds
    python bench/stream_bench.py --smoke    # a few seconds, checks that it still works
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_bench import PYTHON, BenchError, Server, group_cpu_seconds, process, ringd_args
from grpc_bench import ringd as serve_ringd

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

HERE = Path(__file__).resolve().parent
METHOD = "/ringd.v1.PluginEngineService/StreamRing"
WORDS = [
    "the",
    "colour",
    "of",
    "the",
    "quarterly",
    "report",
    "is",
    "fine",
    "and",
    "the",
    "risks",
    "are",
    "listed",
    "below",
]


@dataclass
class Run:
    chunks_per_s: float
    latencies_ms: list[float]
    cpu_us: float
    """The server's CPU time (user + system, all its processes) per chunk, in microseconds."""

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def messages(chunks: int) -> tuple[list[bytes], str]:
    """The stream's messages (open, chunks, end) and the text ringd should release."""
    context = pb.PluginContext(body_json=b'{"model": "gpt-4o", "stream": true}', request_id="bench")
    out = [engine_pb.StreamRingRequest(open=engine_pb.StreamOpen(context=context)).SerializeToString()]
    text = []
    for i in range(chunks):
        piece = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3)) + " "
        text.append(piece)
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == chunks - 1 else None}],
        }
        data = json.dumps(chunk).encode()
        out.append(engine_pb.StreamRingRequest(chunk=engine_pb.StreamChunk(data=data)).SerializeToString())
    out.append(engine_pb.StreamRingRequest(end=engine_pb.StreamEnd()).SerializeToString())
    return out, "".join(text).replace("colour", "color")


async def one_stream(
    channel: grpc.aio.Channel, stream: list[bytes], latencies: list[float], check: str | None
) -> None:
    call = channel.stream_stream(METHOD)(timeout=300)
    await call.write(stream[0])
    if check is None:
        await call.read()  # the echo answers the open message too; ringd does not
    perf = time.perf_counter
    for message in stream[1:-1]:
        sent = perf()
        await call.write(message)
        reply = await call.read()
        latencies.append((perf() - sent) * 1000.0)
        if reply is grpc.aio.EOF:
            raise BenchError(f"the stream ended early: {await call.code()} {await call.details()}")
    await call.write(stream[-1])
    await call.done_writing()
    last = None
    while (reply := await call.read()) is not grpc.aio.EOF:
        last = reply
    if await call.code() != grpc.StatusCode.OK:
        raise BenchError(f"stream status {await call.code()}: {await call.details()}")
    if check is not None:
        answer = engine_pb.StreamRingResponse.FromString(last)
        if answer.WhichOneof("kind") != "done":
            raise BenchError(f"ringd's stream ended with {answer.WhichOneof('kind')}, not done")
        content = json.loads(answer.done.answer_json)["choices"][0]["message"]["content"]
        if content != check:
            raise BenchError("ringd released other text than expected")


async def drive(server: Server, streams: int, stream: list[bytes], check: str | None) -> Run:
    latencies: list[float] = []
    channels = [grpc.aio.insecure_channel(server.address) for _ in range(max(1, streams // 10))]
    try:
        await asyncio.gather(*(one_stream(channels[0], stream, [], check) for _ in range(1)))  # warm up
        cpu_before = group_cpu_seconds(server.pgid)
        started = time.perf_counter()
        await asyncio.gather(
            *(one_stream(channels[i % len(channels)], stream, latencies, check) for i in range(streams))
        )
        elapsed = time.perf_counter() - started
        cpu_s = group_cpu_seconds(server.pgid) - cpu_before
    finally:
        for channel in channels:
            await channel.close()
    chunks = streams * (len(stream) - 2)
    return Run(chunks_per_s=chunks / elapsed, latencies_ms=latencies, cpu_us=cpu_s * 1e6 / chunks)


def measure(server: Server, streams: int, stream: list[bytes], check: str | None) -> Run:
    return asyncio.run(drive(server, streams, stream, check))


def best_of(server: Server, rounds: int, streams: int, stream: list[bytes], check: str | None) -> Run:
    """The median round by throughput (CPU per chunk: its median over the rounds)."""
    runs = sorted(
        (measure(server, streams, stream, check) for _ in range(rounds)), key=lambda r: r.chunks_per_s
    )
    median = runs[len(runs) // 2]
    median.cpu_us = statistics.median(run.cpu_us for run in runs)
    return median


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="5 streams x 20 chunks, one round")
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="runs per server; the median is reported")
    args = parser.parse_args()
    streams, chunks, rounds = (5, 20, 1) if args.smoke else (args.streams, args.chunks, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="ringd-stream-bench-"))
    for name in ("plugins.py", "stream.yaml"):
        shutil.copy(HERE / name, work / name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stream, expected = messages(chunks)
    runs: dict[str, dict[str, Run]] = {}
    try:
        with process([PYTHON, str(HERE / "echo_server.py")], cwd=work, env=env) as echo_server:
            runs["echo"] = {
                "load": best_of(echo_server, rounds, streams, stream, None),
                "single": best_of(echo_server, rounds, 1, stream, None),
            }
        with serve_ringd(ringd_args(work / "stream.yaml"), cwd=work, env=env) as ringd_server:
            runs["ringd"] = {
                "load": best_of(ringd_server, rounds, streams, stream, expected),
                "single": best_of(ringd_server, rounds, 1, stream, expected),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo, ringd = runs["echo"], runs["ringd"]
    ratio = ringd["load"].chunks_per_s / echo["load"].chunks_per_s
    print(
        f"StreamRing: {streams} concurrent streams x {chunks} chunks, lockstep; POST_FLIGHT with 2 streaming "
        f"plugins; median of {rounds} round(s) per server"
    )
    print(
        f"  chunks/s: echo {echo['load'].chunks_per_s:,.0f}, ringd {ringd['load'].chunks_per_s:,.0f} "
        f"-> ratio {ratio:.2f} (target >= 0.6)"
    )
    print(
        f"  server CPU per chunk ({streams} streams): echo {echo['load'].cpu_us:.0f} us, "
        f"ringd {ringd['load'].cpu_us:.0f} us"
    )
    for kind, label in (("load", f"{streams} streams"), ("single", "1 stream")):
        added = [ringd[kind].percentile(q) - echo[kind].percentile(q) for q in (0.5, 0.99)]
        print(
            f"  per-chunk round trip, {label}: echo p50 {echo[kind].percentile(0.5):.3f} ms "
            f"p99 {echo[kind].percentile(0.99):.3f} ms; ringd p50 {ringd[kind].percentile(0.5):.3f} ms "
            f"p99 {ringd[kind].percentile(0.99):.3f} ms -> ringd adds p50 {added[0]:.3f} ms, p99 {added[1]:.3f} ms"
            + (" (target p50 <= 0.3 ms)" if kind == "single" else "")
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
