"""Fixtures for the built-in plugin tests: ringd.testing's store and contexts, chat builders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
