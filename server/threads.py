"""The thread bridge: ``run_in_thread`` plugins run on worker threads, each with its own loop.

A plugin that blocks (a synchronous client, CPU work) would stall every ring on
the server's event loop; with ``run_in_thread: true`` it runs on a worker thread
instead, on a copy of the context, and reaches the store through the server's
loop (async clients belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Awaitable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ringd.sdk import BasePlugin, PluginContext, PluginState


class _LoopBridge:
    """A service (the store) as seen from a plugin thread: its calls run on the server's loop."""

    __slots__ = ("_loop", "_target")

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        if not callable(method):
            return method
        loop = self._loop

        async def bridged(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if not isinstance(result, Coroutine):
                return result
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(result, loop))

        return bridged


def _execute_on_thread_loop(
    instance: BasePlugin, method: str, ctx: PluginContext, args: tuple[Any, ...], loops: threading.local
) -> Any:
    """Run ``instance.<method>(ctx, *args)`` on this worker thread's own event loop."""
    loop = getattr(loops, "loop", None)
    if loop is None:
        loop = asyncio.new_event_loop()
        loops.loop = loop
    returned = getattr(instance, method)(ctx, *args)
    return loop.run_until_complete(returned) if isinstance(returned, Awaitable) else returned


class PluginThreads:
    """The worker threads of ``run_in_thread`` plugins, started on first use."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._executor: ThreadPoolExecutor | None = None
        self._loops = threading.local()  # one event loop per worker thread

    async def call(
        self,
        instance: BasePlugin,
        ctx: PluginContext,
        state: PluginState,
        method: str = "execute",
        args: tuple[Any, ...] = (),
    ) -> Any:
        """Run ``instance.<method>(ctx, *args)`` (``execute`` by default) on a worker thread.

        The plugin works on a copy of ``ctx``, copied back when it answers. The caller
        bounds the wait: cancelled (a timeout), nothing is copied back, so a plugin
        still running after its timeout cannot change the ring.
        """
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._size, thread_name_prefix="ringd-plugin")
        extra = {key: _LoopBridge(value, loop) for key, value in state.extra.items()}
        bridged = PluginState(config=state.config, cache=state.cache, metrics=state.metrics, extra=extra)
        private = PluginContext(
            body=copy.deepcopy(ctx.body),
            metadata=copy.deepcopy(ctx.metadata),
            session_id=ctx.session_id,
            state=bridged,
            response=copy.deepcopy(ctx.response),
            request=copy.deepcopy(ctx.request),
            request_id=ctx.request_id,
            error=ctx.error,
            stop_chain=ctx.stop_chain,
        )
        response = await loop.run_in_executor(
            self._executor, _execute_on_thread_loop, instance, method, private, args, self._loops
        )
        ctx.body, ctx.metadata, ctx.response = private.body, private.metadata, private.response
        ctx.error, ctx.stop_chain = private.error, private.stop_chain
        return response

    def close(self) -> None:
        """Stop the worker threads; calls still queued are cancelled."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
