"""Answers written as bytes, on a real server: a Struct body a plugin changed and changed back
comes back as sent; a reload during a call does not lend the call the new generation's
head; latencies of every size decode; ExecuteRings with BACKGROUND last echoes the body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from google.protobuf import json_format
from support.rpc import context, metadata_of, payload, ring_request, wait_for
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
BACKGROUND = pb.PLUGIN_HOOK_BACKGROUND

# What a user can put in a body that JSON and a Struct both carry exactly.
ODD_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "héllo 🙂", "": ""}],
    "huge": 1e308,
    "tiny": 5e-324,
    "past_2_53": 2.0**60,
    "negative": -12.5,
    "empty_list": [],
    "empty_object": {},
    "nulls": [None, {"inner": None, "list": [None, [None]]}],
    "flags": [True, False],
}

RESTORER = """
import copy

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Restorer(BasePlugin):
    name = "restorer"
    hook = PluginHook.PRE_FLIGHT
    version = "0.1"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        saved = copy.deepcopy(ctx.body)
        ctx.body["scratch"] = [1, {"x": None}]
        ctx.body.pop("model", None)
        ctx.body.clear()
        ctx.body.update(saved)  # the same body again, in the same order
        if self.config.get("tuples"):  # lists as tuples: the same JSON, the same Struct
            for key, value in list(ctx.body.items()):
                if isinstance(value, list):
                    ctx.body[key] = tuple(value)
        return PluginResponse.passthrough()
"""


def struct_request(ring: int, body: dict[str, Any]) -> engine_pb.ExecuteRingRequest:
    return ring_request(ring, body, form="struct", metadata={"note": "ü", "deep": {"a": [None, {}]}})


async def test_a_body_changed_and_changed_back_in_place_comes_back_as_sent(serve, workspace):
    workspace.plugin("restorer.py", RESTORER)
    running = await serve(
        [
            entry("restorer", entrypoint="restorer.py:Restorer"),
            entry("restorer_tuples", entrypoint="restorer.py:Restorer", config={"tuples": True}),
        ]
    )
    stub = running.engine()

    request = struct_request(PRE_FLIGHT, ODD_BODY)
    answer = await stub.ExecuteRing(request, timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.body_struct == request.context.body_struct
    assert metadata_of(answer) == {"note": "ü", "deep": {"a": [None, {}]}}

    # The raw-JSON form of the same call carries the same body.
    as_json = await stub.ExecuteRing(ring_request(PRE_FLIGHT, ODD_BODY, form="json"), timeout=5)
    assert payload(as_json, "body") == ("json", json.loads(json.dumps(ODD_BODY)))
    assert json_format.MessageToDict(answer.body_struct) == payload(as_json, "body")[1]


async def test_rings_with_background_last_answer_the_body_as_sent_and_the_ack_queued(serve, workspace):
    workspace.plugin("restorer.py", RESTORER)
    running = await serve([entry("restorer", entrypoint="restorer.py:Restorer")])
    request = struct_request(PRE_FLIGHT, ODD_BODY)
    rings = engine_pb.ExecuteRingsRequest(rings=[PRE_FLIGHT, BACKGROUND], context=request.context)

    answer = await running.engine().ExecuteRings(rings, timeout=5)

    assert [(o.ring, o.queued) for o in answer.outcomes] == [(PRE_FLIGHT, False), (BACKGROUND, True)]
    for outcome in answer.outcomes:
        assert outcome.body_struct == request.context.body_struct
        assert (outcome.config_version, outcome.generation) == ("v1", 1)
    assert [r.plugin for r in answer.outcomes[0].results] == ["restorer"]
    assert list(answer.outcomes[1].results) == []


async def test_a_call_running_across_a_reload_answers_its_own_generation(serve, workspace, tmp_path):
    started = tmp_path / "started.log"
    slow = entry("slow", config={"sleep_s": 0.4, "started_log": str(started), "message": "slept"})
    running = await serve([slow])
    engine = running.engine()
    # One answer of generation 1 first, so its head is cached before the reload.
    first = await engine.ExecuteRing(ring_request(PRE_FLIGHT, {"n": 1}), timeout=5)
    assert (first.config_version, first.generation) == ("v1", 1)

    call = asyncio.ensure_future(engine.ExecuteRing(ring_request(PRE_FLIGHT, {"n": 2}), timeout=5))
    await wait_for(lambda: started.exists() and len(started.read_text().splitlines()) == 2)
    workspace.write_config([entry("fast", config={"message": "quick"})], version="v2")
    reloaded = await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)
    assert (reloaded.config_version, reloaded.generation) == ("v2", 2)

    after = await engine.ExecuteRing(ring_request(PRE_FLIGHT, {"n": 3}), timeout=5)
    during = await call
    assert (during.config_version, during.generation) == ("v1", 1)
    assert [(r.plugin, r.version, r.message) for r in during.results] == [("slow", "1.2.3", "slept")]
    assert (after.config_version, after.generation) == ("v2", 2)
    assert [(r.plugin, r.message) for r in after.results] == [("fast", "quick")]
    ack = await engine.ExecuteRing(ring_request(BACKGROUND, {"n": 4}), timeout=5)
    assert (ack.config_version, ack.generation, ack.queued) == ("v2", 2, True)


async def test_latencies_past_the_short_table_decode_as_the_time_slept(serve):
    # 0.05 s: a four-byte varint of nanoseconds; 0.3 s: past 268 ms, five bytes.
    running = await serve(
        [entry("short", config={"sleep_s": 0.05}), entry("long", config={"sleep_s": 0.3}), entry("none")]
    )
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, {"n": 1}), timeout=5)
    latencies = {r.plugin: r.latency.seconds * 10**9 + r.latency.nanos for r in answer.results}
    assert latencies["short"] >= 50_000_000
    assert latencies["long"] >= 300_000_000
    assert all(0 <= r.latency.nanos < 10**9 for r in answer.results)


def test_the_struct_request_helper_keeps_the_odd_values() -> None:
    """The values above survive the request helper as they are (so the tests send them)."""
    sent = context(ODD_BODY, form="struct").body_struct
    assert sent.fields["huge"].number_value == 1e308
    assert sent.fields["empty_object"].WhichOneof("kind") == "struct_value"
    assert sent.fields["empty_list"].WhichOneof("kind") == "list_value"
