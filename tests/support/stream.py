"""Streamed answers in tests: upstream chunks, a streaming plugin, and one StreamRing call.

``STREAMER`` is a POST_FLIGHT plugin whose config says what its ``on_chunk`` does;
``chunks_of`` splits a text into ``chat.completion.chunk`` dicts the way an
upstream would; ``stream_call`` runs one StreamRing call and collects what ringd
answered.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from support.rpc import context

STREAMER = """
import asyncio
from pathlib import Path

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Streamer(BasePlugin):
    name = "streamer"
    hook = PluginHook.POST_FLIGHT
    version = "2.0.0"
    timeout_ms = 2000

    def __init__(self, config=None):
        super().__init__(config)
        self.stream_holdback_chars = self.config.get("window", 0)

    async def on_chunk(self, ctx: PluginContext, text):
        cfg = self.config
        seen = ctx.metadata.setdefault("seen_" + self.config.get("tag", "streamer"), [])
        seen.append(str(text))
        if cfg.get("suspend_on") is not None and cfg["suspend_on"] in text:
            await asyncio.sleep(0)  # off the inline path: the call is awaited under its time budget
        if cfg.get("hang_on") and cfg["hang_on"] in text:
            if cfg.get("started_marker"):
                Path(cfg["started_marker"]).write_text("started")
            try:
                await asyncio.sleep(3600)
            finally:
                if cfg.get("cancelled_marker"):
                    Path(cfg["cancelled_marker"]).write_text("cancelled")
        if cfg.get("raise_on") and cfg["raise_on"] in text:
            raise RuntimeError("streamer refuses " + cfg["raise_on"])
        if cfg.get("block_on") and cfg["block_on"] in text:
            return PluginResponse.block(
                status_code=451, error_type="streamer_block", message="no " + cfg["block_on"]
            )
        for old, new in cfg.get("replace", {}).items():
            text = text.replace(old, new)
        return text
"""


def chunk(
    content: str | None = None,
    *,
    index: int = 0,
    role: str | None = None,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice (or none, for a usage-only chunk)."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    message: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o",
        "choices": [] if usage is not None else [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        message["usage"] = usage
    return message


def chunks_of(text: str, cuts: Sequence[int] = (), *, finish: str = "stop") -> list[dict[str, Any]]:
    """``text`` as an upstream streams it: a role chunk, the text cut at ``cuts``, a finish chunk."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(text)), len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return [chunk("", role="assistant"), *[chunk(piece) for piece in pieces], chunk(finish=finish)]


def released_text(chunks: Sequence[dict[str, Any]], index: int = 0) -> str:
    """The text of choice ``index`` in released chunks, concatenated."""
    return "".join(
        choice["delta"].get("content") or ""
        for released in chunks
        for choice in released["choices"]
        if choice["index"] == index
    )


@dataclass
class StreamCall:
    """What ringd answered on one StreamRing call."""

    replies: list[engine_pb.StreamRingResponse] = field(default_factory=list)

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [
            json.loads(data)
            for reply in self.replies
            if reply.WhichOneof("kind") == "release"
            for data in reply.release.chunks
        ]

    @property
    def last(self) -> engine_pb.StreamRingResponse:
        return self.replies[-1]

    @property
    def text(self) -> str:
        return released_text(self.chunks)


def open_message(body: dict[str, Any] | None = None, **fields: Any) -> engine_pb.StreamRingRequest:
    return engine_pb.StreamRingRequest(
        open=engine_pb.StreamOpen(context=context(body or {"model": "gpt-4o"}, **fields))
    )


def chunk_message(data: dict[str, Any] | bytes) -> engine_pb.StreamRingRequest:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return engine_pb.StreamRingRequest(chunk=engine_pb.StreamChunk(data=raw))


END = engine_pb.StreamRingRequest(end=engine_pb.StreamEnd())


async def stream_call(
    stub: engine_grpc.PluginEngineServiceStub,
    chunks: Sequence[dict[str, Any] | bytes],
    *,
    body: dict[str, Any] | None = None,
    timeout: float = 30.0,
    **fields: Any,
) -> StreamCall:
    """Open, send every chunk and end, reading each answer; returns all of them."""
    call = stub.StreamRing(timeout=timeout)
    result = StreamCall()
    await call.write(open_message(body, **fields))
    for data in chunks:
        await call.write(chunk_message(data))
        reply = await call.read()
        assert reply is not grpc.aio.EOF
        result.replies.append(reply)
        if reply.WhichOneof("kind") == "block":
            return result
    await call.write(END)
    result.replies.extend(await read_all(call))
    return result


async def read_all(call: Any) -> list[engine_pb.StreamRingResponse]:
    """Read a call's answers until it ends (raises its error status, if any)."""
    replies = []
    while True:
        reply = await call.read()
        if reply is grpc.aio.EOF:
            return replies
        replies.append(reply)
