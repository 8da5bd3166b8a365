"""Scaling out on Redis: real ringd processes sharing one real redis-server.

* Two ``ringd serve`` processes on one Redis enforce one global rate limit exactly.
* Redis restarted mid-run: calls in between fail per the plugin's fail policy
  with an error naming the unreachable Redis, and the store reconnects by itself.
"""

from __future__ import annotations

import re
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ringd.client import Client, RingResult
from ringd.sdk import StoreError
from ringd.server.store_redis import RedisStore
from support.process import RingdProcess

if TYPE_CHECKING:  # fixtures' types; pytest provides the objects
    from support.redis import RedisServer

QUIET = {"OTEL_TRACES_EXPORTER": "none"}

# An INGRESS plugin counting every request in one shared bucket (named by the request's
# metadata, so a test never straddles a clock window) and refusing it past the limit.
GLOBAL_LIMIT_PLUGIN = """
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class GlobalLimit(BasePlugin):
    name = "global_limit"
    hook = PluginHook.INGRESS
    version = "1.0.0"
    timeout_ms = 2000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        store = ctx.state.extra["store"]
        bucket = ctx.metadata.get("bucket", "default")
        count = await store.incr(f"rl:{bucket}", 1, ttl_s=60)
        ctx.metadata[f"count_{self.config.get('label', 'x')}"] = count
        limit = int(self.config.get("limit", 1_000_000))
        if count > limit:
            return PluginResponse.block(
                status_code=429, error_type="rate_limited", message=f"over {limit} requests"
            )
        return PluginResponse.passthrough()
"""


StartRingd = Callable[[str, int], list[RingdProcess]]


@pytest.fixture
def start_ringd(tmp_path: Path) -> Iterator[StartRingd]:
    """``start_ringd(config_yaml, count)``: that many ringd processes on one config, all ready."""
    started: list[RingdProcess] = []
    (tmp_path / "global_limit.py").write_text(textwrap.dedent(GLOBAL_LIMIT_PLUGIN))

    def start(config_text: str, count: int) -> list[RingdProcess]:
        config = tmp_path / f"ringd-{uuid.uuid4().hex[:8]}.yaml"
        config.write_text(textwrap.dedent(config_text))
        batch = [
            RingdProcess.for_config(
                config, env={"OTEL_TRACES_EXPORTER": "none"}, name=f"ringd-{len(started) + i}"
            )
            for i in range(count)
        ]
        started.extend(batch)
        with ThreadPoolExecutor(count) as pool:  # started together, so their imports overlap
            list(pool.map(RingdProcess.start, batch))
        return batch

    yield start
    for process in started:
        assert process.stop() == 0, process.log()


def test_two_ringd_processes_on_one_redis_enforce_one_global_limit(
    redis_server: RedisServer, start_ringd: StartRingd
) -> None:
    limit = 60
    servers = start_ringd(
        f"""
        store: {redis_server.url}
        server: {{grace_s: 2}}
        plugins:
          - name: global_limit
            entrypoint: global_limit.py:GlobalLimit
            config: {{limit: {limit}}}
        """,
        2,
    )
    bucket = uuid.uuid4().hex
    clients = [Client(server.address) for server in servers]
    try:

        def call(index: int) -> tuple[int, RingResult]:
            client = clients[index % 2]
            body = {"model": "m", "messages": [{"role": "user", "content": f"request {index}"}]}
            return index % 2, client.execute_ring("ingress", body, metadata={"bucket": bucket})

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(call, range(2 * limit)))
    finally:
        for client in clients:
            client.close()

    passed = [result for _, result in answers if result.action == "passthrough"]
    blocked = [result for _, result in answers if result.action == "block"]
    assert len(passed) == limit
    assert len(blocked) == limit
    assert {(r.status_code, r.error_type) for r in blocked} == {(429, "rate_limited")}
    # Every request got its own count from the one shared counter: 1 … 2 x limit, no repeats.
    counts = sorted(result.metadata["count_x"] for _, result in answers)
    assert counts == list(range(1, 2 * limit + 1))
    # Both replicas served passes and blocks: the limit is global, not per process.
    for server_index in (0, 1):
        actions = {result.action for index, result in answers if index == server_index}
        assert actions == {"passthrough", "block"}


def test_redis_restart_fails_calls_per_fail_policy_then_recovers_without_restarting_ringd(
    redis_server: RedisServer, start_ringd: StartRingd
) -> None:
    # The circuit breaker is off, so every call below reaches the store: this test is
    # about the store's errors and reconnection, not about the breaker's cooldown.
    (server,) = start_ringd(
        f"""
        store: {redis_server.url}
        server: {{grace_s: 2}}
        plugins:
          - name: counter_closed
            entrypoint: global_limit.py:GlobalLimit
            hook: ingress
            fail_policy: closed
            circuit_breaker: {{enabled: false}}
            config: {{label: closed}}
          - name: counter_open
            entrypoint: global_limit.py:GlobalLimit
            hook: pre_flight
            fail_policy: open
            circuit_breaker: {{enabled: false}}
            config: {{label: open}}
        """,
        1,
    )
    unreachable = f"redis store unreachable at {redis_server.url}"
    with Client(server.address) as client:

        def both_rings() -> tuple[RingResult, RingResult]:
            return (
                client.execute_ring("ingress", {"n": 1}, metadata={"bucket": "closed"}),
                client.execute_ring("pre_flight", {"n": 1}, metadata={"bucket": "open"}),
            )

        ingress, pre_flight = both_rings()
        assert (ingress.action, ingress.metadata["count_closed"]) == ("passthrough", 1)
        assert (pre_flight.action, pre_flight.metadata["count_open"]) == ("passthrough", 1)

        redis_server.stop()
        for _ in range(3):
            # A dead Redis fails fast: the plugin's error names the Redis, where a store that
            # kept retrying would run into the plugin's 2 s timeout ("timed out").
            ingress, pre_flight = both_rings()
            # fail_policy closed: the ring blocks with 500 plugin_error, naming the Redis.
            assert (ingress.action, ingress.status_code, ingress.error_type) == (
                "block",
                500,
                "plugin_error",
            )
            (closed_result,) = ingress.results
            assert closed_result.outcome == "error"
            assert "StoreError" in closed_result.error
            assert unreachable in closed_result.error
            # fail_policy open: the plugin is bypassed and the ring goes on.
            assert pre_flight.action == "passthrough"
            (open_result,) = pre_flight.results
            assert open_result.outcome == "bypassed"
            assert unreachable in open_result.error
            assert "count_open" not in pre_flight.metadata

        redis_server.start()  # same port, empty: it kept nothing (--save '')
        ingress, pre_flight = both_rings()
        assert (ingress.action, ingress.metadata["count_closed"]) == ("passthrough", 1)
        assert [r.outcome for r in ingress.results] == ["ok"]
        assert (pre_flight.action, pre_flight.metadata["count_open"]) == ("passthrough", 1)
        assert [r.outcome for r in pre_flight.results] == ["ok"]
        assert client.execute_ring("ingress", {}, metadata={"bucket": "closed"}).metadata["count_closed"] == 2


async def test_the_redis_store_reconnects_by_itself_after_a_restart(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url)
    try:
        assert await store.incr("n", 1, ttl_s=60) == 1  # loads the incr script into Redis
        await store.set_state("k", "before")

        redis_server.stop()
        for call in (
            store.get_state("k"),
            store.set_state("k", "during"),
            store.delete("k"),
            store.incr("n", 1, ttl_s=60),
        ):
            started = time.monotonic()
            with pytest.raises(StoreError, match=re.escape(f"redis store unreachable at {redis_server.url}")):
                await call
            # Fast, not retried until some timeout: a refused connection fails at once; the
            # bound is far from that, for a busy machine.
            assert time.monotonic() - started < 5.0

        redis_server.start()
        # Same store object, no reopen: the pool reconnects, and the incr script (lost
        # with the old server) is loaded again behind EVALSHA's NOSCRIPT answer.
        assert await store.get_state("k", default="lost") == "lost"
        assert await store.incr("n", 1, ttl_s=60) == 1
        assert await store.incr("n", 1, ttl_s=60) == 2
        await store.set_state("k", "after")
        assert await store.get_state("k") == "after"
    finally:
        await store.close()


async def test_a_stale_pooled_connection_is_retried_transparently(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url)
    try:
        await store.set_state("k", 1)
        # Restart between two calls: the pooled connection is dead, the first call
        # after the restart finds out, reconnects and succeeds without an error.
        redis_server.stop()
        redis_server.start()
        assert await store.incr("k", 1) == 1
    finally:
        await store.close()
