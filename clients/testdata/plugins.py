"""Plugins for the Node and Go client suites: one per outcome a gateway must handle.

Each keys off something the test controls (a header, a word, the last message), so
one config serves every test. Tests point `RINGD_STORE` at a temporary file and set
`RINGD_TEST_BACKGROUND_LOG` to a file the BACKGROUND plugin appends to.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ringd.sdk import BasePlugin, PluginContext, PluginResponse, StreamText


def _last_message(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1], dict):
        return ""
    return str(messages[-1].get("content", ""))


class Tenant(BasePlugin):
    """INGRESS, pass: records the caller's tenant in metadata for the later rings."""

    name = "tenant"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        ctx.metadata["tenant"] = ctx.request.headers.get("x-tenant", "anonymous")
        return PluginResponse.passthrough()


class HeaderBlock(BasePlugin):
    """INGRESS, block: `x-test-block: 429` blocks with that status (a 429 with `Retry-After: 7`)."""

    name = "header_block"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        status = ctx.request.headers.get("x-test-block")
        if status:
            headers = {"Retry-After": "7"} if status == "429" else None
            return PluginResponse.block(
                int(status), "test_blocked", f"blocked with {status}", headers=headers
            )
        return PluginResponse.passthrough()


class Redact(BasePlugin):
    """PRE_FLIGHT, modify: replaces the word "secret" in any message with "[redacted]"."""

    name = "redact"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        text = json.dumps(ctx.body)
        if "secret" not in text:
            return PluginResponse.passthrough()
        return PluginResponse.modify(
            body=json.loads(text.replace("secret", "[redacted]")), message="redacted"
        )


class Cache(BasePlugin):
    """PRE_FLIGHT, cache hit: a last message of "cached?" is answered from "cache"."""

    name = "cache"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        if _last_message(ctx.body) != "cached?":
            return PluginResponse.passthrough()
        return PluginResponse.cache_hit(
            response={
                "id": "chatcmpl-cached",
                "object": "chat.completion",
                "model": ctx.body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "from cache"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )


class Route(BasePlugin):
    """ROUTING, modify: `model: "alias-fast"` becomes "fast-model-v2"; records the route."""

    name = "route"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        ctx.metadata["route"] = f"{ctx.metadata.get('tenant', 'none')}/{ctx.body.get('model')}"
        if ctx.body.get("model") == "alias-fast":
            return PluginResponse.modify(body={**ctx.body, "model": "fast-model-v2"})
        return PluginResponse.passthrough()


class Stamp(BasePlugin):
    """POST_FLIGHT: adds `x_ringd` to the upstream answer, from the carried metadata."""

    name = "stamp"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        if ctx.response is not None:
            ctx.response["x_ringd"] = {
                "tenant": ctx.metadata.get("tenant"),
                "route": ctx.metadata.get("route"),
            }
        return PluginResponse.passthrough()


class Censor(BasePlugin):
    """POST_FLIGHT, streams: "darn" becomes "d**n"; "forbidden" blocks with 451 `test_censored`."""

    name = "censor"
    version = "1.0.0"
    stream_holdback_chars = 16

    @staticmethod
    def _censor(text: str) -> str | PluginResponse:
        if "forbidden" in text:
            return PluginResponse.block(451, "test_censored", "the answer said a forbidden word")
        return text.replace("darn", "d**n")

    async def on_chunk(self, ctx: PluginContext, text: StreamText) -> str | PluginResponse:
        return self._censor(text)

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        for choice in (ctx.response or {}).get("choices") or []:
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                censored = self._censor(message["content"])
                if isinstance(censored, PluginResponse):
                    return censored
                message["content"] = censored
        return PluginResponse.passthrough()


class Record(BasePlugin):
    """BACKGROUND: appends one JSON line per request to $RINGD_TEST_BACKGROUND_LOG."""

    name = "record"
    version = "1.0.0"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        path = os.environ.get("RINGD_TEST_BACKGROUND_LOG")
        if path:
            line = json.dumps(
                {
                    "request_id": ctx.request_id,
                    "tenant": ctx.metadata.get("tenant"),
                    "model": (ctx.response or {}).get("model"),
                }
            )
            with open(path, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - one short line in a test fixture
                log.write(line + "\n")
        return PluginResponse.passthrough()
