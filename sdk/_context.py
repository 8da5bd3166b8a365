"""The per-request context every plugin receives, and the shared state injected into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PluginState:
    """Shared, mutable state injected into every context (LLMProxy's dependency injection).

    Attributes:
        config: Server-wide settings a plugin may read.
        cache: A process-local dict for plugins that want one.
        metrics: A process-local dict for plugins that keep their own counters.
        extra: Services; ``extra["store"]`` is the :class:`~ringd.sdk.Store`.
    """

    config: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestInfo:
    """The client's HTTP request as the gateway saw it.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: Request path, e.g. ``"/v1/chat/completions"``.
        headers: Header names in lower case mapped to their values.
        client_address: The client's address (IP or IP:port) as the gateway saw it.
    """

    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    client_address: str = ""


@dataclass(slots=True)
class PluginContext:
    """Everything a plugin sees of one request in one ring.

    The same context object passes through every plugin of a ring, in order, so
    in-place edits of ``body``, ``response`` and ``metadata`` are seen by later
    plugins and returned to the gateway.

    Attributes:
        body: The request body (an OpenAI-style chat request, usually). Mutable.
        metadata: Shared between the plugins of a request; the gateway carries it
            from one ring's answer into the next ring's request. Use prefixed keys
            (``"_my_plugin_score"``). Values must be JSON-serialisable.
        session_id: The client's session identifier, if the gateway has one.
        state: Shared services and state; ``state.extra["store"]`` is the store.
        response: The upstream answer (POST_FLIGHT and BACKGROUND), else ``None``.
        request: The client's HTTP request: method, path, headers, client address.
        request_id: The gateway's id for this request, the same in every ring.
        error: LLMProxy's error slot; with ``stop_chain`` it becomes the block message.
        stop_chain: Set it to end the ring as a block carrying ``error``.
    """

    body: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    session_id: str = ""
    state: PluginState = field(default_factory=PluginState)
    response: dict[str, Any] | None = None
    request: RequestInfo = field(default_factory=RequestInfo)
    request_id: str = ""
    error: str | None = None
    stop_chain: bool = False
