"""The circuit breaker under real store faults: it protects instead of amplifying.

The built-in ``rate_limiter`` (INGRESS, fail-closed, 50 ms budget) on a real store:

* a 0.2 s stall (the SQLite write lock held by another connection; redis-server
  frozen with SIGSTOP) under 8 concurrent callers fails only the calls caught in it
  and never opens the breaker (the old consecutive-failure breaker opened and
  answered 503 for 30 s);
* a 4 s Redis outage opens it (503 without touching the store), and calls succeed
  again soon after Redis is back (the old breaker took 26 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ringd.sdk import PluginContext, PluginHook

if TYPE_CHECKING:
    from tests.store.conftest import Backend, RedisServer

CONFIG = """
version: breaker-faults
plugins:
  - name: rate_limiter
    entrypoint: ringd.plugins.rate_limiter:RateLimiter
    hook: ingress
    config: {requests_per_window: 100000000, window_s: 60}
"""


def verdict(outcome) -> str:
    if outcome.decision is None:
        return "ok"
    return f"{outcome.decision.status_code} {outcome.decision.error_type}"


async def drive(engine, stop: asyncio.Event, callers: int = 8) -> Counter[str]:
    """``callers`` concurrent gateways calling INGRESS back to back until ``stop``."""
    seen: Counter[str] = Counter()

    async def caller(index: int) -> None:
        while not stop.is_set():
            ctx = PluginContext(metadata={"tenant_id": f"t{index}"})
            seen[verdict(await engine.execute_ring(PluginHook.INGRESS, ctx))] += 1
            await asyncio.sleep(0)

    await asyncio.gather(*(caller(index) for index in range(callers)))
    return seen


def hold_sqlite_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's writer: BEGIN IMMEDIATE on the same file for ``seconds``."""

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


async def test_a_short_store_stall_under_load_never_opens_the_breaker(
    backend: Backend, workspace, make_engine, request: pytest.FixtureRequest
) -> None:
    engine = await make_engine(workspace.config(CONFIG))
    stop = asyncio.Event()
    load = asyncio.create_task(drive(engine, stop))
    await asyncio.sleep(1.0)  # a busy window before the stall
    if backend.name == "sqlite":
        holder = hold_sqlite_write_lock(Path(backend.target), 0.2)
        await asyncio.to_thread(holder.join)
    else:
        redis: RedisServer = request.getfixturevalue("shared_redis")
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.2)
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
    await asyncio.sleep(1.0)
    stop.set()
    seen = await load
    print(f"stall on {backend.name}: {dict(seen)}")
    assert seen["ok"] > 100, seen
    assert seen["503 plugin_unavailable"] == 0, f"the breaker opened on a 0.2 s stall: {seen}"
    assert engine.status(engine.generation.slots["rate_limiter"]) == "active"


async def test_a_redis_outage_opens_the_breaker_and_calls_succeed_soon_after_it_returns(
    redis_server: RedisServer, workspace, tmp_path: Path
) -> None:
    from ringd.sdk import PluginState
    from ringd.server.engine import Engine
    from ringd.server.store_redis import RedisStore

    store = await RedisStore.open(redis_server.url)
    engine = Engine(PluginState(extra={"store": store}))
    await engine.start(workspace.config(CONFIG))
    try:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(engine, stop))
        await asyncio.sleep(0.5)
        redis_server.stop()
        await asyncio.sleep(4.0)
        during = engine.status(engine.generation.slots["rate_limiter"])
        redis_server.start()
        back = time.monotonic()
        first_ok = None
        while time.monotonic() - back < 30:
            outcome = await engine.execute_ring(PluginHook.INGRESS, PluginContext())
            if outcome.decision is None:
                first_ok = time.monotonic() - back
                break
            await asyncio.sleep(0.01)
        stop.set()
        seen = await load
    finally:
        await engine.close(grace_s=5.0)
        await store.close()
    print(f"redis outage: {dict(seen)}; first success {first_ok} s after redis was back")
    assert seen["503 plugin_unavailable"] > 0, f"a 4 s outage never opened the breaker: {seen}"
    assert during in {"circuit_open", "active"}
    assert first_ok is not None
    # The longest cooldown is 1.5 s by default; the old breaker took 26 s here.
    assert first_ok < 5.0, f"calls first succeeded {first_ok:.1f} s after Redis was back"
