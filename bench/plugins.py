"""Plugins for the benchmarks: the cheapest possible plugin, to measure ringd itself."""

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Passthrough(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    """Does nothing and lets the request through."""

    name = "bench_passthrough"
    timeout_ms = 100

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        return PluginResponse.passthrough()


class StreamingRewrite(BasePlugin):
    """A streaming POST_FLIGHT plugin: one string replacement with a 32-character look-ahead."""

    name = "bench_streaming_rewrite"
    hook = PluginHook.POST_FLIGHT
    timeout_ms = 100
    stream_holdback_chars = 32

    async def on_chunk(self, ctx: PluginContext, text: str) -> str:
        return text.replace("colour", "color")
