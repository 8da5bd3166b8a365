"""`make bench`: ringd against a bare grpc.aio echo server, both driven by h2load.

Every case runs the echo server and ringd back to back with the same payload and
the same h2load settings, and reports ringd's throughput as a ratio of the echo
ceiling measured in the same run, so the figure means the same on any machine.
Every reply's gRPC status is checked: a run with any non-OK reply fails the
benchmark (exit 1), so a benchmark of errors cannot pass for a fast one.

    python bench/grpc_bench.py            # full run (~2 minutes)
    python bench/grpc_bench.py --smoke    # a few seconds, checks that it still works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ringd.server.launch import ServeFailed, start_serve

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
ENGINE = "/ringd.v1.PluginEngineService/"

_WORDS = [
    "please",
    "summarise",
    "the",
    "quarterly",
    "report",
    "and",
    "list",
    "the",
    "three",
    "main",
    "risks",
    "for",
    "the",
    "board",
    "with",
    "a",
    "short",
    "explanation",
    "of",
    "each",
    "and",
    "a",
    "recommendation",
    "on",
    "what",
    "to",
    "do",
    "next",
]
_PII = (
    "Contact jane.doe@example.com or +44 20 7946 0958, card 4111 1111 1111 1111, "
    "IBAN GB82 WEST 1234 5698 7654 32, server 192.168.10.24, key sk-abcdefghijklmnopqrstuvwx. "
)


def chat_body(size: int, *, pii: bool = False) -> dict[str, object]:
    """An OpenAI-style chat request of about ``size`` bytes of JSON."""
    messages = [{"role": "system", "content": "You are a helpful assistant for an enterprise team."}]
    body: dict[str, object] = {
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 512,
        "messages": messages,
    }
    turn = 0
    while len(json.dumps(body)) < size:
        words = " ".join(_WORDS[(turn + i) % len(_WORDS)] for i in range(60))
        content = (_PII + words) if pii else words
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": content})
        turn += 1
    return body


def ring_request(ring: int, body: dict[str, object], *, struct_form: bool = False) -> bytes:
    context = pb.PluginContext(session_id="bench-session", request_id="bench-request")
    if struct_form:
        context.body_struct.update(body)
    else:
        context.body_json = json.dumps(body).encode()
    context.metadata["tenant"].string_value = "bench"
    context.request.method = "POST"
    context.request.path = "/v1/chat/completions"
    context.request.headers["content-type"] = "application/json"
    return engine_pb.ExecuteRingRequest(ring=ring, context=context).SerializeToString()


def rings_request(rings: list[int], body: dict[str, object]) -> bytes:
    context = pb.PluginContext(body_json=json.dumps(body).encode(), request_id="bench-request")
    return engine_pb.ExecuteRingsRequest(rings=rings, context=context).SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message, as h2load sends it as the request body."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class Run:
    """One h2load run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float = 0.0
    """The server's CPU time (user + system, all its processes) per request, in microseconds."""


@dataclass
class Server:
    """A running server: where it listens, and its process group (for its CPU time)."""

    address: str
    pgid: int


_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in group ``pgid`` (Linux /proc).

    Far less noisy than throughput on a shared machine: another process's load slows
    the server down, but does not add to its own CPU time.
    """
    if not os.path.isdir("/proc"):
        return 0.0  # not Linux: the CPU columns read 0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
        except OSError:  # the process ended between listdir and open
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


class BenchError(RuntimeError):
    """A run had failed requests or non-OK gRPC statuses."""


@contextlib.contextmanager
def process(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a server that prints `listening on ADDR`; yield it; stop it."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        address = None
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the process does
            if line.startswith("listening on "):
                address = line.split()[-1]
                break
        if address is None:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise RuntimeError(f"{' '.join(cmd)} did not start:\n{err[-2000:]}")
        yield Server(address, proc.pid)
    finally:
        _stop_group(proc)


@contextlib.contextmanager
def ringd(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``ringd serve ARGS``, ready (every worker bound) per its ready signal; yield its address; stop it."""
    with tempfile.NamedTemporaryFile(prefix="ringd-bench-", suffix=".stderr", delete=False) as log:
        log_path = Path(log.name)
    try:
        proc, ready = start_serve(args, log=log_path, cwd=cwd, env=env, start_new_session=True, timeout_s=120)
    except ServeFailed as exc:
        raise RuntimeError(str(exc)) from None
    try:
        yield Server(ready.address, proc.pid)  # its own session: the pid is the process group
    finally:
        _stop_group(proc)
        log_path.unlink()


def _stop_group(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def h2load(server: Server, method: str, payload: bytes, *, requests: int, clients: int, streams: int) -> Run:
    """Drive one server with h2load; check every reply's status; return the figures."""
    address = server.address
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "request.bin"
        data.write_bytes(grpc_frame(payload))
        log = Path(tmp) / "requests.tsv"
        cmd = [
            "h2load", "-v", f"-n{requests}", f"-c{clients}", f"-m{streams}", "-t1",
            "-d", str(data), f"--log-file={log}",
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://{address}{ENGINE}{method}",
        ]  # fmt: skip
        cpu_before = group_cpu_seconds(server.pgid)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        cpu_s = group_cpu_seconds(server.pgid) - cpu_before
        if out.returncode != 0:
            raise BenchError(f"h2load failed ({out.returncode}): {out.stderr[-1000:]}")
        # A gRPC error on a unary call is a trailers-only reply: grpc-status in the
        # response headers, which -v prints. A success carries it in trailers only.
        bad = [
            line for line in out.stdout.splitlines() if "] grpc-status:" in line and not line.endswith(" 0")
        ]
        answered = sum(1 for line in out.stdout.splitlines() if "] :status: 200" in line)
        summary = next(line for line in out.stdout.splitlines() if line.startswith("requests:"))
        succeeded = int(summary.split(" succeeded")[0].rsplit(" ", 1)[-1])
        if bad or answered != requests or succeeded != requests:
            sample = "; ".join(bad[:3])
            raise BenchError(
                f"{method}: {succeeded}/{requests} succeeded, {len(bad)} non-OK gRPC statuses {sample}"
            )
        finished = next(line for line in out.stdout.splitlines() if line.startswith("finished in"))
        rps = float(finished.split(",")[1].split()[0])
        latencies = sorted(int(line.split("\t")[2]) / 1000.0 for line in log.read_text().splitlines() if line)
    return Run(
        rps=rps,
        p50_ms=statistics.median(latencies),
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        requests=requests,
        cpu_us=cpu_s * 1e6 / requests,
    )


@dataclass
class Row:
    case: str
    echo: Run
    ringd: Run
    target: float | None

    @property
    def ratio(self) -> float:
        return self.ringd.rps / self.echo.rps


def ringd_args(config: Path, *extra: str) -> list[str]:
    return ["--config", str(config), "--listen", "127.0.0.1:0", "--log-level", "WARNING", *extra]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few hundred requests per case")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per client")
    parser.add_argument("--only", help="comma-separated cases to run (a,b,c,c2,d,e,rings,workers)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print(
            "h2load not found: install Debian's nghttp2-client (apt-get install nghttp2-client)",
            file=sys.stderr,
        )
        return 0 if os.environ.get("CI") != "true" else 1
    n = 300 if args.smoke else args.requests
    load = {"requests": n, "clients": args.clients, "streams": args.streams}
    only = set(args.only.split(",")) if args.only else None

    def wanted(case: str) -> bool:
        return only is None or case in only

    work = Path(tempfile.mkdtemp(prefix="ringd-bench-"))
    for name in ("plugins.py", "passthrough.yaml", "pii.yaml"):
        shutil.copy(HERE / name, work / name)
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    body = chat_body(2048)
    rows: list[Row] = []
    extra_lines: list[str] = []

    def compare(
        case: str, payload: bytes, method: str, args: list[str], target: float | None, env=None
    ) -> Row:
        with process([PYTHON, str(HERE / "echo_server.py")], cwd=work, env=base_env) as echo_server:
            echo = h2load(echo_server, method, payload, **load)
        with ringd(args, cwd=work, env=env or base_env) as server:
            served = h2load(server, method, payload, **load)
        row = Row(case, echo, served, target)
        rows.append(row)
        print(
            f"  {case}: echo {echo.rps:,.0f}/s, ringd {served.rps:,.0f}/s, ratio {row.ratio:.2f};"
            f" CPU per request echo {echo.cpu_us:.0f} us, ringd {served.cpu_us:.0f} us",
            flush=True,
        )
        return row

    passthrough = work / "passthrough.yaml"
    json_request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, body)
    if wanted("a"):
        compare(
            "a. PRE_FLIGHT, 5 passthrough, 2 KB body_json",
            json_request,
            "ExecuteRing",
            ringd_args(passthrough),
            0.85,
        )
    if wanted("b"):
        struct_request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, body, struct_form=True)
        compare("b. same, body as Struct", struct_request, "ExecuteRing", ringd_args(passthrough), 0.65)
    if wanted("c") or wanted("c2"):
        traced = {
            **base_env,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
        }
        with process([PYTHON, str(HERE / "otlp_sink.py")], cwd=work, env=base_env) as sink:
            traced["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{sink.address}"
            if wanted("c"):
                compare(
                    "c. case a, tracing on, all sampled, batch OTLP export",
                    json_request,
                    "ExecuteRing",
                    ringd_args(passthrough),
                    0.5,
                    {**traced, "OTEL_TRACES_SAMPLER": "always_on"},
                )
            if wanted("c2"):
                sampled_10 = {
                    **traced,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": "0.1",
                }
                row = compare(
                    "c2. case c, 10% parent-based sampling",
                    json_request,
                    "ExecuteRing",
                    ringd_args(passthrough),
                    None,
                    sampled_10,
                )
                # Against case a: measured in alternating pairs (untraced, then 10% sampled,
                # three times, a third of the requests each) so both see the same machine;
                # the median pair counts. The shared machine's speed drifts too much between
                # runs minutes apart for case a's own row to be the reference.
                third = {**load, "requests": max(100, n // 3)}
                pairs = []
                with (
                    ringd(ringd_args(passthrough), cwd=work, env=base_env) as plain,
                    ringd(ringd_args(passthrough), cwd=work, env=sampled_10) as sampled,
                ):
                    for _ in range(3):
                        untraced = h2load(plain, "ExecuteRing", json_request, **third)
                        traced_10 = h2load(sampled, "ExecuteRing", json_request, **third)
                        pairs.append((traced_10.rps / untraced.rps, untraced.rps, traced_10.rps))
                ratio, untraced_rps, traced_rps = sorted(pairs)[1]
                extra_lines.append(
                    f"c2 against case a (median of 3 alternating pairs): {traced_rps:,.0f}/s vs "
                    f"{untraced_rps:,.0f}/s -> {ratio:.2f} (target >= 0.90); pairs "
                    + ", ".join(f"{pair[0]:.2f}" for pair in pairs)
                )
                print(f"  {extra_lines[-1]} (c2's row: {row.ratio:.2f} of echo)", flush=True)
    if wanted("d"):
        bg_request = ring_request(pb.PLUGIN_HOOK_BACKGROUND, body)
        compare("d. BACKGROUND acknowledgement", bg_request, "ExecuteRing", ringd_args(passthrough), 0.85)
    if wanted("e"):
        default_request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, body)
        compare(
            "e. default config PRE_FLIGHT (built-in plugins)",
            default_request,
            "ExecuteRing",
            ["--listen", "127.0.0.1:0", "--log-level", "WARNING"],
            0.5,
        )
    if wanted("rings"):
        hooks = [pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT, pb.PLUGIN_HOOK_ROUTING]
        with ringd(ringd_args(passthrough), cwd=work, env=base_env) as address:
            combined = h2load(address, "ExecuteRings", rings_request(hooks, body), **load)
            singles = [h2load(address, "ExecuteRing", ring_request(hook, body), **load) for hook in hooks]
        three_calls = 1.0 / sum(1.0 / run.rps for run in singles)
        ratio = combined.rps / three_calls
        extra_lines.append(
            f"ExecuteRings (INGRESS+PRE_FLIGHT+ROUTING): {combined.rps:,.0f} gateway requests/s, "
            f"three ExecuteRing calls: {three_calls:,.0f}/s -> {ratio:.2f}x (target >= 2x)"
        )
        print("  " + extra_lines[-1], flush=True)
    if wanted("workers"):
        pii_request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, chat_body(16 * 1024, pii=True))
        # Many connections, so SO_REUSEPORT's per-connection hashing spreads them evenly.
        pii_load = {"requests": max(100, n // 4), "clients": 16, "streams": 4}
        runs = {}
        for workers in (1, 2):
            with ringd(
                ringd_args(work / "pii.yaml", "--workers", str(workers)), cwd=work, env=base_env
            ) as address:
                runs[workers] = h2load(address, "ExecuteRing", pii_request, **pii_load)
        ratio = runs[2].rps / runs[1].rps
        extra_lines.append(
            f"PII redaction of a 16 KB body: 1 worker {runs[1].rps:,.0f}/s (p50 {runs[1].p50_ms:.1f} ms), "
            f"2 workers {runs[2].rps:,.0f}/s (p50 {runs[2].p50_ms:.1f} ms) -> {ratio:.2f}x (target >= 1.5x)"
        )
        print("  " + extra_lines[-1], flush=True)

    print()
    print(f"h2load: {n} requests per run, {args.clients} connections x {args.streams} streams, 1 thread")
    print(
        f"{'case':<56} {'echo/s':>7} {'ringd/s':>7} {'ratio':>5} {'target':>6}"
        f" {'p50/p99 ms echo':>16} {'ringd':>12} {'CPU us/req echo':>15} {'ringd':>6} {'ratio':>5}"
    )
    for row in rows:
        target = f">={row.target:.2f}" if row.target else "-"
        echo, served = row.echo, row.ringd
        cpu_ratio = echo.cpu_us / served.cpu_us if served.cpu_us else 0.0
        print(
            f"{row.case:<56} {echo.rps:>7,.0f} {served.rps:>7,.0f} {row.ratio:>5.2f} {target:>6}"
            f" {echo.p50_ms:>7.2f}/{echo.p99_ms:<8.2f} {served.p50_ms:>5.2f}/{served.p99_ms:<6.2f}"
            f" {echo.cpu_us:>15.0f} {served.cpu_us:>6.0f} {cpu_ratio:>5.2f}"
        )
    print(
        "p50/p99: latency of one call as h2load saw it (for d, the acknowledgement's latency);"
        " CPU us/req: the server's user+system CPU per request; its ratio is echo/ringd"
        " (what the throughput ratio would be on an idle machine with the load generator elsewhere)."
    )
    for line in extra_lines:
        print(line)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
