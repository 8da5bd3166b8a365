"""The ring loop's builders (:func:`plugin_result`, :func:`ring_outcome`) skip the dataclass
``__init__`` for speed: each must set every field, as the dataclass would, or a field added
to the dataclass later is left unset and the first answer that reads it fails."""

from __future__ import annotations

from dataclasses import fields

from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginResponse
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome, plugin_result, ring_outcome


def test_plugin_result_sets_every_field_as_the_dataclass_does() -> None:
    given = {
        "plugin": "pii",
        "version": "1.0",
        "outcome": PluginOutcome.OK,
        "action": PluginAction.MODIFY,
        "latency_ms": 1.5,
        "error": "e",
        "message": "m",
        "started": 2.0,
    }
    assert {f.name for f in fields(PluginResult)} == set(given)
    assert plugin_result(**given) == PluginResult(**given)


def test_ring_outcome_sets_every_field_as_the_dataclass_does() -> None:
    given = {
        "ring": PluginHook.PRE_FLIGHT,
        "action": PluginAction.BLOCK,
        "context": PluginContext(),
        "results": [],
        "config_version": "v1",
        "generation": 3,
        "decision": PluginResponse.block(429),
        "decided_by": "limiter",
    }
    built = ring_outcome(**given)
    # Every field is set (an unset slot raises AttributeError), with the dataclass's defaults.
    assert {f.name: getattr(built, f.name) for f in fields(RingOutcome)} == {
        f.name: getattr(RingOutcome(**given), f.name) for f in fields(RingOutcome)
    }
