"""Shared fixtures: a real SQLite store, plugin files and config files under tmp_path, engines."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from ringd.sdk import PluginState
from ringd.server.config import RingdConfig, load_config
from ringd.server.engine import Engine
from ringd.server.store import SqliteStore

pytest_plugins = ["tests.support.process"]


class Workspace:
    """A folder holding plugin files and a config file, as an operator would lay them out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The loader caches file modules by content: a per-test token keeps one test's
        # plugin modules (and any class attributes) apart from another's.
        self._token = uuid.uuid4().hex

    def plugin(self, filename: str, source: str) -> Path:
        """Write a plugin file (dedented) and return its path."""
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{textwrap.dedent(source).strip()}\n# test token {self._token}\n")
        return path

    def write_config(self, text: str, filename: str = "ringd.yaml") -> Path:
        """Write a config file (dedented) and return its path."""
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def config(self, text: str, filename: str = "ringd.yaml") -> RingdConfig:
        """Write a config file and load it the way the server does."""
        return load_config(self.write_config(text, filename))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "store" / "ringd.db")
    yield opened
    await opened.close()


EngineFactory = Callable[[RingdConfig], Awaitable[Engine]]


@pytest.fixture
async def make_engine(store: SqliteStore) -> AsyncIterator[EngineFactory]:
    """Start engines on the test's store; every engine is closed at teardown."""
    engines: list[Engine] = []

    async def make(config: RingdConfig) -> Engine:
        engine = Engine(PluginState(extra={"store": store}))
        engines.append(engine)
        await engine.start(config)
        return engine

    yield make
    for engine in engines:
        await engine.close(grace_s=5.0)
