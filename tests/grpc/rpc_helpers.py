"""Helpers of the gRPC tests: the scripted plugin, the workspace, messages, subprocesses.

Plugins are entries of one scripted plugin (``scripted.py``) whose config says what
it does, so a test lays a ring out in its config alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import textwrap
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format, struct_pb2
from ringd.server.app import RingdServer

from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"

# One plugin whose config says what it does; every option is off unless configured.
SCRIPTED = """
import asyncio
from pathlib import Path

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Scripted(BasePlugin):
    name = "scripted"
    hook = PluginHook.PRE_FLIGHT
    version = "1.2.3"
    author = "ringd tests"
    description = "does what its config says"
    timeout_ms = 2000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        cfg = self.config
        if cfg.get("started_log"):
            with open(cfg["started_log"], "a") as log:
                log.write(ctx.request_id + "\\n")
        if cfg.get("sleep_s"):
            await asyncio.sleep(cfg["sleep_s"])
        if cfg.get("trace"):
            ctx.metadata.setdefault("ran", []).append(cfg["trace"])
        for header, key in cfg.get("metadata_from_header", {}).items():
            ctx.metadata[key] = ctx.request.headers.get(header)
        ctx.metadata.update(cfg.get("set_metadata", {}))
        for key, body_key in cfg.get("body_from_metadata", {}).items():
            ctx.body[body_key] = ctx.metadata.get(key)
        if cfg.get("patch_response"):
            ctx.response.update(cfg["patch_response"])
        if cfg.get("append_message"):
            ctx.body.setdefault("messages", []).append({"role": "system", "content": cfg["append_message"]})
        required = cfg.get("require_metadata")
        if required and required not in ctx.metadata:
            return PluginResponse.block(401, "missing_" + required, required + " is not in the metadata")
        if cfg.get("store_key"):
            store = ctx.state.extra["store"]
            await store.set_state(cfg["store_key"], {"request_id": ctx.request_id, "body": ctx.body})
        if cfg.get("touch"):
            Path(cfg["touch"]).write_text(ctx.request_id)
        action = cfg.get("action", "pass")
        if action == "modify":
            return PluginResponse.modify(body=dict(cfg["body"]), message=cfg.get("message"))
        if action == "block":
            return PluginResponse.block(cfg["status"], cfg["error_type"], cfg.get("message", ""))
        if action == "cache":
            return PluginResponse.cache_hit(response=dict(cfg["response"]), message=cfg.get("message"))
        if action == "raise":
            raise RuntimeError(cfg.get("message", "scripted failure"))
        return PluginResponse.passthrough(message=cfg.get("message"))
"""

BROKEN = """
raise RuntimeError("broken plugin refuses to import")
"""


def entry(
    name: str, hook: str = "pre_flight", *, entrypoint: str = "scripted.py:Scripted", **fields: Any
) -> dict[str, Any]:
    """A plugin entry of the config file. ``config=`` is the plugin's own config."""
    return {"name": name, "hook": hook, "entrypoint": entrypoint, **fields}


class Workspace:
    """The folder of one test's server: plugin files, ``ringd.yaml`` and the store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "ringd.yaml"
        self.store_path = root / "store" / "ringd.db"
        # The loader caches file modules by content; a per-test token keeps tests apart.
        token = f"\n# test token {uuid.uuid4().hex}\n"
        (root / "scripted.py").write_text(textwrap.dedent(SCRIPTED).strip() + token)
        (root / "broken.py").write_text(textwrap.dedent(BROKEN).strip() + token)

    def write_config(
        self,
        plugins: Sequence[dict[str, Any]],
        *,
        server: dict[str, Any] | None = None,
        version: str = "v1",
    ) -> Path:
        document: dict[str, Any] = {"version": version, "store": str(self.store_path)}
        if server:
            document["server"] = server
        document["plugins"] = list(plugins)
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.config_path

    def stored(self, key: str) -> Any:
        """The JSON value the store holds under ``key``, read from the SQLite file; None if absent."""
        with sqlite3.connect(self.store_path) as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])


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

    def admin(self, target: str | None = None) -> admin_grpc.PluginAdminServiceStub:
        return admin_grpc.PluginAdminServiceStub(self.channel(target))

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
