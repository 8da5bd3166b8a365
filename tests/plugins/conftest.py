"""Fixtures for the built-in plugin tests: ringd.testing's store and contexts, chat builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ringd.sdk import PluginContext, PluginState, Store
from ringd.testing import make_context, plugin_state

ContextFactory = Callable[..., PluginContext]


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[PluginState]:
    """Shared state on a real SQLite file store (``ringd.testing.plugin_state``), as the engine gives it."""
    async with plugin_state(tmp_path / "plugins-store" / "ringd.db") as opened:
        yield opened


@pytest.fixture
def store(state: PluginState) -> Store:
    """The store injected into every context, to seed or inspect state."""
    store: Store = state.extra["store"]
    return store


@pytest.fixture
def make_ctx(state: PluginState) -> ContextFactory:
    """``ringd.testing.make_context`` wired to the store; keywords are its keywords."""

    def build(body: dict[str, Any] | None = None, **fields: Any) -> PluginContext:
        return make_context(body, state=state, client_address="203.0.113.9", **fields)

    return build


def build_chat(*messages: tuple[str, Any], **params: Any) -> dict[str, Any]:
    """A chat completion request body: ``chat(("user", "hi"), model="m")``."""
    body: dict[str, Any] = {"model": params.pop("model", "gpt-4o-mini")}
    body["messages"] = [{"role": role, "content": content} for role, content in messages]
    body.update(params)
    return body


def build_completion(*contents: Any, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    """An upstream chat completion answer with one choice per content."""
    response: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
            for index, content in enumerate(contents)
        ],
    }
    response.update(extra)
    return response


@pytest.fixture
def chat() -> Callable[..., dict[str, Any]]:
    """``chat(("system", "..."), ("user", "..."), model=..., **params)``: a request body."""
    return build_chat


@pytest.fixture
def completion() -> Callable[..., dict[str, Any]]:
    """``completion("answer", ..., model=..., usage=...)``: an upstream answer."""
    return build_completion


# --------------------------------------------------------------------------- a real server


def default_config_document() -> dict[str, Any]:
    """The built-in default config as a YAML document a test may change before serving it."""
    from importlib import resources

    import yaml

    text = resources.files("ringd.server").joinpath("default_config.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def plugin_entry(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The plugin entry called ``name`` in a config document."""
    entry: dict[str, Any] = next(e for e in document["plugins"] if e["name"] == name)
    return entry


ServeDefault = Callable[..., Any]


@pytest.fixture
async def serve_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServeDefault]:
    """``await serve_default(document=None)``: a real server on 127.0.0.1:0 with the default pipeline.

    The config (the built-in default unless ``document`` is given) is written to
    ``tmp_path/ringd.yaml``, so its store (``ringd.db``) and audit file
    (``ringd-audit.jsonl``) land in ``tmp_path``. Returns the server; its address is
    ``server.addresses[0]``. Stopped at teardown.
    """
    import yaml
    from ringd.server.app import build_server
    from ringd.server.config import load_config

    for name in ("RINGD_ADMIN_TOKEN", "RINGD_STORE", "RINGD_TARGET", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    started: list[Any] = []

    async def start(document: dict[str, Any] | None = None) -> Any:
        path = tmp_path / "ringd.yaml"
        path.write_text(yaml.safe_dump(document or default_config_document(), sort_keys=False))
        server = await build_server(load_config(path), listen=["127.0.0.1:0"])
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(2.0)


@pytest.fixture
def default_document() -> dict[str, Any]:
    """A fresh copy of the built-in default config as a YAML document, to change and serve."""
    return default_config_document()


# --------------------------------------------------------------------------- scan backends


@pytest.fixture(scope="module", params=["native", "python"])
def scan_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The tests that use it run once with the native scanner and once with the Python one.

    (Module-scoped: Hypothesis tests may use it.) The native run is skipped where the
    extension is not built, which tests/plugins/test_detect_native.py refuses unless
    ``RINGD_PURE_PYTHON_SCAN=1`` says so.
    """
    from ringd.plugins import _detect

    saved = _detect.NATIVE
    if request.param == "native" and saved is None:
        pytest.skip("the native scan is not in use (RINGD_PURE_PYTHON_SCAN=1 or not built)")
    if request.param == "python":
        _detect.NATIVE = None
    try:
        yield request.param
    finally:
        _detect.NATIVE = saved
