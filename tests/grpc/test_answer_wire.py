"""ExecuteRing's answer, written partly by hand, is the message protobuf makes of the outcome.

ExecuteRing answers ``convert.ring_outcome_to_wire`` (the per-plugin results as wire bytes);
ExecuteRings fills messages with ``convert.ring_outcome_to_proto``. A gateway must read the
same answer from both, and the errors of an answer the wire cannot carry must be the same.
"""

from __future__ import annotations

from typing import Any

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginResponse
from ringd.server.convert import ring_outcome_to_proto, ring_outcome_to_wire
from ringd.server.exceptions import EncodeError
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome, plugin_result

from ringd.v1 import engine_service_pb2 as engine_pb


def _ok(name: str, latency_ms: float, **fields: Any) -> PluginResult:
    fields.setdefault("action", PluginAction.PASSTHROUGH)
    return plugin_result(
        plugin=name, version="1.2.0", outcome=PluginOutcome.OK, latency_ms=latency_ms, started=1.0, **fields
    )


def _outcome(results: list[PluginResult], **fields: Any) -> RingOutcome:
    ctx = PluginContext(body={"model": "m", "messages": [{"role": "user", "content": "hé"}]})
    ctx.metadata["tenant"] = {"name": "acme", "tier": 2}
    return RingOutcome(
        ring=PluginHook.PRE_FLIGHT,
        action=fields.pop("action", PluginAction.PASSTHROUGH),
        context=ctx,
        results=results,
        config_version="v7",
        generation=3,
        **fields,
    )


CASES = {
    "no results": [],
    "latencies of every varint length": [
        _ok("a", 0.0001),  # 100 ns: one byte
        _ok("b", 0.012),  # two bytes
        _ok("c", 1.5),  # three bytes
        _ok("d", 300.0),  # five bytes
        _ok("e", 999.9999),  # just under a second
    ],
    "a second and more: seconds and nanos": [_ok("slow", 1000.0), _ok("slower", 2500.25)],
    "no latency, and a latency under a nanosecond (the Duration present, empty)": [
        _ok("zero", 0.0),
        _ok("tiny", 1e-9),
    ],
    "skipped, bypassed with an error, a message, non-ASCII names": [
        plugin_result(plugin="off", version="1", outcome=PluginOutcome.SKIPPED),
        plugin_result(
            plugin="flaky", version="2", outcome=PluginOutcome.BYPASSED, latency_ms=3.0, error="boom: é"
        ),
        _ok("chatty", 0.5, message="checked 3 rules"),
        _ok("漢字-plugin", 0.25),
    ],
    "the same plugin twice (the cached head)": [_ok("twice", 0.1), _ok("twice", 0.2)],
}


@pytest.mark.parametrize("json_form", [True, False], ids=["json", "struct"])
@pytest.mark.parametrize("results", list(CASES.values()), ids=list(CASES))
def test_the_answer_bytes_are_the_protobuf_message(results: list[PluginResult], json_form: bool) -> None:
    ring_outcome = _outcome(results)
    made = engine_pb.ExecuteRingResponse()
    ring_outcome_to_proto(ring_outcome, json_form, made)

    decoded = engine_pb.ExecuteRingResponse.FromString(ring_outcome_to_wire(ring_outcome, json_form))

    assert decoded == made
    assert decoded.SerializeToString(deterministic=True) == made.SerializeToString(deterministic=True)
    assert [result.plugin for result in decoded.results] == [result.plugin for result in results]


def test_a_block_answer_is_the_protobuf_message() -> None:
    block = PluginResponse.block(status_code=429, error_type="rate_limited", message="slow down")
    ring_outcome = _outcome(
        [_ok("guard", 0.3, action=PluginAction.BLOCK)],
        action=PluginAction.BLOCK,
        decision=block,
        decided_by="guard",
    )
    made = engine_pb.ExecuteRingResponse()
    ring_outcome_to_proto(ring_outcome, True, made)

    decoded = engine_pb.ExecuteRingResponse.FromString(ring_outcome_to_wire(ring_outcome, True))

    assert decoded == made
    assert decoded.block.status_code == 429
    assert decoded.results[0].action == made.results[0].action


def _errors(ring_outcome: RingOutcome) -> tuple[str, str]:
    with pytest.raises(EncodeError) as by_proto:
        ring_outcome_to_proto(ring_outcome, True, engine_pb.ExecuteRingResponse())
    with pytest.raises(EncodeError) as by_wire:
        ring_outcome_to_wire(ring_outcome, True)
    return str(by_proto.value), str(by_wire.value)


def test_a_result_the_wire_cannot_carry_fails_both_ways_with_the_same_error() -> None:
    bad_action = _ok("odd", 0.1)
    bad_action.action = "launch"  # type: ignore[assignment]  # a plugin wrote garbage into its response
    lone_surrogate = _ok("ok", 0.1)
    lone_surrogate.error = "bad \ud800 text"

    proto_error, wire_error = _errors(_outcome([bad_action]))
    assert proto_error == wire_error
    assert "not a PluginAction" in wire_error

    made = engine_pb.ExecuteRingResponse()
    ring_outcome_to_proto(_outcome([lone_surrogate]), True, made)  # escaped, as every text field
    decoded = engine_pb.ExecuteRingResponse.FromString(ring_outcome_to_wire(_outcome([lone_surrogate]), True))
    assert decoded == made
    assert decoded.results[0].error == "bad \\ud800 text"


def test_a_withheld_context_leaves_out_a_bad_action_in_both_forms() -> None:
    bad_action = _ok("odd", 0.1)
    bad_action.action = "launch"  # type: ignore[assignment]
    ring_outcome = _outcome([bad_action, _ok("after", 0.2)]).unencodable("metadata['x'] is a set")
    made = engine_pb.ExecuteRingResponse()
    ring_outcome_to_proto(ring_outcome, True, made)

    decoded = engine_pb.ExecuteRingResponse.FromString(ring_outcome_to_wire(ring_outcome, True))

    assert decoded == made
    assert decoded.results[0].action == 0, "left out, not guessed"
    assert decoded.block.status_code == 500
    assert not decoded.HasField("body_json")


METADATA = {
    "tenant": "acme",
    "empty text": "",
    "long text": "x" * 300,  # a Value over 127 bytes: two-byte lengths
    "border": "y" * 125,  # the last one-byte Value length, then the first two-byte one
    "border+1": "y" * 126,
    "non-ASCII é 漢字": "🙂 ok",
    "yes": True,
    "no": False,
    "zero": 0,
    "negative": -5,
    "big int": 2**60,  # past 2**53: by protobuf
    "float": 1.5,
    "negative zero": -0.0,
    "nan": float("nan"),  # not finite: null, as in the JSON form
    "inf": float("inf"),
    "none": None,
    "empty object": {},
    "empty list": [],
    "nested": {"a": [1, "two", {"three": None}], "b": {}},
    "list": [True, 2.5, "x"],
    "tuple": (1, 2),
    "an action": PluginAction.BLOCK,  # a str subclass: by protobuf
}


@pytest.mark.parametrize("json_form", [True, False], ids=["json", "struct"])
def test_metadata_of_every_kind_is_the_protobuf_message(json_form: bool) -> None:
    ring_outcome = _outcome([_ok("a", 0.1)])
    ring_outcome.context.metadata.clear()
    ring_outcome.context.metadata.update(METADATA)
    made = engine_pb.ExecuteRingResponse()
    ring_outcome_to_proto(ring_outcome, json_form, made)

    decoded = engine_pb.ExecuteRingResponse.FromString(ring_outcome_to_wire(ring_outcome, json_form))

    assert decoded == made
    assert decoded.SerializeToString(deterministic=True) == made.SerializeToString(deterministic=True)
    assert set(decoded.metadata) == set(METADATA)
    assert decoded.metadata["nan"].WhichOneof("kind") == "null_value"
    assert decoded.metadata["no"].WhichOneof("kind") == "bool_value"
    assert decoded.metadata["empty object"].WhichOneof("kind") == "struct_value"


@pytest.mark.parametrize(
    "metadata",
    [
        {"tags": {"a", "b"}},  # a set: JSON cannot carry it
        {"text": "lone \ud800 surrogate"},
        {"key \ud800": 1},
        {3: "a key that is not a string"},
        {"ok": "fine", "nested": {"deep": object()}},
    ],
    ids=["set", "surrogate value", "surrogate key", "int key", "nested object"],
)
def test_metadata_the_wire_cannot_carry_fails_both_ways_with_the_same_error(metadata: dict[Any, Any]) -> None:
    ring_outcome = _outcome([_ok("a", 0.1)])
    ring_outcome.context.metadata.update(metadata)

    proto_error, wire_error = _errors(ring_outcome)

    assert proto_error == wire_error
    assert wire_error.startswith("metadata")
