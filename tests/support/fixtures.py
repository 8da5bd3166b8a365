"""The suite's fixtures, one of each: ``workspace``, ``store``, ``make_engine``, ``serve``.

Registered for every test by ``pytest_plugins`` in ``tests/conftest.py``. A folder
changes a fixture's input, never the fixture: ``tests/store`` runs ``store`` on
both backends by overriding ``store_backend`` alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ringd.sdk import PluginState
from ringd.server.app import build_server
from ringd.server.config import RingdConfig, load_config
from ringd.server.engine import Engine
from ringd.server.store import SqliteStore
from ringd.server.store_redis import RedisStore

from support.rpc import Running
from support.workspace import Workspace

Opened = SqliteStore | RedisStore
EngineFactory = Callable[[RingdConfig], Awaitable[Engine]]
Serve = Callable[..., Awaitable[Running]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Settings from the environment would override the test's config.

    The default admin sockets (no admin token) go to a folder of the test's own, which
    subprocesses (``ringd serve``, the CLI) inherit through ``RINGD_RUNTIME_DIR``.
    """
    for name in ("RINGD_ADMIN_TOKEN", "RINGD_STORE", "RINGD_TARGET", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RINGD_RUNTIME_DIR", str(tmp_path_factory.mktemp("run", numbered=True)))


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """The test's folder: plugin files, config files, the server's store."""
    return Workspace(tmp_path)


class Backend:
    """Opens the store of one backend, again and again on the same data."""

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target
        self.opened: list[Opened] = []

    async def open(self) -> Opened:
        store: Opened
        if self.name == "redis":
            # The contract is about semantics, not failure timing: the default 0.5 s connect
            # timeout is for a live gateway, and a busy test machine opening 64 connections
            # at once can take longer (test_1000_concurrent_incr failed so under load).
            store = await RedisStore.open(self.target, connect_timeout_s=10.0, command_timeout_s=10.0)
        else:
            store = await SqliteStore.open(self.target)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


@pytest.fixture
def store_backend() -> str:
    """The backend of ``store``: ``sqlite`` here; ``tests/store`` runs both."""
    return "sqlite"


@pytest.fixture
async def backend(
    store_backend: str, request: pytest.FixtureRequest, workspace: Workspace
) -> AsyncIterator[Backend]:
    """The test's store backend: a SQLite file in the workspace, or the shared Redis."""
    if store_backend == "redis":
        opened = Backend("redis", request.getfixturevalue("redis_url"))
    else:
        opened = Backend("sqlite", str(workspace.store_path))
    yield opened
    await opened.close_all()


@pytest.fixture
async def store(backend: Backend) -> Opened:
    """A real store (SQLite by default), closed after the test."""
    return await backend.open()


@pytest.fixture
async def make_engine(store: Opened) -> AsyncIterator[EngineFactory]:
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


@pytest.fixture
async def serve(workspace: Workspace) -> AsyncIterator[Serve]:
    """Start an in-process server (``build_server``) from a config written in the workspace.

    ``serve(plugins, server={...})`` listens on ``127.0.0.1:0`` and a unix socket;
    every server is stopped at teardown.
    """
    started: list[Running] = []

    async def start(
        plugins: Sequence[dict[str, Any]] = (),
        *,
        server: dict[str, Any] | None = None,
        version: str = "v1",
        unix: bool = True,
        tracer_provider: Any = None,
    ) -> Running:
        path = workspace.write_config(plugins, server=server, version=version)
        listen = ["127.0.0.1:0"]
        if unix:
            listen.append(f"unix:{workspace.root / 'ringd.sock'}")
        ringd = await build_server(
            load_config(path),
            config_loader=lambda: load_config(path),
            listen=listen,
            tracer_provider=tracer_provider,
        )
        running = Running(ringd, workspace)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close_channels()
        await running.server.stop(grace_s=2.0)
