"""The BACKGROUND ring's queue: the caller is answered at once, the ring runs after.

Bounded, so a flood of background work gets RESOURCE_EXHAUSTED instead of
unbounded memory; drained within a grace time at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ringd.sdk import PluginContext, PluginHook
from ringd.server.engine import Engine
from ringd.server.exceptions import QueueFullError
from ringd.server.logs import bind_request
from ringd.server.results import RingOutcome

_log = logging.getLogger("ringd.background")
_BACKGROUND = PluginHook.BACKGROUND.value


class BackgroundQueue:
    """Runs BACKGROUND rings on ``workers`` tasks from a queue of ``size`` contexts."""

    def __init__(self, engine: Engine, *, size: int, workers: int) -> None:
        self._engine = engine
        self._queue: asyncio.Queue[PluginContext] = asyncio.Queue(maxsize=size)
        self._workers = [
            asyncio.create_task(self._work(), name=f"ringd-background-{i}") for i in range(workers)
        ]

    @property
    def pending(self) -> int:
        """Rings waiting in the queue (not counting those a worker is running)."""
        return self._queue.qsize()

    def submit(self, ctx: PluginContext) -> RingOutcome:
        """Queue a BACKGROUND ring for ``ctx``; returns the engine's ``queued`` outcome.

        Encode the outcome before the next ``await``: from then on a worker may run
        the ring and change ``ctx``.

        Raises:
            QueueFullError: the queue is at its bound.
        """
        queued = self._engine.queued(ctx)
        try:
            self._queue.put_nowait(ctx)
        except asyncio.QueueFull:
            raise QueueFullError(f"background queue is full ({self._queue.maxsize} rings waiting)") from None
        return queued

    async def _work(self) -> None:
        queue, execute_ring = self._queue, self._engine.execute_ring
        while True:
            try:  # a queued ring is taken without the coroutine and future of ``get``
                ctx = queue.get_nowait()
            except asyncio.QueueEmpty:
                ctx = await queue.get()
            bind_request(ctx.request_id, _BACKGROUND)  # issue 14: log lines name the request
            try:
                await execute_ring(PluginHook.BACKGROUND, ctx)
            except Exception:  # a background ring has no caller to tell: log it and go on
                _log.exception("background ring failed (request_id=%s)", ctx.request_id)
            finally:
                queue.task_done()

    async def drain(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for queued rings, then stop the workers; True if all ran."""
        done = True
        try:
            await asyncio.wait_for(self._queue.join(), grace_s)
        except TimeoutError:
            done = False
            _log.warning(
                "background queue not drained within %.1f s: %d rings dropped",
                grace_s,
                self.pending,
            )
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        return done
