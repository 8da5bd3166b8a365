"""OpenTelemetry for rings: a server span per ring call and a child span per plugin.

Plugin spans are recorded from the engine's per-plugin results after the ring
(start and end times are the plugin's own), so the engine carries no tracing
code and a ring costs nothing extra when its span is not sampled.

What a sampled call costs was measured (``make bench`` case c, and the in-process
figures in the README): most of it is the SDK making six span objects and the OTLP
exporter encoding them, in Python, on the process that serves the rings. Two things
cut it: a plugin span is handed to the span processors as a finished
:class:`ReadableSpan` (it already has its start and end: no live span, no lock, no
sampler call, no context), and :class:`RingdOTLPSpanExporter` encodes spans with the
encoded attributes of repeated attribute sets cached (a plugin's span attributes
repeat call after call).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ringd.sdk import PluginAction
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


def tracer_provider_from_env(
    environ: Mapping[str, str] | None = None, *, exporters: Sequence[SpanExporter] | None = None
) -> TracerProvider | None:
    """A provider configured by the standard ``OTEL_*`` variables, or None when tracing is off.

    ``OTEL_TRACES_EXPORTER`` picks the exporter: ``otlp`` (OTLP over gRPC, configured by
    ``OTEL_EXPORTER_OTLP_*``), ``console``, or ``none`` (the default); ``exporters``, when
    given, replaces that choice (for embedding ringd, and for tests). ``OTEL_SDK_DISABLED=true``
    turns tracing off; ``OTEL_SERVICE_NAME`` names the service.

    The sampler is left to the SDK, which reads ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_TRACES_SAMPLER_ARG`` from the process environment (default
    ``parentbased_always_on``): ringd passes no sampler of its own, so
    ``parentbased_traceidratio`` with ``0.1`` samples a tenth of new traces and follows
    the caller's sampled flag on the rest.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    chosen: list[SpanExporter] = list(exporters) if exporters is not None else _exporters_from(env)
    if not chosen:
        return None
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "ringd")})
    provider = TracerProvider(resource=resource)  # no sampler argument: OTEL_TRACES_SAMPLER decides
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters_from(env: Mapping[str, str]) -> list[SpanExporter]:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from ringd.server.otlp import RingdOTLPSpanExporter

            exporters.append(RingdOTLPSpanExporter())
        else:
            _log.warning("OTEL_TRACES_EXPORTER %r is not supported (otlp, console, none); ignored", name)
    return exporters


class RingTracer:
    """Makes the spans of ring calls with the provider it is given (None: no tracing).

    The shape: a SERVER span per RPC (:meth:`call_span`), the caller's ``traceparent``
    its parent; under it what :meth:`record_ring` adds once a ring has run. For a call
    of one ring (ExecuteRing) the server span *is* the ring span; for a call of several
    rings (ExecuteRings, and the streamed answers of :mod:`ringd.server.stream`) each ring
    gets a child span ``ring <name>``. Every plugin that ran gets a child span of its
    ring span, made after the ring from the start and latency the engine recorded in its
    :class:`PluginResult`: the ring loop carries no tracing code, no context is attached
    per plugin, and a span the sampler dropped costs no span work at all.

    Streaming hook: a streamed answer opens ``call_span(method, metadata)`` for the
    stream, keeps ``started = now_pair()`` before each ring (or chunk pass) and calls
    ``record_ring(span, outcome, *started, child=True)`` when it ends.
    """

    __slots__ = ("_finished", "_new_span_id", "_resource", "_scope", "_tracer", "enabled")

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("ringd") if provider is not None else None
        # With the SDK's provider, plugin spans go to its span processors as finished
        # spans (see the module's docstring); with any other provider, through its tracer.
        self._finished: SpanProcessor | None = None
        if isinstance(provider, TracerProvider):
            # The provider's own fan-out to every processor added to it (the SDK has
            # no public accessor; it has been this attribute since the SDK's 1.0).
            self._finished = provider._active_span_processor
            self._new_span_id = provider.id_generator.generate_span_id
            self._resource = provider.resource
            self._scope = InstrumentationScope("ringd")

    @contextmanager
    def call_span(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Iterator[trace.Span | None]:
        """A SERVER span for one RPC, the caller's ``traceparent`` its parent.

        Yields None when tracing is off or the sampler did not sample the span (a
        parent-based sampler follows the caller's sampled flag): the caller then skips
        all span work. A sampled span is the current span while the call runs, so a
        plugin's own instrumentation (an HTTP client, say) joins the trace.
        """
        tracer = self._tracer
        if tracer is None:
            yield None
            return
        parent = _PROPAGATOR.extract(metadata or (), getter=_GETTER)
        span = tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.rsplit("/", 1)[0],
                "rpc.method": method.rsplit("/", 1)[-1],
            },
        )
        if not span.is_recording():
            yield None
            return
        token = context_api.attach(trace.set_span_in_context(span, parent))
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            context_api.detach(token)
            span.end()

    def record_ring(
        self,
        span: trace.Span | None,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
        *,
        child: bool = False,
    ) -> None:
        """Record one ring under ``span``: annotate it (or, with ``child``, a new
        ``ring <name>`` child span from ``started`` to now) and add a span per plugin.

        ``started_ns``/``started_perf`` are :func:`now_pair` taken when the ring began;
        with ``child`` they are the ring span's start. No-op for an unsampled call.
        """
        tracer = self._tracer
        if span is None or tracer is None:
            return
        ring = ring_outcome.ring.value
        if child:
            target = tracer.start_span(
                f"ring {ring}",
                context=trace.set_span_in_context(span),
                start_time=started_ns,
                attributes=_ring_attributes(ring_outcome),
            )
        else:
            target = span
            target.set_attributes(_ring_attributes(ring_outcome))
        finished = self._finished
        if finished is not None:
            self._finished_plugin_spans(finished, target, ring, ring_outcome, started_ns, started_perf)
        else:
            self._plugin_spans(tracer, target, ring, ring_outcome, started_ns, started_perf)
        if child:
            target.end()

    def _finished_plugin_spans(
        self,
        processor: SpanProcessor,
        ring_span: trace.Span,
        ring: str,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
    ) -> None:
        """A finished span per plugin that ran, straight to the provider's processors."""
        parent = ring_span.get_span_context()
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        new_span_id, resource, scope = self._new_span_id, self._resource, self._scope
        now = time.time_ns()
        for result in ring_outcome.results:
            if result.outcome is PluginOutcome.SKIPPED:
                continue
            action = result.action
            if result.started:
                begun = started_ns + int((result.started - started_perf) * 1e9)
                ended = begun + int(result.latency_ms * 1e6)
            else:  # refused before it ran (failed load, open circuit): an instant
                begun = ended = now
            error = result.error
            processor.on_end(
                ReadableSpan(
                    name=f"plugin {result.plugin}",
                    context=SpanContext(trace_id, new_span_id(), False, flags, state),
                    parent=parent,
                    resource=resource,
                    attributes={
                        "ringd.ring": ring,
                        "ringd.plugin.name": result.plugin,
                        "ringd.plugin.version": result.version,
                        "ringd.plugin.outcome": result.outcome.value,
                        "ringd.plugin.action": action.value if action is not None else "",
                    },
                    kind=SpanKind.INTERNAL,
                    status=_error_status(error) if error else _UNSET,
                    start_time=begun,
                    end_time=ended,
                    instrumentation_scope=scope,
                )
            )

    @staticmethod
    def _plugin_spans(
        tracer: trace.Tracer,
        ring_span: trace.Span,
        ring: str,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
    ) -> None:
        """A span per plugin that ran, through any provider's tracer."""
        parent = trace.set_span_in_context(ring_span)
        for result in ring_outcome.results:
            if result.outcome is PluginOutcome.SKIPPED:
                continue
            action = result.action
            begun = started_ns + int((result.started - started_perf) * 1e9) if result.started else None
            plugin_span = tracer.start_span(
                f"plugin {result.plugin}",
                context=parent,
                start_time=begun,
                attributes={
                    "ringd.ring": ring,
                    "ringd.plugin.name": result.plugin,
                    "ringd.plugin.version": result.version,
                    "ringd.plugin.outcome": result.outcome.value,
                    "ringd.plugin.action": action.value if action is not None else "",
                },
            )
            if result.error:
                plugin_span.set_status(_error_status(result.error))
            plugin_span.end(end_time=None if begun is None else begun + int(result.latency_ms * 1e6))


_UNSET = Status(StatusCode.UNSET)


def _error_status(description: str) -> Status:
    return Status(StatusCode.ERROR, description)


def _ring_attributes(ring_outcome: RingOutcome) -> dict[str, str | int]:
    """The ring span's attributes: ring, action, deciding plugin, request id, block."""
    attributes: dict[str, str | int] = {
        "ringd.ring": ring_outcome.ring.value,
        "ringd.action": ring_outcome.action.value,
        "ringd.config_version": ring_outcome.config_version,
    }
    request_id = ring_outcome.context.request_id
    if request_id:
        attributes["ringd.request_id"] = request_id
    if ring_outcome.decided_by:
        attributes["ringd.decided_by"] = ring_outcome.decided_by
    decision = ring_outcome.decision
    if ring_outcome.action is PluginAction.BLOCK and decision is not None:
        attributes["ringd.block.status_code"] = decision.status_code
        attributes["ringd.block.error_type"] = decision.error_type or ""
    return attributes


def now_pair() -> tuple[int, float]:
    """Wall-clock ns and perf_counter at one instant, to place plugin spans in time."""
    return time.time_ns(), time.perf_counter()
