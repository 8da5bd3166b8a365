"""What the security review (docs/security.md) checks: secrets stay out of logs and error
messages, no RPC can install code, and reflection can be turned off on every address.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2_grpc
from ringd.server.app import build_server
from ringd.server.config import load_config, parse_config
from ringd.server.exceptions import ConfigError
from support.rpc import context, ring_request
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

TOKEN = "tok-3f9c1e7a-do-not-log"
CALLER_KEY = "sk-live-caller-key-do-not-log"
PROMPT = "my card is 4111 1111 1111 1111, do not log"
PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT


@pytest.mark.parametrize(
    "text",
    [
        f"server:\n  admin_token: {TOKEN}: [\n",  # a YAML error on the token's line
        f'server:\n  admin_token: "{TOKEN}"\n  grace_s: [\n',
        "server:\n  admin_token: 73100913\n",  # not a string: refused, but not echoed
        "server:\n  admin_token: ['73100913']\n",
    ],
    ids=["yaml-error-on-the-line", "yaml-error-after", "number", "list"],
)
def test_config_errors_never_echo_the_admin_token(text):
    with pytest.raises(ConfigError) as refused:
        parse_config(text)

    message = str(refused.value)
    assert TOKEN not in message
    assert "73100913" not in message
    assert "line" in message or "admin_token" in message  # still says where


async def test_tokens_headers_and_bodies_stay_out_of_the_log(serve, workspace, caplog):
    caplog.set_level(logging.DEBUG)
    running = await serve(
        [
            entry("tenant", "ingress", config={"metadata_from_header": {"authorization": "auth"}}),
            entry("failing", config={"action": "raise", "message": "plugin failed"}),
            entry("usage", "background", config={"sleep_s": 0.01}),
        ],
        server={"admin_token": TOKEN},
    )
    engine, admin = running.engine(), running.admin()
    headers = {"authorization": f"Bearer {CALLER_KEY}", "x-api-key": CALLER_KEY}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}

    for ring in (pb.PLUGIN_HOOK_INGRESS, PRE_FLIGHT, pb.PLUGIN_HOOK_BACKGROUND):
        await engine.ExecuteRing(
            engine_pb.ExecuteRingRequest(ring=ring, context=context(body, headers=headers)), timeout=5
        )
    with pytest.raises(grpc.aio.AioRpcError):  # a bad request, echoing nothing
        await engine.ExecuteRing(
            engine_pb.ExecuteRingRequest(ring=42, context=context(body, headers=headers)), timeout=5
        )
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5, metadata=metadata)
        assert refused.value.code() == code
        assert TOKEN not in (refused.value.details() or "")
    authorised = (("authorization", f"Bearer {TOKEN}"),)
    await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5, metadata=authorised)
    # A reload of a broken file: the error reaches the (authorised) caller and the log.
    workspace.config_path.write_text(f"server:\n  admin_token: {TOKEN}: [\n")
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await admin.ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5, metadata=authorised)
    assert rejected.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert TOKEN not in (rejected.value.details() or "")
    await running.server.stop(grace_s=2.0)  # drains the background ring, logs the shutdown

    logged = caplog.text
    assert logged  # the server did log (generations, failures), just not the secrets
    for secret in (TOKEN, CALLER_KEY, "4111 1111", PROMPT):
        assert secret not in logged


def test_no_rpc_installs_or_uploads_code():
    """The admin surface is list, reload (from the configured file) and enable/disable.

    A new admin RPC must come with a security review: this test names the reviewed set.
    """
    service = admin_pb.DESCRIPTOR.services_by_name["PluginAdminService"]
    assert {method.name for method in service.methods} == {"ListPlugins", "ReloadConfig", "SetPluginEnabled"}
    assert [field.name for field in admin_pb.ReloadConfigRequest.DESCRIPTOR.fields] == []
    engine = engine_pb.DESCRIPTOR.services_by_name["PluginEngineService"]
    # StreamRing (reviewed with issue 13) carries one request's data only: its context,
    # the answer's chunks as bytes, and an end marker. Nothing names a file or code.
    assert {method.name for method in engine.methods} == {"ExecuteRing", "ExecuteRings", "StreamRing"}
    assert [field.name for field in engine_pb.StreamRingRequest.DESCRIPTOR.fields] == ["open", "chunk", "end"]
    assert [field.name for field in engine_pb.StreamChunk.DESCRIPTOR.fields] == ["data"]
    assert [field.name for field in engine_pb.StreamEnd.DESCRIPTOR.fields] == []


async def reflection_code(target: str) -> str:
    """The status of a reflection call that sends its headers and no message: a server
    without reflection answers UNIMPLEMENTED to the headers alone, and one with it answers
    nothing until its deadline. (A request message written while the server answers can
    race its close, which gRPC's client then reports as INTERNAL "Internal error from
    Core": 2 calls in 600.)"""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(timeout=10)
        try:
            await call.read()
        except grpc.aio.AioRpcError as refused:
            return refused.code().name
        call.cancel()
    return "OK"


async def test_reflection_can_be_turned_off_on_every_address(serve, workspace):
    running = await serve(
        [entry("tagger")],
        server={"reflection": False, "admin_listen": [f"unix:{workspace.root / 'admin.sock'}"]},
    )
    (admin_address,) = running.server.admin_addresses

    assert await reflection_code(running.address) == "UNIMPLEMENTED"
    assert await reflection_code(running.unix_address) == "UNIMPLEMENTED"
    assert await reflection_code(admin_address) == "UNIMPLEMENTED"
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, {"model": "gpt-4o"}), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH


@pytest.mark.parametrize(
    ("server", "warned"),
    [
        ({"listen": ["0.0.0.0:0"]}, False),  # no token: admin on an owner-only unix socket, not on 0.0.0.0
        ({"listen": ["0.0.0.0:0"], "admin_token": TOKEN}, False),
        ({"listen": ["0.0.0.0:0"], "admin_listen": ["127.0.0.1:0"]}, False),
        ({"listen": ["127.0.0.1:0"], "admin_listen": ["0.0.0.0:0"]}, True),
        ({"listen": ["127.0.0.1:0"]}, False),
        ({"listen": ["127.0.0.1:0"], "admin_listen": ["LOCALHOST:0"]}, False),  # parsed, any case
        ({"listen": ["127.0.0.1:0"], "admin_listen": ["127.0.0.2:0"]}, False),  # all of 127/8
    ],
    ids=[
        "no-token-on-all-interfaces",
        "token",
        "admin-on-loopback",
        "admin-exposed",
        "loopback",
        "admin-on-upper-case-localhost",
        "admin-on-127.0.0.2",
    ],
)
async def test_an_admin_service_reachable_from_other_machines_without_a_token_is_warned_about(
    workspace, caplog, server, warned
):
    caplog.set_level(logging.WARNING, logger="ringd.server")
    path = workspace.write_config([entry("tagger")], server=server)
    ringd = await build_server(load_config(path))
    try:
        warnings = [r.getMessage() for r in caplog.records if "has no admin_token" in r.getMessage()]
        assert bool(warnings) is warned, warnings
    finally:
        await ringd.stop(grace_s=1.0)
