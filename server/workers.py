"""``ringd serve --workers N``: N server processes sharing the listen port.

The supervisor resolves the listen addresses (port 0 becomes one free port that
every worker binds with SO_REUSEPORT, so the kernel spreads connections over
them), prepares the store once, starts the workers and waits for each one's ready
signal (``--ready-fd``, see :mod:`ringd.server.launch`), forwards SIGTERM/SIGINT
(drain and stop) and SIGHUP (reload) to each, and exits 0 when they all did. A
reload asked of one worker over the admin RPC is passed on to its siblings through
the supervisor (SIGUSR1).

Each worker is a whole ringd: its own engine, background queue and stats (the
admin service reports the stats of the worker that answers), the store shared
(SQLite in WAL mode, or Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from types import FrameType

from ringd.sdk import StoreError
from ringd.server.config import RingdConfig
from ringd.server.launch import ReadyPipe, ServeFailed, wait_ready, write_ready
from ringd.server.metrics import MergedEndpoint, serve_merged_for_workers
from ringd.server.store import open_store

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


def _probe(address: str) -> str | None:
    """Why ``address`` cannot be served by new workers: another process listens on it.

    Bound without SO_REUSEPORT, so a port held by any listener (another ``ringd serve
    --workers`` included, whose sockets do set it) fails here, before any worker starts:
    otherwise the kernel would split connections between two servers and two configs.
    """
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((bare, int(port)))
    except OSError as exc:
        return f"cannot serve {address}: {exc.strerror or exc} (another process serves this port?)"
    finally:
        probe.close()
    return None


def serve_workers(args: argparse.Namespace, config: RingdConfig) -> int:
    """Run ``args.workers`` ringd processes on the same addresses; return the exit code.

    The store is opened (created, put in WAL mode) once here before any worker starts,
    so the workers never race to set it up. A worker that exits, or is not ready within
    ``START_TIMEOUT_S``, during start-up stops the others and the supervisor exits 1,
    naming the worker; its own error is on the shared stderr just above.
    """
    listen = list(args.listen or config.server.listen)
    unix = [address for address in listen if address.startswith("unix:")]
    if unix:
        print(
            f"ringd: --workers needs TCP addresses; a unix socket cannot be shared: {unix[0]}",
            file=sys.stderr,
        )
        return 2
    for address in listen:
        problem = None if address.endswith(":0") else _probe(address)
        if problem is not None:
            print(f"ringd: {problem}", file=sys.stderr)
            return 1
    try:
        asyncio.run(_prepare_store(config))
    except StoreError as exc:
        print(f"ringd: cannot serve: {exc}", file=sys.stderr)
        return 1
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
    stopping: list[int] = []
    children: dict[str, tuple[subprocess.Popen[bytes], ReadyPipe]] = {}
    workers: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        _signal_all(workers, signal.SIGHUP if signum == signal.SIGUSR1 else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, forward)
    try:
        for index in range(args.workers):
            pipe = ReadyPipe()
            try:
                worker = subprocess.Popen(
                    [*base, *pipe.args], env={**env, WORKER_ENV: str(index)}, pass_fds=pipe.pass_fds
                )
            finally:
                pipe.spawned()
            workers.append(worker)
            children[f"worker {index}"] = (worker, pipe)
        ready = wait_ready(children, START_TIMEOUT_S)
    except (ServeFailed, OSError) as exc:
        if not stopping:
            print(f"ringd: cannot serve: {exc}; stopping the other workers", file=sys.stderr, flush=True)
        _stop_all(workers)
        return 0 if stopping else 1
    finally:
        for sock in reserved:
            sock.close()
        for _, pipe in children.values():
            pipe.close()
    first = ready["worker 0"]
    print(f"ringd supervisor {os.getpid()}: {args.workers} workers ready", flush=True)
    if merged is not None:
        print(f"metrics on http://{merged.address}/metrics (every worker, merged)", flush=True)
    if args.ready_fd is not None:
        write_ready(
            args.ready_fd,
            replace(first, pid=os.getpid(), workers=tuple(worker.pid for worker in workers)),
        )
    codes = [worker.wait() for worker in workers]
    return 0 if all(code == 0 for code in codes) else 1


async def _prepare_store(config: RingdConfig) -> None:
    """Open and close the config's store: a SQLite file is created in WAL mode, Redis reached."""
    store = await open_store(config.store, base_dir=config.base_dir)
    await store.close()


def _stop_all(workers: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM every worker still running, and SIGKILL those still there after ``timeout_s``."""
    _signal_all(workers, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _signal_all(workers: list[subprocess.Popen[bytes]], signum: int) -> None:
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
