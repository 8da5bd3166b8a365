"""The per-request context every plugin receives, and the shared state injected into it.

Field names, order and defaults are LLMProxy's (``core.plugin_engine``), so
positional construction and ``PluginContext()`` behave as there; ringd adds
``request_id`` at the end, and the read-only helpers that let plugins written
against LLMProxy's Starlette objects read ``ctx.request`` and ``ctx.response``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(slots=True)
class PluginState:
    """Shared, mutable state injected into every context (LLMProxy's dependency injection).

    Attributes:
        cache: LLMProxy's slot for a shared cache object; ``None`` unless the host sets one.
        metrics: LLMProxy's slot for a shared metrics object; ``None`` unless the host sets one.
        config: Server-wide settings a plugin may read.
        extra: Services; ``extra["store"]`` is the :class:`~ringd.sdk.Store`.
    """

    cache: Any = None
    metrics: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Headers(dict[str, str]):
    """Request headers: a dict of lower-case names whose reads ignore case, like Starlette's.

    ``headers.get("Authorization")`` and ``headers["x-api-key"]`` both work;
    names are stored in lower case.
    """

    __slots__ = ()

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__()
        if headers:
            for name, value in headers.items():
                self[name] = value

    def __setitem__(self, name: str, value: str) -> None:
        super().__setitem__(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def update(self, *args: Any, **kwargs: str) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value


class ClientAddress(NamedTuple):
    """The client's address, read as Starlette's ``request.client`` (``host``, ``port``)."""

    host: str
    port: int


class URL(NamedTuple):
    """The request's URL as far as the gateway sent it, read as Starlette's ``request.url``."""

    path: str


@dataclass(slots=True)
class RequestInfo:
    """The client's HTTP request as the gateway saw it.

    It also answers the reads LLMProxy plugins make on Starlette's request:
    ``request.headers.get("Authorization")`` (any case), ``request.client.host``,
    ``request.url.path`` and ``request.method``.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: Request path, e.g. ``"/v1/chat/completions"``.
        headers: Header names (stored in lower case, read in any case) mapped to values.
        client_address: The client's address (IP or IP:port) as the gateway saw it.
    """

    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=Headers)
    client_address: str = ""

    def __post_init__(self) -> None:
        if type(self.headers) is not Headers:
            self.headers = Headers(self.headers)

    @property
    def client(self) -> ClientAddress | None:
        """``client_address`` split into host and port (port 0 when absent); None when empty."""
        address = self.client_address
        if not address:
            return None
        host, port = address, 0
        if address.startswith("["):  # [v6]:port
            end = address.find("]")
            if end > 0:
                host, rest = address[1:end], address[end + 1 :]
                port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
        elif address.count(":") == 1:  # v4:port or name:port; a bare v6 has several colons
            name, _, digits = address.partition(":")
            if digits.isdigit():
                host, port = name, int(digits)
        return ClientAddress(host=host, port=port)

    @property
    def url(self) -> URL:
        """The request path as Starlette's ``request.url.path``."""
        return URL(path=self.path)


class UpstreamResponse(dict[str, Any]):
    """The upstream answer: a dict that also answers LLMProxy's Starlette-style reads.

    Dict access works as on the JSON object; ``body`` is that object as UTF-8 JSON
    bytes (computed from the current content, so in-place edits show), and
    ``status_code`` is the upstream's HTTP status (200 unless the gateway says
    otherwise), so ``json.loads(ctx.response.body.decode())`` works as in LLMProxy.
    """

    __slots__ = ("status_code",)

    def __init__(self, *args: Any, status_code: int = 200, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_code = status_code

    @property
    def body(self) -> bytes:
        """The answer as UTF-8 JSON bytes."""
        return json.dumps(self, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(slots=True)
class PluginContext:
    """Everything a plugin sees of one request in one ring.

    The same context object passes through every plugin of a ring, in order, so
    in-place edits of ``body``, ``response`` and ``metadata`` are seen by later
    plugins and returned to the gateway.

    Attributes:
        request: The client's HTTP request: method, path, headers, client address.
        body: The request body (an OpenAI-style chat request, usually). Mutable.
        response: The upstream answer (POST_FLIGHT and BACKGROUND), else ``None``. A
            dict given here is wrapped as :class:`UpstreamResponse` (``.body``,
            ``.status_code``).
        metadata: Shared between the plugins of a request; the gateway carries it
            from one ring's answer into the next ring's request. Use prefixed keys
            (``"_my_plugin_score"``). Values must be JSON-serialisable.
        session_id: The client's session identifier (``"default"`` when the gateway has none).
        error: LLMProxy's error slot; with ``stop_chain`` it becomes the block message.
        stop_chain: Set it to end the ring as a block carrying ``error``.
        state: Shared services and state; ``state.extra["store"]`` is the store.
        request_id: The gateway's id for this request, the same in every ring.
    """

    request: RequestInfo = field(default_factory=RequestInfo)
    body: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    session_id: str = "default"
    error: str | None = None
    stop_chain: bool = False
    state: PluginState = field(default_factory=PluginState)
    request_id: str = ""

    def __post_init__(self) -> None:
        response = self.response
        if response is not None and type(response) is not UpstreamResponse and isinstance(response, dict):
            self.response = UpstreamResponse(response)
