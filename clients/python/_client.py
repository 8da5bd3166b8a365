"""The clients: one request builder and one response parser shared by both."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import propagate

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

RINGS = ("ingress", "pre_flight", "routing", "post_flight", "background")
_ACTIONS = {
    pb.PLUGIN_ACTION_UNSPECIFIED: "",
    pb.PLUGIN_ACTION_PASSTHROUGH: "passthrough",
    pb.PLUGIN_ACTION_MODIFY: "modify",
    pb.PLUGIN_ACTION_BLOCK: "block",
    pb.PLUGIN_ACTION_CACHE_HIT: "cache_hit",
}
_OUTCOMES = {
    pb.PLUGIN_OUTCOME_OK: "ok",
    pb.PLUGIN_OUTCOME_ERROR: "error",
    pb.PLUGIN_OUTCOME_TIMEOUT: "timeout",
    pb.PLUGIN_OUTCOME_BYPASSED: "bypassed",
    pb.PLUGIN_OUTCOME_SKIPPED: "skipped",
}


def ring_number(ring: str | int) -> pb.PluginHook.ValueType:
    """The ``PluginHook`` enum value of a ring name (``"pre_flight"``) or number."""
    if isinstance(ring, int):
        return pb.PluginHook.ValueType(ring)
    name = str(getattr(ring, "value", ring)).lower()
    if name not in RINGS:
        raise ValueError(f"unknown ring {ring!r}; expected one of {', '.join(RINGS)}")
    return pb.PluginHook.ValueType(RINGS.index(name) + 1)


@dataclass(slots=True)
class PluginResultInfo:
    """One plugin's part in a ring."""

    plugin: str
    version: str
    action: str
    outcome: str
    latency_ms: float
    error: str
    message: str


@dataclass(slots=True)
class RingResult:
    """A ring's outcome: what the gateway must do, and the context to carry on with.

    ``action`` is ``passthrough``, ``modify``, ``block`` or ``cache_hit``. Forward
    ``body`` upstream, carry ``metadata`` into the next ring's request, answer
    ``status_code``/``error_type``/``message`` with ``headers`` on a block and
    ``cached_response`` on a cache hit.
    """

    ring: str
    action: str
    body: dict[str, Any] | None
    metadata: dict[str, Any]
    response: dict[str, Any] | None = None
    status_code: int = 0
    error_type: str = ""
    message: str = ""
    cached_response: dict[str, Any] | None = None
    decided_by: str = ""
    results: list[PluginResultInfo] = field(default_factory=list)
    config_version: str = ""
    generation: int = 0
    queued: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    """HTTP headers to set on the answer to the client when the ring blocked (e.g. ``Retry-After``)."""

    @property
    def ended(self) -> bool:
        """True when the request stops here (block or cache hit)."""
        return self.action in ("block", "cache_hit")

    def to_dict(self) -> dict[str, Any]:
        """The outcome as plain JSON-ready data."""
        return asdict(self)


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(data)
    return message


def build_context(
    body: Mapping[str, Any] | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    response: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "",
    path: str = "",
    client_address: str = "",
    session_id: str = "",
    request_id: str = "",
    json_form: bool = True,
) -> pb.PluginContext:
    """A ``PluginContext`` message; bodies as raw JSON bytes (or Struct with ``json_form=False``)."""
    context = pb.PluginContext(session_id=session_id, request_id=request_id)
    if body is not None:
        if json_form:
            context.body_json = json.dumps(body).encode()
        else:
            context.body_struct.CopyFrom(_struct(body))
    if response is not None:
        if json_form:
            context.response_json = json.dumps(response).encode()
        else:
            context.response_struct.CopyFrom(_struct(response))
    for key, value in (metadata or {}).items():
        json_format.ParseDict(value, context.metadata[key])
    if headers or method or path or client_address:
        context.request.method = method
        context.request.path = path
        context.request.client_address = client_address
        context.request.headers.update({k.lower(): v for k, v in (headers or {}).items()})
    return context


def _plain(value: Any) -> Any:
    """JSON data from protobuf's Struct decoding, with whole numbers as ints again."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _object(message: Any, prefix: str) -> dict[str, Any] | None:
    kind = message.WhichOneof(prefix)
    if kind is None:
        return None
    if kind.endswith("_json"):
        data: dict[str, Any] = json.loads(getattr(message, kind))
        return data
    return _plain(json_format.MessageToDict(getattr(message, kind)))  # type: ignore[no-any-return]


def parse_ring_response(message: engine_pb.ExecuteRingResponse) -> RingResult:
    """A typed outcome from an ``ExecuteRingResponse``."""
    return RingResult(
        ring=RINGS[message.ring - 1] if message.ring else "",
        action=_ACTIONS.get(message.action, str(message.action)),
        body=_object(message, "body"),
        metadata={key: _plain(json_format.MessageToDict(value)) for key, value in message.metadata.items()},
        response=_object(message, "response"),
        status_code=message.block.status_code,
        error_type=message.block.error_type,
        message=message.block.message or message.decision.message,
        cached_response=_object(message, "cached_response"),
        decided_by=message.decided_by,
        results=[
            PluginResultInfo(
                plugin=r.plugin,
                version=r.version,
                action=_ACTIONS.get(r.action, ""),
                outcome=_OUTCOMES.get(r.outcome, ""),
                latency_ms=r.latency.ToNanoseconds() / 1e6,
                error=r.error,
                message=r.message,
            )
            for r in message.results
        ],
        config_version=message.config_version,
        generation=message.generation,
        queued=message.queued,
        headers=dict(message.block.headers),
    )


class StreamBlocked(Exception):
    """A streamed answer was blocked: end the client's stream with this error.

    ``released`` is how many chunks the client already got (0: answer with a plain
    HTTP error instead of an SSE error event); ``result`` is the whole outcome.
    """

    def __init__(self, result: StreamResult) -> None:
        super().__init__(
            f"{result.status_code} {result.error_type}: {result.message} (by {result.decided_by})"
        )
        self.result = result
        self.status_code = result.status_code
        self.error_type = result.error_type
        self.message = result.message
        self.decided_by = result.decided_by
        self.released = result.released_chunks

    def sse_event(self) -> bytes:
        """The SSE error event for the client, OpenAI's error shape: ``data: {"error": {...}}``."""
        error = {"message": self.message, "type": self.error_type, "code": self.status_code}
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


@dataclass(slots=True)
class StreamResult:
    """How a streamed answer ended (``RingStream.result`` once iteration is over).

    ``action`` is ``passthrough`` (or ``modify``) when it finished and ``block``
    when a plugin blocked it. ``answer`` is the assembled ``chat.completion`` the
    client got (None on a block), ``metadata`` the final metadata.
    """

    action: str
    answer: dict[str, Any] | None
    metadata: dict[str, Any]
    results: list[PluginResultInfo]
    config_version: str
    generation: int
    released_chunks: int
    background_queued: bool
    status_code: int = 0
    error_type: str = ""
    message: str = ""
    decided_by: str = ""


def _results(results: Any) -> list[PluginResultInfo]:
    return [
        PluginResultInfo(
            plugin=r.plugin,
            version=r.version,
            action=_ACTIONS.get(r.action, ""),
            outcome=_OUTCOMES.get(r.outcome, ""),
            latency_ms=r.latency.ToNanoseconds() / 1e6,
            error=r.error,
            message=r.message,
        )
        for r in results
    ]


def parse_stream_end(message: engine_pb.StreamRingResponse) -> StreamResult:
    """A typed outcome from the last message of a StreamRing call (``done`` or ``block``)."""
    if message.WhichOneof("kind") == "block":
        end = message.block
        return StreamResult(
            action="block",
            answer=None,
            metadata={key: _plain(json_format.MessageToDict(value)) for key, value in end.metadata.items()},
            results=_results(end.results),
            config_version=end.config_version,
            generation=end.generation,
            released_chunks=end.released_chunks,
            background_queued=end.background_queued,
            status_code=end.block.status_code,
            error_type=end.block.error_type,
            message=end.block.message,
            decided_by=end.decided_by,
        )
    done = message.done
    return StreamResult(
        action="passthrough",
        answer=json.loads(done.answer_json),
        metadata={key: _plain(json_format.MessageToDict(value)) for key, value in done.metadata.items()},
        results=_results(done.results),
        config_version=done.config_version,
        generation=done.generation,
        released_chunks=done.released_chunks,
        background_queued=done.background_queued,
    )


UpstreamChunk = bytes | str | Mapping[str, Any]
"""An upstream chunk: a ``chat.completion.chunk`` dict, its JSON text, or its raw SSE event."""


def _stream_request(chunk: UpstreamChunk) -> engine_pb.StreamRingRequest:
    if isinstance(chunk, Mapping):
        data = json.dumps(chunk).encode()
    elif isinstance(chunk, str):
        data = chunk.encode()
    else:
        data = bytes(chunk)
    return engine_pb.StreamRingRequest(chunk=engine_pb.StreamChunk(data=data))


def _stream_open(body: Mapping[str, Any] | None, context: dict[str, Any]) -> engine_pb.StreamRingRequest:
    if "response" in context:
        raise ValueError("a streamed answer arrives as chunks: pass the upstream chunks, not response=")
    return engine_pb.StreamRingRequest(open=engine_pb.StreamOpen(context=build_context(body, **context)))


_STREAM_END = engine_pb.StreamRingRequest(end=engine_pb.StreamEnd())


class _StreamReplies:
    """Turns StreamRing replies into released chunks, keeping the last message's outcome."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: StreamResult | None = None

    def chunks(self, reply: engine_pb.StreamRingResponse) -> list[dict[str, Any]]:
        kind = reply.WhichOneof("kind")
        if kind == "release":
            return [json.loads(chunk) for chunk in reply.release.chunks]
        self.result = parse_stream_end(reply)
        if self.result.action == "block":
            raise StreamBlocked(self.result)
        return []


class AsyncRingStream:
    """One streamed answer through ringd: ``async for chunk in stream`` yields what to send.

    Each released chunk is a ``chat.completion.chunk`` dict: write it to the client as
    ``data: <json>\n\n`` and flush; after the loop write ``data: [DONE]``. A block
    raises :class:`StreamBlocked` (write its ``sse_event()``). ``result`` holds the
    outcome (assembled answer, metadata, per-plugin results) once the loop is over.
    Leaving the loop early cancels the call: use ``async with`` or ``aclose()``.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._replies = _StreamReplies()
        self._pending: list[dict[str, Any]] = []

    @property
    def result(self) -> StreamResult | None:
        """The outcome, once the stream has ended (None before)."""
        return self._replies.result

    def __aiter__(self) -> AsyncRingStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            if self._replies.result is not None:
                raise StopAsyncIteration
            reply = await self._call.read()
            if reply is grpc.aio.EOF:
                raise StopAsyncIteration
            self._pending = self._replies.chunks(reply)
            self._pending.reverse()
        return self._pending.pop()

    async def aclose(self) -> None:
        """Cancel the call if it is still running (the server drops what it held)."""
        self._call.cancel()

    async def __aenter__(self) -> AsyncRingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RingStream:
    """The blocking flavour of :class:`AsyncRingStream`: ``for chunk in stream``."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._replies = _StreamReplies()

    @property
    def result(self) -> StreamResult | None:
        """The outcome, once the stream has ended (None before)."""
        return self._replies.result

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for reply in self._call:
            yield from self._replies.chunks(reply)

    def close(self) -> None:
        """Cancel the call if it is still running (the server drops what it held)."""
        self._call.cancel()

    def __enter__(self) -> RingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plugin_info(info: admin_pb.PluginInfo) -> dict[str, Any]:
    data = json_format.MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["ring"] = RINGS[info.ring - 1] if info.ring else ""
    data["status"] = pb.PluginStatus.Name(info.status).removeprefix("PLUGIN_STATUS_").lower()
    data["fail_policy"] = pb.FailPolicy.Name(info.fail_policy).removeprefix("FAIL_POLICY_").lower()
    data["timeout_ms"] = info.timeout.ToNanoseconds() / 1e6
    data.pop("timeout", None)
    data["stats"] = {field.name: value for field, value in info.stats.ListFields()}
    for counter in ("invocations", "errors", "blocks", "timeouts", "bypasses", "stalls"):
        data["stats"].setdefault(counter, 0)
    return data


def _call_metadata(admin_token: str | None) -> tuple[tuple[str, str | bytes], ...]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    pairs: list[tuple[str, str | bytes]] = list(carrier.items())
    if admin_token:
        pairs.append(("authorization", f"Bearer {admin_token}"))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class _Call:
    """One RPC as both clients make it: which stub method, with what, and how to read the reply."""

    service: str  # "engine" or "admin"
    method: str
    request: Any
    metadata: tuple[tuple[str, str | bytes], ...]
    timeout: float | None
    parse: Callable[[Any], Any]


class _Base:
    """What the two clients share: the channel, building each call, reading each reply.

    Args:
        target: The server's address (``host:port`` or ``unix:/path``).
        admin_token: Sent as ``authorization: Bearer <token>`` on admin calls.
        credentials: TLS channel credentials; plaintext when None.
        timeout: The default deadline of each call, in seconds.
    """

    _channels: Any = grpc  # the module that opens channels: grpc, or grpc.aio

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        admin_token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = 10.0,
    ) -> None:
        self._admin_token = admin_token
        self._timeout = timeout
        if credentials is not None:
            self._channel = self._channels.secure_channel(target, credentials)
        else:
            self._channel = self._channels.insecure_channel(target)
        self._stubs: dict[str, Any] = {
            "engine": engine_grpc.PluginEngineServiceStub(self._channel),
            "admin": admin_grpc.PluginAdminServiceStub(self._channel),
        }

    def _execute_ring(
        self, ring: str | int, body: Mapping[str, Any] | None, timeout: float | None, context: dict[str, Any]
    ) -> _Call:
        request = engine_pb.ExecuteRingRequest(ring=ring_number(ring), context=build_context(body, **context))
        return _Call(
            "engine",
            "ExecuteRing",
            request,
            _call_metadata(None),
            timeout or self._timeout,
            parse_ring_response,
        )

    def _execute_rings(
        self,
        rings: Sequence[str | int],
        body: Mapping[str, Any] | None,
        timeout: float | None,
        context: dict[str, Any],
    ) -> _Call:
        request = engine_pb.ExecuteRingsRequest(
            rings=[ring_number(r) for r in rings], context=build_context(body, **context)
        )
        return _Call(
            "engine",
            "ExecuteRings",
            request,
            _call_metadata(None),
            timeout or self._timeout,
            lambda reply: [parse_ring_response(outcome) for outcome in reply.outcomes],
        )

    def _admin(self, method: str, request: Any, parse: Callable[[Any], Any]) -> _Call:
        return _Call("admin", method, request, _call_metadata(self._admin_token), self._timeout, parse)

    def _list_plugins(self, ring: str | None) -> _Call:
        request = admin_pb.ListPluginsRequest(ring=ring_number(ring or 0))
        return self._admin("ListPlugins", request, lambda reply: [_plugin_info(i) for i in reply.plugins])

    def _reload(self) -> _Call:
        return self._admin(
            "ReloadConfig",
            admin_pb.ReloadConfigRequest(),
            lambda reply: {"config_version": reply.config_version, "generation": reply.generation},
        )

    def _set_plugin_enabled(self, name: str, enabled: bool) -> _Call:
        request = admin_pb.SetPluginEnabledRequest(name=name, enabled=enabled)
        return self._admin("SetPluginEnabled", request, lambda reply: _plugin_info(reply.plugin))


class AsyncClient(_Base):
    """asyncio client (grpc.aio). Use ``async with AsyncClient(target) as client``.

    ``timeout`` is the default deadline of each call in seconds.
    """

    _channels = grpc.aio

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _run(self, call: _Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        return call.parse(await method(call.request, timeout=call.timeout, metadata=call.metadata))

    async def execute_ring(
        self,
        ring: str | int,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> RingResult:
        """Run one ring; ``context`` takes ``metadata``, ``response``, ``headers``, ``request_id``, ...."""
        result: RingResult = await self._run(self._execute_ring(ring, body, timeout, context))
        return result

    async def execute_rings(
        self,
        rings: Sequence[str | int],
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> list[RingResult]:
        """Run several rings in one call, stopping at the first block or cache hit."""
        results: list[RingResult] = await self._run(self._execute_rings(rings, body, timeout, context))
        return results

    def stream_ring(
        self,
        upstream: AsyncIterable[UpstreamChunk] | Iterable[UpstreamChunk],
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> AsyncRingStream:
        """POST_FLIGHT on a streamed answer, as the upstream sends it::

            async with client.stream_ring(upstream_chunks, body, metadata=routing.metadata) as stream:
                try:
                    async for chunk in stream:
                        await send(b"data: " + json.dumps(chunk).encode() + b"\\n\\n")
                except StreamBlocked as blocked:
                    await send(blocked.sse_event())
            # stream.result: the assembled answer, final metadata, per-plugin results

        ``upstream`` yields the upstream's chunks as they arrive (dicts, JSON text or
        raw SSE events); ``context`` takes ``metadata``, ``headers``, ``request_id``,
        ... as :meth:`execute_ring` (not ``response``). ``timeout`` bounds the whole
        stream. BACKGROUND runs on the assembled answer by itself.
        """
        opening = _stream_open(body, context)

        async def requests() -> AsyncIterator[engine_pb.StreamRingRequest]:
            yield opening
            if isinstance(upstream, AsyncIterable):
                async for chunk in upstream:
                    yield _stream_request(chunk)
            else:
                for chunk in upstream:
                    yield _stream_request(chunk)
            yield _STREAM_END

        call = self._stubs["engine"].StreamRing(
            requests(), timeout=timeout or self._timeout, metadata=_call_metadata(None)
        )
        return AsyncRingStream(call)

    async def list_plugins(self, ring: str | None = None) -> list[dict[str, Any]]:
        """The plugins of each ring (or of ``ring``) with status, version and stats."""
        plugins: list[dict[str, Any]] = await self._run(self._list_plugins(ring))
        return plugins

    async def reload(self) -> dict[str, Any]:
        """Reload the server's config; returns the new config version and generation."""
        answer: dict[str, Any] = await self._run(self._reload())
        return answer

    async def set_plugin_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Enable or disable one plugin until the next reload; returns its info."""
        info: dict[str, Any] = await self._run(self._set_plugin_enabled(name, enabled))
        return info


class Client(_Base):
    """Blocking client. Use ``with Client(target) as client``; the same calls as :class:`AsyncClient`."""

    _channels = grpc

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _run(self, call: _Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        return call.parse(method(call.request, timeout=call.timeout, metadata=call.metadata))

    def execute_ring(
        self,
        ring: str | int,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> RingResult:
        """Run one ring; ``context`` takes ``metadata``, ``response``, ``headers``, ``request_id``, ...."""
        result: RingResult = self._run(self._execute_ring(ring, body, timeout, context))
        return result

    def execute_rings(
        self,
        rings: Sequence[str | int],
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> list[RingResult]:
        """Run several rings in one call, stopping at the first block or cache hit."""
        results: list[RingResult] = self._run(self._execute_rings(rings, body, timeout, context))
        return results

    def stream_ring(
        self,
        upstream: Iterable[UpstreamChunk],
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        **context: Any,
    ) -> RingStream:
        """POST_FLIGHT on a streamed answer: ``for chunk in client.stream_ring(chunks, body)``.

        As :meth:`AsyncClient.stream_ring`; ``upstream`` is a plain iterable, read on
        gRPC's thread as ringd asks for more.
        """
        opening = _stream_open(body, context)

        def requests() -> Iterator[engine_pb.StreamRingRequest]:
            yield opening
            for chunk in upstream:
                yield _stream_request(chunk)
            yield _STREAM_END

        call = self._stubs["engine"].StreamRing(
            requests(), timeout=timeout or self._timeout, metadata=_call_metadata(None)
        )
        return RingStream(call)

    def list_plugins(self, ring: str | None = None) -> list[dict[str, Any]]:
        """The plugins of each ring (or of ``ring``) with status, version and stats."""
        plugins: list[dict[str, Any]] = self._run(self._list_plugins(ring))
        return plugins

    def reload(self) -> dict[str, Any]:
        """Reload the server's config; returns the new config version and generation."""
        answer: dict[str, Any] = self._run(self._reload())
        return answer

    def set_plugin_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Enable or disable one plugin until the next reload; returns its info."""
        info: dict[str, Any] = self._run(self._set_plugin_enabled(name, enabled))
        return info


__all__ = [
    "AsyncClient",
    "AsyncRingStream",
    "Client",
    "PluginResultInfo",
    "RingResult",
    "RingStream",
    "StreamBlocked",
    "StreamResult",
    "build_context",
    "parse_ring_response",
    "parse_stream_end",
]
