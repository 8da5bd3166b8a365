"""Plugins and helpers of the engine's unit tests (tests/engine): rings laid out in YAML alone."""

from __future__ import annotations

import time
from typing import Any

from ringd.sdk import PluginContext, PluginHook
from ringd.server.engine import Engine, RingOutcome

# One configurable plugin: each config entry names its own instance, so a test lays a
# ring out in YAML alone. `ran` in the metadata lists the plugins that ran, in order.
SCRIPTED = """
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Scripted(BasePlugin):
    name = "scripted"
    hook = PluginHook.PRE_FLIGHT
    version = "1.2.3"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        tag = self.config["tag"]
        ctx.metadata.setdefault("ran", []).append(tag)
        seen = ctx.metadata.setdefault("seen", {})
        seen[tag] = {"model": ctx.body.get("model"), "meta": ctx.metadata.get("note")}
        do = self.config.get("do", "pass")
        if do == "note":
            ctx.metadata["note"] = f"from {tag}"
        elif do == "append":
            ctx.body.setdefault("messages", []).append({"role": "system", "content": tag})
        elif do == "modify":
            return PluginResponse.modify(body=dict(self.config["body"]), message="rewritten")
        elif do == "block":
            return PluginResponse.block(
                self.config["status"], self.config["error_type"], self.config.get("message", "")
            )
        elif do == "cache":
            return PluginResponse.cache_hit(response=dict(self.config["response"]))
        elif do == "stop":
            ctx.error = self.config["error"]
            ctx.stop_chain = True
        return PluginResponse.passthrough(message=f"{tag} ok")
"""


def ring_config(*entries: str, extra: str = "") -> str:
    """A config whose plugins are ``entries`` (YAML mappings written inline)."""
    lines = "\n".join(f"  - {entry}" for entry in entries)
    return f"version: test-1\n{extra}plugins:\n{lines}\n"


def scripted(name: str, **fields: object) -> str:
    """An inline YAML entry for the Scripted plugin; ``config`` gets ``tag: name``."""
    config = {"tag": name, **fields.pop("config", {})}  # type: ignore[dict-item]
    parts = [f"name: {name}", "entrypoint: scripted.py:Scripted", f"config: {config!r}"]
    parts += [f"{key}: {value}" for key, value in fields.items()]
    return "{" + ", ".join(parts) + "}"


def instance(engine: Engine, name: str) -> Any:
    return engine.generation.slots[name].loaded.instance


def chat_body() -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


SLEEPER = """
import asyncio

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Sleeper(BasePlugin):
    name = "sleeper"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 50

    def __init__(self, config=None):
        super().__init__(config)
        self.cancelled = 0
        self.finished = 0
        self.started = 0

    async def execute(self, ctx):
        self.started += 1
        try:
            await asyncio.sleep(self.config.get("sleep_s", 5.0))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return PluginResponse.passthrough()


class PatientSleeper(Sleeper):
    timeout_ms = 2000
"""


async def timed_ring(
    engine: Engine, hook: PluginHook = PluginHook.PRE_FLIGHT, **kwargs: Any
) -> tuple[RingOutcome, float]:
    """Run one ring on a fresh chat context; the outcome and the seconds it took."""
    started = time.monotonic()
    outcome = await engine.execute_ring(hook, PluginContext(body=chat_body()), **kwargs)
    return outcome, time.monotonic() - started
