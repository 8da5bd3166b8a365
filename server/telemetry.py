"""OpenTelemetry for rings: a server span per ring call and a child span per plugin.

Plugin spans are recorded from the engine's per-plugin results after the ring
(start and end times are the plugin's own), so the engine carries no tracing
code and a ring costs nothing extra when its span is not sampled.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ringd.server.results import PluginOutcome, RingOutcome

_log = logging.getLogger("ringd.telemetry")
_PROPAGATOR = TraceContextTextMapPropagator()


class _MetadataGetter(Getter[Iterable[tuple[str, str | bytes]]]):
    """Reads W3C trace headers from gRPC invocation metadata (a sequence of pairs)."""

    def get(self, carrier: Iterable[tuple[str, str | bytes]], key: str) -> list[str] | None:
        found = [v.decode("latin-1") if isinstance(v, bytes) else v for k, v in carrier if k == key]
        return found or None

    def keys(self, carrier: Iterable[tuple[str, str | bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def tracer_provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A provider configured by the standard ``OTEL_*`` variables, or None when tracing is off.

    ``OTEL_TRACES_EXPORTER`` picks the exporter: ``otlp`` (OTLP over gRPC, configured by
    ``OTEL_EXPORTER_OTLP_*``), ``console``, or ``none`` (the default). ``OTEL_SDK_DISABLED=true``
    turns tracing off; ``OTEL_SERVICE_NAME`` and ``OTEL_TRACES_SAMPLER`` work as usual.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            _log.warning("OTEL_TRACES_EXPORTER %r is not supported (otlp, console, none); ignored", name)
    if not exporters:
        return None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "ringd")})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class RingTracer:
    """Makes the spans of ring calls with the provider it is given (None: no tracing)."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("ringd") if provider is not None else None

    @contextmanager
    def ring_span(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Iterator[trace.Span | None]:
        """A SERVER span for one RPC, the caller's ``traceparent`` as its parent."""
        if self._tracer is None:
            yield None
            return
        parent = _PROPAGATOR.extract(metadata or (), getter=_GETTER)
        with self._tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.rsplit("/", 1)[0],
                "rpc.method": method.rsplit("/", 1)[-1],
            },
            record_exception=False,
            set_status_on_exception=True,
        ) as span:
            yield span

    def record_ring(
        self,
        span: trace.Span | None,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
    ) -> None:
        """Annotate the ring's span and add a child span per plugin that ran."""
        if span is None or not span.is_recording() or self._tracer is None:
            return
        ring = ring_outcome.ring.value
        span.set_attribute("ringd.ring", ring)
        span.set_attribute("ringd.action", ring_outcome.action.value)
        span.set_attribute("ringd.config_version", ring_outcome.config_version)
        if ring_outcome.decided_by:
            span.set_attribute("ringd.decided_by", ring_outcome.decided_by)
        parent = trace.set_span_in_context(span)
        for result in ring_outcome.results:
            if result.outcome is PluginOutcome.SKIPPED:
                continue
            start = started_ns + int((result.started - started_perf) * 1e9)
            child = self._tracer.start_span(
                f"plugin {result.plugin}",
                context=parent,
                start_time=start,
                attributes={
                    "ringd.ring": ring,
                    "ringd.plugin.name": result.plugin,
                    "ringd.plugin.version": result.version,
                    "ringd.plugin.outcome": result.outcome.value,
                    "ringd.plugin.action": result.action.value if result.action else "",
                },
            )
            if result.error:
                child.set_status(Status(StatusCode.ERROR, result.error))
            child.end(end_time=start + int(result.latency_ms * 1e6))


def now_pair() -> tuple[int, float]:
    """Wall-clock ns and perf_counter at one instant, to place plugin spans in time."""
    return time.time_ns(), time.perf_counter()
