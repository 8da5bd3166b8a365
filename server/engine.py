"""The engine: hosts the plugin generations and runs rings on them.

It knows SDK types only (no gRPC, no protobuf), so it runs in-process as well as
behind the servicers, and it alone decides a ring's verdict (a complete
:class:`RingOutcome`); callers translate it. The parts, as pluggy splits its core:

- :mod:`ringd.server.ring`: the ring loop and fail policy (the hot path);
- :mod:`ringd.server.results`: :class:`PluginResult` and :class:`RingOutcome`;
- :mod:`ringd.server.generations`: loaded plugins, generations, reload;
- :mod:`ringd.server.breaker`: the per-plugin circuit breaker;
- :mod:`ringd.server.threads`: the thread bridge of ``run_in_thread`` plugins;
- :mod:`ringd.server.stream`: POST_FLIGHT on a streamed answer, chunk by chunk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable

from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginState
from ringd.server.breaker import CircuitBreaker
from ringd.server.config import RingdConfig
from ringd.server.exceptions import ReloadError, UnknownPluginError
from ringd.server.generations import (
    LOAD_TIMEOUT_S,
    Generation,
    Generations,
    LoadedPlugin,
    PluginSlot,
    entry_key,
)
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome, ring_outcome
from ringd.server.ring import RingRunner
from ringd.server.ringstats import RingStats
from ringd.server.stream import StreamLimits, StreamOutcome, StreamSession
from ringd.server.threads import PluginThreads

__all__ = [
    "LOAD_TIMEOUT_S",
    "CircuitBreaker",
    "Engine",
    "Generation",
    "LoadedPlugin",
    "PluginOutcome",
    "PluginResult",
    "PluginSlot",
    "ReloadError",
    "RingOutcome",
    "StreamLimits",
    "StreamOutcome",
    "StreamSession",
    "UnknownPluginError",
    "entry_key",
]

_log = logging.getLogger("ringd.engine")


class Engine:
    """Hosts the plugin generations and runs rings.

    Build it with the shared :class:`PluginState` (``extra["store"]`` set), then
    ``await start(config)``; ``await execute_ring(ring, ctx, deadline=...)`` per
    request, or ``run_rings`` for several rings on one context; ``await
    reload(config)`` to hot-swap; ``await close()`` at shutdown.
    """

    def __init__(
        self,
        state: PluginState | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        plugin_threads: int = 4,
    ) -> None:
        self.state = state if state is not None else PluginState()
        self._clock = clock
        self._threads = PluginThreads(plugin_threads)
        self._runner = RingRunner(self.state, clock, self._threads)
        self._generations = Generations()

    @property
    def ring_stats(self) -> dict[PluginHook, RingStats]:
        """Per-ring latency, actions and blocks by error type since start (read by a scrape)."""
        return self._runner.ring_stats

    @property
    def running(self) -> LoadedPlugin | None:
        """The plugin whose code is on the event loop right now (read by the stall watchdog)."""
        return self._runner.running

    # ------------------------------------------------------------------ generations

    @property
    def generation(self) -> Generation:
        """The generation new rings start on."""
        current = self._generations.current
        if current is None:
            raise RuntimeError("engine not started: await Engine.start(config) first")
        return current

    async def start(self, config: RingdConfig) -> Generation:
        """Load the first generation; a plugin that fails to load is kept as failed."""
        return await self._generations.start(config)

    async def reload(self, config: RingdConfig) -> Generation:
        """Build ``config``'s generation aside and swap it in atomically.

        Raises:
            ReloadError: a plugin failed to load; the current generation keeps serving.
        """
        return await self._generations.reload(config)

    async def close(self, grace_s: float = 10.0) -> None:
        """Wait up to ``grace_s`` for rings in flight, then unload every plugin."""
        await self._generations.close(grace_s)
        self._threads.close()

    # ------------------------------------------------------------------ admin

    def set_enabled(self, name: str, enabled: bool) -> PluginSlot:
        """Enable or disable one plugin of the current generation (until the next reload).

        Raises:
            UnknownPluginError: no plugin has that name.
        """
        slot = self.generation.slots.get(name)
        if slot is None:
            raise UnknownPluginError(name)
        slot.enabled = enabled
        _log.info("plugin %r %s by operator", name, "enabled" if enabled else "disabled")
        return slot

    def status(self, slot: PluginSlot) -> str:
        """``failed`` (load error), ``disabled``, ``circuit_open`` or ``active``."""
        if slot.loaded.load_error is not None:
            return "failed"
        if not slot.enabled:
            return "disabled"
        if slot.loaded.breaker.is_open(time.perf_counter()):
            return "circuit_open"
        return "active"

    # ------------------------------------------------------------------ rings

    async def execute_ring(
        self, ring: PluginHook, ctx: PluginContext, *, deadline: float | None = None
    ) -> RingOutcome:
        """Run ``ring``'s enabled plugins on ``ctx``, in priority order.

        Args:
            ring: The ring.
            ctx: The request's context; it is changed in place and returned in the outcome.
            deadline: When the caller stops waiting, in ``time.monotonic()`` seconds;
                every plugin's timeout is cut to the time left before it.
        """
        generation = self.generation.enter()
        try:
            return await self._runner.run(generation, ring, ctx, deadline)
        finally:
            generation.leave()

    async def run_rings(
        self, rings: Iterable[PluginHook], ctx: PluginContext, *, deadline: float | None = None
    ) -> AsyncGenerator[RingOutcome, None]:
        """Run several rings in order on one context and one generation, yielding each outcome.

        The context flows from each ring into the next (final body and metadata), so
        read an outcome's context before asking for the next one. The run stops after
        the first ring that ends in BLOCK or CACHE_HIT; a caller that stops early
        (``break``) should iterate inside ``contextlib.aclosing`` so the generation is
        released at once.
        """
        generation = self.generation.enter()
        try:
            for ring in rings:
                outcome = await self._runner.run(generation, ring, ctx, deadline)
                yield outcome
                if outcome.ended:
                    return
        finally:
            generation.leave()

    def open_stream(
        self, ctx: PluginContext, *, deadline: float | None = None, limits: StreamLimits | None = None
    ) -> StreamSession:
        """Start POST_FLIGHT on a streamed answer (see :mod:`ringd.server.stream`).

        The session holds the current generation until it is closed: use it as a
        context manager. ``deadline`` is as for :meth:`execute_ring`.
        """
        generation = self.generation.enter()
        ctx.state = self.state
        deadline_perf = None if deadline is None else deadline - self._clock() + time.perf_counter()
        return StreamSession(
            runner=self._runner,
            generation=generation,
            ctx=ctx,
            deadline=deadline,
            deadline_perf=deadline_perf,
            limits=limits if limits is not None else StreamLimits(),
        )

    def queued(self, ctx: PluginContext) -> RingOutcome:
        """The outcome of a BACKGROUND ring accepted onto the queue: it runs later, on
        the generation current then; the answer echoes the context it was given."""
        generation = self.generation
        outcome = ring_outcome(
            ring=PluginHook.BACKGROUND,
            action=PluginAction.PASSTHROUGH,
            context=ctx,
            results=[],
            config_version=generation.version,
            generation=generation.number,
        )
        outcome.queued = True
        return outcome
