"""The ring engine: runs a ring's plugins in order and says what the gateway must do.

It knows SDK types only (no gRPC, no protobuf), so it runs in-process as well as
behind the servicers. One :class:`Engine` holds the current :class:`Generation`
of loaded plugins; a reload builds the next generation aside and swaps it in
atomically, and rings in flight finish on the generation they started on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from types import CoroutineType
from typing import Any

from ringd.sdk import (
    BasePlugin,
    PluginAction,
    PluginContext,
    PluginHook,
    PluginResponse,
    PluginState,
)
from ringd.sdk._metrics import PluginMetrics
from ringd.server.config import (
    DEFAULT_FAIL_POLICY,
    BreakerSettings,
    FailPolicy,
    PluginEntry,
    RingdConfig,
)
from ringd.server.loader import PluginLoadError, entry_fingerprint, load_entry_class

_log = logging.getLogger("ringd.engine")

LOAD_TIMEOUT_S = 30.0
"""How long one plugin's ``on_load`` (or ``on_unload``) may take."""


class Outcome(Enum):
    """What happened to one plugin in a ring."""

    # Members are singletons compared by identity: hash them by identity too, in C,
    # not by Enum's Python-level hash of the name (they key hot-path lookup tables).
    __hash__ = object.__hash__

    OK = "ok"
    """Ran and returned a valid response."""
    ERROR = "error"
    """Failed (exception, invalid return, failed load, open circuit) under fail_policy closed."""
    TIMEOUT = "timeout"
    """Ran out of time under fail_policy closed."""
    BYPASSED = "bypassed"
    """Failed or ran out of time under fail_policy open; the ring went on without it."""
    SKIPPED = "skipped"
    """Disabled by an operator; not run."""


class ReloadError(Exception):
    """A reload was rejected; nothing changed. ``errors`` maps plugin name to its error."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        detail = "; ".join(f"{name}: {error}" for name, error in errors.items())
        super().__init__(f"reload rejected, the current generation keeps serving: {detail}")


class UnknownPluginError(KeyError):
    """No plugin of that name is loaded."""


@dataclass(slots=True)
class PluginResult:
    """One plugin's part in a ring, in run order."""

    plugin: str
    version: str
    outcome: Outcome
    action: PluginAction | None = None
    latency_ms: float = 0.0
    error: str | None = None
    message: str | None = None
    started: float = 0.0
    """When the call began, in ``time.perf_counter()`` seconds (0 when it was not called)."""


@dataclass(slots=True)
class RingOutcome:
    """What a ring decided, with the final context and every plugin's result.

    ``action`` is BLOCK or CACHE_HIT when a plugin ended the ring (``decision``
    and ``decided_by`` say which and why), MODIFY when a plugin replaced the
    body, else PASSTHROUGH. ``context`` holds the final body, response and
    metadata, in-place edits included.
    """

    hook: PluginHook
    action: PluginAction
    context: PluginContext
    results: list[PluginResult]
    config_version: str
    generation: int
    decision: PluginResponse | None = None
    decided_by: str | None = None

    @property
    def ended(self) -> bool:
        """True when the ring stopped the request (BLOCK or CACHE_HIT)."""
        return self.action is PluginAction.BLOCK or self.action is PluginAction.CACHE_HIT


class CircuitBreaker:
    """Consecutive-failure breaker of one plugin (see :class:`BreakerSettings`)."""

    __slots__ = ("cooldown_s", "failures", "opened_at", "threshold")

    def __init__(self, settings: BreakerSettings) -> None:
        self.threshold = settings.failure_threshold
        self.cooldown_s = settings.cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    def allows(self, now: float) -> bool:
        """False while open; after the cooldown the next calls are tried (half-open)."""
        return self.opened_at is None or now - self.opened_at >= self.cooldown_s

    def is_open(self, now: float) -> bool:
        """True while calls are refused."""
        return not self.allows(now)

    def retry_in(self, now: float) -> float:
        """Seconds until the breaker lets a call through again."""
        return 0.0 if self.opened_at is None else max(0.0, self.cooldown_s - (now - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        half_open = self.opened_at is not None
        if self.threshold and (half_open or self.failures >= self.threshold):
            self.opened_at = now


class LoadedPlugin:
    """A plugin instance with what outlives a generation: metrics, breaker, load error.

    An unchanged plugin (same entry and code) is carried into the next generation
    as it is, so its instance, stats and breaker survive the reload.
    """

    __slots__ = (
        "breaker",
        "entry",
        "fail_closed",
        "fingerprint",
        "hook",
        "instance",
        "load_error",
        "metrics",
        "name",
        "run_in_thread",
        "timeout_s",
        "version",
    )

    def __init__(
        self,
        entry: PluginEntry,
        hook: PluginHook,
        fingerprint: str,
        instance: BasePlugin | None,
        load_error: str | None,
        cls: type[BasePlugin] | None,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.run_in_thread = entry.run_in_thread
        self.hook = hook
        self.fingerprint = fingerprint
        self.instance = instance
        self.load_error = load_error
        self.metrics = PluginMetrics()
        if instance is not None:
            # Live stats: the plugin reads the metrics the engine writes.
            instance._metrics = self.metrics
        self.breaker = CircuitBreaker(entry.circuit_breaker)
        timeout_ms = entry.timeout_ms or (cls.timeout_ms if cls is not None else 10)
        self.timeout_s = timeout_ms / 1000.0
        self.version = str(cls.version) if cls is not None else ""
        policy = entry.fail_policy or DEFAULT_FAIL_POLICY[hook]
        self.fail_closed = policy is FailPolicy.CLOSED


@dataclass(slots=True)
class PluginSlot:
    """A loaded plugin's place in one generation: its ring, order and enabled flag.

    ``entry`` is this generation's config entry. It can differ from ``loaded.entry``
    (the entry the instance was built from) in the fields that do not make a new
    instance, such as ``priority`` and ``enabled``.
    """

    loaded: LoadedPlugin
    enabled: bool
    entry: PluginEntry

    @property
    def name(self) -> str:
        return self.loaded.name


@dataclass(slots=True)
class Generation:
    """One config's plugins, ordered per ring. Immutable once serving, but for ``enabled``."""

    number: int
    config: RingdConfig
    rings: dict[PluginHook, tuple[PluginSlot, ...]]
    slots: dict[str, PluginSlot]
    inflight: int = 0
    retired: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> str:
        return self.config.version

    def leave(self) -> None:
        """One ring on this generation has finished."""
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self.drained.set()


class _Resume:
    """Awaits the rest of a coroutine whose first step already ran (it suspended).

    The engine runs a plugin's first step inline, so a plugin that finishes
    without suspending (most do) costs no timer at all; one that suspends is
    finished through this awaitable under the plugin's time budget.
    """

    __slots__ = ("coro", "engine", "first", "loaded")

    def __init__(
        self, coro: Coroutine[Any, Any, Any], first: Any, engine: Engine, loaded: LoadedPlugin
    ) -> None:
        self.coro = coro
        self.first = first
        self.engine = engine
        self.loaded = loaded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending, engine, loaded = self.coro, self.first, self.engine, self.loaded
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
            engine.running = loaded
            try:
                pending = step(argument)
            except StopIteration as stop:
                return stop.value
            finally:
                engine.running = None


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


class _LoopBridge:
    """A service (the store) as seen from a plugin thread: its calls run on the server's loop.

    Async clients (aiosqlite, redis.asyncio) belong to the loop that made them; a
    plugin running on its own loop in a worker thread reaches them through this.
    """

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


_THREAD_LOOPS = threading.local()


def _execute_on_thread_loop(instance: BasePlugin, ctx: PluginContext) -> Any:
    """Run ``instance.execute(ctx)`` on this worker thread's own event loop."""
    loop = getattr(_THREAD_LOOPS, "loop", None)
    if loop is None:
        loop = asyncio.new_event_loop()
        _THREAD_LOOPS.loop = loop
    returned = instance.execute(ctx)
    return loop.run_until_complete(returned) if isinstance(returned, Awaitable) else returned


async def _as_coroutine(returned: Any) -> Any:
    """Wrap what a non-coroutine ``execute`` returned: an awaitable, or a plain ``def``'s response."""
    if isinstance(returned, Awaitable):
        return await returned
    return returned


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a plugin's exception whose __str__ raises: name its type only
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_FAILURE_BLOCK = {
    Outcome.ERROR: (500, "plugin_error", "failed"),
    Outcome.TIMEOUT: (504, "plugin_timeout", "timed out"),
}
_UNAVAILABLE = (503, "plugin_unavailable", "is unavailable")


class Engine:
    """Hosts the plugin generations and runs rings.

    Build it with the shared :class:`PluginState` (``extra["store"]`` set), then
    ``await start(config)``; ``await execute_ring(hook, ctx, deadline=...)`` per
    request; ``await reload(config)`` to hot-swap; ``await close()`` at shutdown.
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
        self.running: LoadedPlugin | None = None
        """The plugin whose code is on the event loop right now (read by the stall watchdog)."""
        self._plugin_threads = plugin_threads
        self._executor: ThreadPoolExecutor | None = None
        self._current: Generation | None = None
        self._numbers = 0
        self._reload_lock = asyncio.Lock()
        self._unloads: set[asyncio.Task[None]] = set()
        self._draining: list[Generation] = []  # retired generations with rings in flight

    # ------------------------------------------------------------------ generations

    @property
    def generation(self) -> Generation:
        """The generation new rings start on."""
        if self._current is None:
            raise RuntimeError("engine not started: await Engine.start(config) first")
        return self._current

    async def start(self, config: RingdConfig) -> Generation:
        """Load the first generation. A plugin that fails to load is kept as failed
        (503 under fail_policy closed) and never stops the others from loading."""
        async with self._reload_lock:
            generation, _ = await self._build(config, previous=None)
            self._current = generation
            self._log_generation(generation)
            return generation

    async def reload(self, config: RingdConfig) -> Generation:
        """Build ``config``'s generation aside and swap it in atomically.

        Raises:
            ReloadError: a plugin failed to load; the current generation keeps serving.
        """
        async with self._reload_lock:
            previous = self.generation
            generation, fresh = await self._build(config, previous=previous)
            errors = {
                slot.name: slot.loaded.load_error or ""
                for slot in generation.slots.values()
                if slot.loaded.load_error is not None
            }
            if errors:
                await self._unload([loaded for loaded in fresh if loaded.instance is not None])
                raise ReloadError(errors)
            self._current = generation
            previous.retired = True
            if previous.inflight == 0:
                previous.drained.set()
            kept = {id(slot.loaded) for slot in generation.slots.values()}
            stale = [s.loaded for s in previous.slots.values() if id(s.loaded) not in kept]
            # A plugin carried unchanged through several generations may still be running
            # on an older one: unload it once every generation holding it has drained.
            self._draining = [g for g in self._draining if not g.drained.is_set()]
            self._draining.append(previous)
            stale_ids = {id(loaded) for loaded in stale}
            holders = [
                g for g in self._draining if any(id(slot.loaded) in stale_ids for slot in g.slots.values())
            ]
            task = asyncio.create_task(self._unload_when_drained(holders, stale))
            self._unloads.add(task)
            task.add_done_callback(self._unloads.discard)
            self._log_generation(generation)
            return generation

    async def close(self, grace_s: float = 10.0) -> None:
        """Wait up to ``grace_s`` for rings in flight, then unload every plugin."""
        generation = self._current
        if generation is None:
            return
        generation.retired = True
        if generation.inflight == 0:
            generation.drained.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(generation.drained.wait(), grace_s)
        if self._unloads:
            await asyncio.gather(*self._unloads, return_exceptions=True)
        await self._unload([s.loaded for s in generation.slots.values() if s.loaded.instance])
        self._current = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _build(
        self, config: RingdConfig, previous: Generation | None
    ) -> tuple[Generation, list[LoadedPlugin]]:
        base_dir = config.base_dir
        fresh: list[LoadedPlugin] = []
        slots: list[PluginSlot] = []
        for entry in config.plugins:
            fingerprint = json.dumps(
                [entry_key(entry), entry_fingerprint(entry, base_dir)],
                sort_keys=True,
                default=str,
            )
            old = previous.slots.get(entry.name) if previous else None
            if old is not None and old.loaded.fingerprint == fingerprint and old.loaded.instance:
                loaded = old.loaded
            else:
                loaded = await self._load(entry, fingerprint, config)
                fresh.append(loaded)
            slots.append(PluginSlot(loaded=loaded, enabled=entry.enabled, entry=entry))
        order = {id(slot): index for index, slot in enumerate(slots)}
        rings: dict[PluginHook, tuple[PluginSlot, ...]] = {}
        for hook in PluginHook:
            members = [slot for slot in slots if slot.loaded.hook is hook]
            # This config's priority: a carried-over instance keeps the entry it was built from.
            members.sort(key=lambda slot: (slot.entry.priority, order[id(slot)]))
            rings[hook] = tuple(members)
        self._numbers += 1
        generation = Generation(
            number=self._numbers,
            config=config,
            rings=rings,
            slots={slot.name: slot for slot in slots},
        )
        return generation, fresh

    async def _load(self, entry: PluginEntry, fingerprint: str, config: RingdConfig) -> LoadedPlugin:
        hook = entry.hook or PluginHook.PRE_FLIGHT
        try:
            cls = load_entry_class(entry, config.base_dir)
        except PluginLoadError as exc:
            return self._failed(entry, hook, fingerprint, str(exc), None)
        class_timeout: Any = cls.timeout_ms
        valid_timeout = isinstance(class_timeout, int | float) and not isinstance(class_timeout, bool)
        if entry.timeout_ms is None and not (valid_timeout and class_timeout > 0):
            # Checked before anything reads it, so one bad class fails its own load only.
            error = (
                f"class attribute timeout_ms is {class_timeout!r}, not a positive number; "
                "set 'timeout_ms' in the entry"
            )
            return self._failed(entry, hook, fingerprint, error, None)
        hook = entry.hook or cls.hook
        if not isinstance(hook, PluginHook):
            error = f"class attribute hook is {hook!r}, not a PluginHook; set 'hook' in the entry"
            return self._failed(entry, PluginHook.PRE_FLIGHT, fingerprint, error, cls)
        stage = "construction"
        try:
            instance = cls(dict(entry.config))
            stage = "on_load"
            await asyncio.wait_for(instance.on_load(), LOAD_TIMEOUT_S)
        except TimeoutError:
            return self._failed(entry, hook, fingerprint, f"on_load took over {LOAD_TIMEOUT_S:.0f} s", cls)
        except Exception as exc:  # plugin code raised while constructing or loading: its load error
            _log.debug("plugin %r: %s failed", entry.name, stage, exc_info=True)
            return self._failed(entry, hook, fingerprint, f"{stage} raised {_describe(exc)}", cls)
        return LoadedPlugin(entry, hook, fingerprint, instance, None, cls)

    @staticmethod
    def _failed(
        entry: PluginEntry,
        hook: PluginHook,
        fingerprint: str,
        error: str,
        cls: type[BasePlugin] | None,
    ) -> LoadedPlugin:
        _log.error("plugin %r (%s) failed to load: %s", entry.name, entry.entrypoint, error)
        return LoadedPlugin(entry, hook, fingerprint, None, error, cls)

    async def _unload_when_drained(self, generations: list[Generation], stale: list[LoadedPlugin]) -> None:
        for generation in generations:
            await generation.drained.wait()
        await self._unload(stale)

    async def _unload(self, plugins: Iterable[LoadedPlugin]) -> None:
        for loaded in plugins:
            if loaded.instance is None:
                continue
            try:
                await asyncio.wait_for(loaded.instance.on_unload(), LOAD_TIMEOUT_S)
            except Exception:  # a failing on_unload must not stop the others: logged, then ignored
                _log.exception("plugin %r: on_unload failed", loaded.name)

    def _log_generation(self, generation: Generation) -> None:
        failed = [s.name for s in generation.slots.values() if s.loaded.load_error]
        _log.info(
            "generation %d serving config %s: %d plugins%s",
            generation.number,
            generation.version,
            len(generation.slots),
            f", failed to load: {', '.join(failed)}" if failed else "",
        )

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
        if slot.loaded.breaker.is_open(self._clock()):
            return "circuit_open"
        return "active"

    # ------------------------------------------------------------------ rings

    async def execute_ring(
        self, hook: PluginHook, ctx: PluginContext, *, deadline: float | None = None
    ) -> RingOutcome:
        """Run ``hook``'s enabled plugins on ``ctx``, in priority order.

        Args:
            hook: The ring.
            ctx: The request's context; it is changed in place and returned in the outcome.
            deadline: When the caller stops waiting, in ``time.monotonic()`` seconds;
                every plugin's timeout is cut to the time left before it.
        """
        generation = self.generation
        generation.inflight += 1
        try:
            return await self._run(generation, hook, ctx, deadline)
        finally:
            generation.leave()

    async def execute_rings(
        self,
        hooks: Iterable[PluginHook],
        ctx: PluginContext,
        *,
        deadline: float | None = None,
        on_ring: Callable[[RingOutcome], bool] | None = None,
    ) -> list[RingOutcome]:
        """Run several rings in order on one context and one generation.

        The context flows from each ring into the next (final body and metadata);
        the run stops after the first ring that ends in BLOCK or CACHE_HIT.
        ``on_ring`` is called with each ring's outcome as the ring ends, while the
        shared context still holds that ring's state; returning False stops the run
        after that ring too.
        """
        generation = self.generation
        generation.inflight += 1
        outcomes: list[RingOutcome] = []
        try:
            for hook in hooks:
                ring_outcome = await self._run(generation, hook, ctx, deadline)
                outcomes.append(ring_outcome)
                go_on = on_ring(ring_outcome) if on_ring is not None else True
                if ring_outcome.ended or not go_on:
                    break
            return outcomes
        finally:
            generation.leave()

    async def _run(
        self, generation: Generation, hook: PluginHook, ctx: PluginContext, deadline: float | None
    ) -> RingOutcome:
        ctx.state = self.state
        perf = time.perf_counter
        # The caller's deadline on the perf_counter clock, so one reading per plugin
        # serves both its latency and its time budget.
        deadline_perf = None if deadline is None else deadline - self._clock() + perf()
        results: list[PluginResult] = []
        action = PluginAction.PASSTHROUGH
        decision: PluginResponse | None = None
        decided_by: str | None = None
        for slot in generation.rings[hook]:
            loaded = slot.loaded
            if not slot.enabled:
                results.append(PluginResult(loaded.name, loaded.version, Outcome.SKIPPED))
                continue
            instance = loaded.instance
            breaker = loaded.breaker
            if instance is None or (breaker.opened_at is not None and not breaker.allows(self._clock())):
                result, decision = self._unavailable(loaded)
                results.append(result)
                if decision is not None:
                    decided_by, action = loaded.name, PluginAction.BLOCK
                    break
                continue
            started = perf()
            budget = loaded.timeout_s
            cut_by_deadline = deadline_perf is not None and deadline_perf - started < budget
            if cut_by_deadline:
                budget = deadline_perf - started  # type: ignore[operator]
            failure: Outcome | None = None
            error = ""
            response: Any = None
            if budget <= 0:
                failure, error = Outcome.TIMEOUT, "no time left before the caller's deadline"
            else:
                try:
                    if loaded.run_in_thread:
                        response = await self._call_in_thread(instance, ctx, budget)
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
                    failure, error = Outcome.TIMEOUT, f"timed out after {budget * 1000:.0f} ms"
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the caller went away: stop the ring
                    failure, error = Outcome.ERROR, "CancelledError raised by the plugin"
                except BaseException as exc:  # any plugin failure becomes its typed outcome below
                    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                        _log.error(
                            "plugin %r raised %s; treated as its error", loaded.name, type(exc).__name__
                        )
                    failure, error = Outcome.ERROR, _describe(exc)
            latency_ms = (perf() - started) * 1000.0
            metrics = loaded.metrics
            if budget > 0:
                metrics.observe(latency_ms)
            if failure is None and not isinstance(response, PluginResponse):
                failure = Outcome.ERROR
                error = f"returned {type(response).__name__}, expected PluginResponse"
            if failure is not None:
                result, decision = self._failed_call(
                    loaded, failure, error, latency_ms, started, cut_by_deadline, called=budget > 0
                )
                results.append(result)
                if decision is not None:
                    decided_by, action = loaded.name, PluginAction.BLOCK
                    break
                continue
            if breaker.failures:
                breaker.record_success()
            kind = response.action
            results.append(
                PluginResult(
                    loaded.name,
                    loaded.version,
                    Outcome.OK,
                    kind,
                    latency_ms,
                    None,
                    response.message,
                    started,
                )
            )
            if kind is PluginAction.MODIFY:
                ctx.body = response.body
                action = PluginAction.MODIFY
            elif kind is not PluginAction.PASSTHROUGH:
                if kind is PluginAction.BLOCK:
                    metrics.blocks += 1
                decision, decided_by, action = response, loaded.name, kind
                break
            if ctx.stop_chain:
                metrics.blocks += 1
                name = loaded.name
                decision = PluginResponse.block(403, "stop_chain", ctx.error or f"stopped by plugin {name!r}")
                decided_by, action = name, PluginAction.BLOCK
                break
        return RingOutcome(
            hook=hook,
            action=action,
            context=ctx,
            results=results,
            config_version=generation.version,
            generation=generation.number,
            decision=decision,
            decided_by=decided_by,
        )

    async def _call_in_thread(self, instance: BasePlugin, ctx: PluginContext, budget_s: float) -> Any:
        """Run a ``run_in_thread`` plugin on a worker thread's own loop, within ``budget_s``.

        The plugin works on a copy of the context, copied back when it answers in
        time, so a plugin still running after its timeout cannot change the ring.
        """
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._plugin_threads, thread_name_prefix="ringd-plugin")
        extra = {key: _LoopBridge(value, loop) for key, value in self.state.extra.items()}
        state = PluginState(
            config=self.state.config, cache=self.state.cache, metrics=self.state.metrics, extra=extra
        )
        private = PluginContext(
            body=copy.deepcopy(ctx.body),
            metadata=copy.deepcopy(ctx.metadata),
            session_id=ctx.session_id,
            state=state,
            response=copy.deepcopy(ctx.response),
            request=copy.deepcopy(ctx.request),
            request_id=ctx.request_id,
            error=ctx.error,
            stop_chain=ctx.stop_chain,
        )
        call = loop.run_in_executor(self._executor, _execute_on_thread_loop, instance, private)
        response = await _within(budget_s, call)
        ctx.body, ctx.metadata, ctx.response = private.body, private.metadata, private.response
        ctx.error, ctx.stop_chain = private.error, private.stop_chain
        return response

    def _unavailable(self, loaded: LoadedPlugin) -> tuple[PluginResult, PluginResponse | None]:
        """A plugin that failed to load or whose circuit is open: 503 if fail-closed, else bypassed.

        A refused call does not feed the breaker: counting it would push the cooldown
        back on every request, so the circuit would never close under steady traffic.
        """
        if loaded.instance is None:
            error = f"failed to load: {loaded.load_error}"
        else:
            retry = loaded.breaker.retry_in(self._clock())
            error = (
                f"circuit open after {loaded.breaker.failures} consecutive failures; retry in {retry:.1f} s"
            )
        name = loaded.name
        if loaded.fail_closed:
            status, error_type, phrase = _UNAVAILABLE
            block = PluginResponse.block(status, error_type, f"plugin {name!r} {phrase}")
            return PluginResult(name, loaded.version, Outcome.ERROR, None, 0.0, error), block
        loaded.metrics.bypasses += 1
        return PluginResult(name, loaded.version, Outcome.BYPASSED, None, 0.0, error), None

    def _failed_call(
        self,
        loaded: LoadedPlugin,
        failure: Outcome,
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
            if failure is Outcome.TIMEOUT:
                metrics.timeouts += 1
        # Running out of the caller's deadline is not the plugin's failure: it does
        # not feed the breaker.
        if not (failure is Outcome.TIMEOUT and cut_by_deadline):
            loaded.breaker.record_failure(self._clock())
        name = loaded.name
        if loaded.fail_closed:
            status, error_type, phrase = _FAILURE_BLOCK[failure]
            block = PluginResponse.block(status, error_type, f"plugin {name!r} {phrase}")
            return PluginResult(name, loaded.version, failure, None, latency_ms, error, None, started), block
        metrics.bypasses += 1
        result = PluginResult(name, loaded.version, Outcome.BYPASSED, None, latency_ms, error, None, started)
        return result, None


def entry_key(entry: PluginEntry) -> dict[str, Any]:
    """The parts of an entry that make a plugin instance: a change means a new instance."""
    return {
        "entrypoint": entry.entrypoint,
        "hook": entry.hook.value if entry.hook else None,
        "config": entry.config,
        "timeout_ms": entry.timeout_ms,
        "fail_policy": entry.fail_policy.value if entry.fail_policy else None,
        "breaker": [entry.circuit_breaker.failure_threshold, entry.circuit_breaker.cooldown_s],
        "run_in_thread": entry.run_in_thread,
    }
