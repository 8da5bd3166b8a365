"""Operations (issue 14): JSON log lines that name their request, the Prometheus
endpoint read with real HTTP GETs, the Grafana dashboard against a live scrape, and
the stall watchdog's rate limit."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import textwrap
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ringd.server.engine import Engine
from ringd.server.logs import JsonFormatter
from ringd.server.watchdog import StallWatchdog
from support.rpc import ROOT, context, ring_request
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
POST_FLIGHT = pb.PLUGIN_HOOK_POST_FLIGHT
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
DASHBOARD = ROOT / "deploy" / "grafana" / "ringd-dashboard.json"

# A plugin that logs through its own logger, named as the SDK names plugin loggers
# (``plugin.<name>``), before and after it yields to the loop.
TALKER = """
import asyncio
import logging

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_log = logging.getLogger("plugin.talker")


class Talker(BasePlugin):
    name = "talker"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 2000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        _log.warning("checking the request of %s", ctx.request_id)
        await asyncio.sleep(float(self.config.get("pause_s", 0)))
        _log.warning("done with the request of %s", ctx.request_id)
        return PluginResponse.passthrough()
"""


# ------------------------------------------------------------------ logs


@pytest.fixture
def json_log() -> Any:
    """The root logger's lines as ringd writes them with ``--log-format json``."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)


async def test_a_plugins_json_log_lines_carry_the_request_id_of_the_call_that_caused_them(
    serve, workspace, json_log
):
    (workspace.root / "talker.py").write_text(textwrap.dedent(TALKER))
    running = await serve([entry("talker", entrypoint="talker.py:Talker", config={"pause_s": 0.05})])
    stub = running.engine()

    # Three calls at once: each yields to the loop between its two lines, so the
    # calls' lines interleave, and each line must still name its own request.
    ids = ["req-alpha", "req-beta", "req-gamma"]
    await asyncio.gather(
        *(stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, request_id=rid), timeout=10) for rid in ids)
    )
    rings = engine_pb.ExecuteRingsRequest(
        rings=[pb.PLUGIN_HOOK_INGRESS, PRE_FLIGHT], context=context(CHAT, request_id="req-rings")
    )
    await stub.ExecuteRings(rings, timeout=10)

    lines = [line for line in json_log() if line["logger"] == "plugin.talker"]
    assert len(lines) == 8, lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        assert line["level"] == "WARNING"
        said = line["message"].rsplit(" ", 1)[1]  # the plugin names the request it works on
        assert line["request_id"] == said, line
        assert line["plugin"] == "talker"
    by_id = {
        rid: [line["ring"] for line in lines if line["request_id"] == rid] for rid in [*ids, "req-rings"]
    }
    assert by_id == {
        "req-alpha": ["pre_flight"] * 2,
        "req-beta": ["pre_flight"] * 2,
        "req-gamma": ["pre_flight"] * 2,
        "req-rings": ["ingress,pre_flight"] * 2,
    }


async def test_json_log_lines_outside_a_request_carry_no_request_id(json_log):
    logging.getLogger("ringd.test").warning("no request here: %s", {"a": 1})
    (line,) = [line for line in json_log() if line["logger"] == "ringd.test"]
    assert line["message"] == "no request here: {'a': 1}"
    assert "request_id" not in line
    assert "plugin" not in line


# ------------------------------------------------------------------ metrics


def scrape(address: str, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


METERED = [
    entry("passer", priority=1),
    entry("blocker", priority=2, config={"action": "block", "status": 403, "error_type": "denied"}),
    entry(
        "failing",
        "post_flight",
        fail_policy="open",
        circuit_breaker={"failure_rate": 1.0, "minimum_calls": 2, "cooldown_s": 3600},
        config={"action": "raise"},
    ),
]


async def test_the_metrics_endpoint_shows_live_plugin_ring_and_server_figures(serve):
    running = await serve(METERED, server={"metrics_listen": "127.0.0.1:0"})
    assert running.server.metrics is not None
    address = running.server.metrics.address
    stub = running.engine()
    for i in range(3):
        await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, request_id=f"r{i}"), timeout=10)
    for _ in range(2):  # two failures of two calls open the breaker (minimum_calls 2, rate 1.0)
        await stub.ExecuteRing(ring_request(POST_FLIGHT, CHAT, response={"ok": True}), timeout=10)

    status, content_type, text = await asyncio.to_thread(scrape, address)

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    passer = {"plugin": "passer", "ring": "pre_flight"}
    blocker = {"plugin": "blocker", "ring": "pre_flight"}
    failing = {"plugin": "failing", "ring": "post_flight"}
    assert value(found, "ringd_plugin_calls_total", **passer) == 3
    assert value(found, "ringd_plugin_blocks_total", **blocker) == 3
    assert value(found, "ringd_plugin_blocks_total", **passer) == 0
    assert value(found, "ringd_plugin_errors_total", **failing) == 2
    assert value(found, "ringd_plugin_bypasses_total", **failing) == 2
    assert value(found, "ringd_plugin_latency_seconds_count", **passer) == 3
    assert value(found, "ringd_plugin_latency_seconds_sum", **passer) > 0
    p50 = value(found, "ringd_plugin_latency_seconds", **passer, quantile="0.5")
    p99 = value(found, "ringd_plugin_latency_seconds", **passer, quantile="0.99")
    assert 0 < p50 <= p99
    assert value(found, "ringd_plugin_breaker_open", **failing) == 1
    assert value(found, "ringd_plugin_breaker_open", **passer) == 0
    assert value(found, "ringd_plugin_status", **failing, status="circuit_open") == 1
    assert value(found, "ringd_plugin_status", **passer, status="active") == 1
    assert value(found, "ringd_config_generation", config_version="v1") == 1
    assert value(found, "ringd_inflight_rings") == 0
    assert value(found, "ringd_background_queue_depth") == 0
    assert value(found, "ringd_grpc_server_calls_total", result="started") >= 5
    # Per ring: latency histogram, outcomes by action, blocks by error type.
    assert value(found, "ringd_ring_latency_seconds_count", ring="pre_flight") == 3
    assert value(found, "ringd_ring_latency_seconds_bucket", ring="pre_flight", le="+Inf") == 3
    assert value(found, "ringd_ring_latency_seconds_sum", ring="pre_flight") > 0
    assert value(found, "ringd_ring_latency_seconds_count", ring="post_flight") == 2
    assert value(found, "ringd_ring_latency_seconds_count", ring="ingress") == 0
    assert value(found, "ringd_ring_outcomes_total", ring="pre_flight", action="block") == 3
    assert value(found, "ringd_ring_outcomes_total", ring="post_flight", action="passthrough") == 2
    assert value(found, "ringd_ring_blocks_total", ring="pre_flight", error_type="denied") == 3
    assert value(found, "ringd_reloads_total", result="ok") == 0
    assert value(found, "ringd_store_errors_total", operation="set") == 0

    # Scrape time means live: a reload and more calls show at the next scrape.
    await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=10)
    await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)
    found = samples((await asyncio.to_thread(scrape, address))[2])
    assert value(found, "ringd_config_generation", config_version="v1") == 2
    assert value(found, "ringd_plugin_calls_total", **passer) == 4  # unchanged plugin: kept its stats
    assert value(found, "ringd_reloads_total", result="ok") == 1
    assert value(found, "ringd_ring_latency_seconds_count", ring="pre_flight") == 4  # kept across the reload


STORE_ABUSER = """
from ringd.sdk import BasePlugin, PluginResponse, StoreError

class StoreAbuser(BasePlugin):
    async def execute(self, ctx):
        store = ctx.state.extra["store"]
        try:
            await store.incr("counter", amount="one")  # not an integer: the store refuses it
        except StoreError:
            pass  # the plugin copes; the operator still sees the failure counted
        await store.set_state("fine", 1)
        return PluginResponse.passthrough()
"""


async def test_reload_results_and_store_failures_are_counted(serve, workspace):
    workspace.plugin("abuser.py", STORE_ABUSER)
    running = await serve(
        [entry("abuser", entrypoint="abuser.py:StoreAbuser")], server={"metrics_listen": "127.0.0.1:0"}
    )
    assert running.server.metrics is not None
    address = running.server.metrics.address
    for _ in range(2):
        await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)
    workspace.config_path.write_text("plugins: [unclosed\n")  # a reload of this must fail
    with pytest.raises(Exception, match=r"ringd\.yaml"):
        await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=10)

    found = samples((await asyncio.to_thread(scrape, address))[2])

    assert value(found, "ringd_store_errors_total", operation="incr") == 2
    assert value(found, "ringd_store_errors_total", operation="set") == 0
    assert value(found, "ringd_reloads_total", result="failed") == 1
    assert value(found, "ringd_reloads_total", result="ok") == 0
    assert value(found, "ringd_config_generation", config_version="v1") == 1  # the old one serves on


async def test_the_metrics_endpoint_answers_only_get_metrics(serve):
    running = await serve([entry("passer")], server={"metrics_listen": "127.0.0.1:0"})
    assert running.server.metrics is not None
    status, _, text = await asyncio.to_thread(scrape, running.server.metrics.address, "/")
    assert (status, text) == (404, "metrics are at /metrics\n")


async def test_metrics_are_off_unless_an_address_is_set(serve):
    running = await serve([entry("passer")])
    assert running.server.metrics is None


# ------------------------------------------------------------------ dashboard


def dashboard_queries(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node[key] for key in ("expr", "query") if isinstance(node.get(key), str)]
        return found + [q for item in node.values() for q in dashboard_queries(item)]
    if isinstance(node, list):
        return [q for item in node for q in dashboard_queries(item)]
    return []


async def test_every_dashboard_query_names_a_metric_that_ringd_exports(serve):
    running = await serve(METERED, server={"metrics_listen": "127.0.0.1:0"})
    assert running.server.metrics is not None
    await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)
    exported = {
        name for name, _ in samples((await asyncio.to_thread(scrape, running.server.metrics.address))[2])
    }

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = dashboard_queries(dashboard)
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Rings per second", "p99 latency by plugin", "Blocks by type", "Breaker state"} <= titles
    assert {"Ring latency by ring", "Reloads and store errors"} <= titles
    assert len(queries) >= 4
    for query in queries:
        named = set(re.findall(r"\bringd_[a-z0-9_]+", query))
        assert named, f"query names no ringd metric: {query}"
        assert named <= exported, f"{query}: not exported: {sorted(named - exported)}"


# ------------------------------------------------------------------ watchdog


async def test_the_watchdog_logs_one_line_per_kind_of_stall_then_one_summary(caplog):
    caplog.set_level(logging.WARNING, logger="ringd.watchdog")
    watchdog = StallWatchdog(Engine(), threshold_s=0.05, report_interval_s=3600)
    watchdog.start()
    try:
        for _ in range(4):
            # A loop stuck in a blocking call outside any plugin gets no CPU: it is told
            # as starvation (the same signature as other processes taking the CPU).
            time.sleep(0.4)
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)
        warnings = [r.getMessage() for r in caplog.records if r.name == "ringd.watchdog"]
        assert watchdog.stalls >= 4
        assert len(warnings) == 1, warnings  # the rest are held for the interval's summary
        assert "starved" in warnings[0]
        assert "no plugin is to blame" in warnings[0]
    finally:
        watchdog.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "ringd.watchdog"]
    assert len(warnings) == 2, warnings
    summary = re.match(r"(\d+) more event-loop stalls in the last \d+ s", warnings[1])
    assert summary, warnings[1]
    assert int(summary.group(1)) == watchdog.stalls - 1
    assert "by CPU starvation" in warnings[1]


def test_the_dashboard_file_is_where_the_readme_says() -> None:
    assert DASHBOARD.is_file()
    assert "deploy/grafana/ringd-dashboard.json" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_a_callers_request_id_cannot_forge_or_flood_log_lines():
    from ringd.server import logs

    record = logging.LogRecord("ringd.test", logging.WARNING, __file__, 1, "ring failed", None, None)
    forged = "abc\n2026-01-01 00:00:00 CRITICAL ringd.admin: token leaked" + "x" * 500

    async def in_a_call() -> tuple[str, str]:  # a task of its own, as each gRPC call is
        logs.bind_request(forged, "pre_flight")
        return logs.TextFormatter().format(record), JsonFormatter().format(record)

    text, line = asyncio.run(in_a_call())
    assert "\n" not in text  # the newline is escaped, not written
    assert "request_id='abc\\n2026-01-01" in text
    request_id = json.loads(line)["request_id"]
    assert len(request_id) == logs.MAX_REQUEST_ID + 3
    assert request_id.startswith(forged[:20])
    assert logs.current() is None  # the call's binding stayed in its task


def test_worker_metrics_ports_and_a_merged_view_that_reports_a_silent_worker(monkeypatch):
    from ringd.server import metrics

    monkeypatch.delenv(metrics.MERGED_ENV, raising=False)
    assert metrics.worker_address("0.0.0.0:9464", None) == "0.0.0.0:9464"
    assert metrics.worker_address("0.0.0.0:9464", "2") == "0.0.0.0:9466"
    monkeypatch.setenv(metrics.MERGED_ENV, "1")  # the supervisor serves 9464 itself
    assert metrics.worker_address("0.0.0.0:9464", "2") == "0.0.0.0:9467"
    with pytest.raises(ValueError, match="--workers needs a fixed metrics port"):
        metrics.serve_merged_for_workers("127.0.0.1:0", 2)

    import socket

    with socket.socket() as sock:  # a port nobody listens on once this block ends
        sock.bind(("127.0.0.1", 0))
        silent = f"127.0.0.1:{sock.getsockname()[1]}"
    merged = metrics.MergedEndpoint("127.0.0.1:0", [silent])
    try:
        status, _, text = scrape(merged.address)
    finally:
        merged.close()
    assert status == 200
    assert value(samples(text), "ringd_worker_up", worker_address=silent) == 0


GARBAGE_ACTION = """
from ringd.sdk import BasePlugin, PluginResponse

class Garbage(BasePlugin):
    async def execute(self, ctx):
        response = PluginResponse.passthrough()
        response.action = "explode"  # what no ring can answer: served as a 500 plugin_error block
        return response
"""


async def test_a_ring_answered_with_the_unencodable_block_counts_as_that_block(serve, workspace):
    workspace.plugin("garbage.py", GARBAGE_ACTION)
    running = await serve(
        [entry("garbage", entrypoint="garbage.py:Garbage")], server={"metrics_listen": "127.0.0.1:0"}
    )
    assert running.server.metrics is not None

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    found = samples((await asyncio.to_thread(scrape, running.server.metrics.address))[2])
    assert value(found, "ringd_ring_outcomes_total", ring="pre_flight", action="block") == 1
    assert value(found, "ringd_ring_blocks_total", ring="pre_flight", error_type="plugin_error") == 1
