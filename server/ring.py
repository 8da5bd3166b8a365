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

Over 400 lines on purpose: the loop (``RingRunner.run``) is short; beside it is the
one per-plugin call path (``call_plugin``/``settle``/``PendingCall``) that both the
loop and streamed answers (:mod:`ringd.server.stream`) use, so timeouts, fail policy,
breaker and metrics are applied in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
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
from ringd.server.generations import Generation, LoadedPlugin, PluginSlot
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome, plugin_result, ring_outcome
from ringd.server.ringstats import RingStats, ring_stats
from ringd.server.threads import PluginThreads

_log = logging.getLogger("ringd.engine")

_FAILURE_BLOCK = {
    PluginOutcome.ERROR: (500, "plugin_error", "failed"),
    PluginOutcome.TIMEOUT: (504, "plugin_timeout", "timed out"),
}
_UNAVAILABLE = (503, "plugin_unavailable", "is unavailable")


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
        self,
        generation: Generation,
        ring: PluginHook,
        ctx: PluginContext,
        deadline: float | None,
        slots: Sequence[PluginSlot] | None = None,
    ) -> RingOutcome:
        """Run ``ring``'s slots of ``generation`` on ``ctx``; the caller holds the generation.

        ``slots`` runs only those (a subset of the ring's, in order) instead: a stream
        runs its whole-answer plugins this way (:mod:`ringd.server.stream`).
        """
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
        for slot in generation.rings[ring] if slots is None else slots:
            loaded = slot.loaded
            if not slot.enabled:
                results.append(
                    plugin_result(plugin=loaded.name, version=loaded.version, outcome=PluginOutcome.SKIPPED)
                )
                continue
            call = self.call_plugin(loaded, EXECUTE, ctx, (), deadline_perf)
            if call.__class__ is PendingCall:
                call = await call
            result, response, block = call  # type: ignore[misc]
            if response is None:  # failed: ``result`` says how, ``block`` if it is fail-closed
                results.append(result)
                if block is not None:
                    decision, decided_by, action = block, loaded.name, PluginAction.BLOCK
                    break
                continue
            kind = response.action
            result.action = kind
            result.message = response.message
            results.append(result)
            if kind is _PASS:
                pass
            elif kind is _MODIFY:
                if response.body is not None:  # MODIFY without a body keeps ctx.body (LLMProxy)
                    ctx.body = response.body
                decision, decided_by, action = response, loaded.name, _MODIFY
            else:
                if kind is PluginAction.BLOCK:
                    loaded.metrics.blocks += 1
                decision, decided_by, action = response, loaded.name, kind
                break
            if ctx.stop_chain:
                decision, decided_by, action = self._stopped(loaded, ctx)
                break
        self.ring_stats[ring].observe(perf() - ring_started, action, decision)
        return ring_outcome(
            ring=ring,
            action=action,
            context=ctx,
            results=results,
            config_version=generation.version,
            generation=generation.number,
            decision=decision,
            decided_by=decided_by,
        )

    @staticmethod
    def _stopped(loaded: LoadedPlugin, ctx: PluginContext) -> tuple[PluginResponse, str, PluginAction]:
        """The block of a plugin that set ``ctx.stop_chain`` (rule 5): decision, decided_by, action."""
        loaded.metrics.blocks += 1
        name = loaded.name
        block = PluginResponse.block(
            status_code=403,
            error_type="stop_chain",
            message=ctx.error or f"stopped by plugin {name!r}",
        )
        return block, name, PluginAction.BLOCK

    def call_plugin(
        self,
        loaded: LoadedPlugin,
        hook: PluginCall,
        ctx: PluginContext,
        args: tuple[Any, ...],
        deadline_perf: float | None,
    ) -> CallOutcome | PendingCall:
        """One call of one plugin under rules 2 to 4: availability, time budget, fail policy.

        Both the ring loop (``execute``) and a stream (``on_chunk``, :mod:`ringd.server.stream`)
        call plugins through here, so breaker, metrics and fail policy are applied once.
        The plugin's first step runs inline: a call that finishes without suspending (most
        do) is settled at once and costs no timer and no extra coroutine; one that
        suspends comes back as a :class:`PendingCall` to await under its time budget::

            call = runner.call_plugin(loaded, EXECUTE, ctx, (), deadline_perf)
            if isinstance(call, PendingCall):
                call = await call
            result, response, block = call

        Args:
            loaded: The plugin.
            hook: Which method to call and what it must return (:data:`EXECUTE`, or
                :data:`ringd.server.stream.ON_CHUNK`).
            ctx: The request's context, the method's first argument.
            args: The method's further arguments.
            deadline_perf: The caller's deadline on the ``time.perf_counter`` clock, or None.

        Returns:
            ``(result, response, block)``, or a :class:`PendingCall` that gives it. On
            success ``response`` is what the plugin returned (valid for ``hook``),
            ``result`` is OK with latency and start time, and ``block`` is None. On
            failure ``response`` is None, ``result`` says how it failed, and ``block`` is
            the block a fail-closed plugin makes (None when it is bypassed).
        """
        instance = loaded.instance
        breaker = loaded.breaker
        if instance is None or (breaker.state is not CLOSED and not breaker.admit(_perf())):
            result, block = self._unavailable(loaded)
            return result, None, block
        started = _perf()
        budget = loaded.timeout_s
        cut_by_deadline = deadline_perf is not None and deadline_perf - started < budget
        if cut_by_deadline:
            budget = deadline_perf - started  # type: ignore[operator]
        if budget <= 0:
            error = "no time left before the caller's deadline"
            return self.settle(
                loaded, hook, None, PluginOutcome.TIMEOUT, error, started, budget, cut_by_deadline
            )
        if loaded.run_in_thread:
            threaded = _within(budget, self.threads.call(instance, ctx, self.state, hook.method, args))
            return PendingCall(self, loaded, hook, threaded, started, budget, cut_by_deadline)
        try:
            # The hot path calls execute without a lookup by name.
            coro = instance.execute(ctx) if hook is EXECUTE else getattr(instance, hook.method)(ctx, *args)
            if type(coro) is not CoroutineType:
                coro = _as_coroutine(coro)
            self.running = loaded
            try:
                first = coro.send(None)
            finally:
                self.running = None
        except StopIteration as stop:  # finished without suspending: no timer needed
            response = stop.value
            if (
                (
                    response.__class__ is PluginResponse
                    and response.action is _PASS
                    and response.headers is None  # else ``validate`` refuses it, as after a suspend
                    and hook is EXECUTE
                )
                or response.__class__ is hook.plain
                or (hook.check is None and isinstance(response, hook.returns))
            ):
                # ``settle`` of a valid return, inline: this is most calls of every ring.
                latency_ms = (_perf() - started) * 1000.0
                loaded.metrics.observe(latency_ms)
                if started >= breaker.next_check:  # a window bucket rolled, or a half-open probe
                    breaker.on_success(started)
                ok = plugin_result(
                    plugin=loaded.name,
                    version=loaded.version,
                    outcome=_OK,
                    latency_ms=latency_ms,
                    started=started,
                )
                return ok, response, None
            return self.settle(loaded, hook, response, None, "", started, budget, cut_by_deadline)
        except BaseException as exc:  # any plugin failure becomes its typed result (or re-raised)
            failure, error = self.failure(loaded, exc, budget)
            return self.settle(loaded, hook, None, failure, error, started, budget, cut_by_deadline)
        return self._pending(loaded, hook, coro, first, started, budget, cut_by_deadline)

    def _pending(
        self,
        loaded: LoadedPlugin,
        hook: PluginCall,
        coro: Coroutine[Any, Any, Any],
        first: Any,
        started: float,
        budget: float,
        cut_by_deadline: bool,
    ) -> PendingCall:
        """A call whose first step suspended: the rest of it, under the rest of its budget."""
        remaining = budget - (time.perf_counter() - started)
        rest = _within(remaining, _Resume(coro, first, self, loaded))
        return PendingCall(self, loaded, hook, rest, started, budget, cut_by_deadline)

    def failure(self, loaded: LoadedPlugin, exc: BaseException, budget: float) -> tuple[PluginOutcome, str]:
        """What an exception out of a plugin call means; the caller's own cancellation is re-raised."""
        if isinstance(exc, _PluginTimeout):
            return PluginOutcome.TIMEOUT, f"timed out after {budget * 1000:.0f} ms"
        if isinstance(exc, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise exc  # the caller went away: stop the ring
            return PluginOutcome.ERROR, "CancelledError raised by the plugin"
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            _log.error("plugin %r raised %s; treated as its error", loaded.name, type(exc).__name__)
        return PluginOutcome.ERROR, describe(exc)

    def settle(
        self,
        loaded: LoadedPlugin,
        hook: PluginCall,
        response: Any,
        failure: PluginOutcome | None,
        error: str,
        started: float,
        budget: float,
        cut_by_deadline: bool,
    ) -> CallOutcome:
        """Count a finished call (metrics, breaker) and check its return: the call's outcome."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        if budget > 0:
            loaded.metrics.observe(latency_ms)
        if failure is None:
            if response is None and hook.on_none is not None:
                response = hook.on_none
            if not isinstance(response, hook.returns):
                failure = PluginOutcome.ERROR
                error = f"returned {type(response).__name__}, expected {hook.expected}"
            elif hook.check is not None:
                problem = hook.check(response)
                if problem is not None:
                    failure, error = PluginOutcome.ERROR, problem
        if failure is not None:
            result, block = self._failed_call(
                loaded, failure, error, latency_ms, started, cut_by_deadline, called=budget > 0
            )
            return result, None, block
        breaker = loaded.breaker
        if started >= breaker.next_check:  # a window bucket rolled, or a half-open probe
            breaker.on_success(started)
        result = plugin_result(
            plugin=loaded.name,
            version=loaded.version,
            outcome=PluginOutcome.OK,
            latency_ms=latency_ms,
            started=started,
        )
        return result, response, None

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
            result = plugin_result(
                plugin=name, version=loaded.version, outcome=PluginOutcome.ERROR, error=error
            )
            return result, _block(_UNAVAILABLE, name)
        loaded.metrics.bypasses += 1
        result = plugin_result(
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
        result = plugin_result(
            plugin=loaded.name,
            version=loaded.version,
            outcome=failure,
            latency_ms=latency_ms,
            error=error,
            started=started,
        )
        return result, block


def _block(kind: tuple[int, str, str], name: str) -> PluginResponse:
    status, error_type, phrase = kind
    return PluginResponse.block(
        status_code=status, error_type=error_type, message=f"plugin {name!r} {phrase}"
    )


CallOutcome = tuple[PluginResult, Any, PluginResponse | None]
"""A plugin call's outcome: its result, its valid response or None, the block it makes or None."""


class PendingCall:
    """A plugin call that suspended: await it for its :data:`CallOutcome` (see ``call_plugin``)."""

    __slots__ = ("awaitable", "budget", "cut_by_deadline", "hook", "loaded", "runner", "started")

    def __init__(
        self,
        runner: RingRunner,
        loaded: LoadedPlugin,
        hook: PluginCall,
        awaitable: Awaitable[Any],
        started: float,
        budget: float,
        cut_by_deadline: bool,
    ) -> None:
        self.runner = runner
        self.loaded = loaded
        self.hook = hook
        self.awaitable = awaitable
        self.started = started
        self.budget = budget
        self.cut_by_deadline = cut_by_deadline

    def __await__(self) -> Generator[Any, Any, CallOutcome]:
        return self._finish().__await__()

    async def _finish(self) -> CallOutcome:
        runner, loaded, budget = self.runner, self.loaded, self.budget
        try:
            response = await self.awaitable
        except BaseException as exc:  # any plugin failure becomes its typed result (or re-raised)
            failure, error = runner.failure(loaded, exc, budget)
            return runner.settle(
                loaded, self.hook, None, failure, error, self.started, budget, self.cut_by_deadline
            )
        return runner.settle(
            loaded, self.hook, response, None, "", self.started, budget, self.cut_by_deadline
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


@dataclass(frozen=True, slots=True)
class PluginCall:
    """A plugin method the engine calls: its name and what it must return."""

    method: str
    returns: type | tuple[type, ...]
    expected: str
    """``returns`` in words, for the error of an invalid return."""
    check: Callable[[Any], str | None] | None = None
    """Further check of a return of the right type: the problem in words, or None if valid."""
    on_none: Any = None
    """What a ``None`` return stands for, if it is allowed (``execute``: a passthrough)."""
    plain: type | None = None
    """A return of exactly this class is valid without ``check`` (``on_chunk``: ``str``)."""


def _servable(response: PluginResponse) -> str | None:
    """A response the ring cannot serve (``PluginResponse.validate``) is the plugin's error."""
    try:
        response.validate()
    except PluginResponseError as exc:
        return f"PluginResponseError: {exc}"
    return None


_PASS = PluginAction.PASSTHROUGH
_MODIFY = PluginAction.MODIFY
_OK = PluginOutcome.OK
_perf = time.perf_counter

EXECUTE = PluginCall(
    method="execute",
    returns=PluginResponse,
    expected="PluginResponse",
    check=_servable,
    on_none=PluginResponse(),  # LLMProxy: returning None is a passthrough
)


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
