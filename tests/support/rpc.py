"""A running in-process server and its clients; request builders; subprocess helpers.

``Running`` is what the ``serve`` fixture returns (:mod:`support.fixtures`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from ringd.server.app import RingdServer

from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb
from support.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


@dataclass
class Running:
    """A started server and the clients a test talks to it with."""

    server: RingdServer
    workspace: Workspace
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The TCP address, ``127.0.0.1:PORT``."""
        return next(a for a in self.server.addresses if not a.startswith("unix:"))

    @property
    def unix_address(self) -> str:
        """The unix socket address, ``unix:/path``."""
        return next(a for a in self.server.addresses if a.startswith("unix:"))

    def channel(self, target: str | None = None) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(target or self.address)
        self._channels.append(channel)
        return channel

    def engine(self, target: str | None = None) -> engine_grpc.PluginEngineServiceStub:
        return engine_grpc.PluginEngineServiceStub(self.channel(target))

    @property
    def admin_address(self) -> str:
        """Where the admin service is served: its own address (the default unix socket when
        no admin token is set, or ``admin_listen``), else the main TCP address (with a token)."""
        return self.server.admin_addresses[0] if self.server.admin_addresses else self.address

    def admin(self, target: str | None = None) -> admin_grpc.PluginAdminServiceStub:
        return admin_grpc.PluginAdminServiceStub(self.channel(target or self.admin_address))

    async def close_channels(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()


# ------------------------------------------------------------------ messages


def value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


def context(
    body: dict[str, Any] | None = None,
    *,
    form: str = "json",
    metadata: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> pb.PluginContext:
    """A PluginContext with its payloads as raw JSON (``form="json"``) or Struct (``"struct"``)."""
    message = pb.PluginContext(request_id=request_id)
    for prefix, data in (("body", body), ("response", response)):
        if data is None:
            continue
        if form == "json":
            setattr(message, f"{prefix}_json", json.dumps(data).encode())
        else:
            getattr(message, f"{prefix}_struct").update(data)
    for key, item in (metadata or {}).items():
        message.metadata[key].CopyFrom(value(item))
    if headers:
        message.request.headers.update(headers)
    return message


def ring_request(
    ring: int, body: dict[str, Any] | None = None, **kwargs: Any
) -> engine_pb.ExecuteRingRequest:
    return engine_pb.ExecuteRingRequest(ring=ring, context=context(body, **kwargs))


def payload(message: Any, prefix: str) -> tuple[str | None, Any]:
    """``(form, data)`` of a oneof payload: form is "json", "struct" or None when absent."""
    kind = message.WhichOneof(prefix)
    if kind is None:
        return None, None
    if kind.endswith("_json"):
        return "json", json.loads(getattr(message, kind))
    return "struct", json_format.MessageToDict(getattr(message, kind))


def metadata_of(message: Any) -> dict[str, Any]:
    return {key: json_format.MessageToDict(item) for key, item in message.metadata.items()}


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` (run in a thread) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await asyncio.to_thread(predicate)
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


async def run(*argv: str | os.PathLike[str], timeout_s: float = 30.0) -> tuple[int, str, str]:
    """Run a command without blocking the event loop the in-process server runs on."""
    process = await asyncio.create_subprocess_exec(
        *map(str, argv), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
