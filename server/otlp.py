"""OTLP span export with a cheaper encoder: the OTLP/gRPC exporter, cached attributes.

The OTLP exporter turns every span into protobuf messages in Python, in the process
that serves the rings (its batch thread holds the GIL while it encodes): about
40 us per span on the bench machine, two thirds of it re-encoding attribute sets
that repeat call after call (a plugin's span attributes are the same for every
passthrough). :func:`encode_spans` builds the same ``ExportTraceServiceRequest`` as
the exporter's own encoder, with each distinct attribute set encoded once and then
copied; a span with events or links, or an attribute value that cannot key a cache,
is encoded by the exporter's own code. ``tests/grpc/test_tracing.py`` checks that
both encoders produce the same message.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

_CACHE_LIMIT = 4096
"""Distinct attribute sets kept encoded; past it the cache starts again (a bound, not an LRU)."""
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_KIND = {kind: kind.value + 1 for kind in SpanKind}  # the OTLP enum is the API's, shifted by UNSPECIFIED


class AttributeCache:
    """Encoded attribute sets by their items; owned by one exporter (one thread)."""

    __slots__ = ("_encoded",)

    def __init__(self) -> None:
        self._encoded: dict[tuple[tuple[str, Any], ...], list[KeyValue]] = {}

    def encode(self, attributes: Mapping[str, Any] | None) -> list[KeyValue] | None:
        """The encoded attributes, or None when a value cannot key the cache (a dict)."""
        if not attributes:
            return []
        key = tuple(attributes.items())
        encoded = self._encoded.get(key)
        if encoded is None:
            if not all(isinstance(value, Hashable) for _, value in key):
                return None
            encoded = list(_encode_attributes(attributes) or ())
            if len(self._encoded) >= _CACHE_LIMIT:
                self._encoded.clear()
            self._encoded[key] = encoded
        return encoded


def encode_spans(spans: Sequence[ReadableSpan], cache: AttributeCache) -> ExportTraceServiceRequest:
    """The OTLP export request for ``spans``, as the exporter's own encoder builds it."""
    grouped: defaultdict[Any, defaultdict[Any, list[ReadableSpan]]] = defaultdict(lambda: defaultdict(list))
    for span in spans:
        grouped[span.resource][span.instrumentation_scope or None].append(span)
    request = ExportTraceServiceRequest()
    for resource, scopes in grouped.items():
        resource_spans: ResourceSpans = request.resource_spans.add(
            resource=_encode_resource(resource), schema_url=resource.schema_url
        )
        for scope, members in scopes.items():
            scope_spans: ScopeSpans = resource_spans.scope_spans.add(
                scope=_encode_instrumentation_scope(scope),
                schema_url=scope.schema_url if scope is not None else None,
            )
            out = scope_spans.spans
            for span in members:
                _encode_one(span, cache, out)
    return request


def _encode_one(span: ReadableSpan, cache: AttributeCache, out: Any) -> None:
    attributes = cache.encode(span.attributes)
    if attributes is None or span.events or span.links:
        out.append(_encode_span(span))
        return
    context = span.context
    assert context is not None  # a finished SDK span always has its context
    parent = span.parent
    flags: int = _HAS_IS_REMOTE
    if parent is not None and parent.is_remote:
        flags |= _IS_REMOTE
    encoded: Span = out.add(
        trace_id=context.trace_id.to_bytes(16, "big"),
        span_id=context.span_id.to_bytes(8, "big"),
        parent_span_id=parent.span_id.to_bytes(8, "big") if parent is not None else None,
        name=span.name,
        kind=_KIND[span.kind],
        start_time_unix_nano=span.start_time,
        end_time_unix_nano=span.end_time,
        dropped_attributes_count=span.dropped_attributes,
        dropped_events_count=span.dropped_events,
        dropped_links_count=span.dropped_links,
        flags=flags,
    )
    if context.trace_state is not None:
        encoded.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
    encoded.attributes.extend(attributes)
    status = span.status
    encoded.status.code = status.status_code.value  # type: ignore[assignment]  # the OTLP enum shares the values
    if status.description is not None:
        encoded.status.message = status.description


class RingdOTLPSpanExporter(OTLPSpanExporter):
    """:class:`OTLPSpanExporter` (configured by the same ``OTEL_EXPORTER_OTLP_*``
    variables) with :func:`encode_spans` as its encoder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._attribute_cache = AttributeCache()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return encode_spans(data, self._attribute_cache)
