"""OpenTelemetry spans of ring calls, read with the SDK's in-memory exporter.

A SERVER span per ExecuteRing with a child span per plugin; the caller's W3C
``traceparent`` becomes the parent; the Python client sends the current context.
"""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from ringd.client import AsyncClient
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

    await traced.engine().ExecuteRings(request, timeout=5)

    spans = spans_by_name(exporter)
    ring = spans["ringd.v1.PluginEngineService/ExecuteRings"]
    children = [
        s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == ring.context.span_id
    ]
    assert [s.name for s in children] == ["plugin auth", "plugin redactor", "plugin flaky", "plugin guard"]
    assert children[0].attributes["ringd.ring"] == "ingress"
    assert children[-1].attributes["ringd.ring"] == "pre_flight"


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
