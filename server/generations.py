"""Generations of loaded plugins, and the reload that swaps them.

A :class:`Generation` is one config's plugins, ordered per ring. :class:`Generations`
builds the first one, builds each next one aside on reload (import, construct,
``on_load``) and swaps it in atomically; a ring in flight finishes on the
generation it started on, and a plugin no longer used is unloaded once every
generation holding it has drained. An unchanged plugin (same entry and code) is
carried over as it is, so its instance, metrics and breaker survive the reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ringd.sdk import BasePlugin, PluginHook, PluginMetrics
from ringd.server.breaker import CircuitBreaker
from ringd.server.config import DEFAULT_FAIL_POLICY, FailPolicy, PluginEntry, RingdConfig, StreamMode
from ringd.server.exceptions import PluginLoadError, ReloadError, describe
from ringd.server.loader import entry_fingerprint, load_entry_class

_log = logging.getLogger("ringd.engine")

LOAD_TIMEOUT_S = 30.0
"""How long one plugin's ``on_load`` (or ``on_unload``) may take."""


class LoadedPlugin:
    """A plugin instance with what outlives a generation: metrics, breaker, load error."""

    __slots__ = (
        "breaker",
        "entry",
        "fail_closed",
        "fingerprint",
        "instance",
        "load_error",
        "metrics",
        "name",
        "ring",
        "run_in_thread",
        "timeout_s",
        "version",
    )

    def __init__(
        self,
        *,
        entry: PluginEntry,
        ring: PluginHook,
        fingerprint: str,
        instance: BasePlugin | None,
        load_error: str | None,
        cls: type[BasePlugin] | None,
    ) -> None:
        self.entry = entry
        self.name = entry.name
        self.run_in_thread = entry.run_in_thread
        self.ring = ring
        self.fingerprint = fingerprint
        self.instance = instance
        self.load_error = load_error
        self.metrics = PluginMetrics()
        if instance is not None:
            # Live stats: the plugin reads the metrics the engine writes.
            instance._metrics = self.metrics
        self.breaker = CircuitBreaker(entry.circuit_breaker, self.metrics)
        timeout_ms = entry.timeout_ms or (cls.timeout_ms if cls is not None else 10)
        self.timeout_s = timeout_ms / 1000.0
        self.version = str(cls.version) if cls is not None else ""
        policy = entry.fail_policy or DEFAULT_FAIL_POLICY[ring]
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

    def enter(self) -> Generation:
        """One ring (or run of rings) starts on this generation."""
        self.inflight += 1
        return self

    def leave(self) -> None:
        """One ring (or run of rings) on this generation has finished."""
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self.drained.set()

    def retire(self) -> None:
        """No new rings start here; ``drained`` is set once those in flight finish."""
        self.retired = True
        if self.inflight == 0:
            self.drained.set()


def entry_key(entry: PluginEntry) -> dict[str, Any]:
    """The parts of an entry that make a plugin instance: a change means a new instance."""
    return {
        "entrypoint": entry.entrypoint,
        "hook": entry.hook.value if entry.hook else None,
        "config": entry.config,
        "timeout_ms": entry.timeout_ms,
        "fail_policy": entry.fail_policy.value if entry.fail_policy else None,
        "breaker": dataclasses.astuple(entry.circuit_breaker),
        "run_in_thread": entry.run_in_thread,
    }


class Generations:
    """The serving generation, the reload that replaces it, and the unloading of old plugins."""

    def __init__(self) -> None:
        self.current: Generation | None = None
        self._numbers = 0
        self._reload_lock = asyncio.Lock()
        self._unloads: set[asyncio.Task[None]] = set()
        self._draining: list[Generation] = []  # retired generations with rings in flight

    async def start(self, config: RingdConfig) -> Generation:
        """Load the first generation. A plugin that fails to load is kept as failed
        (503 under fail_policy closed) and never stops the others from loading."""
        async with self._reload_lock:
            generation, _ = await self._build(config, previous=None)
            self.current = generation
            _log_generation(generation)
            return generation

    async def reload(self, config: RingdConfig) -> Generation:
        """Build ``config``'s generation aside and swap it in atomically.

        Raises:
            ReloadError: a plugin failed to load; the current generation keeps serving.
        """
        async with self._reload_lock:
            previous = self.current
            if previous is None:
                raise RuntimeError("engine not started: await Engine.start(config) first")
            generation, fresh = await self._build(config, previous=previous)
            errors = {
                slot.name: slot.loaded.load_error or ""
                for slot in generation.slots.values()
                if slot.loaded.load_error is not None
            }
            if errors:
                await _unload([loaded for loaded in fresh if loaded.instance is not None])
                raise ReloadError(errors)
            self.current = generation
            previous.retire()
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
            task = asyncio.create_task(_unload_when_drained(holders, stale))
            self._unloads.add(task)
            task.add_done_callback(self._unloads.discard)
            _log_generation(generation)
            return generation

    async def close(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for rings in flight, then unload every plugin."""
        generation = self.current
        if generation is None:
            return
        generation.retire()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(generation.drained.wait(), grace_s)
        if self._unloads:
            await asyncio.gather(*self._unloads, return_exceptions=True)
        await _unload([s.loaded for s in generation.slots.values() if s.loaded.instance])
        self.current = None

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
                loaded = await _load(entry, fingerprint, config)
                fresh.append(loaded)
            slots.append(PluginSlot(loaded=loaded, enabled=entry.enabled, entry=entry))
        order = {id(slot): index for index, slot in enumerate(slots)}
        rings: dict[PluginHook, tuple[PluginSlot, ...]] = {}
        for ring in PluginHook:
            members = [slot for slot in slots if slot.loaded.ring is ring]
            # This config's priority: a carried-over instance keeps the entry it was built from.
            members.sort(key=lambda slot: (slot.entry.priority, order[id(slot)]))
            rings[ring] = tuple(members)
        self._numbers += 1
        generation = Generation(
            number=self._numbers,
            config=config,
            rings=rings,
            slots={slot.name: slot for slot in slots},
        )
        return generation, fresh


async def _load(entry: PluginEntry, fingerprint: str, config: RingdConfig) -> LoadedPlugin:
    ring = entry.hook or PluginHook.PRE_FLIGHT
    try:
        cls = load_entry_class(entry, config.base_dir)
    except PluginLoadError as exc:
        return _failed(entry, ring, fingerprint, str(exc), None)
    class_timeout: Any = cls.timeout_ms
    valid_timeout = isinstance(class_timeout, int | float) and not isinstance(class_timeout, bool)
    if entry.timeout_ms is None and not (valid_timeout and class_timeout > 0):
        # Checked before anything reads it, so one bad class fails its own load only.
        error = (
            f"class attribute timeout_ms is {class_timeout!r}, not a positive number; "
            "set 'timeout_ms' in the entry"
        )
        return _failed(entry, ring, fingerprint, error, None)
    ring = entry.hook or cls.hook
    if not isinstance(ring, PluginHook):
        error = f"class attribute hook is {ring!r}, not a PluginHook; set 'hook' in the entry"
        return _failed(entry, PluginHook.PRE_FLIGHT, fingerprint, error, cls)
    if entry.stream_mode is not StreamMode.AFTER and ring is not PluginHook.POST_FLIGHT:
        # The config checks an entry that names its hook; this is the class-hooked case.
        error = f"field 'stream_mode' applies to post_flight plugins only; its ring is {ring.value!r}"
        return _failed(entry, ring, fingerprint, error, cls)
    stage = "construction"
    try:
        instance = cls(dict(entry.config))
        stage = "on_load"
        await asyncio.wait_for(instance.on_load(), LOAD_TIMEOUT_S)
    except TimeoutError:
        return _failed(entry, ring, fingerprint, f"on_load took over {LOAD_TIMEOUT_S:.0f} s", cls)
    except Exception as exc:  # plugin code raised while constructing or loading: its load error
        _log.debug("plugin %r: %s failed", entry.name, stage, exc_info=True)
        return _failed(entry, ring, fingerprint, f"{stage} raised {describe(exc)}", cls)
    return LoadedPlugin(
        entry=entry, ring=ring, fingerprint=fingerprint, instance=instance, load_error=None, cls=cls
    )


def _failed(
    entry: PluginEntry,
    ring: PluginHook,
    fingerprint: str,
    error: str,
    cls: type[BasePlugin] | None,
) -> LoadedPlugin:
    _log.error("plugin %r (%s) failed to load: %s", entry.name, entry.entrypoint, error)
    return LoadedPlugin(
        entry=entry, ring=ring, fingerprint=fingerprint, instance=None, load_error=error, cls=cls
    )


async def _unload_when_drained(generations: list[Generation], stale: list[LoadedPlugin]) -> None:
    for generation in generations:
        await generation.drained.wait()
    await _unload(stale)


async def _unload(plugins: Iterable[LoadedPlugin]) -> None:
    for loaded in plugins:
        if loaded.instance is None:
            continue
        try:
            await asyncio.wait_for(loaded.instance.on_unload(), LOAD_TIMEOUT_S)
        except Exception:  # a failing on_unload must not stop the others: logged, then ignored
            _log.exception("plugin %r: on_unload failed", loaded.name)


def _log_generation(generation: Generation) -> None:
    failed = [s.name for s in generation.slots.values() if s.loaded.load_error]
    _log.info(
        "generation %d serving config %s: %d plugins%s",
        generation.number,
        generation.version,
        len(generation.slots),
        f", failed to load: {', '.join(failed)}" if failed else "",
    )
