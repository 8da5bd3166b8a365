"""OpenTelemetry for rings: a server span per ring call and a child span per plugin.

Plugin spans are recorded from the engine's per-plugin results after the ring
(start and end times are the plugin's own), so the engine carries no tracing
code and a ring costs nothing extra when its span is not sampled.

What a sampled call costs was measured (``make bench`` case c, profiled): most of it
was the SDK making six live span objects and the OTLP exporter encoding them, in
Python, in the process that serves the rings. Now every span is handed to the span
processors as a finished :class:`ReadableSpan` (the call's span is sampled at the
start, but only its identity exists until it ends; a plugin span already has its start
and end: no live span, lock, attribute validation or sampler call per span), and
:class:`~ringd.server.otlp.RingdOTLPSpanExporter` encodes with cached bytes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ringd.sdk import PluginAction
from ringd.server.results import PluginOutcome, RingOutcome

_log = logging.getLogger("ringd.telemetry")
_UNSET_STATUS = Status(StatusCode.UNSET)
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


class CallSpan:
    """The span of one sampled call while the call runs.

    Only its identity exists during the call (it is the current span, so a plugin's own
    instrumentation joins the trace); it becomes a finished span, attributes and all,
    when the call ends (:meth:`RingTracer.call_span`).
    """

    __slots__ = ("attributes", "context", "parent", "status")

    def __init__(self, context: SpanContext, parent: SpanContext | None, attributes: dict[str, Any]) -> None:
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.status = _UNSET_STATUS

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value


class RingTracer:
    """Makes the spans of ring calls with the SDK provider it is given (None: no tracing).

    The shape: a SERVER span per RPC (:meth:`call_span`), the caller's ``traceparent``
    its parent; under it what :meth:`record_ring` adds once a ring has run. For a call
    of one ring (ExecuteRing, and a streamed answer's POST_FLIGHT in StreamRing) the
    server span *is* the ring span; for a call of several rings (ExecuteRings) each ring
    gets a child span ``ring <name>``. Every plugin that ran gets a child span of its
    ring span, made after the ring from the start and latency the engine recorded in its
    :class:`PluginResult`: the ring loop carries no tracing code and no context is
    attached per plugin.

    Cost: the provider's sampler decides at the start of the call (``OTEL_TRACES_SAMPLER``,
    parent-based by default); a call it does not sample does no span work at all. A
    sampled call's spans are handed to the provider's span processors as finished
    :class:`ReadableSpan` objects, each built once with its final attributes and times:
    no live SDK span, lock or per-attribute validation. Processors therefore see
    ``on_end`` only, not ``on_start`` (the batch and simple processors need nothing
    else).

    StreamRing opens ``call_span(method, metadata)`` for the stream, takes
    ``now_pair()`` when it starts and calls ``record_ring(span, outcome, *started)`` with
    the stream's POST_FLIGHT outcome when it ends (the server span is its ring span).
    """

    __slots__ = ("_ids", "_processor", "_resource", "_sampler", "_scope", "enabled")

    def __init__(self, provider: TracerProvider | None) -> None:
        self.enabled = provider is not None
        self._scope = InstrumentationScope("ringd")
        if provider is not None:
            self._sampler = provider.sampler
            self._ids = provider.id_generator
            self._resource = provider.resource
            # The provider's own fan-out to every processor added to it (the SDK has
            # no public accessor; it has been this attribute since the SDK's 1.0).
            self._processor: SpanProcessor = provider._active_span_processor

    @contextmanager
    def call_span(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Iterator[CallSpan | None]:
        """A SERVER span for one RPC, the caller's ``traceparent`` its parent.

        Yields None when tracing is off or the sampler did not sample the span (a
        parent-based sampler follows the caller's sampled flag): the caller then skips
        all span work. A sampled span is the current span while the call runs.
        """
        if not self.enabled:
            yield None
            return
        parent_context = _PROPAGATOR.extract(metadata or (), getter=_GETTER)
        parent: SpanContext | None = trace.get_current_span(parent_context).get_span_context()
        if parent is not None and not parent.is_valid:
            parent = None
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        service, _, rpc = method.rpartition("/")
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        sampling = self._sampler.should_sample(parent_context, trace_id, method, SpanKind.SERVER, attributes)
        if sampling.decision is Decision.DROP:
            yield None
            return
        if sampling.attributes:
            attributes.update(sampling.attributes)
        flags = TraceFlags(
            TraceFlags.SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else TraceFlags.DEFAULT
        )
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, sampling.trace_state)
        span = CallSpan(context, parent, attributes)
        started = time.time_ns()
        token = context_api.attach(trace.set_span_in_context(NonRecordingSpan(context), parent_context))
        try:
            yield span
        except BaseException as exc:
            span.status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            context_api.detach(token)
            self._finish(
                method, context, parent, SpanKind.SERVER, attributes, span.status, started, time.time_ns()
            )

    def _finish(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        status: Status,
        start_ns: int,
        end_ns: int,
    ) -> None:
        self._processor.on_end(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=kind,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def record_ring(
        self,
        span: CallSpan | None,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
        *,
        child: bool = False,
    ) -> None:
        """Record one ring under ``span``: annotate it (or, with ``child``, add a
        ``ring <name>`` child span from ``started`` to now) and add a span per plugin.

        ``started_ns``/``started_perf`` are :func:`now_pair` taken when the ring began.
        No-op for an unsampled call (``span`` None).
        """
        if span is None:
            return
        ring = ring_outcome.ring.value
        if child:
            parent = span.context
            ring_context = SpanContext(
                parent.trace_id, self._ids.generate_span_id(), False, parent.trace_flags, parent.trace_state
            )
            self._finish(
                f"ring {ring}",
                ring_context,
                parent,
                SpanKind.INTERNAL,
                _ring_attributes(ring_outcome),
                _UNSET_STATUS,
                started_ns,
                time.time_ns(),
            )
        else:
            ring_context = span.context
            span.attributes.update(_ring_attributes(ring_outcome))
        self._plugin_spans(ring_context, ring, ring_outcome, started_ns, started_perf)

    def _plugin_spans(
        self,
        parent: SpanContext,
        ring: str,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
    ) -> None:
        """A finished span per plugin that ran, straight to the provider's processors."""
        trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        new_span_id, finish = self._ids.generate_span_id, self._finish
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
            finish(
                f"plugin {result.plugin}",
                SpanContext(trace_id, new_span_id(), False, flags, state),
                parent,
                SpanKind.INTERNAL,
                {
                    "ringd.ring": ring,
                    "ringd.plugin.name": result.plugin,
                    "ringd.plugin.version": result.version,
                    "ringd.plugin.outcome": result.outcome.value,
                    "ringd.plugin.action": _action_name(action),
                },
                Status(StatusCode.ERROR, error) if error else _UNSET_STATUS,
                begun,
                ended,
            )


def _action_name(action: object) -> str:
    """A plugin result's action for a span: its value, "" for none, garbage as text."""
    if isinstance(action, PluginAction):
        return action.value
    return "" if action is None else str(action)


def _ring_attributes(ring_outcome: RingOutcome) -> dict[str, str | int]:
    """The ring span's attributes: ring, action, deciding plugin, request id, block."""
    action = ring_outcome.action
    attributes: dict[str, str | int] = {
        "ringd.ring": ring_outcome.ring.value,
        # str(): a plugin may have overwritten its response's action with garbage (the
        # servicer then answers a 500 block); the span shows what the plugin returned.
        "ringd.action": action.value if isinstance(action, PluginAction) else str(action),
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
