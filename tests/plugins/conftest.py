"""Fixtures for the built-in plugin tests: context builders on the real ``store`` of tests/support."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ringd.sdk import PluginContext, PluginState, RequestInfo
from ringd.server.store import SqliteStore

ContextFactory = Callable[..., PluginContext]


@pytest.fixture
def state(store: SqliteStore) -> PluginState:
    """Shared state with the store injected, as the engine provides it."""
    return PluginState(extra={"store": store})


@pytest.fixture
def make_ctx(state: PluginState) -> ContextFactory:
    """Build a PluginContext wired to the store; keywords are the context's fields."""

    def build(
        body: dict[str, Any] | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        response: dict[str, Any] | None = None,
        **fields: Any,
    ) -> PluginContext:
        return PluginContext(
            body=body if body is not None else {},
            metadata=metadata if metadata is not None else {},
            state=state,
            response=response,
            request=RequestInfo(
                method="POST",
                path="/v1/chat/completions",
                headers=headers or {},
                client_address="203.0.113.9",
            ),
            **fields,
        )

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
