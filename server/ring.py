"""The ring loop: one ring's plugins run in order, and the ring's verdict is made here.

This is the engine's hot path, kept alone so it reads in one sitting (as pluggy's
``_callers._multicall``). Policy lives beside it: the generation's ordered slots
(:mod:`ringd.server.generations`), the breaker (:mod:`ringd.server.breaker`), the
thread bridge (:mod:`ringd.server.threads`), the result types
(:mod:`ringd.server.results`). The rules applied per plugin, in order:

1. disabled: SKIPPED, not run;
2. failed to load, or its circuit open: *unavailable* (fail-closed: 503 block);
3. time budget: its ``timeout_ms``, cut to the caller's deadline;
4. ``None`` is a passthrough (LLMProxy); an exception, a timeout, an invalid return or
   a response the ring cannot serve (``PluginResponse.validate``) is a *failure*: fail-closed turns it
   into a block (500 ``plugin_error``, 504 ``plugin_timeout``), fail-open bypasses it;
   it feeds the breaker, unless the caller's deadline, not the plugin, ran out;
5. a valid response: MODIFY replaces the body (if it carries one) and goes on; BLOCK and CACHE_HIT end
   the ring; ``ctx.stop_chain`` ends it as a 403 block.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any

from ringd.sdk import (
    PluginAction,
    PluginContext,
    PluginHook,
    PluginResponse,
    PluginResponseError,
    PluginState,
)
from ringd.server.breaker import CLOSED
from ringd.server.exceptions import describe
from ringd.server.generations import Generation, LoadedPlugin
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome
from ringd.server.ringstats import RingStats, ring_stats
from ringd.server.threads import PluginThreads

_log = logging.getLogger("ringd.engine")

_FAILURE_BLOCK = {
    PluginOutcome.ERROR: (500, "plugin_error", "failed"),
    PluginOutcome.TIMEOUT: (504, "plugin_timeout", "timed out"),
}
_UNAVAILABLE = (503, "plugin_unavailable", "is unavailable")
_PASSTHROUGH = PluginResponse()


class RingRunner:
    """Runs rings on a generation's slots; ``running`` is the plugin on the event loop now."""

    __slots__ = ("_clock", "ring_stats", "running", "state", "threads")

    def __init__(self, state: PluginState, clock: Callable[[], float], threads: PluginThreads) -> None:
        self.state = state
        self._clock = clock
        self.threads = threads
        self.running: LoadedPlugin | None = None
        self.ring_stats: dict[PluginHook, RingStats] = ring_stats()
        """Per-ring latency, actions and blocks, for the metrics endpoint."""

    async def run(
        self, generation: Generation, ring: PluginHook, ctx: PluginContext, deadline: float | None
    ) -> RingOutcome:
        """Run ``ring``'s slots of ``generation`` on ``ctx``; the caller holds the generation."""
        ctx.state = self.state
        perf = time.perf_counter
        ring_started = perf()
        # The caller's deadline on the perf_counter clock, so one reading per plugin
        # serves both its latency and its time budget.
        deadline_perf = None if deadline is None else deadline - self._clock() + ring_started
        results: list[PluginResult] = []
        action = PluginAction.PASSTHROUGH
        decision: PluginResponse | None = None
        decided_by: str | None = None
        for slot in generation.rings[ring]:
            loaded = slot.loaded
            if not slot.enabled:
                results.append(
                    PluginResult(plugin=loaded.name, version=loaded.version, outcome=PluginOutcome.SKIPPED)
                )
                continue
            instance = loaded.instance
            breaker = loaded.breaker
            if instance is None or (breaker.state is not CLOSED and not breaker.admit(perf())):
                result, block = self._unavailable(loaded)
                results.append(result)
                if block is not None:
                    decision, decided_by, action = block, loaded.name, PluginAction.BLOCK
                    break
                continue
            started = perf()
            budget = loaded.timeout_s
            cut_by_deadline = deadline_perf is not None and deadline_perf - started < budget
            if cut_by_deadline:
                budget = deadline_perf - started  # type: ignore[operator]
            failure: PluginOutcome | None = None
            error = ""
            response: Any = None
            if budget <= 0:
                failure, error = PluginOutcome.TIMEOUT, "no time left before the caller's deadline"
            else:
                try:
                    if loaded.run_in_thread:
                        response = await _within(budget, self.threads.call(instance, ctx, self.state))
                    else:
                        coro = instance.execute(ctx)
                        if type(coro) is not CoroutineType:
                            coro = _as_coroutine(coro)
                        self.running = loaded
                        try:
                            first = coro.send(None)
                        except StopIteration as stop:
                            response = stop.value  # finished without suspending: no timer needed
                        else:
                            remaining = budget - (perf() - started)
                            response = await _within(remaining, _Resume(coro, first, self, loaded))
                        finally:
                            self.running = None
                except _PluginTimeout:
                    failure, error = PluginOutcome.TIMEOUT, f"timed out after {budget * 1000:.0f} ms"
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the caller went away: stop the ring
                    failure, error = PluginOutcome.ERROR, "CancelledError raised by the plugin"
                except BaseException as exc:  # any plugin failure becomes its typed result below
                    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                        _log.error(
                            "plugin %r raised %s; treated as its error", loaded.name, type(exc).__name__
                        )
                    failure, error = PluginOutcome.ERROR, describe(exc)
            latency_ms = (perf() - started) * 1000.0
            metrics = loaded.metrics
            if budget > 0:
                metrics.observe(latency_ms)
            if failure is None and (
                type(response) is not PluginResponse or response.action is not PluginAction.PASSTHROUGH
            ):
                # Off the common path (a passthrough): None, a subclass, garbage, or an
                # action whose payload the ring must check before serving it.
                failure, error, response = _check_response(response)
            if failure is not None:
                result, block = self._failed_call(
                    loaded, failure, error, latency_ms, started, cut_by_deadline, called=budget > 0
                )
                results.append(result)
                if block is not None:
                    decision, decided_by, action = block, loaded.name, PluginAction.BLOCK
                    break
                continue
            if started >= breaker.next_check:  # a window bucket rolled, or a half-open probe
                breaker.on_success(started)
            kind = response.action
            results.append(
                PluginResult(
                    plugin=loaded.name,
                    version=loaded.version,
                    outcome=PluginOutcome.OK,
                    action=kind,
                    latency_ms=latency_ms,
                    message=response.message,
                    started=started,
                )
            )
            if kind is PluginAction.MODIFY:
                if response.body is not None:  # MODIFY without a body keeps ctx.body (LLMProxy)
                    ctx.body = response.body
                decision, decided_by, action = response, loaded.name, PluginAction.MODIFY
            elif kind is not PluginAction.PASSTHROUGH:
                if kind is PluginAction.BLOCK:
                    metrics.blocks += 1
                decision, decided_by, action = response, loaded.name, kind
                break
            if ctx.stop_chain:
                metrics.blocks += 1
                name = loaded.name
                decision = PluginResponse.block(
                    status_code=403,
                    error_type="stop_chain",
                    message=ctx.error or f"stopped by plugin {name!r}",
                )
                decided_by, action = name, PluginAction.BLOCK
                break
        self.ring_stats[ring].observe(perf() - ring_started, action, decision)
        return RingOutcome(
            ring=ring,
            action=action,
            context=ctx,
            results=results,
            config_version=generation.version,
            generation=generation.number,
            decision=decision,
            decided_by=decided_by,
        )

    def _unavailable(self, loaded: LoadedPlugin) -> tuple[PluginResult, PluginResponse | None]:
        """A plugin that failed to load or whose circuit is open: 503 if fail-closed, else bypassed.

        A refused call does not feed the breaker: counting it would push the cooldown
        back on every request, so the circuit would never close under steady traffic.
        """
        if loaded.instance is None:
            error = f"failed to load: {loaded.load_error}"
        else:
            error = loaded.breaker.describe(time.perf_counter())
        name = loaded.name
        if loaded.fail_closed:
            result = PluginResult(
                plugin=name, version=loaded.version, outcome=PluginOutcome.ERROR, error=error
            )
            return result, _block(_UNAVAILABLE, name)
        loaded.metrics.bypasses += 1
        result = PluginResult(
            plugin=name, version=loaded.version, outcome=PluginOutcome.BYPASSED, error=error
        )
        return result, None

    def _failed_call(
        self,
        loaded: LoadedPlugin,
        failure: PluginOutcome,
        error: str,
        latency_ms: float,
        started: float,
        cut_by_deadline: bool,
        called: bool,
    ) -> tuple[PluginResult, PluginResponse | None]:
        """Count a failed call and turn it into its result: a block if fail-closed, else bypassed."""
        metrics = loaded.metrics
        if called:  # a plugin that was left no time to run has not failed
            metrics.errors += 1
            if failure is PluginOutcome.TIMEOUT:
                metrics.timeouts += 1
        # Running out of the caller's deadline is not the plugin's failure: it does
        # not feed the breaker.
        if not (failure is PluginOutcome.TIMEOUT and cut_by_deadline):
            loaded.breaker.on_failure(time.perf_counter())
        block = None
        if loaded.fail_closed:
            block = _block(_FAILURE_BLOCK[failure], loaded.name)
        else:
            metrics.bypasses += 1
            failure = PluginOutcome.BYPASSED
        result = PluginResult(
            plugin=loaded.name,
            version=loaded.version,
            outcome=failure,
            latency_ms=latency_ms,
            error=error,
            started=started,
        )
        return result, block


def _check_response(response: Any) -> tuple[PluginOutcome | None, str, Any]:
    """What a plugin returned, as ``(failure, error, response)``: None is a passthrough
    (LLMProxy), anything but a servable :class:`PluginResponse` is the plugin's error."""
    if response is None:
        return None, "", _PASSTHROUGH
    if not isinstance(response, PluginResponse):
        return PluginOutcome.ERROR, f"returned {type(response).__name__}, expected PluginResponse", None
    try:
        response.validate()
    except PluginResponseError as exc:  # a response the ring cannot serve: this plugin's error
        return PluginOutcome.ERROR, f"PluginResponseError: {exc}", None
    return None, "", response


def _block(kind: tuple[int, str, str], name: str) -> PluginResponse:
    status, error_type, phrase = kind
    return PluginResponse.block(
        status_code=status, error_type=error_type, message=f"plugin {name!r} {phrase}"
    )


class _Resume:
    """Awaits the rest of a coroutine whose first step already ran (it suspended).

    The loop runs a plugin's first step inline, so a plugin that finishes without
    suspending (most do) costs no timer at all; one that suspends is finished
    through this awaitable under the plugin's time budget.
    """

    __slots__ = ("coro", "first", "loaded", "runner")

    def __init__(
        self, coro: Coroutine[Any, Any, Any], first: Any, runner: RingRunner, loaded: LoadedPlugin
    ) -> None:
        self.coro = coro
        self.first = first
        self.runner = runner
        self.loaded = loaded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending, runner, loaded = self.coro, self.first, self.runner, self.loaded
        self.first = None
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # delegate what the task throws in (cancellation)
                step: Callable[[Any], Any] = coro.throw
                argument: Any = exc
            else:
                step, argument = coro.send, sent
            runner.running = loaded
            try:
                pending = step(argument)
            except StopIteration as stop:
                return stop.value
            finally:
                runner.running = None


class _PluginTimeout(Exception):
    """The plugin ran past its time budget."""


async def _within(budget_s: float, awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` for at most ``budget_s``; running out raises :class:`_PluginTimeout`."""
    timeout = asyncio.timeout(budget_s)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise _PluginTimeout from None
        raise


async def _as_coroutine(returned: Any) -> Any:
    """Wrap what a non-coroutine ``execute`` returned: an awaitable, or a plain ``def``'s response."""
    if isinstance(returned, Awaitable):
        return await returned
    return returned
