"""The real grpcurl binary against a running server: reflection, an ExecuteRing call, health.

No proto files are given to grpcurl: everything it knows comes from server reflection.
"""

from __future__ import annotations

import json

from support.rpc import BIN, ROOT, run
from support.workspace import entry

GRPCURL = BIN / "grpcurl"


async def grpcurl(*args: str) -> tuple[int, str, str]:
    return await run(GRPCURL, "-max-time", "10", *args)


async def test_list_shows_the_engine_admin_and_health_services(serve):
    running = await serve([entry("tagger")], server={"admin_token": "t0ken"})  # admin on the main port

    code, out, err = await grpcurl("-plaintext", running.address, "list")

    assert code == 0, err
    services = out.split()
    for name in ("ringd.v1.PluginEngineService", "ringd.v1.PluginAdminService", "grpc.health.v1.Health"):
        assert name in services


async def test_without_a_token_the_admin_service_is_listed_on_its_socket_only(serve):
    running = await serve([entry("tagger")])
    (admin_socket,) = running.server.admin_addresses

    code, main_listing, err = await grpcurl("-plaintext", running.address, "list")
    assert code == 0, err
    code, admin_listing, err = await grpcurl(
        "-plaintext", "-unix", admin_socket.removeprefix("unix:"), "list"
    )
    assert code == 0, err

    assert "ringd.v1.PluginAdminService" not in main_listing.split()
    assert "ringd.v1.PluginAdminService" in admin_listing.split()


async def test_list_works_over_the_unix_socket(serve, workspace):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl("-plaintext", "-unix", str(workspace.root / "ringd.sock"), "list")

    assert code == 0, err
    assert "ringd.v1.PluginEngineService" in out.split()
    assert running.unix_address.endswith("ringd.sock")


async def test_describe_shows_the_engine_rpcs(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl("-plaintext", running.address, "describe", "ringd.v1.PluginEngineService")

    assert code == 0, err
    assert "ringd.v1.PluginEngineService is a service" in out
    assert (
        "rpc ExecuteRing ( .ringd.v1.ExecuteRingRequest ) returns ( .ringd.v1.ExecuteRingResponse );" in out
    )
    assert (
        "rpc ExecuteRings ( .ringd.v1.ExecuteRingsRequest ) returns ( .ringd.v1.ExecuteRingsResponse );"
        in out
    )
    stream_rpc = "rpc StreamRing ( stream .ringd.v1.StreamRingRequest )"
    assert f"{stream_rpc} returns ( stream .ringd.v1.StreamRingResponse );" in out

    code, out, err = await grpcurl("-plaintext", running.address, "describe", "ringd.v1.PluginContext")
    assert code == 0, err
    assert ".google.protobuf.Struct body_struct = 1;" in out
    assert "bytes body_json = 2;" in out


async def test_execute_ring_with_a_struct_body(serve):
    running = await serve(
        [
            entry("appender", config={"append_message": "be brief"}),
            entry("router", config={"set_metadata": {"upstream": "eu"}}),
        ]
    )
    request = {
        "ring": "PLUGIN_HOOK_PRE_FLIGHT",
        "context": {
            "bodyStruct": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            "metadata": {"tenant": "acme"},
            "requestId": "req-1",
        },
    }

    code, out, err = await grpcurl(
        "-plaintext",
        "-d",
        json.dumps(request),
        running.address,
        "ringd.v1.PluginEngineService/ExecuteRing",
    )

    assert code == 0, err
    answer = json.loads(out)
    assert answer["ring"] == "PLUGIN_HOOK_PRE_FLIGHT"
    assert answer["action"] == "PLUGIN_ACTION_PASSTHROUGH"
    # grpcurl prints protobuf JSON's lowerCamelCase names (the descriptors carry json_name),
    # as against a Go or Java server, and reads either spelling.
    assert answer["bodyStruct"] == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}],
    }
    assert answer["metadata"] == {"tenant": "acme", "upstream": "eu"}
    assert [(r["plugin"], r["outcome"]) for r in answer["results"]] == [
        ("appender", "PLUGIN_OUTCOME_OK"),
        ("router", "PLUGIN_OUTCOME_OK"),
    ]
    assert answer["configVersion"] == "v1"
    assert answer["generation"] == "1"  # uint64 is a string in protobuf JSON


async def test_execute_ring_with_a_bad_ring_reports_invalid_argument(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl(
        "-plaintext",
        "-d",
        '{"context": {"bodyStruct": {}}}',
        running.address,
        "ringd.v1.PluginEngineService/ExecuteRing",
    )

    assert code != 0
    assert "Code: InvalidArgument" in err
    assert "ring is PLUGIN_HOOK_UNSPECIFIED" in err
    assert "Traceback" not in err + out


async def test_health_check_is_serving(serve):
    running = await serve([entry("tagger")])

    code, out, err = await grpcurl("-plaintext", running.address, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}

    code, out, err = await grpcurl(
        "-plaintext",
        "-d",
        '{"service": "ringd.v1.PluginEngineService"}',
        running.address,
        "grpc.health.v1.Health/Check",
    )
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_without_reflection_list_fails_and_calls_need_the_proto_files(serve):
    running = await serve(
        [entry("tagger", config={"set_metadata": {"seen": True}})], server={"reflection": False}
    )

    code, out, err = await grpcurl("-plaintext", running.address, "list")

    assert code != 0
    assert "does not support the reflection API" in err
    assert "ringd.v1.PluginEngineService" not in out

    code, out, err = await grpcurl(
        "-plaintext",
        "-import-path",
        str(ROOT / "proto"),
        "-proto",
        "ringd/v1/engine_service.proto",
        "-d",
        '{"ring": "PLUGIN_HOOK_PRE_FLIGHT", "context": {"bodyStruct": {"model": "m"}}}',
        running.address,
        "ringd.v1.PluginEngineService/ExecuteRing",
    )
    assert code == 0, err
    assert json.loads(out)["metadata"] == {"seen": True}


async def test_execute_rings_answer_written_as_bytes_decodes_in_grpcurl(serve):
    """Go's decoder reads the answer ringd writes as bytes: an unchanged Struct body copied back,
    results with latencies, messages and errors, the BACKGROUND acknowledgement last."""
    running = await serve(
        [
            entry("quiet", config={"message": "héllo 🙂"}),
            entry("sleepy", config={"sleep_s": 0.3}),
            entry("failing", config={"action": "raise", "message": "boom"}, fail_policy="open"),
        ]
    )
    body = {"model": "gpt-4o", "n": 1e308, "nested": {"a": [None, {}, []]}, "": "empty key"}
    request = {
        "rings": ["PLUGIN_HOOK_PRE_FLIGHT", "PLUGIN_HOOK_BACKGROUND"],
        "context": {"bodyStruct": body, "metadata": {"tenant": "ünï"}},
    }

    code, out, err = await grpcurl(
        "-plaintext", "-d", json.dumps(request), running.address, "ringd.v1.PluginEngineService/ExecuteRings"
    )

    assert code == 0, err
    pre, background = json.loads(out)["outcomes"]
    assert pre["bodyStruct"] == background["bodyStruct"] == body
    assert pre["metadata"] == background["metadata"] == {"tenant": "ünï"}
    results = {r["plugin"]: r for r in pre["results"]}
    assert results["quiet"]["message"] == "héllo 🙂"
    assert results["failing"]["outcome"] == "PLUGIN_OUTCOME_BYPASSED"
    assert "boom" in results["failing"]["error"]
    assert float(results["sleepy"]["latency"].rstrip("s")) >= 0.3  # a Duration prints as "0.30...s"
    assert background["ring"] == "PLUGIN_HOOK_BACKGROUND"
    assert background["queued"] is True
    assert "results" not in background
