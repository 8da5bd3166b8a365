"""Plugins for the benchmarks: the cheapest possible plugin, to measure ringd itself."""

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Passthrough(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    """Does nothing and lets the request through."""

    name = "bench_passthrough"
    timeout_ms = 100

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        return PluginResponse.passthrough()
