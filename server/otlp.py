"""OTLP span export with a cheaper encoder: the OTLP/gRPC exporter, cached wire bytes.

The OTLP exporter turns every span into protobuf messages in Python, in the process
that serves the rings (its batch thread holds the GIL while it encodes): about
40 us per span on the bench machine, most of it building messages for attribute
sets that repeat call after call (a plugin's span attributes are the same for every
passthrough). :class:`SpanEncoder` writes the same ``ExportTraceServiceRequest`` in
protobuf's wire format directly: each distinct attribute set, name and status is
encoded once and its bytes reused; ids and times are packed per span. A span with
events or links, or an attribute value that cannot key a cache, is encoded by the
exporter's own code. The request's bytes go to the collector as they are (no
protobuf message is built for them).

A sampled ring call reaches the exporter as one :class:`~ringd.server.telemetry.CallSpan`
record, not as spans (see :mod:`ringd.server.telemetry`): its spans are written straight
from the engine's per-plugin results. ``tests/grpc/test_tracing.py`` checks that both
paths produce what the exporter's own encoder produces for the same spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from ringd.server import wire
from ringd.server.results import PluginOutcome, PluginResult
from ringd.server.telemetry import CallSpan, RingFields, plugin_attributes, plugin_times

_CACHE_LIMIT = 4096
"""Distinct entries kept per cache; past it a cache starts again (a bound, not an LRU)."""
_HAS_IS_REMOTE = int(SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
_IS_REMOTE = int(SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
_TIMES_AND_FLAGS = Struct("<BQBQHI")  # start (field 7), end (field 8), flags (field 16: a 2-byte tag)
_START_TAG, _END_TAG, _FLAGS_TAG = 0x39, 0x41, 0x0185  # (field << 3) | wire type; 0x0185 is 0x85 0x01 LE
_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RING_KEYS = frozenset(
    (
        "ringd.ring",
        "ringd.action",
        "ringd.config_version",
        "ringd.request_id",
        "ringd.decided_by",
        "ringd.block.status_code",
        "ringd.block.error_type",
    )
)

_KIND = {kind: bytes((0x30, kind.value + 1)) for kind in SpanKind}  # field 6: OTLP's enum is the API's + 1
_SKIPPED = PluginOutcome.SKIPPED
_INTERNAL, _SERVER = _KIND[SpanKind.INTERNAL], _KIND[SpanKind.SERVER]


_SPAN_TAG = b"\x12"
"""Field 2 of ScopeSpans, a span."""
_UNSET = wire.field(0x7A, Status(code=Status.STATUS_CODE_UNSET, message="").SerializeToString())
"""Field 15 of a span: status UNSET, no message."""


def _string_attribute(key: str, value: str) -> bytes:
    """Field 9 of a span: one KeyValue with a string value (what the exporter's encoder writes)."""
    any_value = wire.field(0x0A, value.encode())
    return wire.field(0x4A, wire.field(0x0A, key.encode()) + wire.field(0x12, any_value))


def _trace_state(state: TraceState | None) -> bytes:
    if not state:
        return b""
    return wire.field(0x1A, ",".join(f"{k}={v}" for k, v in state.items()).encode())


class SpanEncoder:
    """Encodes spans to OTLP wire bytes; owned by one exporter (one thread)."""

    __slots__ = ("_attributes", "_names", "_pairs", "_plugins", "_ring_heads", "_ring_tails", "_statuses")

    def __init__(self) -> None:
        self._attributes: dict[tuple[tuple[str, Any], ...], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._statuses: dict[tuple[Any, str | None], bytes] = {}
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        self._plugins: dict[tuple[str, str, str, PluginOutcome, Any], tuple[bytes, bytes]] = {}
        self._ring_heads: dict[tuple[str, str, str], bytes] = {}
        self._ring_tails: dict[tuple[str | None, int | None, str], bytes] = {}

    def encode_spans(self, spans: Sequence[ReadableSpan | CallSpan]) -> ExportTraceServiceRequest:
        """The OTLP export request for ``spans``, as the exporter's own encoder builds it."""
        return ExportTraceServiceRequest.FromString(self.encode(spans))

    def encode(self, spans: Sequence[ReadableSpan | CallSpan]) -> bytes:
        """:meth:`encode_spans`, as its wire bytes."""
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
            encoded = scopes_of[key].setdefault(span.instrumentation_scope or None, [])
            if isinstance(span, CallSpan):
                encoded += self._call(span)
            else:
                encoded.append(self._span(span))
        request = bytearray()
        for key, resource in resources.items():
            body = bytearray(wire.field(0x0A, _encode_resource(resource).SerializeToString()))
            for scope, encoded in scopes_of[key].items():
                # Present even for no scope (an empty message), as the exporter's encoder does.
                scope_message = _encode_instrumentation_scope(scope)  # type: ignore[arg-type]
                scope_body = bytearray(wire.field(0x0A, scope_message.SerializeToString()))
                for item in encoded:
                    scope_body += item
                if scope is not None and scope.schema_url:
                    scope_body += wire.field(0x1A, scope.schema_url.encode())
                body += wire.field(0x12, bytes(scope_body))
            if resource.schema_url:
                body += wire.field(0x1A, resource.schema_url.encode())
            request += wire.field(0x0A, bytes(body))
        return bytes(request)

    def _span(self, span: ReadableSpan) -> bytes:
        """One span as field 2 of ScopeSpans (tag and length included)."""
        attributes = self._encoded_attributes(span.attributes)
        context = span.context
        if attributes is None or span.events or span.links or context is None:
            return wire.field(0x12, _encode_span(span).SerializeToString())
        parent = span.parent
        flags = _HAS_IS_REMOTE
        if parent is not None and parent.is_remote:
            flags |= _IS_REMOTE
        parts = [
            b"\x0a\x10",
            context.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            context.span_id.to_bytes(8, "big"),
            _trace_state(context.trace_state),
        ]
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (self._name(span.name), _KIND[span.kind])
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
                parts += (bytes((tag,)), wire.varint(count))
        parts.append(self._status(span.status.status_code, span.status.description))
        return wire.field(0x12, b"".join(parts))

    def _call(self, call: CallSpan) -> list[bytes]:
        """A sampled call's spans, in :meth:`CallSpan.spans` order, each as :meth:`_span` writes it."""
        call_attributes = self._call_attributes(call)
        if call_attributes is None:
            return [self._span(span) for span in call.spans()]
        context = call.context
        head = b"\x0a\x10" + context.trace_id.to_bytes(16, "big") + b"\x12\x08"
        state = _trace_state(context.trace_state)
        call_id = context.span_id.to_bytes(8, "big")
        under_call = state + b"\x22\x08" + call_id
        unset = _UNSET
        pack, internal = _TIMES_AND_FLAGS.pack, _INTERNAL
        ids = call.child_ids()
        index = 0
        out: list[bytes] = []
        for fields, results, started_ns, started_perf, ended_ns, child in call.rings:
            ring = fields[0]
            under = under_call
            if child:
                ring_id = ids[index].to_bytes(8, "big")
                index += 1
                out.append(
                    wire.field(
                        0x12,
                        b"".join(
                            (
                                head,
                                ring_id,
                                under_call,
                                self._name(f"ring {ring}"),
                                internal,
                                pack(_START_TAG, started_ns, _END_TAG, ended_ns, _FLAGS_TAG, _HAS_IS_REMOTE),
                                self._ring_attributes(fields),
                                unset,
                            )
                        ),
                    )
                )
                under = state + b"\x22\x08" + ring_id
            plugins = self._plugins
            fixed = len(head) + 8 + len(under) + _TIMES_AND_FLAGS.size
            for result in results:
                outcome = result.outcome
                if outcome is _SKIPPED:
                    continue
                try:
                    name_kind, attributes = plugins[
                        (ring, result.plugin, result.version, outcome, result.action)
                    ]
                except (KeyError, TypeError):  # first seen, or an action that cannot key a cache
                    name_kind, attributes = self._plugin(ring, result)
                begun, ended = plugin_times(result, started_ns, started_perf, ended_ns)
                error = result.error
                status = self._status(StatusCode.ERROR, error) if error else unset
                size = fixed + len(name_kind) + len(attributes) + len(status)
                out.append(
                    b"".join(
                        (
                            _SPAN_TAG + wire.length(size),
                            head,
                            ids[index].to_bytes(8, "big"),
                            under,
                            name_kind,
                            pack(_START_TAG, begun, _END_TAG, ended, _FLAGS_TAG, _HAS_IS_REMOTE),
                            attributes,
                            status,
                        )
                    )
                )
                index += 1
        parent = call.parent
        flags = _HAS_IS_REMOTE
        parts = [head, call_id, state]
        if parent is not None:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
            if parent.is_remote:
                flags |= _IS_REMOTE
        parts += (
            self._name(call.name),
            _SERVER,
            pack(_START_TAG, call.start_ns, _END_TAG, call.end_ns, _FLAGS_TAG, flags),
            call_attributes,
            self._status(call.status.status_code, call.status.description),
        )
        out.append(wire.field(0x12, b"".join(parts)))
        return out

    def _plugin(self, ring: str, result: PluginResult) -> tuple[bytes, bytes]:
        """A plugin span's name and kind, and its attributes, as bytes (kept per plugin,
        version, outcome and action when the action can key the cache)."""
        encoded = (
            self._name(f"plugin {result.plugin}") + _INTERNAL,
            self._pairs_of(plugin_attributes(ring, result)),
        )
        key = (ring, result.plugin, result.version, result.outcome, result.action)
        try:
            return self._remember(self._plugins, key, encoded)  # type: ignore[no-any-return]
        except TypeError:  # an action that cannot key the cache
            return encoded

    def _call_attributes(self, call: CallSpan) -> bytes | None:
        """The call span's attributes (as :meth:`CallSpan.call_attributes` orders them);
        None for a shape written through :meth:`CallSpan.spans` instead."""
        own = [fields for fields, _, _, _, _, child in call.rings if not child]
        extra = call.attributes
        if len(own) > 1 or (own and extra and not _RING_KEYS.isdisjoint(extra)):
            return None
        if extra and not call.base_attributes.keys().isdisjoint(extra):
            return None
        base = self._attributes.get((("", call.name),))
        if base is None:
            base = self._remember(self._attributes, (("", call.name),), self._pairs_of(call.base_attributes))
        if not extra and not own:
            return base
        parts = [base]
        if extra:
            parts.append(self._pairs_of(extra))
        if own:
            parts.append(self._ring_attributes(own[0]))
        return b"".join(parts)

    def _ring_attributes(self, fields: RingFields) -> bytes:
        """A ring's attributes (:func:`~ringd.server.telemetry.ring_attributes`), the
        request id encoded per call and the rest from the caches."""
        ring, action, config_version, request_id, decided_by, status_code, error_type = fields
        head_key = (ring, action, config_version)
        head = self._ring_heads.get(head_key)
        if head is None:
            head = self._remember(
                self._ring_heads,
                head_key,
                self._pairs_of(
                    {"ringd.ring": ring, "ringd.action": action, "ringd.config_version": config_version}
                ),
            )
        tail_key = (decided_by, status_code, error_type)
        tail = self._ring_tails.get(tail_key)
        if tail is None:
            rest: dict[str, str | int] = {}
            if decided_by:
                rest["ringd.decided_by"] = decided_by
            if status_code is not None:
                rest["ringd.block.status_code"] = status_code
                rest["ringd.block.error_type"] = error_type
            tail = self._remember(self._ring_tails, tail_key, self._pairs_of(rest))
        if request_id:
            return head + _string_attribute("ringd.request_id", request_id) + tail
        return head + tail

    def _pairs_of(self, attributes: dict[str, Any]) -> bytes:
        """Field 9 for each attribute, in order: strings written directly, other values
        from a cache per (key, type, value)."""
        parts = []
        for key, value in attributes.items():
            if type(value) is str:
                parts.append(_string_attribute(key, value))
                continue
            pair = (key, type(value), value)
            try:
                encoded = self._pairs.get(pair)
            except TypeError:  # a value that cannot be hashed: encoded each time
                encoded = None
                pair = None  # type: ignore[assignment]
            if encoded is None:
                encoded = b"".join(
                    wire.field(0x4A, kv.SerializeToString()) for kv in _encode_attributes({key: value}) or ()
                )
                if pair is not None:
                    self._remember(self._pairs, pair, encoded)
            parts.append(encoded)
        return b"".join(parts)

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            encoded = self._remember(self._names, name, wire.field(0x2A, name.encode()))
        return encoded

    def _status(self, code: StatusCode, description: str | None) -> bytes:
        key = (code, description)
        encoded = self._statuses.get(key)
        if encoded is None:
            value: Any = code.value
            message = Status(code=value, message=description or "").SerializeToString()
            encoded = self._remember(self._statuses, key, wire.field(0x7A, message))
        return encoded

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
                self._attributes, key, b"".join(wire.field(0x4A, pair.SerializeToString()) for pair in pairs)
            )
        return encoded

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = value
        return value


class _RawTraceServiceStub:
    """The trace service's client stub, sending a request already in wire bytes."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export: grpc.UnaryUnaryMultiCallable[bytes, ExportTraceServiceResponse] = channel.unary_unary(
            _EXPORT, request_serializer=None, response_deserializer=ExportTraceServiceResponse.FromString
        )


class RingdOTLPSpanExporter(OTLPSpanExporter):
    """:class:`OTLPSpanExporter` (configured by the same ``OTEL_EXPORTER_OTLP_*``
    variables) with :class:`SpanEncoder` as its encoder; it also takes the
    :class:`~ringd.server.telemetry.CallSpan` records ringd's tracer queues."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()
        # The base class makes a new client with this stub when it reconnects.
        self._stub = _RawTraceServiceStub
        self._client = self._stub(self._channel)

    max_spans_per_request = 4096
    """A batch of more spans goes out as several requests: the batch processor's batch
    size counts queued items, and a ring call is one item of several spans, so a batch of
    512 calls of many plugins could pass a collector's 4 MiB message limit."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.SUCCESS
        chunk: list[ReadableSpan] = []
        count = 0
        for item in spans:
            size = _span_count(item)
            if chunk and count + size > self.max_spans_per_request:
                if self._export(chunk) is not SpanExportResult.SUCCESS:
                    result = SpanExportResult.FAILURE
                chunk, count = [], 0
            chunk.append(item)
            count += size
        if chunk and self._export(chunk) is not SpanExportResult.SUCCESS:
            result = SpanExportResult.FAILURE
        return result

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return self._encoder.encode(data)

    def _count_data(self, data: Sequence[ReadableSpan | CallSpan]) -> int:
        return sum(_span_count(item) for item in data)


def _span_count(item: ReadableSpan | CallSpan) -> int:
    """How many spans a queued item is: a ring call's record is several."""
    return len(item.child_ids()) + 1 if isinstance(item, CallSpan) else 1
