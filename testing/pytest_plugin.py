"""pytest fixtures of ringd.testing; enable with ``pytest_plugins = ["ringd.testing.pytest_plugin"]``.

Needs pytest-asyncio (the fixtures are async). Fixtures:

- ``plugin_state``: a :class:`~ringd.sdk.PluginState` on a fresh in-memory store.
- ``make_ctx``: :func:`ringd.testing.make_context` bound to ``plugin_state``.
- ``ring_harness``: ``await ring_harness(config, base_dir=...)`` gives a started
  :class:`ringd.testing.RingHarness`, closed when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from ringd.sdk import PluginContext, PluginState
from ringd.testing._harness import ConfigSnippet, RingHarness
from ringd.testing._plugin import make_context
from ringd.testing._plugin import plugin_state as open_plugin_state


@pytest_asyncio.fixture
async def plugin_state() -> AsyncIterator[PluginState]:
    """Shared state with a fresh in-memory store, closed after the test."""
    async with open_plugin_state() as state:
        yield state


@pytest_asyncio.fixture
async def make_ctx(plugin_state: PluginState) -> Callable[..., PluginContext]:
    """``make_ctx(body, metadata=..., headers=..., ...)``: a context on ``plugin_state``."""

    def build(body: Any = None, **fields: Any) -> PluginContext:
        return make_context(body, state=plugin_state, **fields)

    return build


@pytest_asyncio.fixture
async def ring_harness() -> AsyncIterator[Callable[..., Awaitable[RingHarness]]]:
    """A factory of started harnesses; every one is closed when the test ends."""
    started: list[RingHarness] = []

    async def start(config: ConfigSnippet, **options: Any) -> RingHarness:
        harness = await RingHarness(config, **options).start()
        started.append(harness)
        return harness

    yield start
    for harness in reversed(started):
        await harness.close()
