"""What a ring produces: one :class:`PluginResult` per plugin, one :class:`RingOutcome` per ring.

Words used throughout ringd: a plugin's *result* (its part in a ring, with a
:class:`PluginOutcome` status: ok, error, timeout, bypassed, skipped) and a ring's
*outcome* (the verdict: action, deciding plugin and its response, every result).
The engine builds both, and only the engine decides a verdict: the servicers
translate an outcome to the wire without deciding anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginResponse


class PluginOutcome(Enum):
    """What happened to one plugin in a ring (``ringd.v1.PluginOutcome`` on the wire)."""

    # Members are singletons compared by identity: hash them by identity too, in C,
    # not by Enum's Python-level hash of the name (they key hot-path lookup tables).
    __hash__ = object.__hash__

    OK = "ok"
    """Ran and returned a valid response."""
    ERROR = "error"
    """Failed (exception, invalid return, failed load, open circuit) under fail_policy closed."""
    TIMEOUT = "timeout"
    """Ran out of time under fail_policy closed."""
    BYPASSED = "bypassed"
    """Failed or ran out of time under fail_policy open; the ring went on without it."""
    SKIPPED = "skipped"
    """Disabled by an operator; not run."""


@dataclass(slots=True, kw_only=True)
class PluginResult:
    """One plugin's part in a ring, in run order."""

    plugin: str
    version: str
    outcome: PluginOutcome
    action: PluginAction | None = None
    latency_ms: float = 0.0
    error: str | None = None
    message: str | None = None
    started: float = 0.0
    """When the call began, in ``time.perf_counter()`` seconds (0 when it was not called)."""


_new = object.__new__


def plugin_result(
    *,
    plugin: str,
    version: str,
    outcome: PluginOutcome,
    action: PluginAction | None = None,
    latency_ms: float = 0.0,
    error: str | None = None,
    message: str | None = None,
    started: float = 0.0,
) -> PluginResult:
    """A :class:`PluginResult`, built the way the ring loop builds one per plugin.

    Keyword arguments, as :class:`PluginResult` takes them, but about 0.4 us cheaper
    on CPython 3.11: calling a class with keywords packs them into a dict for
    ``__init__``; calling a function does not. The ring loop makes one per plugin.
    """
    result: PluginResult = _new(PluginResult)
    result.plugin = plugin
    result.version = version
    result.outcome = outcome
    result.action = action
    result.latency_ms = latency_ms
    result.error = error
    result.message = message
    result.started = started
    return result


UNENCODABLE_STATUS = 500
UNENCODABLE_ERROR_TYPE = "plugin_error"


@dataclass(slots=True, kw_only=True)
class RingOutcome:
    """A ring's verdict, with the final context and every plugin's result.

    ``action`` is BLOCK or CACHE_HIT when a plugin ended the ring, MODIFY when a
    plugin replaced the body (and no later plugin ended the ring), else
    PASSTHROUGH. ``decided_by`` names the plugin behind that action and
    ``decision`` is its response (for MODIFY, the last MODIFY's response; the new
    body is ``context.body``); both are None for PASSTHROUGH. ``context`` holds the
    final body, response and metadata, in-place edits included.
    """

    ring: PluginHook
    action: PluginAction
    context: PluginContext
    results: list[PluginResult]
    config_version: str
    generation: int
    decision: PluginResponse | None = None
    decided_by: str | None = None
    queued: bool = False
    """A BACKGROUND ring accepted onto the queue: it has not run yet (no results)."""
    context_withheld: bool = False
    """The context is not part of the answer (the wire could not carry what plugins left in it)."""

    @property
    def ended(self) -> bool:
        """True when the ring stopped the request (BLOCK or CACHE_HIT)."""
        return self.action is PluginAction.BLOCK or self.action is PluginAction.CACHE_HIT

    def unencodable(self, problem: str) -> RingOutcome:
        """This ring's verdict when its answer cannot be encoded: a 500 ``plugin_error`` block.

        The plugins left a value in the context the wire cannot carry (``problem``
        names it), so the context is withheld. The block is put on the last plugin
        that ran, the one most likely to have left it.
        """
        ran = [result.plugin for result in self.results if result.outcome is not PluginOutcome.SKIPPED]
        block = PluginResponse.block(
            status_code=UNENCODABLE_STATUS,
            error_type=UNENCODABLE_ERROR_TYPE,
            message=f"a plugin left a value the wire cannot carry: {problem}",
        )
        return replace(
            self,
            action=PluginAction.BLOCK,
            decision=block,
            decided_by=ran[-1] if ran else None,
            context_withheld=True,
        )


def ring_outcome(
    *,
    ring: PluginHook,
    action: PluginAction,
    context: PluginContext,
    results: list[PluginResult],
    config_version: str,
    generation: int,
    decision: PluginResponse | None = None,
    decided_by: str | None = None,
) -> RingOutcome:
    """A :class:`RingOutcome` of a ring that ran, built as :func:`plugin_result` builds a
    result (no keyword dict; about 0.3 us less): the ring loop makes one per ring."""
    outcome: RingOutcome = _new(RingOutcome)
    outcome.ring = ring
    outcome.action = action
    outcome.context = context
    outcome.results = results
    outcome.config_version = config_version
    outcome.generation = generation
    outcome.decision = decision
    outcome.decided_by = decided_by
    outcome.queued = False
    outcome.context_withheld = False
    return outcome
