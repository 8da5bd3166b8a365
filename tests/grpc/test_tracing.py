"""OpenTelemetry spans of ring calls, read with the SDK's in-memory exporter.

A SERVER span per ExecuteRing with a child span per plugin; the caller's W3C
``traceparent`` becomes the parent; the Python client sends the current context.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from ringd.client import AsyncClient
from ringd.server.telemetry import tracer_provider_from_env
from support.rpc import ring_request
from support.workspace import entry

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
RING_SPAN = "ringd.v1.PluginEngineService/ExecuteRing"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(serve, exporter):
    """A server tracing into ``exporter``, with a PRE_FLIGHT ring of three plugins."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return await serve(
        [
            entry("auth", "ingress"),
            entry("redactor", config={"sleep_s": 0.01}),
            entry("flaky", fail_policy="open", config={"action": "raise", "message": "flaked"}),
            entry(
                "guard", config={"action": "block", "status": 403, "error_type": "denied", "message": "no"}
            ),
        ],
        tracer_provider=provider,
    )


def spans_by_name(exporter: InMemorySpanExporter) -> dict:
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_a_server_span_per_ring_and_a_child_span_per_plugin(traced, exporter):
    answer = await traced.engine().ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_BLOCK

    spans = spans_by_name(exporter)
    assert set(spans) == {RING_SPAN, "plugin redactor", "plugin flaky", "plugin guard"}
    ring = spans[RING_SPAN]
    assert ring.kind == SpanKind.SERVER
    assert ring.parent is None
    assert ring.attributes["ringd.ring"] == "pre_flight"
    assert ring.attributes["ringd.action"] == "block"
    assert ring.attributes["ringd.decided_by"] == "guard"
    assert ring.attributes["ringd.config_version"] == "v1"
    assert ring.attributes["rpc.system"] == "grpc"
    for name in ("redactor", "flaky", "guard"):
        child = spans[f"plugin {name}"]
        assert child.parent is not None
        assert child.parent.span_id == ring.context.span_id
        assert child.context.trace_id == ring.context.trace_id
        assert child.attributes["ringd.ring"] == "pre_flight"
        assert child.attributes["ringd.plugin.name"] == name
        assert child.attributes["ringd.plugin.version"] == "1.2.3"
        assert ring.start_time <= child.start_time <= child.end_time <= ring.end_time
    redactor, flaky, guard = spans["plugin redactor"], spans["plugin flaky"], spans["plugin guard"]
    assert (redactor.attributes["ringd.plugin.action"], redactor.attributes["ringd.plugin.outcome"]) == (
        "passthrough",
        "ok",
    )
    assert redactor.end_time - redactor.start_time >= 10_000_000  # it slept 10 ms
    assert flaky.attributes["ringd.plugin.outcome"] == "bypassed"
    assert flaky.status.status_code == StatusCode.ERROR
    assert "flaked" in (flaky.status.description or "")
    assert (guard.attributes["ringd.plugin.action"], guard.attributes["ringd.plugin.outcome"]) == (
        "block",
        "ok",
    )
    assert redactor.end_time <= flaky.start_time <= guard.start_time


async def test_the_callers_traceparent_becomes_the_parent(traced, exporter):
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"

    await traced.engine().ExecuteRing(
        ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5, metadata=(("traceparent", traceparent),)
    )

    spans = spans_by_name(exporter)
    ring = spans[RING_SPAN]
    assert ring.context.trace_id == int(TRACE_ID, 16)
    assert ring.parent is not None
    assert ring.parent.span_id == int(PARENT_ID, 16)
    assert ring.parent.is_remote
    assert spans["plugin auth"].context.trace_id == int(TRACE_ID, 16)


async def test_execute_rings_traces_every_ring_under_one_span(traced, exporter):
    request = engine_pb.ExecuteRingsRequest(
        rings=[pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT], context=ring_request(1, CHAT).context
    )
    request.context.request_id = "req-rings"

    await traced.engine().ExecuteRings(request, timeout=5)

    finished = exporter.get_finished_spans()
    spans = spans_by_name(exporter)
    call = spans["ringd.v1.PluginEngineService/ExecuteRings"]
    assert call.kind == SpanKind.SERVER
    assert call.attributes["ringd.request_id"] == "req-rings"
    assert list(call.attributes["ringd.rings"]) == ["ingress", "pre_flight"]

    def children(parent) -> list:
        return [s for s in finished if s.parent and s.parent.span_id == parent.context.span_id]

    assert [s.name for s in children(call)] == ["ring ingress", "ring pre_flight"]
    ingress, pre_flight = children(call)
    assert ingress.attributes["ringd.ring"] == "ingress"
    assert ingress.attributes["ringd.action"] == "passthrough"
    assert ingress.attributes["ringd.request_id"] == "req-rings"
    assert "ringd.block.status_code" not in ingress.attributes
    assert pre_flight.attributes["ringd.ring"] == "pre_flight"
    assert pre_flight.attributes["ringd.action"] == "block"
    assert pre_flight.attributes["ringd.decided_by"] == "guard"
    assert pre_flight.attributes["ringd.block.status_code"] == 403
    assert pre_flight.attributes["ringd.block.error_type"] == "denied"
    assert call.start_time <= ingress.start_time <= ingress.end_time <= pre_flight.start_time
    assert pre_flight.end_time <= call.end_time
    assert [s.name for s in children(ingress)] == ["plugin auth"]
    assert [s.name for s in children(pre_flight)] == ["plugin redactor", "plugin flaky", "plugin guard"]
    for ring_span in (ingress, pre_flight):
        for plugin in children(ring_span):
            assert plugin.attributes["ringd.ring"] == ring_span.attributes["ringd.ring"]
            assert ring_span.start_time <= plugin.start_time <= plugin.end_time <= ring_span.end_time


async def test_the_ring_span_names_the_request_and_the_block(traced, exporter):
    request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT)
    request.context.request_id = "req-42"

    await traced.engine().ExecuteRing(request, timeout=5)

    ring = spans_by_name(exporter)[RING_SPAN]
    assert ring.attributes["ringd.request_id"] == "req-42"
    assert ring.attributes["ringd.block.status_code"] == 403
    assert ring.attributes["ringd.block.error_type"] == "denied"


async def test_the_python_client_sends_the_current_trace_context(traced, exporter):
    gateway = TracerProvider()  # the caller's own provider, not the server's
    gateway_exporter = InMemorySpanExporter()
    gateway.add_span_processor(SimpleSpanProcessor(gateway_exporter))
    tracer = gateway.get_tracer("gateway")

    async with AsyncClient(traced.address) as client:
        with tracer.start_as_current_span("gateway request") as span:
            outcome = await client.execute_ring("ingress", CHAT)
        untraced = await client.execute_ring("ingress", CHAT)

    assert outcome.action == untraced.action == "passthrough"
    caller = span.get_span_context()
    rings = [s for s in exporter.get_finished_spans() if s.name == RING_SPAN]
    assert len(rings) == 2
    assert rings[0].context.trace_id == caller.trace_id
    assert rings[0].parent is not None
    assert rings[0].parent.span_id == caller.span_id
    # Outside the caller's span the server starts a trace of its own.
    assert rings[1].context.trace_id != caller.trace_id
    assert rings[1].parent is None
    gateway.shutdown()


# ---------------------------------------------------------------------- sampling from OTEL_TRACES_SAMPLER


@pytest.fixture
def sampled_by_env(serve, exporter, monkeypatch):
    """A server whose provider ringd builds from the environment (as ``ringd serve`` does)."""

    async def start(sampler: str, arg: str | None = None):
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        if arg is None:
            monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "none"}, exporters=[exporter])
        assert provider is not None
        server = await serve([entry("auth", "ingress")], tracer_provider=provider)
        server.flush = provider.force_flush  # ringd exports in batches: flush before reading
        return server

    return start


async def call_ingress(server, flags: str | None) -> None:
    metadata = () if flags is None else (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-{flags}"),)
    answer = await server.engine().ExecuteRing(
        ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5, metadata=metadata
    )
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    server.flush()


async def test_a_parent_that_is_not_sampled_yields_no_spans(sampled_by_env, exporter):
    server = await sampled_by_env("parentbased_traceidratio", "1.0")

    await call_ingress(server, "00")  # the caller decided not to sample
    assert exporter.get_finished_spans() == ()

    await call_ingress(server, "01")  # the caller sampled: so does ringd
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["plugin auth", RING_SPAN]


async def test_the_ratio_from_the_environment_decides_for_root_spans(sampled_by_env, exporter):
    server = await sampled_by_env("parentbased_traceidratio", "0")

    for _ in range(5):
        await call_ingress(server, None)  # no traceparent: the ratio (0) decides
    assert exporter.get_finished_spans() == ()

    await call_ingress(server, "01")  # a sampled parent still wins over the ratio
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {int(TRACE_ID, 16)}


async def test_always_off_from_the_environment_traces_nothing(sampled_by_env, exporter):
    server = await sampled_by_env("always_off")

    await call_ingress(server, "01")
    await call_ingress(server, None)

    assert exporter.get_finished_spans() == ()


# ---------------------------------------------------------------------- what reaches the collector


def ok_bypassed_and_blocking() -> list[dict]:
    """Three plugins whose spans differ: an INGRESS pass, a fail-open raise, a 429 block."""
    return [
        entry("auth", "ingress"),
        entry("flaky", fail_policy="open", config={"action": "raise", "message": "flaked"}),
        entry("guard", config={"action": "block", "status": 429, "error_type": "slow_down"}),
    ]


async def test_the_otlp_encoder_sends_what_the_exporters_own_encoder_would(serve, exporter):
    """ringd's cached encoder (``ringd.server.otlp``) on real spans of ringd: the same request."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
    from ringd.server.otlp import SpanEncoder

    provider = tracer_provider_from_env({}, exporters=[exporter])
    assert provider is not None
    server = await serve(
        ok_bypassed_and_blocking(),
        tracer_provider=provider,
    )
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    for metadata in ((), (("traceparent", traceparent),)):
        await server.engine().ExecuteRing(
            ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT), timeout=5, metadata=metadata
        )
        request = ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT)
        rings = engine_pb.ExecuteRingsRequest(
            rings=[pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT], context=request.context
        )
        await server.engine().ExecuteRings(rings, timeout=5, metadata=metadata)
    provider.force_flush()
    spans = exporter.get_finished_spans()
    # Per round: ExecuteRing = call + 2 plugins; ExecuteRings = call + 2 rings + 3 plugins.
    assert len(spans) == 2 * (3 + 6)
    assert any(span.status.status_code == StatusCode.ERROR for span in spans)
    assert any(span.parent is not None and span.parent.is_remote for span in spans)

    encoder = SpanEncoder()
    first, again = encoder.encode_spans(spans), encoder.encode_spans(spans)  # the second from the caches

    assert first == reference(spans)
    assert again == reference(spans)


def test_the_otlp_encoder_matches_on_what_ringd_does_not_make_itself():
    """Trace state, no scope, a second resource, events, unhashable attributes, long names."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, Status, TraceFlags, TraceState
    from ringd.server.otlp import SpanEncoder

    resources = [
        Resource.create({"service.name": "ringd"}),
        Resource.create({"service.name": "other"}, "s://1"),
    ]
    spans = []
    for i in range(40):
        context = SpanContext(
            (i + 1) << 70, i + 1, False, TraceFlags(1), TraceState([("vendor", "x")]) if i % 3 == 0 else None
        )
        parent = SpanContext((i + 1) << 70, 1000 + i, i % 2 == 0, TraceFlags(1)) if i % 4 else None
        spans.append(
            ReadableSpan(
                name="n" * (200 if i % 5 == 0 else 3),
                context=context,
                parent=parent,
                resource=resources[i % 2],
                attributes={"k": i % 3, "many": ("a", "b"), "f": 0.5} if i % 7 else {"unhashable": {"a": 1}},  # type: ignore[dict-item]
                events=[Event("e", {"x": 1}, timestamp=5)] if i % 6 == 0 else (),
                kind=SpanKind(i % 5),
                status=Status(StatusCode.ERROR, "bad" * (i % 2)) if i % 5 == 1 else Status(StatusCode.OK),
                start_time=i,
                end_time=2**63 + i,
                instrumentation_scope=InstrumentationScope("ringd", "1", "s://2") if i % 8 else None,
            )
        )

    assert SpanEncoder().encode_spans(spans) == reference(spans)


async def test_a_garbage_action_is_the_plugins_error_traced_and_answered_as_its_block(
    serve, workspace, exporter
):
    workspace.plugin(
        "garbage.py",
        """
        from ringd.sdk import BasePlugin, PluginResponse

        class Garbage(BasePlugin):
            async def execute(self, ctx):
                response = PluginResponse.passthrough()
                response.action = "explode"
                return response
        """,
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await serve([entry("garbage", entrypoint="garbage.py:Garbage")], tracer_provider=provider)

    answer = await server.engine().ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT), timeout=5)

    # An invalid return (PluginResponse.validate), so fail-closed PRE_FLIGHT blocks 500.
    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert (answer.block.status_code, answer.block.error_type) == (500, "plugin_error")
    spans = spans_by_name(exporter)
    assert spans[RING_SPAN].attributes["ringd.action"] == "block"
    plugin_span = spans["plugin garbage"]
    assert plugin_span.attributes["ringd.plugin.outcome"] == "error"
    assert plugin_span.attributes["ringd.plugin.action"] == ""
    assert "Invalid PluginResponse action 'explode'" in (plugin_span.status.description or "")


# ---------------------------------------------------------------------- ringd's own sampling decision


ENV_SAMPLERS = [
    ("always_on", None),
    ("always_off", None),
    ("traceidratio", "0.3"),
    ("parentbased_always_on", None),
    ("parentbased_always_off", None),
    ("parentbased_traceidratio", "0.3"),
]


@pytest.mark.parametrize(("name", "arg"), ENV_SAMPLERS)
def test_ringd_decides_as_the_sdk_sampler_would(name, arg, monkeypatch):
    """ringd decides before making any OpenTelemetry object: the same verdict as the SDK's."""
    import random

    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
    from ringd.server.telemetry import RingTracer, sampling_bounds

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if arg is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    provider = TracerProvider()
    sampler = provider.sampler
    assert sampling_bounds(sampler) is not None  # every OTEL_TRACES_SAMPLER value is decided without the SDK
    tracer = RingTracer(provider)

    def sdk_samples(trace_id: int, parent: Any) -> bool:
        return sampler.should_sample(parent, trace_id, RING_SPAN).decision is Decision.RECORD_AND_SAMPLE

    rng = random.Random(14)
    verdicts = set()
    for _ in range(400):
        trace_id = rng.getrandbits(128) or 1
        for flags in (1, 0):  # a caller's traceparent, sampled or not: the same trace id both ways
            remote = SpanContext(trace_id, 0xABCDEF, True, TraceFlags(flags))
            traceparent = f"00-{trace_id:032x}-{0xABCDEF:016x}-{flags:02x}"
            ours = tracer.start_call(RING_SPAN, [("traceparent", traceparent)]) is not None
            parent = set_span_in_context(NonRecordingSpan(remote))
            assert ours == sdk_samples(trace_id, parent), (flags, hex(trace_id))
            verdicts.add(ours)
        root = tracer.start_call(RING_SPAN, [])  # no parent: ringd draws the trace id itself
        if root is not None:
            assert sdk_samples(root.context.trace_id, None), hex(root.context.trace_id)
        verdicts.add(root is not None)
    if arg is not None:
        assert verdicts == {True, False}  # the ratio was really exercised both ways


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-00",
        f"  00-{TRACE_ID}-{PARENT_ID}-03\t",
        f"01-{TRACE_ID}-{PARENT_ID}-01-future-fields",
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
        f"00-{'0' * 32}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-01" + " " * 600,
        f"00-{TRACE_ID}-{PARENT_ID}",
        "garbage",
        "",
    ],
)
def test_ringd_reads_a_traceparent_as_the_sdk_propagator_does(value):
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from ringd.server.telemetry import parse_traceparent

    parent = get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": value})
    ).get_span_context()
    expected = (parent.trace_id, int(parent.trace_flags)) if parent.is_valid else None
    assert parse_traceparent(value) == expected


async def test_a_sampler_ringd_does_not_know_is_asked(serve, exporter):
    """A custom sampler (an OTEL_TRACES_SAMPLER entry point, say) decides, with its attributes."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class ByRequest(Sampler):
        def should_sample(
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None
        ):
            keep = not ByRequest.drop
            return SamplingResult(
                Decision.RECORD_AND_SAMPLE if keep else Decision.DROP,
                {"sampled.by": "custom"} if keep else None,
            )

        def get_description(self) -> str:
            return "ByRequest"

        drop = False

    provider = TracerProvider(sampler=ByRequest())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await serve([entry("auth", "ingress")], tracer_provider=provider)
    server.flush = provider.force_flush

    await call_ingress(server, "00")  # the parent is not sampled, but this sampler ignores that
    ByRequest.drop = True
    await call_ingress(server, "01")

    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["plugin auth", RING_SPAN]
    ring = spans_by_name(exporter)[RING_SPAN]
    assert ring.attributes["sampled.by"] == "custom"
    assert ring.attributes["ringd.ring"] == "ingress"


# ---------------------------------------------------------------------- ringd's exporter, end to end


class _Collector:
    """An OTLP/gRPC trace collector that keeps every request."""

    def __init__(self) -> None:
        self.requests: list = []

    async def Export(self, request, context):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> dict:
        found = {}
        for request in self.requests:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        found.setdefault(span.name, []).append(span)
        return found


@pytest.fixture
async def collector():
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    server = grpc.aio.server()
    sink = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sink.endpoint = f"http://127.0.0.1:{port}"
    yield sink
    await server.stop(0)


def otlp_attributes(span) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


async def test_ringd_s_otlp_exporter_sends_every_span_of_a_call(serve, collector, monkeypatch):
    """``OTEL_TRACES_EXPORTER=otlp``: a sampled call is queued as one record and its spans
    are written from it; the collector gets them all, with the caller's trace and state."""
    import asyncio

    from ringd.server.telemetry import RingTracer

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    provider = tracer_provider_from_env({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "ringd-test"})
    assert provider is not None
    assert RingTracer(provider).queues_calls
    server = await serve(
        ok_bypassed_and_blocking(),
        tracer_provider=provider,
    )
    request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT)
    request.context.request_id = "req-otlp"
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("tracestate", "vendor=x"))
    await server.engine().ExecuteRing(request, timeout=5, metadata=metadata)
    rings = engine_pb.ExecuteRingsRequest(
        rings=[pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT], context=request.context
    )
    await server.engine().ExecuteRings(rings, timeout=5)
    server.flush = lambda: None  # flushed below, off this loop
    await call_ingress(server, "00")  # the caller did not sample it: nothing sent
    await asyncio.to_thread(provider.force_flush)  # the exporter blocks; the collector runs on this loop

    spans = collector.spans()
    assert {name: len(found) for name, found in spans.items()} == {
        RING_SPAN: 1,
        "ringd.v1.PluginEngineService/ExecuteRings": 1,
        "ring ingress": 1,
        "ring pre_flight": 1,
        "plugin auth": 1,
        "plugin flaky": 2,
        "plugin guard": 2,
    }
    resource = collector.requests[0].resource_spans[0].resource
    assert {kv.key: kv.value.string_value for kv in resource.attributes}["service.name"] == "ringd-test"
    (ring,) = spans[RING_SPAN]
    assert ring.trace_id.hex() == TRACE_ID
    assert ring.parent_span_id.hex() == PARENT_ID
    assert ring.trace_state == "vendor=x"
    assert ring.kind == ring.SPAN_KIND_SERVER
    assert otlp_attributes(ring) == {
        "rpc.system": "grpc",
        "rpc.service": "ringd.v1.PluginEngineService",
        "rpc.method": "ExecuteRing",
        "ringd.ring": "pre_flight",
        "ringd.action": "block",
        "ringd.config_version": "v1",
        "ringd.request_id": "req-otlp",
        "ringd.decided_by": "guard",
        "ringd.block.status_code": 429,
        "ringd.block.error_type": "slow_down",
    }
    flaky, guard = spans["plugin flaky"][0], spans["plugin guard"][0]
    for plugin in (flaky, guard):
        assert plugin.trace_id == ring.trace_id
        assert plugin.parent_span_id == ring.span_id
        assert ring.start_time_unix_nano <= plugin.start_time_unix_nano <= plugin.end_time_unix_nano
        assert plugin.end_time_unix_nano <= ring.end_time_unix_nano
    assert otlp_attributes(flaky)["ringd.plugin.outcome"] == "bypassed"
    assert flaky.status.code == flaky.status.STATUS_CODE_ERROR
    assert "flaked" in flaky.status.message
    assert otlp_attributes(guard)["ringd.plugin.action"] == "block"

    (call,) = spans["ringd.v1.PluginEngineService/ExecuteRings"]
    assert call.trace_id != ring.trace_id  # no traceparent: a trace of its own
    assert not call.parent_span_id
    assert list(otlp_attributes(call)["ringd.rings"].values) == [
        type(call.attributes[0].value)(string_value=v) for v in ("ingress", "pre_flight")
    ]
    (ingress,), (pre_flight,) = spans["ring ingress"], spans["ring pre_flight"]
    assert ingress.parent_span_id == pre_flight.parent_span_id == call.span_id
    assert otlp_attributes(pre_flight)["ringd.request_id"] == "req-otlp"
    assert spans["plugin auth"][0].parent_span_id == ingress.span_id
    assert {s.parent_span_id for s in spans["plugin guard"]} == {ring.span_id, pre_flight.span_id}


async def test_a_queued_call_is_encoded_as_its_spans_would_be(serve):
    """Encoding a call's record gives what the exporter's own encoder gives for its spans."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
    from opentelemetry.sdk.trace.export import SpanExportResult
    from ringd.server.otlp import RingdOTLPSpanExporter, SpanEncoder
    from ringd.server.telemetry import CallSpan

    class Capturing(RingdOTLPSpanExporter):
        def __init__(self) -> None:
            super().__init__(endpoint="http://127.0.0.1:9", insecure=True)  # never sent to
            self.items: list = []

        def export(self, spans):
            self.items.extend(spans)
            return SpanExportResult.SUCCESS

    capturing = Capturing()
    provider = tracer_provider_from_env({}, exporters=[capturing])
    assert provider is not None
    server = await serve(
        ok_bypassed_and_blocking(),
        tracer_provider=provider,
    )
    for metadata in ((), (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("tracestate", "a=1,b=2"))):
        request = ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT)
        request.context.request_id = "req-7"
        await server.engine().ExecuteRing(request, timeout=5, metadata=metadata)
        await server.engine().ExecuteRing(
            ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5, metadata=metadata
        )
        rings = engine_pb.ExecuteRingsRequest(
            rings=[pb.PLUGIN_HOOK_INGRESS, pb.PLUGIN_HOOK_PRE_FLIGHT], context=request.context
        )
        await server.engine().ExecuteRings(rings, timeout=5, metadata=metadata)
    provider.force_flush()

    calls = capturing.items
    assert len(calls) == 6
    assert all(isinstance(call, CallSpan) for call in calls)
    spans = [span for call in calls for span in call.spans()]
    assert len(spans) == 2 * (3 + 2 + 6)  # per round: the call and its plugins, and so on
    encoder = SpanEncoder()
    first, again = encoder.encode_spans(calls), encoder.encode_spans(calls)  # the second from the caches
    assert first == reference(spans)
    assert again == reference(spans)
    assert capturing._count_data(calls) == len(spans)


async def test_a_batch_of_many_calls_goes_out_in_requests_of_bounded_size(serve, collector):
    """A queued call is several spans: a batch is split so no request passes the bound."""
    import asyncio

    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from ringd.server.otlp import RingdOTLPSpanExporter

    class Small(RingdOTLPSpanExporter):
        max_spans_per_request = 4

    provider = TracerProvider()
    # No timed export during the test (the default 5 s timer could split the three calls
    # into two batches on a slow machine): the three calls leave in one force_flush.
    processor = BatchSpanProcessor(
        Small(endpoint=collector.endpoint, insecure=True), schedule_delay_millis=600_000
    )
    provider.add_span_processor(processor)
    server = await serve([entry("auth", "ingress"), entry("redactor")], tracer_provider=provider)
    for _ in range(3):  # ExecuteRing of PRE_FLIGHT: the call's span and one plugin's
        await server.engine().ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT), timeout=5)
    await asyncio.to_thread(provider.force_flush)

    assert [
        sum(len(s.spans) for r in q.resource_spans for s in r.scope_spans) for q in collector.requests
    ] == [
        4,
        2,
    ]
    assert sorted((name, len(found)) for name, found in collector.spans().items()) == [
        ("plugin redactor", 3),
        (RING_SPAN, 3),
    ]
