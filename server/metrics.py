"""Prometheus metrics, read at scrape time: the hot path pays nothing for them.

The engine already counts what an operator wants per plugin (``BasePlugin.stats``:
calls, errors, blocks, timeouts, bypasses, stalls, latency sum and percentiles over
the most recent calls), knows each plugin's breaker state (``Engine.status``) and
its generation; gRPC core counts the calls of every server (channelz). A scrape
reads all of it through :func:`read_engine`, the ONE place that knows where each
number lives, and :class:`RingdCollector` turns that snapshot into metric families.

The endpoint is a small HTTP server on the server's own event loop (so a scrape
never reads the engine's state from another thread), on ``server.metrics_listen``
only: off unless set. Under ``--workers N`` the supervisor serves the configured port
(:class:`MergedEndpoint`: every worker's page fetched and merged at scrape time) and
worker ``i`` serves its own on ``port + 1 + i``, labelling every sample with ``worker``
(see the README's operations section).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from ringd.sdk import PluginHook
from ringd.server.ringstats import LATENCY_BUCKETS_S

from ringd import __version__

if TYPE_CHECKING:
    from ringd.server.app import RingdServer

_log = logging.getLogger("ringd.metrics")

WORKER_ENV = "RINGD_WORKER_INDEX"  # the same name ringd.server.workers sets in each worker
MERGED_ENV = "RINGD_METRICS_MERGED"
"""Set by a supervisor that serves the workers' merged metrics on the configured port."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATUSES = ("active", "disabled", "circuit_open", "failed")
_QUANTILES = (("0.5", "p50_latency_ms"), ("0.95", "p95_latency_ms"), ("0.99", "p99_latency_ms"))
_STORE_OPERATIONS = ("get", "set", "delete", "incr", "purge", "flush")
_BUCKET_LABELS = tuple(repr(bound) for bound in LATENCY_BUCKETS_S)
_READ_TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 8192


# ---------------------------------------------------------------------- the snapshot


@dataclass(frozen=True, slots=True)
class PluginSample:
    """One plugin of the current generation, as a scrape sees it."""

    name: str
    ring: str
    version: str
    status: str
    """``active``, ``disabled``, ``circuit_open`` or ``failed`` (``Engine.status``)."""
    stats: dict[str, Any]
    """``BasePlugin.stats``: counters, ``total_latency_ms`` and ``p50/p95/p99_latency_ms``."""


@dataclass(frozen=True, slots=True)
class EngineSample:
    """Everything a scrape reports, read in one go from a running server."""

    config_version: str
    generation: int
    plugins: list[PluginSample]
    inflight_rings: int | None = None
    background_depth: int | None = None
    grpc_calls: dict[str, int] = field(default_factory=dict)
    """Calls of this process's gRPC servers by result: started, succeeded, failed."""
    rings: list[RingSample] = field(default_factory=list)
    reloads: dict[str, int] = field(default_factory=dict)
    """Reloads (SIGHUP or admin RPC) by result: ok, failed."""
    store_errors: dict[str, int] | None = None
    """Failures the store raised, by operation; None for a store that does not count them."""


@dataclass(frozen=True, slots=True)
class RingSample:
    """One ring's figures since start (``Engine.ring_stats``), copied at the scrape."""

    ring: str
    buckets: list[int]
    """Rings per latency bucket of ``LATENCY_BUCKETS_S`` (not cumulative), +Inf last."""
    sum_s: float
    actions: dict[str, int]
    blocks: dict[str, int]
    """BLOCK outcomes by error type."""


def read_engine(server: RingdServer) -> EngineSample:
    """The adapter: read what the server already keeps, through the engine's public surface.

    This is the only function that knows where each number lives; when the engine's
    shape changes, adapt it here and nothing else.
    """
    engine = server.engine
    generation = engine.generation
    plugins: list[PluginSample] = []
    for ring in PluginHook:
        for slot in generation.rings[ring]:
            loaded = slot.loaded
            instance = loaded.instance
            stats = instance.stats if instance is not None else loaded.metrics.snapshot()
            plugins.append(
                PluginSample(
                    name=slot.name,
                    ring=ring.value,
                    version=loaded.version,
                    status=engine.status(slot),
                    stats=stats,
                )
            )
    background = server._background  # None before start; the property raises
    rings = [
        RingSample(
            ring=ring.value,
            buckets=list(stats.buckets),
            sum_s=stats.sum_s,
            actions={action.value: count for action, count in stats.actions.items()},
            blocks=dict(stats.blocks),
        )
        for ring, stats in engine.ring_stats.items()
    ]
    store_errors = getattr(server.state.extra.get("store"), "errors", None)
    return EngineSample(
        config_version=generation.version,
        generation=generation.number,
        plugins=plugins,
        inflight_rings=server.inflight_rings,
        background_depth=background.pending if background is not None else None,
        grpc_calls=_grpc_server_calls(),
        rings=rings,
        reloads=dict(server.reloads),
        store_errors=dict(store_errors) if isinstance(store_errors, dict) else None,
    )


def _grpc_server_calls() -> dict[str, int]:
    """Call counters gRPC core keeps per server anyway (channelz), summed over this process.

    Reads grpcio's channelz binding; an empty dict (and no ``ringd_grpc_*`` families)
    when that binding is missing or answers something unexpected.
    """
    try:
        cygrpc = importlib.import_module("grpc._cython.cygrpc")  # untyped: grpcio ships no stub for it
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        totals = {"started": 0, "succeeded": 0, "failed": 0}
        for entry in servers:
            data = entry.get("data", {})
            totals["started"] += int(data.get("callsStarted", 0))
            totals["succeeded"] += int(data.get("callsSucceeded", 0))
            totals["failed"] += int(data.get("callsFailed", 0))
        return totals
    except (ImportError, AttributeError, ValueError, TypeError) as exc:  # a grpcio without channelz
        _log.debug("gRPC call counters unavailable: %s", exc)
        return {}


# ---------------------------------------------------------------------- the collector


class RingdCollector(Collector):
    """Turns :func:`read_engine`'s snapshot into Prometheus families at each scrape."""

    def __init__(self, server: RingdServer, worker: str | None = None) -> None:
        self._server = server
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        sample = read_engine(self._server)
        base = {"worker": self._worker} if self._worker is not None else {}
        names = list(base)
        values = list(base.values())

        def family(kind: type[Any], name: str, doc: str, labels: list[str]) -> Any:
            return kind(name, doc, labels=[*names, *labels])

        info = family(GaugeMetricFamily, "ringd_info", "ringd build and the serving config.", ["version"])
        info.add_metric([*values, __version__], 1)
        yield info
        gen = family(
            GaugeMetricFamily,
            "ringd_config_generation",
            "Number of the plugin generation serving now (1 at start, +1 per reload).",
            ["config_version"],
        )
        gen.add_metric([*values, sample.config_version], sample.generation)
        yield gen
        if sample.inflight_rings is not None:
            inflight = family(GaugeMetricFamily, "ringd_inflight_rings", "Ring calls in flight.", [])
            inflight.add_metric(values, sample.inflight_rings)
            yield inflight
        if sample.background_depth is not None:
            depth = family(
                GaugeMetricFamily,
                "ringd_background_queue_depth",
                "BACKGROUND rings queued and not yet finished.",
                [],
            )
            depth.add_metric(values, sample.background_depth)
            yield depth
        if sample.grpc_calls:
            calls = family(
                CounterMetricFamily,
                "ringd_grpc_server_calls",
                "gRPC calls this process's servers received (rings, admin and health checks), by result.",
                ["result"],
            )
            for result, count in sample.grpc_calls.items():
                calls.add_metric([*values, result], count)
            yield calls
        if sample.reloads:
            reloads = family(
                CounterMetricFamily,
                "ringd_reloads",
                "Config reloads (SIGHUP or admin RPC) by result: ok, or failed (the old generation serves).",
                ["result"],
            )
            for result in ("ok", "failed"):
                reloads.add_metric([*values, result], sample.reloads.get(result, 0))
            yield reloads
        if sample.store_errors is not None:
            store_errors = family(
                CounterMetricFamily,
                "ringd_store_errors",
                "Failures the plugin store raised (unreachable, bad value, ...), by operation.",
                ["operation"],
            )
            for operation in _STORE_OPERATIONS:
                store_errors.add_metric([*values, operation], sample.store_errors.get(operation, 0))
            yield store_errors
        yield from self._ring_families(sample.rings, names, values)
        yield from self._plugin_families(sample.plugins, names, values)

    @staticmethod
    def _ring_families(rings: list[RingSample], names: list[str], values: list[str]) -> Iterator[Metric]:
        labels = [*names, "ring"]
        latency = HistogramMetricFamily(
            "ringd_ring_latency_seconds",
            "Time the ring's plugins took, per ring run (the ring loop, without decoding and encoding).",
            labels=labels,
        )
        outcomes = CounterMetricFamily(
            "ringd_ring_outcomes", "Rings run, by the action they answered.", labels=[*labels, "action"]
        )
        blocks = CounterMetricFamily(
            "ringd_ring_blocks",
            "Rings that ended in BLOCK, by the block's error type.",
            labels=[*labels, "error_type"],
        )
        for ring in rings:
            key = [*values, ring.ring]
            cumulative, buckets = 0, []
            for bound, count in zip((*_BUCKET_LABELS, "+Inf"), ring.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric(key, buckets=buckets, sum_value=ring.sum_s)
            for action, count in ring.actions.items():
                outcomes.add_metric([*key, action], count)
            for error_type, count in sorted(ring.blocks.items()):
                blocks.add_metric([*key, error_type], count)
        yield latency
        yield outcomes
        yield blocks

    @staticmethod
    def _plugin_families(
        plugins: list[PluginSample], names: list[str], values: list[str]
    ) -> Iterator[Metric]:
        labels = [*names, "plugin", "ring"]
        counters = {
            "invocations": ("ringd_plugin_calls", "Calls of the plugin's execute (ok or not)."),
            "errors": ("ringd_plugin_errors", "Failed calls: exception, invalid return, open breaker."),
            "blocks": ("ringd_plugin_blocks", "Rings the plugin ended with BLOCK."),
            "timeouts": ("ringd_plugin_timeouts", "Calls that ran out of time."),
            "bypasses": ("ringd_plugin_bypasses", "Failures skipped under fail_policy open."),
            "stalls": ("ringd_plugin_stalls", "Times the plugin blocked the event loop."),
        }
        families = {
            key: CounterMetricFamily(name, doc, labels=labels) for key, (name, doc) in counters.items()
        }
        latency = SummaryMetricFamily(
            "ringd_plugin_latency_seconds",
            "Plugin call latency: count and sum since start, quantiles over this process's last 2048 calls.",
            labels=labels,
        )
        status = GaugeMetricFamily(
            "ringd_plugin_status",
            "1 for the plugin's current status: active, disabled, circuit_open (breaker open) or failed.",
            labels=[*labels, "status"],
        )
        breaker = GaugeMetricFamily(
            "ringd_plugin_breaker_open", "1 while the plugin's circuit breaker is open.", labels=labels
        )
        for plugin in plugins:
            key = [*values, plugin.name, plugin.ring]
            stats = plugin.stats
            for stat, metric in families.items():
                metric.add_metric(key, int(stats.get(stat, 0)))
            latency.add_metric(
                key,
                count_value=int(stats.get("invocations", 0)),
                sum_value=float(stats.get("total_latency_ms", 0.0)) / 1000.0,
            )
            for quantile, stat in _QUANTILES:
                latency.add_sample(
                    latency.name,
                    {**dict(zip(labels, key, strict=True)), "quantile": quantile},
                    float(stats.get(stat, 0.0)) / 1000.0,
                )
            for state in STATUSES:
                status.add_metric([*key, state], 1 if plugin.status == state else 0)
            breaker.add_metric(key, 1 if plugin.status == "circuit_open" else 0)
        yield from families.values()
        yield latency
        yield status
        yield breaker


# ---------------------------------------------------------------------- the endpoint


def worker_address(address: str, worker_index: str | None) -> str:
    """``host:port`` for this process: under ``--workers``, worker ``i`` takes ``port + i``,
    or ``port + 1 + i`` when the supervisor serves the merged view on ``port`` itself."""
    host, _, port = address.rpartition(":")
    if worker_index is None or not worker_index.isdigit() or int(port) == 0:
        return address
    offset = 1 if os.environ.get(MERGED_ENV) == "1" else 0
    return f"{host}:{int(port) + offset + int(worker_index)}"


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.x on the event loop; start with :meth:`start`."""

    def __init__(self, server: RingdServer, listen: str) -> None:
        worker = os.environ.get(WORKER_ENV)
        self.listen = worker_address(listen, worker)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RingdCollector(server, worker))
        self.address = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Bind and serve; returns the bound ``host:port`` (port 0 resolved)."""
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._handle, host.strip("[]"), int(port))
        bound_port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{bound_port}"
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body, content_type = "400 Bad Request", b"bad request\n", "text/plain"
        except ConnectionError:
            writer.close()
            return
        head_out = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):  # the scraper went away: nothing to tell it
            writer.write(head_out.encode("ascii") + body)
            await writer.drain()
        writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        if len(head) > _MAX_REQUEST_BYTES:
            return "431 Request Header Fields Too Large", b"request too large\n", "text/plain"
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in {"GET", "HEAD"}:
            return "405 Method Not Allowed", b"only GET /metrics\n", "text/plain"
        if path != "/metrics":
            return "404 Not Found", b"metrics are at /metrics\n", "text/plain"
        try:
            body = generate_latest(self.registry)
        except Exception:  # a scrape must not take the server down: log it, answer 500
            _log.exception("metrics scrape failed")
            return "500 Internal Server Error", b"scrape failed; see the server log\n", "text/plain"
        return "200 OK", (b"" if method == "HEAD" else body), CONTENT_TYPE


async def serve_metrics(server: RingdServer, listen: str) -> MetricsEndpoint:
    """Start the metrics endpoint of ``server`` on ``listen``; log where it listens."""
    endpoint = MetricsEndpoint(server, listen)
    address = await endpoint.start()
    _log.info("metrics on http://%s/metrics", address)
    return endpoint


# ---------------------------------------------------------------------- --workers: one merged scrape


class WorkersCollector(Collector):
    """The supervisor's view: every worker's families fetched and merged at scrape time.

    Each worker labels its samples ``worker``, so merging is putting the samples of a
    family side by side under one HELP/TYPE. A worker that does not answer is left out
    of that scrape and shows as ``ringd_worker_up{worker_address=...} 0``.
    """

    def __init__(self, addresses: list[str], timeout_s: float = 3.0) -> None:
        self._addresses = addresses
        self._timeout = timeout_s

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.parser import text_string_to_metric_families

        up = GaugeMetricFamily(
            "ringd_worker_up", "1 when the worker answered this scrape.", labels=["worker_address"]
        )
        merged: dict[str, Metric] = {}
        for address in self._addresses:
            try:
                text = _fetch(address, self._timeout)
            except OSError as exc:  # a worker restarting or stuck: report it down, serve the rest
                _log.warning("metrics of worker %s not read: %s", address, exc)
                up.add_metric([address], 0)
                continue
            up.add_metric([address], 1)
            for family in text_string_to_metric_families(text):
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                into.samples.extend(family.samples)
        yield up
        yield from merged.values()


def _fetch(address: str, timeout_s: float) -> str:
    import urllib.request

    host, _, port = address.rpartition(":")
    if host in {"0.0.0.0", "[::]", "::", ""}:
        host = "127.0.0.1"  # a wildcard bind is reached through loopback
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return str(reply.read().decode("utf-8"))


class MergedEndpoint:
    """``/metrics`` of every worker in one scrape, served from the supervisor on a thread.

    The supervisor is a plain process without an event loop, so this uses
    prometheus_client's threaded HTTP server; it reads nothing but the workers' own
    endpoints, so no state is shared across threads.
    """

    def __init__(self, listen: str, worker_addresses: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkersCollector(worker_addresses))
        host, _, port = listen.rpartition(":")
        from prometheus_client import start_http_server

        self._http, self._thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        self.address = f"{host}:{self._http.server_port}"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def serve_merged_for_workers(listen: str, workers: int) -> MergedEndpoint:
    """For ``ringd.server.workers``' supervisor, before it starts the workers: serve the
    merged metrics on ``listen`` and have worker ``i`` serve its own on ``port + 1 + i``.

    Sets :data:`MERGED_ENV` in this process's environment, which the workers inherit.
    """
    host, _, port = listen.rpartition(":")
    if int(port) == 0:
        raise ValueError(f"--workers needs a fixed metrics port, not {listen!r}: worker i uses port + 1 + i")
    os.environ[MERGED_ENV] = "1"
    addresses = [f"{host}:{int(port) + 1 + index}" for index in range(workers)]
    return MergedEndpoint(listen, addresses)
