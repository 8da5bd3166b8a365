"""A real ringd gRPC server per test: plugin files, a YAML config and the store under tmp_path.

``serve(plugins, server={...})`` writes the config, starts the server with
:func:`ringd.server.app.build_server` on ``127.0.0.1:0`` and a unix socket, and
stops it at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ringd.server.app import build_server
from ringd.server.config import load_config
from rpc_helpers import Running, Workspace

Serve = Callable[..., Awaitable[Running]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the environment would override the test's config."""
    for name in ("RINGD_ADMIN_TOKEN", "RINGD_STORE", "RINGD_TARGET", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
async def serve(workspace: Workspace) -> AsyncIterator[Serve]:
    """Start a server from a config written under tmp_path; stopped at teardown."""
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
