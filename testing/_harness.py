"""A whole ring from a config snippet, run by ringd's real engine.

This is the one module of ``ringd.testing`` that touches the engine, and only through
its public surface: ``Engine(state)``, ``start``, ``execute_ring``, ``execute_rings``,
``close``, and ``parse_config`` for the snippet.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from ringd.sdk import PluginHook, PluginState
from ringd.server.config import parse_config
from ringd.server.engine import Engine, RingOutcome
from ringd.server.store import SqliteStore
from ringd.testing._plugin import MEMORY, make_context

ConfigSnippet = str | Mapping[str, Any] | Sequence[Mapping[str, Any]]

__all__ = ["RingHarness", "RingOutcome", "run_ring"]


def _config_text(config: ConfigSnippet) -> str:
    """The snippet as the text of a config file (a list is the ``plugins`` list)."""
    if isinstance(config, str):
        return config
    if isinstance(config, Mapping):
        return yaml.safe_dump(dict(config), sort_keys=False)
    if isinstance(config, Sequence):
        entries: list[dict[str, Any]] = []
        for index, entry in enumerate(config):
            if not isinstance(entry, Mapping):
                raise TypeError(f"plugin entry {index} must be a mapping, got {type(entry).__name__}")
            entries.append(dict(entry))
        return yaml.safe_dump({"plugins": entries}, sort_keys=False)
    raise TypeError(
        f"config must be YAML text, a mapping or a list of plugin entries, got {type(config).__name__}"
    )


def _hook(ring: str | PluginHook) -> PluginHook:
    if isinstance(ring, PluginHook):
        return ring
    try:
        return PluginHook(str(ring).lower())
    except ValueError:
        names = ", ".join(hook.value for hook in PluginHook)
        raise ValueError(f"unknown ring {ring!r}: expected one of {names}") from None


class RingHarness:
    """ringd's engine on a config snippet, with its own store; use ``async with``.

    Args:
        config: YAML text of a config file, the same as a mapping, or just the list of
            plugin entries. Entry fields are ``ringd.yaml``'s (``name``, ``entrypoint``,
            ``hook``, ``priority``, ``timeout_ms``, ``fail_policy``, ``config``, ...);
            ``server`` settings and ``store`` are ignored: the harness has its own store.
        base_dir: What relative ``entrypoint`` files are resolved against (default:
            the current directory).
        store: ``":memory:"`` (default) or a SQLite file path; ``ctx.state.extra["store"]``
            of every plugin, kept across :meth:`run` calls.

    The engine loads the plugins as ``ringd serve`` does (``on_load``; a plugin that
    fails to load is kept as failed, a 503 block under fail_policy closed) and
    unloads them on exit. Config errors raise ``ringd.server.config.ConfigError``
    naming the entry and field.
    """

    def __init__(
        self, config: ConfigSnippet, *, base_dir: str | Path | None = None, store: str | Path = MEMORY
    ) -> None:
        folder = Path(base_dir) if base_dir is not None else Path.cwd()
        self.config = parse_config(
            _config_text(config), path=folder.resolve() / "ringd.yaml", source="<ringd.testing config>"
        )
        self._store_path = store
        self._store: SqliteStore | None = None
        self._engine: Engine | None = None
        self.state = PluginState()
        """The state shared by every plugin; ``state.extra["store"]`` is the store."""

    async def start(self) -> RingHarness:
        """Open the store and load the plugins (``async with`` does it for you)."""
        self._store = await SqliteStore.open(self._store_path)
        self.state.extra["store"] = self._store
        self.state.config.update({"config_version": self.config.version})
        self._engine = Engine(self.state)
        await self._engine.start(self.config)
        return self

    async def close(self) -> None:
        """Unload the plugins and close the store."""
        if self._engine is not None:
            await self._engine.close(5.0)
            self._engine = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> RingHarness:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> SqliteStore:
        """The plugins' store, to seed or inspect state."""
        if self._store is None:
            raise RuntimeError("the harness is not started: use `async with RingHarness(...)`")
        return self._store

    def _running(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the harness is not started: use `async with RingHarness(...)`")
        return self._engine

    async def run(
        self,
        ring: str | PluginHook,
        body: Mapping[str, Any] | None = None,
        *,
        deadline_s: float | None = None,
        **context: Any,
    ) -> RingOutcome:
        """Run one ring on a new context and return its outcome.

        Args:
            ring: ``"ingress"``, ``"pre_flight"``, ``"routing"``, ``"post_flight"``,
                ``"background"`` or a :class:`PluginHook`.
            body: The request body.
            deadline_s: The caller's deadline, in seconds from now; every plugin's
                timeout is cut to the time left, as with a gRPC deadline.
            **context: :func:`ringd.testing.make_context`'s keywords: ``metadata``,
                ``headers``, ``response``, ``request_id``, ...

        Returns:
            The engine's outcome: ``action``, ``decision`` (the deciding plugin's
            PluginResponse: ``status_code``, ``error_type``, ``message``, ``headers``),
            ``decided_by``, ``results`` (one per plugin reached: ``plugin``,
            ``outcome``, ``action``, ``error``) and ``context`` (final body, metadata,
            response). A BACKGROUND ring runs here in the foreground.
        """
        engine = self._running()
        ctx = make_context(body, state=self.state, **context)
        return await engine.execute_ring(_hook(ring), ctx, deadline=_deadline(deadline_s))

    async def run_rings(
        self,
        rings: Sequence[str | PluginHook],
        body: Mapping[str, Any] | None = None,
        *,
        deadline_s: float | None = None,
        **context: Any,
    ) -> list[RingOutcome]:
        """Run several rings on one context, as ``ExecuteRings`` does: body and metadata
        flow from ring to ring, and the run stops at the first BLOCK or CACHE_HIT."""
        engine = self._running()
        ctx = make_context(body, state=self.state, **context)
        hooks = [_hook(ring) for ring in rings]
        async with contextlib.aclosing(engine.run_rings(hooks, ctx, deadline=_deadline(deadline_s))) as run:
            return [ring_outcome async for ring_outcome in run]


def _deadline(deadline_s: float | None) -> float | None:
    # The engine's deadlines are time.monotonic() instants (its default clock).
    return None if deadline_s is None else time.monotonic() + deadline_s


async def run_ring(
    config: ConfigSnippet,
    ring: str | PluginHook,
    body: Mapping[str, Any] | None = None,
    *,
    base_dir: str | Path | None = None,
    **context: Any,
) -> RingOutcome:
    """One ring on a fresh :class:`RingHarness` (loaded, run once, closed)."""
    async with RingHarness(config, base_dir=base_dir) as harness:
        return await harness.run(ring, body, **context)
