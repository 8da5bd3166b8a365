"""``ringd serve --workers N``: N server processes sharing the listen port.

The supervisor resolves the listen addresses (port 0 becomes one free port that
every worker binds with SO_REUSEPORT, so the kernel spreads connections over
them), starts the workers, forwards SIGTERM/SIGINT (drain and stop) and SIGHUP
(reload) to each, and exits 0 when they all did. A reload asked of one worker
over the admin RPC is passed on to its siblings through the supervisor (SIGUSR1).

Each worker is a whole ringd: its own engine, background queue and stats (the
admin service reports the stats of the worker that answers), the store shared
(SQLite in WAL mode, or Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType

from ringd.server.config import RingdConfig
from ringd.server.metrics import MergedEndpoint, serve_merged_for_workers

SUPERVISOR_ENV = "RINGD_SUPERVISOR_PID"
WORKER_ENV = "RINGD_WORKER_INDEX"
START_TIMEOUT_S = 60.0


def _reserve(address: str) -> tuple[str, socket.socket | None]:
    """Turn ``host:0`` into ``host:PORT`` held by a SO_REUSEPORT socket until the workers bind."""
    host, _, port = address.rpartition(":")
    if port != "0":
        return address, None
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((bare, 0))
    return f"{host}:{sock.getsockname()[1]}", sock


def serve_workers(args: argparse.Namespace, config: RingdConfig) -> int:
    """Run ``args.workers`` ringd processes on the same addresses; return the exit code."""
    listen = list(args.listen or config.server.listen)
    unix = [address for address in listen if address.startswith("unix:")]
    if unix:
        print(
            f"ringd: --workers needs TCP addresses; a unix socket cannot be shared: {unix[0]}",
            file=sys.stderr,
        )
        return 2
    reserved: list[socket.socket] = []
    resolved: list[str] = []
    for address in listen:
        concrete, sock = _reserve(address)
        resolved.append(concrete)
        if sock is not None:
            reserved.append(sock)
    base = [
        sys.executable,
        "-m",
        "ringd.server.cli",
        "serve",
        "--workers",
        "1",
        "--log-level",
        args.log_level,
    ]
    if args.config:
        base += ["--config", str(args.config)]
    for address in resolved:
        base += ["--listen", address]
    for address in args.admin_listen or ():
        base += ["--admin-listen", address]
    metrics_listen = config.server.metrics_listen
    try:
        # One scrape for every worker: the supervisor serves the merged view on the
        # configured port; worker i serves its own on PORT + 1 + i (ringd.server.metrics).
        merged = serve_merged_for_workers(metrics_listen, args.workers) if metrics_listen else None
    except (ValueError, OSError) as exc:
        print(f"ringd: metrics on {metrics_listen}: {exc}", file=sys.stderr)
        for sock in reserved:
            sock.close()
        return 2
    try:
        return _run_workers(args, base, reserved, merged)
    finally:
        if merged is not None:
            merged.close()


def _run_workers(
    args: argparse.Namespace, base: list[str], reserved: list[socket.socket], merged: MergedEndpoint | None
) -> int:
    """Start the workers, relay their output and signals, wait for them; the exit code."""
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    workers = [
        subprocess.Popen(base, env={**env, WORKER_ENV: str(index)}, stdout=subprocess.PIPE, text=True)
        for index in range(args.workers)
    ]
    banner = ""
    try:
        for worker in workers:
            banner = _await_ready(worker)
    except RuntimeError as exc:
        print(f"ringd: {exc}", file=sys.stderr)
        _signal_all(workers, signal.SIGTERM)
        return 1
    finally:
        for sock in reserved:
            sock.close()
    print(f"ringd supervisor {os.getpid()}: {args.workers} workers", flush=True)
    if merged is not None:
        print(f"metrics on http://{merged.address}/metrics (every worker, merged)", flush=True)
    print(banner, end="", flush=True)
    for worker in workers:
        threading.Thread(target=_relay, args=(worker,), daemon=True).start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        _signal_all(workers, signal.SIGHUP if signum == signal.SIGUSR1 else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, forward)
    codes = [worker.wait() for worker in workers]
    return 0 if all(code == 0 for code in codes) else 1


def _await_ready(worker: subprocess.Popen[str]) -> str:
    """Read a worker's start-up banner up to its last `listening on` line."""
    assert worker.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = worker.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {worker.pid} exited during start-up (code {worker.wait()})")
        lines.append(line)
        if line.startswith("  background"):
            return "".join(lines)
    raise RuntimeError(f"worker {worker.pid} did not start within {START_TIMEOUT_S:.0f} s")


def _relay(worker: subprocess.Popen[str]) -> None:
    assert worker.stdout is not None
    for line in worker.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()


def _signal_all(workers: list[subprocess.Popen[str]], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)


def notify_siblings() -> None:
    """From a worker: ask the supervisor to reload every worker (after an admin reload)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor and supervisor.isdigit():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(supervisor), signal.SIGUSR1)
