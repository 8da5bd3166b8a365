"""``BasePlugin`` and ``PluginHook``: what every plugin subclasses and where it runs."""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from ringd.sdk._metrics import PluginMetrics
from ringd.sdk._response import PluginResponse

if TYPE_CHECKING:
    from ringd.sdk._context import PluginContext


class PluginHook(Enum):
    """The five rings of a gateway request, in the order the gateway calls them."""

    # Members are singletons compared by identity: hash them by identity too, in C,
    # not by Enum's Python-level hash of the name (they key hot-path lookup tables).
    __hash__ = object.__hash__

    INGRESS = "ingress"
    """Ring 1: authentication, zero trust, rate limits."""
    PRE_FLIGHT = "pre_flight"
    """Ring 2: PII redaction, prompt mutation, guards, cache lookup."""
    ROUTING = "routing"
    """Ring 3: model and upstream selection."""
    POST_FLIGHT = "post_flight"
    """Ring 4: sanitising or healing the upstream answer."""
    BACKGROUND = "background"
    """Ring 5: usage accounting, logs, telemetry; runs after the client has its answer."""


class _PluginLogger:
    """``BasePlugin.logger``: set by ``__init__``, and made on first use for a subclass
    whose ``__init__`` skipped ``super().__init__()``. A plugin may assign its own."""

    def __get__(self, instance: BasePlugin | None, owner: type[BasePlugin]) -> logging.Logger:
        name = owner.name if instance is None else instance.name
        logger = logging.getLogger(f"plugin.{name}")
        if instance is not None:
            instance.__dict__["logger"] = logger
        return logger


class BasePlugin:
    """Subclass this to write a plugin.

    Class attributes describe the plugin; the config entry that loads it may
    override ``hook`` placement and ``timeout_ms``::

        class MyPlugin(BasePlugin):
            name = "my_plugin"            # unique identifier
            hook = PluginHook.PRE_FLIGHT  # which ring
            version = "1.0.0"             # semver; a change resets stats on reload
            author = "you"
            description = "What it does"
            timeout_ms = 10               # time budget of one execute() call

    The engine constructs the plugin with its config entry's ``config`` mapping,
    awaits :meth:`on_load` once, calls :meth:`execute` per request, and awaits
    :meth:`on_unload` once when a reload replaces it and its in-flight calls
    have finished.

    Streamed answers (``ringd.v1.PluginEngineService/StreamRing``): a POST_FLIGHT
    plugin may also define a streaming hook and a look-ahead window::

        stream_holdback_chars = 64   # class or instance attribute, default 0

        async def on_chunk(self, ctx: PluginContext, text: StreamText) -> str | PluginResponse:
            ...

    ``on_chunk`` is called as text streams in, per choice index, with this
    plugin's buffer: the last ``stream_holdback_chars`` characters it returned
    last time followed by the new text (from the upstream, or from the streaming
    plugin before it). It is called once the buffer is longer than the window,
    and once more with ``text.final`` set before a tool-call, refusal or finish
    delta of that choice and at the end of the stream. Of what it returns, all
    but the last ``stream_holdback_chars`` characters are released (to the next
    streaming plugin; the last one's go to the client) and the rest is its next
    buffer (the cut moves back to just after the last whitespace before the
    window, so the kept tail starts with a whole word; with no whitespace, up to
    twice the window is held before a cut inside a word). So a pattern of up
    to ``stream_holdback_chars + 1`` characters split
    across chunks is seen whole, and the plugin sees its own output again: its
    rewrite must leave its own output unchanged (restoring a placeholder or
    redacting a secret as ``[REDACTED]`` do). A match that reaches the end of a
    non-final ``text`` may go on in the next chunk: leave it for the next call.

    It returns the text (``str``), ``PluginResponse.passthrough()`` (unchanged)
    or ``PluginResponse.block(...)`` (the stream ends with that error); anything
    else is a failure. Timeout, fail policy, breaker and metrics apply per call as
    for ``execute``; a failure under fail_policy open lets the text through
    unchanged. ``ctx`` is the stream's context, the same object for every call of
    the stream (``ctx.response`` is None until the end).

    A POST_FLIGHT plugin without ``on_chunk`` runs :meth:`execute` once on the
    assembled answer (``ctx.response``, a ``chat.completion``) when the stream
    ends: after the text was released, or before any release with
    ``stream_mode: buffer`` in its config entry.
    """

    # LLMProxy's defaults, so a plugin that leaves one out behaves as it does there.
    name: ClassVar[str] = "unnamed_plugin"
    hook: ClassVar[PluginHook] = PluginHook.BACKGROUND
    version: ClassVar[str] = "0.0.1"
    author: ClassVar[str] = "unknown"
    description: ClassVar[str] = ""
    timeout_ms: ClassVar[int] = 50

    stream_holdback_chars: int = 0
    """Look-ahead window of ``on_chunk`` in characters (an instance attribute overrides it)."""

    logger = _PluginLogger()
    """``logging.getLogger(f"plugin.{name}")``, as in LLMProxy (most of its plugins log from ``on_load``)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Keep ``config`` (the entry's ``config`` mapping; never None) as ``self.config``.

        Also sets ``self.logger``. A subclass that overrides ``__init__`` calls
        ``super().__init__(config)`` first, as in LLMProxy.
        """
        self.config: dict[str, Any] = dict(config) if config else {}
        self.__dict__["logger"] = logging.getLogger(f"plugin.{self.name}")
        self._metrics = PluginMetrics()

    def __repr__(self) -> str:
        hook = getattr(self.hook, "value", self.hook)
        return f"<Plugin {self.name} v{self.version} hook={hook}>"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Handle one request in this plugin's ring.

        When it runs: once per request that reaches this plugin's ring, after
        every enabled plugin of the ring with a lower ``priority`` (ties in config
        order), sharing one ``ctx`` with them.

        What the return value does:
            * ``PluginResponse.passthrough()``: continue; in-place edits of
              ``ctx.body``, ``ctx.response`` and ``ctx.metadata`` are kept.
            * ``PluginResponse.modify(body=...)``: replace ``ctx.body``, continue.
            * ``PluginResponse.block(status_code, error_type, message)``: end the
              ring; the gateway answers the client with that error.
            * ``PluginResponse.cache_hit(response=...)``: end the ring; the gateway
              answers with ``response`` and does not call the upstream.
            * ``None``: a passthrough, as in LLMProxy.

        Setting ``ctx.stop_chain = True`` (LLMProxy style) ends the ring as a
        block carrying ``ctx.error``.

        Time budget: ``timeout_ms`` (the config entry's value if set), cut to
        the time left before the gateway's deadline. A call that runs past it is
        cancelled and counts as a timeout. Raising, timing out or returning
        anything but a ``PluginResponse`` or ``None``, or a response the ring
        cannot serve (CACHE_HIT without a response dict), is a failure: under
        ``fail_policy: closed`` the ring blocks (500, 504, or 503 while the
        circuit breaker is open), under ``open`` the plugin is skipped.

        Never block the event loop: use async I/O, or set ``run_in_thread: true``
        in the config entry for synchronous or CPU-heavy work.
        """
        return PluginResponse.passthrough()

    async def on_load(self) -> None:
        """Called once after construction, before the plugin serves; raise to fail the load."""

    async def on_unload(self) -> None:
        """Called once when a reload replaces or removes the plugin, after it has drained."""

    @property
    def stats(self) -> dict[str, Any]:
        """Live metrics: LLMProxy's keys (name, version, invocations, errors, blocks,
        avg_latency_ms) plus timeouts, bypasses, stalls, total_latency_ms and
        p50/p95/p99 latencies over the most recent 2,048 calls of this process."""
        metrics = self.__dict__.get("_metrics")
        snapshot = (metrics if metrics is not None else PluginMetrics()).snapshot()
        return {"name": self.name, "version": self.version, **snapshot}
