"""A plugin that writes one store key per request and counts requests, for the durability test.

Body ``{"read": KEY}`` reads instead: the key's value and the counter land in the metadata.
"""

from __future__ import annotations

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Writer(BasePlugin):
    name = "writer"
    hook = PluginHook.PRE_FLIGHT
    version = "1.0.0"
    author = "ringd reliability tests"
    description = "writes w:<request_id> and increments count"
    timeout_ms = 5000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        store = ctx.state.extra["store"]
        if "read" in ctx.body:
            ctx.metadata["value"] = await store.get_state(ctx.body["read"])
            ctx.metadata["count"] = await store.get_state("count")
            return PluginResponse.passthrough()
        await store.set_state(f"w:{ctx.request_id}", {"request_id": ctx.request_id, "n": ctx.body.get("n")})
        ctx.metadata["count"] = await store.incr("count")
        return PluginResponse.passthrough(message="written")
