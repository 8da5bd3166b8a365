"""Soak: hold ringd at ~80% of its measured maximum while reloading the config every 3 s.

Starts a real ``ringd serve`` (admin service on its own unix socket, behind a token)
with a ring of plugins that each stamp their config value into the metadata: a flaky
one (5% errors, 1% timeouts, fail_policy open, so its failures are bypasses) and one
that blocks requests carrying a known marker (so every expected block is known).

1. Burst: N closed-loop workers for a few seconds measure the maximum throughput.
2. Hold: an open loop at ``--load`` (0.8) of that rate for ``--duration`` seconds,
   rewriting the config (each plugin's value changed) and reloading it through the
   admin RPC every ``--reload-every`` seconds, sampling the server's RSS.

Checks (exit 1 when any fails): no failed call but the expected blocks; no generation
mix (in every answer all plugins report one value, the one of the answer's generation
and config version); server RSS growth under ``--max-rss-growth`` (10%) between the
first and last 10 s of the hold (a third of it in short runs); a clean server log; the
reloads took effect. Throughput (the burst's maximum, the rate held, latency) is
reported, never checked: it measures the machine as much as ringd.

    .venv/bin/python scripts/soak.py                 # 60 s
    .venv/bin/python scripts/soak.py --duration 5    # the CI variant (tests/reliability/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml
from ringd.server.launch import start_serve, stop_process

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

PLUGINS_PY = '''
import asyncio
import random

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Stamp(BasePlugin):
    """Writes its config value into the metadata under its own name."""

    name = "stamp"
    hook = PluginHook.PRE_FLIGHT
    version = "1.0.0"
    timeout_ms = 1000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        ctx.metadata["value:" + self.config["name"]] = self.config["value"]
        return PluginResponse.passthrough()


class Flaky(Stamp):
    """Fails 5% of calls and runs past its timeout on 1%; otherwise stamps."""

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        draw = random.random()
        if draw < self.config["error_rate"]:
            raise RuntimeError("flaky plugin failed on purpose")
        if draw < self.config["error_rate"] + self.config["timeout_rate"]:
            await asyncio.sleep(self.config["sleep_s"])
        return await super().execute(ctx)


class Marker(Stamp):
    """Blocks a request whose body carries the marker; otherwise stamps."""

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        if ctx.body.get("soak_marker") == self.config["marker"]:
            return PluginResponse.block(403, "soak_marker", "blocked on purpose")
        return await super().execute(ctx)
'''

MARKER = "block-me"
BLOCK_EVERY = 50  # every 50th call carries the marker: 2% expected blocks
BODY = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hello, soak"}]}'
MARKED_BODY = (
    b'{"model": "gpt-4o", "soak_marker": "'
    + MARKER.encode()
    + b'", "messages": [{"role": "user", "content": "x"}]}'
)


def plugin_entries(value: int) -> list[dict[str, object]]:
    def entry(name: str, cls: str, priority: int, **extra: object) -> dict[str, object]:
        config = {"name": name, "value": value, **extra.pop("config", {})}  # type: ignore[dict-item]
        return {
            "name": name,
            "hook": "pre_flight",
            "entrypoint": f"soak_plugins.py:{cls}",
            "priority": priority,
            "config": config,
            **extra,
        }

    return [
        entry("stamp_first", "Stamp", 10),
        entry(
            "flaky",
            "Flaky",
            20,
            fail_policy="open",
            timeout_ms=50,
            config={"error_rate": 0.05, "timeout_rate": 0.01, "sleep_s": 0.2},
        ),
        entry("marker", "Marker", 30, config={"marker": MARKER}),
        entry("stamp_last", "Stamp", 40),
    ]


def write_config(folder: Path, value: int, token: str) -> Path:
    """The config for plugin value ``value``, written atomically (version ``soak-<value>``)."""
    document = {
        "version": f"soak-{value}",
        "store": str(folder / "soak.db"),
        "server": {"admin_token": token},
        "plugins": plugin_entries(value),
    }
    path = folder / "ringd.yaml"
    scratch = folder / "ringd.yaml.new"
    scratch.write_text(yaml.safe_dump(document, sort_keys=False))
    os.replace(scratch, path)
    return path


# ------------------------------------------------------------------ the server process


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    address: str
    admin_address: str
    log_path: Path

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/PID/status")


@contextlib.contextmanager
def ringd_server(folder: Path, config: Path) -> Iterator[Server]:
    admin_socket = folder / "admin.sock"
    log_path = folder / "ringd.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGD_", "OTEL_"))}
    args = ["--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", f"unix:{admin_socket}"]
    with (folder / "ringd.stdout").open("wb") as out:
        process, ready = start_serve(args, log=log_path, stdout=out, env=env)
    try:
        yield Server(process, ready.address, ready.admin_listen[0], log_path)
    finally:
        stop_process(process)


# ------------------------------------------------------------------ load


@dataclass
class Tally:
    """What the calls of one phase saw."""

    calls: int = 0
    marked: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    blocks: int = 0
    bypasses: int = 0
    flaky_errors: int = 0
    flaky_timeouts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # (generation, config_version, the values the plugins stamped) -> answers
    stamps: Counter[tuple[int, str, tuple[int, ...]]] = field(default_factory=Counter)

    def failure(self, what: str) -> None:
        self.failures[what] += 1


REQUESTS = {
    marked: engine_pb.ExecuteRingRequest(
        ring=pb.PLUGIN_HOOK_PRE_FLIGHT,
        context=pb.PluginContext(body_json=MARKED_BODY if marked else BODY),
    )
    for marked in (False, True)
}


async def one_call(stub: engine_grpc.PluginEngineServiceStub, number: int, tally: Tally) -> None:
    marked = number % BLOCK_EVERY == 0
    tally.marked += marked
    started = time.perf_counter()
    try:
        answer = await stub.ExecuteRing(REQUESTS[marked], timeout=5)
    except grpc.aio.AioRpcError as error:
        tally.calls += 1
        tally.failure(f"status {error.code().name}: {error.details()}")
        return
    tally.calls += 1
    tally.latencies_ms.append((time.perf_counter() - started) * 1000)
    if answer.action == pb.PLUGIN_ACTION_BLOCK:
        if marked and answer.decided_by == "marker" and answer.block.error_type == "soak_marker":
            tally.blocks += 1
        else:
            tally.failure(f"unexpected block by {answer.decided_by!r}: {answer.block.message}")
    elif marked:
        tally.failure("a marked request was not blocked")
    elif answer.action != pb.PLUGIN_ACTION_PASSTHROUGH:
        tally.failure(f"unexpected action {pb.PluginAction.Name(answer.action)}")
    stamped: list[int] = []
    for result in answer.results:
        if result.outcome == pb.PLUGIN_OUTCOME_BYPASSED:
            tally.bypasses += 1
            if "timed out" in result.error:
                tally.flaky_timeouts += 1
            else:
                tally.flaky_errors += 1
            continue
        if result.outcome != pb.PLUGIN_OUTCOME_OK:
            tally.failure(f"plugin {result.plugin!r}: outcome {pb.PluginOutcome.Name(result.outcome)}")
            continue
        if result.action == pb.PLUGIN_ACTION_BLOCK:
            continue  # the marker's block: it stamps nothing
        value = answer.metadata.get(f"value:{result.plugin}")
        if value is None:
            tally.failure(f"plugin {result.plugin!r} ran but stamped nothing")
            continue
        stamped.append(int(value.number_value))
    tally.stamps[(answer.generation, answer.config_version, tuple(sorted(set(stamped))))] += 1


async def burst(
    stub: engine_grpc.PluginEngineServiceStub, workers: int, seconds: float
) -> tuple[float, Tally]:
    """Closed loop: ``workers`` callers back to back; returns calls per second."""
    tally = Tally()
    stop_at = time.perf_counter() + seconds
    counter = iter(range(1, 10**12))

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            await one_call(stub, next(counter), tally)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return tally.calls / (time.perf_counter() - started), tally


async def hold(
    stub: engine_grpc.PluginEngineServiceStub, rate: float, seconds: float, max_outstanding: int
) -> tuple[float, Tally, int]:
    """Open loop at ``rate`` calls/s; returns the achieved rate, the tally and the calls started late."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    started = loop.time()
    launched = late = 0
    while True:
        elapsed = loop.time() - started
        if elapsed >= seconds:
            break
        due = int(elapsed * rate)
        if due - launched > max_outstanding:
            late += due - launched - max_outstanding
            launched = due - max_outstanding  # the client fell behind: do not burst to catch up
        while launched < due and len(pending) < max_outstanding:
            launched += 1
            task = asyncio.create_task(one_call(stub, launched, tally))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.001)
    if pending:
        await asyncio.gather(*pending)
    return tally.calls / (loop.time() - started), tally, late


async def reloader(
    folder: Path,
    admin_address: str,
    token: str,
    every_s: float,
    stop: asyncio.Event,
    generations: dict[int, int],
) -> list[str]:
    """Every ``every_s``: write the config with the next value and reload it; returns failures."""
    failures: list[str] = []
    value = 0
    async with grpc.aio.insecure_channel(admin_address) as channel:
        admin = admin_grpc.PluginAdminServiceStub(channel)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return failures
            value += 1
            write_config(folder, value, token)
            try:
                reply = await admin.ReloadConfig(
                    admin_pb.ReloadConfigRequest(),
                    timeout=10,
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            except grpc.aio.AioRpcError as error:
                failures.append(f"reload to value {value}: {error.code().name}: {error.details()}")
                continue
            if reply.config_version != f"soak-{value}":
                failures.append(f"reload to value {value} answered config {reply.config_version}")
            generations[reply.generation] = value


async def sample_rss(server: Server, stop: asyncio.Event, samples: list[tuple[float, int]]) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not stop.is_set():
        samples.append((loop.time() - started, server.rss_kb()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def generation_mix(tally: Tally, generations: dict[int, int]) -> list[str]:
    problems = []
    for (generation, version, values), count in tally.stamps.items():
        expected = generations.get(generation)
        if expected is None:
            problems.append(f"{count} answers from generation {generation}, which no reload produced")
        elif values != (expected,):
            problems.append(
                f"{count} answers of generation {generation} (value {expected}) stamped {list(values)}"
            )
        elif version != f"soak-{expected}":
            problems.append(f"{count} answers of generation {generation} say config {version}")
    return problems


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# ------------------------------------------------------------------ main


async def soak(args: argparse.Namespace, folder: Path) -> int:
    token = secrets.token_urlsafe(24)
    (folder / "soak_plugins.py").write_text(textwrap.dedent(PLUGINS_PY).lstrip())
    config = write_config(folder, 0, token)
    with ringd_server(folder, config) as server:
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            stub = engine_grpc.PluginEngineServiceStub(channel)
            await burst(stub, args.workers, 0.5)  # warm up: connect, import, JIT-free caches
            burst_s = args.burst if args.burst else (2.0 if args.duration < 20 else 5.0)
            max_rps, burst_tally = await burst(stub, args.workers, burst_s)
            target = max_rps * args.load
            print(f"max throughput {max_rps:.0f} calls/s ({args.workers} workers, {burst_s:.0f} s burst)")
            print(f"holding {target:.0f} calls/s ({args.load:.0%}) for {args.duration:.0f} s, "
                  f"reloading every {args.reload_every:.0f} s", flush=True)  # fmt: skip

            generations = {1: 0}
            stop = asyncio.Event()
            rss: list[tuple[float, int]] = []
            reloads = asyncio.create_task(
                reloader(folder, server.admin_address, token, args.reload_every, stop, generations)
            )
            sampler = asyncio.create_task(sample_rss(server, stop, rss))
            held_rps, tally, late = await hold(stub, target, args.duration, max_outstanding=args.workers * 4)
            stop.set()
            reload_failures = await reloads
            await sampler
    log = server.log_path.read_text(errors="replace")

    window = min(10.0, args.duration / 3)
    first = [kb for t, kb in rss if t <= window]
    last = [kb for t, kb in rss if t >= args.duration - window]
    rss_start = statistics.median(first) if first else 0
    rss_end = statistics.median(last) if last else 0
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else 0.0
    mix = generation_mix(tally, generations) + generation_mix(burst_tally, {1: 0})
    failures = tally.failures + burst_tally.failures
    checks = {
        "no failed calls but the expected blocks": not failures and not reload_failures,
        "no generation mix": not mix,
        f"RSS growth under {args.max_rss_growth:.0f}%": growth < args.max_rss_growth,
        "a clean server log": "Traceback" not in log and "unexpected error" not in log,
        "reloads took effect": len(generations) - 1 >= max(1, int(args.duration / args.reload_every) - 1),
    }
    calls = tally.calls
    print(
        textwrap.dedent(
            f"""
            throughput   max {max_rps:.0f}/s, held {held_rps:.0f}/s = {held_rps / max(target, 1e-9):.0%} of \
the target {target:.0f}/s ({late} calls late; a figure, not a check: it depends on the machine)
            calls        {calls} held (+{burst_tally.calls} in the burst)
            errors       {sum(tally.failures.values())} held, {sum(burst_tally.failures.values())} burst
            blocks       {tally.blocks} expected ({tally.marked} marked)
            bypasses     {tally.bypasses} ({tally.bypasses / max(calls, 1):.1%}): \
{tally.flaky_errors} errors, {tally.flaky_timeouts} timeouts of the flaky plugin
            reloads      {len(generations) - 1} ({len(reload_failures)} failed), generations seen \
{sorted({g for g, _, _ in tally.stamps})}
            RSS          start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, \
growth {growth:+.1f}% (median of the first and last {window:.0f} s)
            latency      p50 {percentile(tally.latencies_ms, 0.50):.2f} ms, \
p99 {percentile(tally.latencies_ms, 0.99):.2f} ms, max {max(tally.latencies_ms, default=0):.1f} ms"""
        )
    )
    for what, count in failures.most_common(10):
        print(f"  failure x{count}: {what}")
    for problem in [*reload_failures, *mix][:10]:
        print(f"  {problem}")
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if not checks["a clean server log"]:
        print(log[-3000:])
    return 0 if all(checks.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of held load (default 60)")
    parser.add_argument(
        "--load", type=float, default=0.8, help="fraction of the maximum to hold (default 0.8)"
    )
    parser.add_argument(
        "--workers", type=int, default=32, help="concurrent callers of the burst (default 32)"
    )
    parser.add_argument(
        "--burst", type=float, default=0.0, help="seconds of burst (default 2, or 5 from 20 s)"
    )
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between reloads (default 3)")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent (default 10)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (config, store, logs)")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(soak(args, args.keep))
    with tempfile.TemporaryDirectory(prefix="ringd-soak-") as folder:
        return asyncio.run(soak(args, Path(folder)))


if __name__ == "__main__":
    sys.exit(main())
