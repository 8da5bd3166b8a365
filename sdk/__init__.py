"""The ringd plugin SDK: everything a plugin author imports.

It is the LLMProxy Plugin SDK made exact, so an LLMProxy plugin written against
``core.plugin_sdk`` and ``core.plugin_engine`` runs on ringd unchanged::

    from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

    class Shout(BasePlugin):
        name = "shout"
        hook = PluginHook.PRE_FLIGHT

        async def execute(self, ctx: PluginContext) -> PluginResponse:
            ctx.body["shout"] = True
            return PluginResponse.passthrough()

The SDK has no gRPC or protobuf in it: plugins see plain Python types only.
"""

from ringd.sdk._context import Headers, PluginContext, PluginState, RequestInfo, UpstreamResponse
from ringd.sdk._metrics import PluginMetrics
from ringd.sdk._plugin import BasePlugin, PluginHook
from ringd.sdk._response import PluginAction, PluginResponse, PluginResponseError
from ringd.sdk._store import Store, StoreError
from ringd.sdk._stream import StreamText

__all__ = [
    "BasePlugin",
    "Headers",
    "PluginAction",
    "PluginContext",
    "PluginHook",
    "PluginMetrics",
    "PluginResponse",
    "PluginResponseError",
    "PluginState",
    "RequestInfo",
    "Store",
    "StoreError",
    "StreamText",
    "UpstreamResponse",
]
