"""One plugin at a time: a context wired to a store, and a checked ``execute`` call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ringd.sdk import BasePlugin, PluginContext, PluginResponse, PluginState, RequestInfo
from ringd.server.store import SqliteStore

MEMORY = ":memory:"


@contextlib.asynccontextmanager
async def plugin_state(store: str | Path = MEMORY) -> AsyncIterator[PluginState]:
    """A :class:`PluginState` whose ``extra["store"]`` is a real SQLite store, closed on exit.

    Args:
        store: ``":memory:"`` (the default: gone when the block ends) or a file path
            (created if needed), for a test that looks at the file afterwards.
    """
    opened = await SqliteStore.open(store)
    try:
        yield PluginState(extra={"store": opened})
    finally:
        await opened.close()


def make_context(
    body: Mapping[str, Any] | None = None,
    *,
    state: PluginState | None = None,
    metadata: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    response: Mapping[str, Any] | None = None,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    client_address: str = "127.0.0.1",
    request_id: str = "test-request",
    session_id: str = "",
) -> PluginContext:
    """A context as the engine hands it to a plugin.

    ``body``, ``metadata`` and ``response`` dicts are used as given, so a plugin's
    in-place edits show in them (other mappings are copied into dicts); header names
    are lower-cased, as ringd sends them.
    Without ``state`` the context has no store; pass one from :func:`plugin_state`
    for a plugin that uses ``ctx.state.extra["store"]``.
    """
    return PluginContext(
        body=_as_dict(body) if body is not None else {},
        metadata=_as_dict(metadata) if metadata is not None else {},
        state=state if state is not None else PluginState(),
        response=_as_dict(response) if response is not None else None,
        request=RequestInfo(
            method=method,
            path=path,
            headers={name.lower(): value for name, value in (headers or {}).items()},
            client_address=client_address,
        ),
        request_id=request_id,
        session_id=session_id,
    )


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(value)


async def run_plugin(
    plugin: BasePlugin, ctx: PluginContext | None = None, *, timeout_ms: float | None = None
) -> PluginResponse:
    """Call ``plugin.execute(ctx)`` and return its response.

    Unlike a ring, nothing is caught: an exception from the plugin reaches the test
    as it is. ``timeout_ms`` (default: none, so a slow test machine cannot fail the
    test) raises :class:`TimeoutError` naming the plugin when the call takes longer.

    Raises:
        TypeError: ``execute`` returned something that is not a PluginResponse (the
            engine would count that as the plugin's error).
    """
    context = ctx if ctx is not None else make_context()
    name = getattr(plugin, "name", type(plugin).__name__)
    response: Any
    if timeout_ms is None:
        response = await plugin.execute(context)
    else:
        try:
            response = await asyncio.wait_for(plugin.execute(context), timeout_ms / 1000.0)
        except TimeoutError:
            raise TimeoutError(f"plugin {name!r} took longer than {timeout_ms:g} ms") from None
    if not isinstance(response, PluginResponse):
        raise TypeError(f"plugin {name!r} returned {type(response).__name__}, not a PluginResponse")
    return response
