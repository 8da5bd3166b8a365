"""Plugins for the benchmarks: the cheapest possible plugin, to measure ringd itself."""

from ringd.sdk import BasePlugin, PluginContext, PluginResponse


class Passthrough(BasePlugin):
    """Does nothing and lets the request through."""

    name = "bench_passthrough"
    timeout_ms = 100

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        return PluginResponse.passthrough()
