"""OTLP span export with a cheaper encoder: the OTLP/gRPC exporter, cached wire bytes.

The OTLP exporter turns every span into protobuf messages in Python, in the process
that serves the rings (its batch thread holds the GIL while it encodes): about
40 us per span on the bench machine, most of it building messages for attribute
sets that repeat call after call (a plugin's span attributes are the same for every
passthrough). :func:`encode_spans` writes the same ``ExportTraceServiceRequest`` in
protobuf's wire format directly: each distinct attribute set, name and status is
encoded once and its bytes reused; ids and times are packed per span; protobuf
then parses the whole batch in C. A span with events or links, or an attribute
value that cannot key a cache, is encoded by the exporter's own code.
``tests/grpc/test_tracing.py`` checks that both encoders produce the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

_CACHE_LIMIT = 4096
"""Distinct entries kept per cache; past it a cache starts again (a bound, not an LRU)."""
_HAS_IS_REMOTE = int(SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_IS_REMOTE = int(SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
_TIMES_AND_FLAGS = Struct("<BQBQHI")  # start (field 7), end (field 8), flags (field 16: a 2-byte tag)
_START_TAG, _END_TAG, _FLAGS_TAG = 0x39, 0x41, 0x0185  # (field << 3) | wire type; 0x0185 is 0x85 0x01 LE


_KIND = {kind: bytes((0x30, kind.value + 1)) for kind in SpanKind}  # field 6: OTLP's enum is the API's + 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (``tag`` is its one-byte key)."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag, size)) + payload
    return bytes((tag,)) + _varint(size) + payload


class SpanEncoder:
    """Encodes spans to OTLP wire bytes; owned by one exporter (one thread)."""

    __slots__ = ("_attributes", "_names", "_statuses")

    def __init__(self) -> None:
        self._attributes: dict[tuple[tuple[str, Any], ...], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._statuses: dict[tuple[Any, str | None], bytes] = {}

    def encode_spans(self, spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        """The OTLP export request for ``spans``, as the exporter's own encoder builds it."""
        # Grouped as the exporter's encoder groups them (equal resources, equal scopes), but
        # a resource is compared once per distinct object: its hash is a JSON dump of its
        # attributes, which the exporter's encoder pays per span (the SDK hands every span
        # the same Resource object).
        canonical: dict[int, int] = {}
        resources: dict[int, Resource] = {}
        scopes_of: dict[int, dict[InstrumentationScope | None, list[bytes]]] = {}
        for span in spans:
            resource = span.resource
            key = canonical.get(id(resource))
            if key is None:
                key = next((k for k, known in resources.items() if known == resource), id(resource))
                canonical[id(resource)] = key
                if key not in resources:
                    resources[key] = resource
                    scopes_of[key] = {}
            scopes_of[key].setdefault(span.instrumentation_scope or None, []).append(self._span(span))
        request = bytearray()
        for key, resource in resources.items():
            body = bytearray(_field(0x0A, _encode_resource(resource).SerializeToString()))
            for scope, encoded in scopes_of[key].items():
                # Present even for no scope (an empty message), as the exporter's encoder does.
                scope_body = bytearray(_field(0x0A, _encode_instrumentation_scope(scope).SerializeToString()))  # type: ignore[arg-type]
                for item in encoded:
                    scope_body += item
                if scope is not None and scope.schema_url:
                    scope_body += _field(0x1A, scope.schema_url.encode())
                body += _field(0x12, bytes(scope_body))
            if resource.schema_url:
                body += _field(0x1A, resource.schema_url.encode())
            request += _field(0x0A, bytes(body))
        return ExportTraceServiceRequest.FromString(bytes(request))

    def _span(self, span: ReadableSpan) -> bytes:
        """One span as field 2 of ScopeSpans (tag and length included)."""
        attributes = self._encoded_attributes(span.attributes)
        context = span.context
        if attributes is None or span.events or span.links or context is None:
            return _field(0x12, _encode_span(span).SerializeToString())
        parent = span.parent
        flags = _HAS_IS_REMOTE
        if parent is not None and parent.is_remote:
            flags |= _IS_REMOTE
        parts = [
            b"\x0a\x10",
            context.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            parts.append(_field(0x1A, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode()))
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        name = self._names.get(span.name)
        if name is None:
            name = self._remember(self._names, span.name, _field(0x2A, span.name.encode()))
        parts += (name, _KIND[span.kind])
        parts.append(
            _TIMES_AND_FLAGS.pack(
                _START_TAG, span.start_time or 0, _END_TAG, span.end_time or 0, _FLAGS_TAG, flags
            )
        )
        parts.append(attributes)
        for tag, count in (
            (0x50, span.dropped_attributes),
            (0x60, span.dropped_events),
            (0x70, span.dropped_links),
        ):
            if count:
                parts += (bytes((tag,)), _varint(count))
        status = span.status
        key = (status.status_code, status.description)
        encoded_status = self._statuses.get(key)
        if encoded_status is None:
            code: Any = key[0].value
            message = Status(code=code, message=key[1] or "").SerializeToString()
            encoded_status = self._remember(self._statuses, key, _field(0x7A, message))
        parts.append(encoded_status)
        return _field(0x12, b"".join(parts))

    def _encoded_attributes(self, attributes: Any) -> bytes | None:
        """Field 9 of a span, once per distinct set; None when a value cannot key the cache."""
        if not attributes:
            return b""
        key = tuple(attributes.items())
        try:
            encoded = self._attributes.get(key)
        except TypeError:  # a value that cannot be hashed (a dict): the exporter's encoder takes it
            return None
        if encoded is None:
            pairs = _encode_attributes(attributes) or ()
            encoded = self._remember(
                self._attributes, key, b"".join(_field(0x4A, pair.SerializeToString()) for pair in pairs)
            )
        return encoded

    @staticmethod
    def _remember(cache: dict[Any, bytes], key: Any, value: bytes) -> bytes:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = value
        return value


class RingdOTLPSpanExporter(OTLPSpanExporter):
    """:class:`OTLPSpanExporter` (configured by the same ``OTEL_EXPORTER_OTLP_*``
    variables) with :class:`SpanEncoder` as its encoder."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return self._encoder.encode_spans(data)
