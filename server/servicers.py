"""Thin gRPC adapters: decode into SDK types, await the engine, encode the outcome.

One servicer class per service. Both services read and write raw bytes so a
malformed request is answered INVALID_ARGUMENT by :mod:`ringd.server.errors`
rather than failing inside gRPC's deserializer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from ringd.sdk import PluginAction, PluginHook
from ringd.server import convert, errors, logs
from ringd.server.background import BackgroundQueue
from ringd.server.engine import Engine, Generation, RingOutcome
from ringd.server.telemetry import RingTracer, now_pair

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb

ENGINE_SERVICE = "ringd.v1.PluginEngineService"
_ENDING_ACTIONS = (
    convert.ACTION_TO_PROTO[PluginAction.BLOCK],
    convert.ACTION_TO_PROTO[PluginAction.CACHE_HIT],
)
ADMIN_SERVICE = "ringd.v1.PluginAdminService"

Context = grpc.aio.ServicerContext[Any, Any]


class EngineServicer:
    """``ringd.v1.PluginEngineService``: ExecuteRing and ExecuteRings."""

    def __init__(
        self,
        engine: Engine,
        background: BackgroundQueue,
        tracer: RingTracer,
        *,
        limits: convert.Limits,
        max_concurrent_rings: int,
        deadline_margin_s: float,
        max_message_bytes: int | None = None,
    ) -> None:
        self._engine = engine
        self._background = background
        self._tracer = tracer
        self._limits = limits
        self._max_inflight = max_concurrent_rings
        self._margin = deadline_margin_s
        self._max_bytes = max_message_bytes
        self.inflight = 0
        self.draining = False
        """Set at shutdown: new rings are refused UNAVAILABLE while those in flight finish."""
        self._idle = asyncio.Event()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler that registers this service (bytes in, bytes out)."""
        return grpc.method_handlers_generic_handler(
            ENGINE_SERVICE,
            {
                "ExecuteRing": grpc.unary_unary_rpc_method_handler(self.execute_ring),
                "ExecuteRings": grpc.unary_unary_rpc_method_handler(self.execute_rings),
            },
        )

    def _deadline(self, context: Context) -> float | None:
        remaining = context.time_remaining()
        if remaining is None:
            return None
        return time.monotonic() + remaining - self._margin

    async def execute_ring(self, raw: bytes, context: Context) -> bytes:
        if self.inflight >= self._max_inflight or self.draining:
            await errors.abort(context, self._refusal(), "ExecuteRing")
        self.inflight += 1
        try:
            request = engine_pb.ExecuteRingRequest.FromString(raw)
            hook = convert.hook_from_proto(request.ring)
            ctx, json_form = convert.context_from_proto(request.context, self._limits, self._engine.state)
            logs.bind_request(ctx.request_id, hook.value)  # issue 14: this call's log lines carry its id
            response = engine_pb.ExecuteRingResponse()
            if hook is PluginHook.BACKGROUND:
                self._background.submit(ctx)
                self._acknowledge(response, self._engine.generation)
            elif self._tracer.enabled:
                deadline = self._deadline(context)
                with self._tracer.ring_span(
                    f"{ENGINE_SERVICE}/ExecuteRing", context.invocation_metadata()
                ) as span:
                    wall_ns, perf = now_pair()
                    ring_outcome = await self._engine.execute_ring(hook, ctx, deadline=deadline)
                    self._tracer.record_ring(span, ring_outcome, wall_ns, perf)
                self._encode(ring_outcome, json_form, response)
            else:
                ring_outcome = await self._engine.execute_ring(hook, ctx, deadline=self._deadline(context))
                self._encode(ring_outcome, json_form, response)
            return self._sized(response.SerializeToString())
        except Exception as exc:  # every failure is mapped to a status in one place
            await errors.abort(context, exc, "ringd.v1.ExecuteRingRequest")
        finally:
            self._leave()

    async def execute_rings(self, raw: bytes, context: Context) -> bytes:
        if self.inflight >= self._max_inflight or self.draining:
            await errors.abort(context, self._refusal(), "ExecuteRings")
        self.inflight += 1
        try:
            request = engine_pb.ExecuteRingsRequest.FromString(raw)
            if not request.rings:
                raise convert.RequestError("rings is empty; name at least one ring to run")
            hooks = [convert.hook_from_proto(ring, f"rings[{i}]") for i, ring in enumerate(request.rings)]
            if PluginHook.BACKGROUND in hooks[:-1]:
                raise convert.RequestError("rings: PLUGIN_HOOK_BACKGROUND may only be the last ring")
            ctx, json_form = convert.context_from_proto(request.context, self._limits, self._engine.state)
            logs.bind_request(ctx.request_id, ",".join(h.value for h in hooks))  # issue 14
            background = hooks[-1] is PluginHook.BACKGROUND
            foreground = hooks[:-1] if background else hooks
            response = engine_pb.ExecuteRingsResponse()

            def encode(ring_outcome: RingOutcome) -> bool:
                # Encoded as each ring ends: the context is shared and flows on. A ring
                # that could not be encoded is answered as a 500 block, and the run stops.
                return self._encode(ring_outcome, json_form, response.outcomes.add())

            with self._tracer.ring_span(
                f"{ENGINE_SERVICE}/ExecuteRings", context.invocation_metadata()
            ) as span:
                wall_ns, perf = now_pair()
                outcomes = await self._engine.execute_rings(
                    foreground, ctx, deadline=self._deadline(context), on_ring=encode
                )
                for ring_outcome in outcomes:
                    self._tracer.record_ring(span, ring_outcome, wall_ns, perf)
            answered = response.outcomes
            if background and not (answered and answered[-1].action in _ENDING_ACTIONS):
                self._background.submit(ctx)
                self._acknowledge(response.outcomes.add(), self._engine.generation)
            return self._sized(response.SerializeToString())
        except Exception as exc:  # every failure is mapped to a status in one place
            await errors.abort(context, exc, "ringd.v1.ExecuteRingsRequest")
        finally:
            self._leave()

    def _sized(self, answer: bytes) -> bytes:
        """The answer, if gRPC will send it: past max_message_bytes it would fail in gRPC core."""
        if self._max_bytes is not None and len(answer) > self._max_bytes:
            raise errors.AnswerTooLargeError(
                f"the answer is {len(answer)} bytes, over server.max_message_bytes ({self._max_bytes}): "
                "the plugins made the context larger; "
                "send a smaller request or raise the limit"
            )
        return answer

    def _refusal(self) -> Exception:
        if self.draining:
            return errors.ShuttingDownError("ringd is shutting down; retry on another replica")
        return errors.OverloadedError(
            f"too many rings in flight (limit {self._max_inflight}); retry with backoff"
        )

    async def drain(self, timeout_s: float) -> None:
        """Refuse new rings (UNAVAILABLE) and wait up to ``timeout_s`` for those in flight."""
        self.draining = True
        if self.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)

    def _leave(self) -> None:
        self.inflight -= 1
        if self.draining and not self.inflight:
            self._idle.set()

    @staticmethod
    def _acknowledge(response: engine_pb.ExecuteRingResponse, generation: Generation) -> None:
        response.ring = convert.HOOK_TO_PROTO[PluginHook.BACKGROUND]
        response.action = convert.ACTION_TO_PROTO[PluginAction.PASSTHROUGH]
        response.queued = True
        response.config_version = generation.version
        response.generation = generation.number

    @staticmethod
    def _encode(ring_outcome: RingOutcome, json_form: bool, response: engine_pb.ExecuteRingResponse) -> bool:
        """Encode the outcome; False when it could not be, and a 500 block answers instead."""
        try:
            convert.ring_outcome_to_proto(ring_outcome, json_form, response)
        except convert.EncodeError as problem:
            convert.unencodable_outcome_to_proto(ring_outcome, problem, response)
            return False
        return True


class AdminServicer(admin_grpc.PluginAdminServiceServicer):
    """``ringd.v1.PluginAdminService``: list, reload, enable/disable; bearer token if configured."""

    def __init__(
        self,
        engine: Engine,
        reload: Callable[[], Awaitable[Generation]],
        admin_token: str | None,
    ) -> None:
        self._engine = engine
        self._reload = reload
        self._token = admin_token.encode() if admin_token else None

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler that registers this service.

        Bytes in, bytes out, as the engine service does: a request that is not a valid
        message is answered INVALID_ARGUMENT here rather than by gRPC's deserializer.
        Every method is wrapped alike: decode, check the token, run, encode, and map
        any failure to its status in one place.
        """
        methods: dict[str, Any] = {
            "ListPlugins": (self.ListPlugins, admin_pb.ListPluginsRequest),
            "ReloadConfig": (self.ReloadConfig, admin_pb.ReloadConfigRequest),
            "SetPluginEnabled": (self.SetPluginEnabled, admin_pb.SetPluginEnabledRequest),
        }

        def decoding(method: Callable[[Any, Context], Awaitable[Any]], message: Any) -> Any:
            async def handle(raw: bytes, context: Context) -> bytes:
                try:
                    request = message.FromString(raw)
                    self._authorize(context)
                    reply = await method(request, context)
                    return bytes(reply.SerializeToString())
                except Exception as exc:  # every failure is mapped to a status in one place
                    await errors.abort(context, exc, message.DESCRIPTOR.full_name)

            return grpc.unary_unary_rpc_method_handler(handle)

        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE, {name: decoding(method, message) for name, (method, message) in methods.items()}
        )

    def _authorize(self, context: Context) -> None:
        if self._token is None:
            return
        presented = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else value.decode("latin-1")
        if presented is None:
            raise errors.AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "admin calls need 'authorization: Bearer <token>' metadata",
            )
        scheme, _, token = presented.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise errors.AuthError(grpc.StatusCode.PERMISSION_DENIED, "admin token is not valid")

    async def ListPlugins(
        self, request: admin_pb.ListPluginsRequest, context: Context
    ) -> admin_pb.ListPluginsResponse:
        generation = self._engine.generation
        wanted = convert.HOOK_FROM_PROTO.get(request.ring) if request.ring else None
        if request.ring and wanted is None:
            raise convert.RequestError(f"ring has unknown value {request.ring}")
        response = admin_pb.ListPluginsResponse(
            config_version=generation.version, generation=generation.number
        )
        for hook in PluginHook:
            if wanted is not None and hook is not wanted:
                continue
            for slot in generation.rings[hook]:
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
            raise convert.RequestError("name is empty; name the plugin to enable or disable")
        slot = self._engine.set_enabled(request.name, request.enabled)
        response = admin_pb.SetPluginEnabledResponse()
        convert.plugin_info_to_proto(slot, self._engine.status(slot), response.plugin)
        return response
