"""OpenTelemetry for rings: a server span per ring call and a child span per plugin.

Plugin spans are made from the engine's per-plugin results after the ring (start and
end times are the plugin's own), so the engine carries no tracing code.

What tracing costs was measured (``make bench`` cases c and c2, profiled), and is kept
down three ways:

- **An unsampled call costs almost nothing.** For the SDK's own samplers (every
  ``OTEL_TRACES_SAMPLER`` value) the decision is taken before any OpenTelemetry object
  exists: one scan of the call's metadata for ``traceparent``, a regular expression for
  its sampled flag, and the trace id's low 64 bits against the sampler's bound (what
  ``TraceIdRatioBased`` compares). A call that is not sampled then builds no context,
  span, attribute or sampling result. A sampler ringd does not know is asked as before.
- **A sampled call records, it does not build.** While the call runs only its identity
  exists (the current span, so a plugin's own instrumentation joins the trace); what a
  ring adds is a tuple of its verdict and the engine's per-plugin results. The spans
  are made when the call ends, as finished :class:`ReadableSpan` objects straight to the
  provider's span processors (no live span, lock or sampler call per span).
- **With ringd's OTLP exporter, spans are never objects.** When the provider's only
  processor is a :class:`BatchSpanProcessor` over
  :class:`~ringd.server.otlp.RingdOTLPSpanExporter` (``OTEL_TRACES_EXPORTER=otlp``), the
  finished call itself is queued (one object per call, not per span) and the exporter
  writes its spans in OTLP's wire format from the recorded results, in the batch thread.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from random import getrandbits
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from ringd.sdk import PluginAction
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ConcurrentMultiSpanProcessor, SynchronousMultiSpanProcessor

_log = logging.getLogger("ringd.telemetry")
_UNSET_STATUS = Status(StatusCode.UNSET)
_PROPAGATOR = TraceContextTextMapPropagator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_LOW_64 = (1 << 64) - 1
_ALWAYS = 1 << 64
"""A bound no trace id's low 64 bits reach: always sampled (0: never)."""
# W3C trace context, as the SDK's propagator reads it: version, trace id, parent id,
# flags, and for version 00 nothing after them.
_TRACEPARENT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
_TRACEPARENT_MAX = 512
_NO_TRACE_ID = "0" * 32
_NO_SPAN_ID = "0" * 16


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


# ---------------------------------------------------------------------- the sampling decision


def _bound(sampler: Sampler) -> int | None:
    """A sampler that decides by the trace id alone, as a bound on its low 64 bits
    (sampled when below): the SDK's always-on, always-off and ratio samplers; else None."""
    should_sample = type(sampler).should_sample
    if should_sample is TraceIdRatioBased.should_sample:
        return cast(TraceIdRatioBased, sampler).bound
    if should_sample is StaticSampler.should_sample:
        decision = getattr(sampler, "_decision", None)
        if decision is Decision.RECORD_AND_SAMPLE:
            return _ALWAYS
        if decision is Decision.DROP:
            return 0
    return None


def sampling_bounds(sampler: Sampler) -> tuple[int, int, int] | None:
    """``sampler``'s decision as bounds on the trace id's low 64 bits, for a call with no
    valid ``traceparent``, one whose parent is sampled, and one whose parent is not.

    None for a sampler whose decision depends on more than the trace id and the remote
    parent's sampled flag (a custom sampler, a record-only one): ringd then asks it.
    """
    if type(sampler).should_sample is ParentBased.should_sample:
        # A call's parent comes from its metadata, so it is always remote.
        delegates = [
            getattr(sampler, name, None)
            for name in ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled")
        ]
        if any(not isinstance(delegate, Sampler) for delegate in delegates):
            return None
        bounds = [_bound(cast(Sampler, delegate)) for delegate in delegates]
        if any(bound is None for bound in bounds):
            return None
        return cast(tuple[int, int, int], tuple(bounds))
    bound = _bound(sampler)
    return None if bound is None else (bound, bound, bound)


def parse_traceparent(value: str | bytes) -> tuple[int, int] | None:
    """The trace id and flags of a ``traceparent`` value the SDK's propagator accepts, else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) > _TRACEPARENT_MAX:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == _NO_TRACE_ID or span_id == _NO_SPAN_ID or version == "ff" or (version == "00" and rest):
        return None
    return int(trace_id, 16), int(flags, 16)


# ---------------------------------------------------------------------- a sampled call


RingFields = tuple[str, str, str, str | None, str | None, int | None, str]
"""A ring's verdict as its span shows it: ring, action, config version, request id,
deciding plugin, and the block's status code (None when not a block) and error type."""

RingRecord = tuple[RingFields, Sequence[PluginResult], int, float, int, bool]
"""One ring of a call: its verdict, its plugins' results, when it began (wall-clock ns and
perf_counter), when it ended (ns), and whether it has a span of its own (else the call's
span is the ring's)."""


class CallSpan:
    """The span of one sampled call: its identity while the call runs, then a record.

    Use it as a context manager around the call: inside, it is the current span (so a
    plugin's own instrumentation joins the trace); on exit it ends (status ERROR if an
    exception escaped) and is handed on (:meth:`RingTracer.record_ring` adds the rings
    before that). Its spans are made only then, by :meth:`spans`, or written straight
    to the wire by :class:`~ringd.server.otlp.SpanEncoder`.
    """

    __slots__ = (
        "_child_ids",
        "_parent_context",
        "_token",
        "_tracer",
        "attributes",
        "base_attributes",
        "context",
        "end_ns",
        "name",
        "parent",
        "rings",
        "start_ns",
        "status",
    )

    def __init__(
        self,
        tracer: RingTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        parent_context: Context,
        base_attributes: dict[str, Any],
        attributes: dict[str, Any] | None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self._parent_context = parent_context
        self.base_attributes = base_attributes
        """The method's ``rpc.*`` attributes: shared by every call of the method, never changed."""
        self.attributes = attributes
        """Attributes of this call beyond those (the sampler's, :meth:`set_attribute`'s), or None."""
        self.status = _UNSET_STATUS
        self.rings: list[RingRecord] = []
        self.start_ns = 0
        self.end_ns = 0
        self._child_ids: list[int] | None = None
        self._token: object = None

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def set_attribute(self, key: str, value: Any) -> None:
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def __enter__(self) -> CallSpan:
        self.start_ns = time.time_ns()
        self._token = context_api.attach(
            trace.set_span_in_context(NonRecordingSpan(self.context), self._parent_context)
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        context_api.detach(cast(Any, self._token))
        if exc is not None:
            self.status = Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        self.end_ns = time.time_ns()
        self._tracer.finish(self)

    def child_ids(self) -> list[int]:
        """The span ids of the call's child spans (its rings' and plugins'), in :meth:`spans`
        order: made once, when first asked for."""
        if self._child_ids is None:
            count = sum(
                child + sum(1 for result in results if result.outcome is not PluginOutcome.SKIPPED)
                for _, results, _, _, _, child in self.rings
            )
            new_id = self._tracer.new_span_id
            self._child_ids = [new_id() for _ in range(count)]
        return self._child_ids

    def call_attributes(self) -> dict[str, Any]:
        """The call span's attributes: the method's, this call's, its ring's verdict."""
        attributes = dict(self.base_attributes)
        if self.attributes:
            attributes.update(self.attributes)
        for fields, _, _, _, _, child in self.rings:
            if not child:
                attributes.update(ring_attributes(fields))
        return attributes

    def spans(self) -> list[ReadableSpan]:
        """The call's finished spans: per ring its span (if it has its own) and its plugins'
        spans, then the call's span."""
        resource, scope = self._tracer.resource, self._tracer.scope
        context = self.context
        trace_id, flags, state = context.trace_id, context.trace_flags, context.trace_state
        ids = iter(self.child_ids())
        spans: list[ReadableSpan] = []
        for fields, results, started_ns, started_perf, ended_ns, child in self.rings:
            parent = context
            if child:
                parent = SpanContext(trace_id, next(ids), False, flags, state)
                spans.append(
                    ReadableSpan(
                        name=f"ring {fields[0]}",
                        context=parent,
                        parent=context,
                        resource=resource,
                        attributes=ring_attributes(fields),
                        kind=SpanKind.INTERNAL,
                        status=_UNSET_STATUS,
                        start_time=started_ns,
                        end_time=ended_ns,
                        instrumentation_scope=scope,
                    )
                )
            for result in results:
                if result.outcome is PluginOutcome.SKIPPED:
                    continue
                begun, ended = plugin_times(result, started_ns, started_perf, ended_ns)
                spans.append(
                    ReadableSpan(
                        name=f"plugin {result.plugin}",
                        context=SpanContext(trace_id, next(ids), False, flags, state),
                        parent=parent,
                        resource=resource,
                        attributes=plugin_attributes(fields[0], result),
                        kind=SpanKind.INTERNAL,
                        status=Status(StatusCode.ERROR, result.error) if result.error else _UNSET_STATUS,
                        start_time=begun,
                        end_time=ended,
                        instrumentation_scope=scope,
                    )
                )
        spans.append(
            ReadableSpan(
                name=self.name,
                context=context,
                parent=self.parent,
                resource=resource,
                attributes=self.call_attributes(),
                kind=SpanKind.SERVER,
                status=self.status,
                start_time=self.start_ns,
                end_time=self.end_ns,
                instrumentation_scope=scope,
            )
        )
        return spans


def plugin_times(
    result: PluginResult, started_ns: int, started_perf: float, ended_ns: int
) -> tuple[int, int]:
    """A plugin's start and end in wall-clock ns, from the perf_counter times the engine
    recorded; a plugin refused before it ran (failed load, open circuit) is an instant."""
    if not result.started:
        return ended_ns, ended_ns
    begun = started_ns + int((result.started - started_perf) * 1e9)
    return begun, begun + int(result.latency_ms * 1e6)


def action_name(action: object) -> str:
    """A plugin result's action for a span: its value, "" for none, garbage as text."""
    if isinstance(action, PluginAction):
        return action.value
    return "" if action is None else str(action)


def plugin_attributes(ring: str, result: PluginResult) -> dict[str, str]:
    """A plugin span's attributes."""
    return {
        "ringd.ring": ring,
        "ringd.plugin.name": result.plugin,
        "ringd.plugin.version": result.version,
        "ringd.plugin.outcome": result.outcome.value,
        "ringd.plugin.action": action_name(result.action),
    }


def ring_fields(ring_outcome: RingOutcome) -> RingFields:
    """What a ring's span shows of its verdict (taken when the ring ends: the outcome's
    context, with the whole body, is not kept for the export)."""
    action = ring_outcome.action
    block = ring_outcome.decision if action is PluginAction.BLOCK else None
    return (
        ring_outcome.ring.value,
        # str(): a plugin may have overwritten its response's action with garbage (the
        # servicer then answers a 500 block); the span shows what the plugin returned.
        action.value if isinstance(action, PluginAction) else str(action),
        ring_outcome.config_version,
        ring_outcome.context.request_id or None,
        ring_outcome.decided_by or None,
        block.status_code if block is not None else None,
        (block.error_type or "") if block is not None else "",
    )


def ring_attributes(fields: RingFields) -> dict[str, str | int]:
    """The ring span's attributes: ring, action, config version, request id, deciding plugin, block."""
    ring, action, config_version, request_id, decided_by, status_code, error_type = fields
    attributes: dict[str, str | int] = {
        "ringd.ring": ring,
        "ringd.action": action,
        "ringd.config_version": config_version,
    }
    if request_id:
        attributes["ringd.request_id"] = request_id
    if decided_by:
        attributes["ringd.decided_by"] = decided_by
    if status_code is not None:
        attributes["ringd.block.status_code"] = status_code
        attributes["ringd.block.error_type"] = error_type
    return attributes


# ---------------------------------------------------------------------- the tracer


class RingTracer:
    """Makes the spans of ring calls with the SDK provider it is given (None: no tracing).

    The shape: a SERVER span per RPC (:meth:`start_call`), the caller's ``traceparent``
    its parent; under it what :meth:`record_ring` adds once a ring has run. For a call
    of one ring (ExecuteRing, and a streamed answer's POST_FLIGHT in StreamRing) the
    server span *is* the ring span; for a call of several rings (ExecuteRings) each ring
    gets a child span ``ring <name>``. Every plugin that ran gets a child span of its
    ring span, made from the start and latency the engine recorded in its
    :class:`PluginResult`: the ring loop carries no tracing code and no context is
    attached per plugin. Processors see ``on_end`` only, not ``on_start`` (the batch and
    simple processors need nothing else), when the call ends.

    A call::

        span = tracer.start_call(method, context.invocation_metadata())
        if span is None:  # not sampled (or tracing off): no span work at all
            outcome = await engine.execute_ring(...)
        else:
            with span:
                started = now_pair()
                outcome = await engine.execute_ring(...)
                tracer.record_ring(span, outcome, *started)

    :meth:`call_span` is the same as one context manager that yields None when unsampled.
    """

    __slots__ = (
        "_bounds",
        "_direct",
        "_direct_for",
        "_ids",
        "_methods",
        "_processors",
        "_random_ids",
        "_sampler",
        "enabled",
        "new_span_id",
        "resource",
        "scope",
    )

    def __init__(self, provider: TracerProvider | None) -> None:
        self.enabled = provider is not None
        self.scope = InstrumentationScope("ringd")
        self._methods: dict[str, dict[str, Any]] = {}
        self._bounds: tuple[int, int, int] | None = None
        self._direct: BatchSpanProcessor | None = None
        self._direct_for: tuple[SpanProcessor, ...] | None = None
        self._random_ids = False
        if provider is not None:
            self._sampler = provider.sampler
            self._bounds = sampling_bounds(provider.sampler)
            self._ids = provider.id_generator
            self._random_ids = type(provider.id_generator) is RandomIdGenerator
            self.new_span_id = provider.id_generator.generate_span_id
            self.resource = provider.resource
            # The provider's own fan-out to every processor added to it (the SDK has
            # no public accessor; it has been this attribute since the SDK's 1.0).
            self._processors: SynchronousMultiSpanProcessor | ConcurrentMultiSpanProcessor = (
                provider._active_span_processor
            )
            processors = self._processors._span_processors
            if len(processors) == 1 and _takes_calls(processors[0]):
                self._direct = cast(BatchSpanProcessor, processors[0])
                self._direct_for = processors

    @property
    def queues_calls(self) -> bool:
        """True when a sampled call reaches ringd's OTLP exporter as one record (no span objects)."""
        return self._direct is not None and self._processors._span_processors is self._direct_for

    def _method(self, method: str) -> dict[str, Any]:
        attributes = self._methods.get(method)
        if attributes is None:
            service, _, rpc = method.rpartition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
            self._methods[method] = attributes
        return attributes

    def start_call(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> CallSpan | None:
        """The SERVER span of one RPC (use it as a context manager), or None when tracing
        is off or the sampler does not sample the call: the caller then skips all span work.

        The caller's ``traceparent`` is its parent; a parent-based sampler follows its
        sampled flag. ``metadata`` is read twice for a sampled call with a parent (gRPC's
        invocation metadata is a container, not a one-shot iterator).
        """
        bounds = self._bounds
        if bounds is None:
            return self._ask_sampler(method, metadata) if self.enabled else None
        traceparent = None
        for key, value in metadata or ():
            if key == "traceparent":
                traceparent = value
                break
        parent_flags = None if traceparent is None else parse_traceparent(traceparent)
        if parent_flags is None:  # a root span: the root sampler decides on a new trace id
            if self._random_ids:
                # The SDK's ids are 128 random bits: draw the 64 the sampler reads first,
                # so an unsampled call draws no more.
                low = getrandbits(64)
                if low >= bounds[0]:
                    return None
                trace_id = (getrandbits(64) << 64) | low
                if not trace_id:
                    return None  # an invalid id (one draw in 2**128): this call goes untraced
            else:
                trace_id = self._ids.generate_trace_id()
                if trace_id & _LOW_64 >= bounds[0]:
                    return None
            context = SpanContext(trace_id, self.new_span_id(), False, _SAMPLED)
            return CallSpan(self, method, context, None, Context(), self._method(method), None)
        trace_id, flags = parent_flags
        if trace_id & _LOW_64 >= (bounds[1] if flags & TraceFlags.SAMPLED else bounds[2]):
            return None
        parent_context, parent = _parent(metadata)
        context = SpanContext(
            trace_id, self.new_span_id(), False, _SAMPLED, parent.trace_state if parent is not None else None
        )
        return CallSpan(self, method, context, parent, parent_context, self._method(method), None)

    def _ask_sampler(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> CallSpan | None:
        """:meth:`start_call` for a sampler ringd does not know: the SDK's sampler API."""
        parent_context, parent = _parent(metadata)
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        base = self._method(method)
        sampling = self._sampler.should_sample(parent_context, trace_id, method, SpanKind.SERVER, dict(base))
        if sampling.decision is Decision.DROP:
            return None
        extra = {k: v for k, v in sampling.attributes.items() if k not in base or base[k] != v}
        flags = _SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        context = SpanContext(trace_id, self.new_span_id(), False, flags, sampling.trace_state)
        return CallSpan(self, method, context, parent, parent_context, base, extra or None)

    @contextmanager
    def call_span(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Iterator[CallSpan | None]:
        """:meth:`start_call` as one context manager: yields None when not sampled."""
        span = self.start_call(method, metadata)
        if span is None:
            yield None
            return
        with span:
            yield span

    def record_ring(
        self,
        span: CallSpan | None,
        ring_outcome: RingOutcome,
        started_ns: int,
        started_perf: float,
        *,
        child: bool = False,
    ) -> None:
        """Record one ring under ``span``: its verdict annotates the call's span (or, with
        ``child``, a ``ring <name>`` child span from ``started`` to now), and each plugin
        that ran gets a span. No-op for an unsampled call (``span`` None).

        ``started_ns``/``started_perf`` are :func:`now_pair` taken when the ring began.
        """
        if span is not None:
            span.rings.append(
                (
                    ring_fields(ring_outcome),
                    ring_outcome.results,
                    started_ns,
                    started_perf,
                    time.time_ns(),
                    child,
                )
            )

    def finish(self, span: CallSpan) -> None:
        """Hand an ended call to the span processors (:meth:`CallSpan.__exit__` calls this)."""
        if self.queues_calls:
            # The batch processor queues what it is given (it reads only ``context``);
            # its exporter, ringd's, writes the call's spans from the record.
            cast(BatchSpanProcessor, self._direct).on_end(cast(ReadableSpan, span))
            return
        on_end = self._processors.on_end
        for finished in span.spans():
            on_end(finished)


def _parent(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[Context, SpanContext | None]:
    """The caller's trace context from its metadata, and its span (None unless valid)."""
    parent_context = _PROPAGATOR.extract(metadata or (), getter=_GETTER)
    parent = trace.get_current_span(parent_context).get_span_context()
    return parent_context, parent if parent is not None and parent.is_valid else None


def _takes_calls(processor: SpanProcessor) -> bool:
    """A batch processor whose exporter encodes :class:`CallSpan` records itself."""
    from ringd.server.otlp import RingdOTLPSpanExporter

    return type(processor) is BatchSpanProcessor and isinstance(
        processor.span_exporter, RingdOTLPSpanExporter
    )


def now_pair() -> tuple[int, float]:
    """Wall-clock ns and perf_counter at one instant, to place plugin spans in time."""
    return time.time_ns(), time.perf_counter()
