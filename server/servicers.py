"""Thin gRPC adapters: decode into SDK types, await the engine, encode its outcome.

One servicer class per service, each a subclass of its generated base class, and
both registered the same way by :func:`rpc_handler`: bytes in, bytes out, so a
malformed request is answered INVALID_ARGUMENT by :mod:`ringd.server.errors`
rather than failing inside gRPC's deserializer; admission
(:mod:`ringd.server.admission`) runs before the request is decoded; any failure is
mapped to its status in one place. The servicers decide nothing: the verdict of a
ring is the engine's :class:`RingOutcome`, translated by :mod:`ringd.server.convert`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from ringd.sdk import PluginContext, PluginHook
from ringd.server import convert, errors, logs, wire
from ringd.server.admission import Gate, check_call_metadata
from ringd.server.background import BackgroundQueue
from ringd.server.engine import Engine, Generation, StreamLimits, StreamOutcome
from ringd.server.exceptions import AnswerTooLargeError, EncodeError, QueueFullError, RequestError
from ringd.server.results import RingOutcome
from ringd.server.telemetry import RingTracer, now_pair

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc

_log = logging.getLogger("ringd.server")

ENGINE_SERVICE = engine_pb.DESCRIPTOR.services_by_name["PluginEngineService"]
ADMIN_SERVICE = admin_pb.DESCRIPTOR.services_by_name["PluginAdminService"]
_EXECUTE_RING = f"{ENGINE_SERVICE.full_name}/ExecuteRing"
_STREAM_RING = f"{ENGINE_SERVICE.full_name}/StreamRing"

Context = grpc.aio.ServicerContext[Any, Any]


def rpc_handler(
    service: ServiceDescriptor,
    servicer: object,
    gate: Gate,
    *,
    max_answer_bytes: int | None,
    max_call_metadata_bytes: int | None = None,
) -> grpc.GenericRpcHandler:
    """Register ``servicer``'s methods for ``service``: admit, decode, run, encode, map errors.

    Every RPC of the service is served by the servicer's method of the same name,
    which takes the decoded request message and returns the response message.
    """
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        call = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _handle_stream(call, request_type, gate, max_answer_bytes, max_call_metadata_bytes)
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _handle(call, request_type, gate, max_answer_bytes, max_call_metadata_bytes)
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _handle(
    call: Callable[[Any, Context], Awaitable[Any]],
    request_type: Any,
    gate: Gate,
    max_answer_bytes: int | None,
    max_call_metadata_bytes: int | None = None,
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    what = request_type.DESCRIPTOR.full_name
    decode = request_type.FromString

    async def handle(raw: bytes, context: Context) -> bytes:
        try:
            if max_call_metadata_bytes is not None:
                check_call_metadata(context, max_call_metadata_bytes)
            gate.admit(context)
        except Exception as exc:  # a refusal is mapped to its status in one place
            await errors.abort(context, exc, what)
        try:
            reply = await call(decode(raw), context)
            # A method answers its message, or (ExecuteRing) the message's bytes.
            answer: bytes = reply if reply.__class__ is bytes else reply.SerializeToString()
            if max_answer_bytes is not None and len(answer) > max_answer_bytes:
                # Past max_message_bytes gRPC core would fail the call with no useful message.
                raise AnswerTooLargeError(
                    f"the answer is {len(answer)} bytes, over server.max_message_bytes ({max_answer_bytes}): "
                    "the plugins made the context larger; send a smaller request or raise the limit"
                )
            return answer
        except Exception as exc:  # every failure is mapped to a status in one place
            await errors.abort(context, exc, what)
        finally:
            gate.leave()

    return handle


def _handle_stream(
    call: Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]],
    request_type: Any,
    gate: Gate,
    max_answer_bytes: int | None,
    max_call_metadata_bytes: int | None = None,
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]]:
    """A bidirectional stream: admitted once, each answer's size checked, errors mapped.

    The servicer's method gets the request messages as they came (bytes) and yields its
    answers encoded: it decodes each message itself, inside this handler's error
    mapping, which saves a generator layer per message each way.
    """
    what = request_type.DESCRIPTOR.full_name

    async def handle(raw_requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        try:
            if max_call_metadata_bytes is not None:
                check_call_metadata(context, max_call_metadata_bytes)
            gate.admit(context)
        except Exception as exc:  # a refusal is mapped to its status in one place
            await errors.abort(context, exc, what)
        try:
            replies = call(raw_requests, context)
            async with contextlib.aclosing(replies):  # type: ignore[type-var]
                async for answer in replies:
                    if max_answer_bytes is not None and len(answer) > max_answer_bytes:
                        raise AnswerTooLargeError(
                            f"a stream message is {len(answer)} bytes, over server.max_message_bytes "
                            f"({max_answer_bytes}); raise the limit or stream a shorter answer"
                        )
                    yield answer
        except Exception as exc:  # every failure is mapped to a status in one place
            await errors.abort(context, exc, what)
        finally:
            gate.leave()

    return handle


class EngineServicer(engine_grpc.PluginEngineServiceServicer):
    """``ringd.v1.PluginEngineService``: ExecuteRing, ExecuteRings and StreamRing."""

    def __init__(
        self,
        engine: Engine,
        background: BackgroundQueue,
        tracer: RingTracer,
        *,
        limits: convert.Limits,
        deadline_margin_s: float,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self._stream_limits = stream_limits if stream_limits is not None else StreamLimits()
        self._engine = engine
        self._background = background
        self._tracer = tracer
        self._limits = limits
        self._margin = deadline_margin_s

    def _deadline(self, context: Context) -> float | None:
        remaining = context.time_remaining()
        if remaining is None:
            return None
        return time.monotonic() + remaining - self._margin

    def _context(self, message: Any) -> tuple[PluginContext, bool, convert.StructEcho | None]:
        return convert.context_from_proto(message, self._limits, self._engine.state)

    async def ExecuteRing(  # type: ignore[override]  # answers the response's bytes
        self, request: engine_pb.ExecuteRingRequest, context: Context
    ) -> bytes:
        ring = convert.ring_from_proto(request.ring)
        message = request.context
        ctx, json_form, echo = self._context(message)
        logs.bind_request(ctx.request_id, _RING_NAMES[ring])  # this call's log lines carry its id
        if ring is PluginHook.BACKGROUND:  # the ack echoes the request: no plugin work, no re-encoding
            return convert.queued_to_wire(self._background.submit(ctx), message, json_form)
        deadline = self._deadline(context)
        tracer = self._tracer
        span = tracer.start_call(_EXECUTE_RING, context.invocation_metadata()) if tracer.enabled else None
        if span is None:  # tracing off, or not sampled: no span work at all
            ring_outcome = await self._engine.execute_ring(ring, ctx, deadline=deadline)
        else:
            with span:
                wall_ns, perf = now_pair()
                ring_outcome = await self._engine.execute_ring(ring, ctx, deadline=deadline)
                tracer.record_ring(span, ring_outcome, wall_ns, perf)
        return _encode(ring_outcome, json_form, echo)[0]

    async def ExecuteRings(  # type: ignore[override]  # answers the response's bytes
        self, request: engine_pb.ExecuteRingsRequest, context: Context
    ) -> bytes:
        rings = convert.rings_from_proto(request.rings)
        ctx, json_form, echo = self._context(request.context)
        logs.bind_request(ctx.request_id, ",".join(ring.value for ring in rings))
        background = rings[-1] is PluginHook.BACKGROUND
        outcomes: list[bytes] = []  # each an encoded ExecuteRingsResponse.outcomes entry
        last: RingOutcome | None = None
        with self._tracer.call_span(
            f"{ENGINE_SERVICE.full_name}/ExecuteRings", context.invocation_metadata()
        ) as span:
            if span is not None:
                span.set_attribute("ringd.rings", tuple(ring.value for ring in rings))
                if ctx.request_id:
                    span.set_attribute("ringd.request_id", ctx.request_id)
            foreground = rings[:-1] if background else rings
            run = self._engine.run_rings(foreground, ctx, deadline=self._deadline(context))
            started = now_pair() if span is not None else _UNTRACED
            async with contextlib.aclosing(run):
                async for ring_outcome in run:
                    if span is not None:  # a child span per ring, from when it began to now
                        self._tracer.record_ring(span, ring_outcome, *started, child=True)
                    # Encoded as each ring ends: the context is shared and flows on.
                    answer, last = _encode(ring_outcome, json_form, echo)
                    outcomes += (_OUTCOMES_TAG, wire.length(len(answer)), answer)
                    if last.ended:  # the engine's own stop, or its block for an unencodable ring
                        break
                    if span is not None:
                        started = now_pair()
        if background and not (last is not None and last.ended):
            answer, _ = _encode(self._background.submit(ctx), json_form, echo)
            outcomes += (_OUTCOMES_TAG, wire.length(len(answer)), answer)
        return b"".join(outcomes)

    async def StreamRing(  # type: ignore[override]  # bytes in and out: see _handle_stream
        self, raw_requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Decode the stream's messages, feed the engine's stream session, encode what it answers."""
        decode = engine_pb.StreamRingRequest.FromString
        raw = await anext(raw_requests, None)
        first = None if raw is None else decode(raw)
        if first is None or first.WhichOneof("kind") != "open":
            got = "nothing" if first is None else (first.WhichOneof("kind") or "a message with no kind set")
            raise RequestError(f"the first message must be open, got {got}", field="open")
        response_kind = first.open.context.WhichOneof("response")
        if response_kind is not None:
            raise RequestError(
                f"open.context.{response_kind} must be absent: a streamed answer arrives as chunks",
                field=f"open.context.{response_kind}",
            )
        ctx, _, _ = convert.context_from_proto(
            first.open.context, self._limits, self._engine.state, "open.context"
        )
        deadline = self._deadline(context)
        method = _STREAM_RING
        release, chunk_from_proto, limits = convert.release_to_wire, convert.chunk_from_proto, self._limits
        with (
            self._tracer.call_span(method, context.invocation_metadata()) as span,
            self._engine.open_stream(ctx, deadline=deadline, limits=self._stream_limits) as session,
        ):
            wall_ns, perf = now_pair()
            index = 0
            stream_outcome: StreamOutcome | None = None
            feed = session.feed
            async for raw in raw_requests:
                message = decode(raw)
                kind = message.WhichOneof("kind")
                if kind == "chunk":
                    chunk = chunk_from_proto(message.chunk.data, f"chunk[{index}]", limits)
                    index += 1
                    if chunk is None:  # data: [DONE]
                        yield release(())
                        continue
                    released, stream_outcome = await feed(chunk)
                    if stream_outcome is not None:
                        break
                    yield release(released)
                elif kind == "end":
                    released, stream_outcome = await session.finish()
                    yield release(released)
                    break
                elif kind == "open":
                    raise RequestError("open was sent twice; send it once, first", field="open")
                else:
                    raise RequestError("a message with no kind set; set open, chunk or end", field="kind")
            if stream_outcome is None:
                raise RequestError("the stream closed before its end message", field="end")
            self._tracer.record_ring(span, stream_outcome.ring_outcome, wall_ns, perf)
            last = engine_pb.StreamRingResponse()
            try:
                convert.stream_outcome_to_proto(stream_outcome, last)
            except EncodeError as problem:  # the engine's block for an answer the wire cannot carry
                stream_outcome = dataclasses.replace(
                    stream_outcome, ring_outcome=stream_outcome.ring_outcome.unencodable(str(problem))
                )
                last.Clear()
                convert.stream_outcome_to_proto(stream_outcome, last)
            queued = False
            if stream_outcome.background:
                try:
                    self._background.submit(stream_outcome.ring_outcome.context)
                    queued = True
                except QueueFullError as full:
                    _log.warning("BACKGROUND of a streamed answer dropped: %s", full)
            if queued:
                (last.block if stream_outcome.blocked else last.done).background_queued = True
            yield last.SerializeToString()


_UNTRACED = (0, 0.0)
_OUTCOMES_TAG = b"\x0a"
"""``ExecuteRingsResponse.outcomes`` (field 1), length-delimited."""
_RING_NAMES = {ring: ring.value for ring in PluginHook}
"""Each ring's name, looked up: ``PluginHook.value`` is a Python-level property."""


def _encode(
    ring_outcome: RingOutcome, json_form: bool, echo: convert.StructEcho | None = None
) -> tuple[bytes, RingOutcome]:
    """``ring_outcome`` encoded, and the outcome answered (the engine's block if unencodable)."""
    try:
        return convert.ring_outcome_to_wire(ring_outcome, json_form, echo), ring_outcome
    except EncodeError as problem:
        ring_outcome = ring_outcome.unencodable(str(problem))
        return convert.ring_outcome_to_wire(ring_outcome, json_form), ring_outcome


class AdminServicer(admin_grpc.PluginAdminServiceServicer):
    """``ringd.v1.PluginAdminService``: list, reload, enable/disable."""

    def __init__(self, engine: Engine, reload: Callable[[], Awaitable[Generation]]) -> None:
        self._engine = engine
        self._reload = reload

    async def ListPlugins(
        self, request: admin_pb.ListPluginsRequest, context: Context
    ) -> admin_pb.ListPluginsResponse:
        generation = self._engine.generation
        wanted = convert.RING_FROM_PROTO.get(request.ring) if request.ring else None
        if request.ring and wanted is None:
            raise RequestError(f"ring has unknown value {request.ring}", field="ring")
        response = admin_pb.ListPluginsResponse(
            config_version=generation.version, generation=generation.number
        )
        for ring in PluginHook:
            if wanted is not None and ring is not wanted:
                continue
            for slot in generation.rings[ring]:
                convert.plugin_info_to_proto(slot, self._engine.status(slot), response.plugins.add())
        return response

    async def ReloadConfig(
        self, request: admin_pb.ReloadConfigRequest, context: Context
    ) -> admin_pb.ReloadConfigResponse:
        generation = await self._reload()
        return admin_pb.ReloadConfigResponse(config_version=generation.version, generation=generation.number)

    async def SetPluginEnabled(
        self, request: admin_pb.SetPluginEnabledRequest, context: Context
    ) -> admin_pb.SetPluginEnabledResponse:
        if not request.name:
            raise RequestError("name is empty; name the plugin to enable or disable", field="name")
        slot = self._engine.set_enabled(request.name, request.enabled)
        response = admin_pb.SetPluginEnabledResponse()
        convert.plugin_info_to_proto(slot, self._engine.status(slot), response.plugin)
        return response
