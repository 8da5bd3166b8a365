"""A ring's answer on the wire: the results ringd writes as bytes are the ones protobuf makes
(gateways decode them as such), and a result the bytes path does not take is checked as before."""

from __future__ import annotations

from typing import Any

import pytest
from ringd.sdk import PluginAction
from ringd.server.convert import _result_to_proto, results_to_wire
from ringd.server.exceptions import EncodeError
from ringd.server.results import PluginOutcome, PluginResult, plugin_result

from ringd.v1 import engine_service_pb2 as engine_pb


def _made(results: list[PluginResult], strict: bool = True) -> bytes:
    """What protobuf makes of the same results, field by field."""
    answer = engine_pb.ExecuteRingResponse()
    for result in results:
        _result_to_proto(result, answer.results.add(), strict=strict)
    return answer.SerializeToString()


OK = {"plugin": "pii", "version": "1.2.3", "outcome": PluginOutcome.OK}


@pytest.mark.parametrize(
    "fields",
    [
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": 0.0021},  # 2,100 ns: a 2-byte varint
        {**OK, "action": PluginAction.MODIFY, "latency_ms": 0.0001},  # 100 ns: one byte
        {**OK, "action": PluginAction.BLOCK, "latency_ms": 0.0000001},  # rounds to 0 ns: an empty Duration
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": 0.05},  # 50,000 ns: 3 bytes
        {**OK, "action": PluginAction.CACHE_HIT, "latency_ms": 12.5, "message": "hit"},  # 4 bytes
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": 300.0},  # 5 bytes
        {**OK, "latency_ms": 2500.000001},  # seconds and nanoseconds
        {**OK, "latency_ms": 3000.0},  # whole seconds: no nanoseconds field
        {"plugin": "x", "version": "", "outcome": PluginOutcome.SKIPPED},  # no latency, no version
        {"plugin": "", "version": "", "outcome": PluginOutcome.BYPASSED, "error": "failed to load: é 🙂"},
        {**OK, "outcome": PluginOutcome.TIMEOUT, "latency_ms": 50.2, "error": "timed out after 50 ms"},
        {**OK, "action": PluginAction.PASSTHROUGH, "message": "x" * 300},  # a 2-byte length
        {**OK, "action": PluginAction.PASSTHROUGH, "message": "lone \ud800 surrogate"},  # escaped
        {**OK, "action": PluginAction.PASSTHROUGH, "message": 42},  # not text: left out, not strict
        # Negative latencies (a clock that went back; a result built by hand) are written as
        # protobuf writes them, not looked up by a negative index or refused with IndexError.
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": -0.001},
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": -0.02},
        {**OK, "action": PluginAction.PASSTHROUGH, "latency_ms": -2000.0},
    ],
)
def test_result_bytes_are_the_protobuf_message(fields: dict[str, Any]) -> None:
    results = [plugin_result(**fields), plugin_result(**{**OK, "latency_ms": 0.003})]
    strict = not isinstance(fields.get("message", ""), int)
    assert results_to_wire(results, strict=strict) == _made(results, strict)
    decoded = engine_pb.ExecuteRingResponse.FromString(results_to_wire(results, strict=strict))
    assert [result.plugin for result in decoded.results] == [fields["plugin"], "pii"]


def test_a_result_the_wire_cannot_carry_is_named_as_before() -> None:
    bad = plugin_result(**OK, action="shout", latency_ms=1.0)  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match=r"results\['pii'\]\.action is 'shout'"):
        results_to_wire([bad])
    lenient = engine_pb.ExecuteRingResponse.FromString(results_to_wire([bad], strict=False))
    assert lenient.results[0].action == 0


@pytest.mark.parametrize(
    "nanos", [1, 127, 128, 2**14 - 1, 2**14, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 999_999_999]
)
def test_a_latency_at_each_varint_boundary_is_the_protobuf_message(nanos: int) -> None:
    results = [plugin_result(**OK, action=PluginAction.PASSTHROUGH, latency_ms=nanos / 1e6)]
    assert results_to_wire(results) == _made(results)
