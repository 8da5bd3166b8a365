"""PluginAdminService over gRPC: list, reload, enable/disable, and the bearer token."""

from __future__ import annotations

import grpc
import pytest
from support.rpc import ring_request
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import plugin_pb2 as pb

PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
TOKEN = "s3cret-admin-token"

PLUGINS = [
    entry("auth", "ingress", priority=10, config={"set_metadata": {"tenant": "acme"}}),
    entry("guard", priority=20, timeout_ms=250, config={"message": "checked"}),
    entry("redactor", priority=10, fail_policy="open"),
    entry("broken", entrypoint="broken.py:Broken"),
    entry("usage", "background"),
]


def by_name(listing: admin_pb.ListPluginsResponse) -> dict[str, admin_pb.PluginInfo]:
    return {info.name: info for info in listing.plugins}


async def test_list_shows_rings_status_version_settings_and_load_errors(serve):
    running = await serve(PLUGINS)

    listing = await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)

    assert (listing.config_version, listing.generation) == ("v1", 1)
    # Ring order first, then run order (priority, then config order) within a ring.
    assert [(p.ring, p.name) for p in listing.plugins] == [
        (pb.PLUGIN_HOOK_INGRESS, "auth"),
        (PRE_FLIGHT, "redactor"),
        (PRE_FLIGHT, "guard"),
        (PRE_FLIGHT, "broken"),
        (pb.PLUGIN_HOOK_BACKGROUND, "usage"),
    ]
    plugins = by_name(listing)
    guard = plugins["guard"]
    assert guard.status == pb.PLUGIN_STATUS_ACTIVE
    assert (guard.version, guard.author, guard.description) == (
        "1.2.3",
        "ringd tests",
        "does what its config says",
    )
    assert guard.entrypoint == "scripted.py:Scripted"
    assert guard.priority == 20
    assert guard.enabled is True
    assert guard.timeout.ToMilliseconds() == 250
    assert guard.fail_policy == pb.FAIL_POLICY_CLOSED
    assert guard.load_error == ""
    assert plugins["redactor"].fail_policy == pb.FAIL_POLICY_OPEN
    assert plugins["usage"].fail_policy == pb.FAIL_POLICY_OPEN  # BACKGROUND's default
    assert plugins["auth"].timeout.ToMilliseconds() == 2000  # the class attribute
    broken = plugins["broken"]
    assert broken.status == pb.PLUGIN_STATUS_FAILED
    assert "broken.py" in broken.load_error
    assert "RuntimeError: broken plugin refuses to import" in broken.load_error
    assert "Traceback" not in broken.load_error

    only_ingress = await running.admin().ListPlugins(
        admin_pb.ListPluginsRequest(ring=pb.PLUGIN_HOOK_INGRESS), timeout=5
    )
    assert [p.name for p in only_ingress.plugins] == ["auth"]


async def test_list_counts_calls_in_the_stats(serve):
    running = await serve(
        [
            entry("counted", config={"sleep_s": 0.005}),
            entry(
                "limiter", "ingress", config={"action": "block", "status": 429, "error_type": "rate_limited"}
            ),
        ]
    )
    engine = running.engine()
    for _ in range(3):
        await engine.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT), timeout=5)

    plugins = by_name(await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5))

    counted = plugins["counted"].stats
    assert (counted.invocations, counted.errors, counted.blocks, counted.timeouts) == (3, 0, 0, 0)
    assert counted.total_latency_ms >= 15
    assert counted.avg_latency_ms == pytest.approx(counted.total_latency_ms / 3)
    assert 5 <= counted.p50_latency_ms <= counted.p99_latency_ms
    limiter = plugins["limiter"].stats
    assert (limiter.invocations, limiter.blocks) == (1, 1)


async def test_reload_swaps_in_the_edited_config(serve, workspace):
    running = await serve([entry("guard", config={"set_metadata": {"gen": "one"}})])
    engine = running.engine()
    before = await engine.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert (before.config_version, before.generation) == ("v1", 1)

    workspace.write_config(
        [
            entry("guard", config={"set_metadata": {"gen": "two"}}),
            entry("added", config={"set_metadata": {"added": True}}),
        ],
        version="v2",
    )
    reloaded = await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)

    assert (reloaded.config_version, reloaded.generation) == ("v2", 2)
    after = await engine.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert (after.config_version, after.generation) == ("v2", 2)
    assert [r.plugin for r in after.results] == ["guard", "added"]
    listing = await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert (listing.config_version, listing.generation) == ("v2", 2)


async def test_a_broken_reload_is_refused_naming_the_plugin_and_the_old_generation_serves(serve, workspace):
    running = await serve([entry("guard", config={"set_metadata": {"gen": "one"}})])
    workspace.write_config(
        [entry("guard"), entry("newcomer", entrypoint="broken.py:Broken")],
        version="v2",
    )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = refused.value.details() or ""
    assert "newcomer" in details
    assert "broken plugin refuses to import" in details
    assert "Traceback" not in details
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert (answer.config_version, answer.generation) == ("v1", 1)
    assert dict(answer.metadata)["gen"].string_value == "one"

    async def refused(content: bytes) -> str:
        """Reload ``content``: refused, and the first generation still serves."""
        workspace.config_path.write_bytes(content)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
        assert answer.generation == 1
        assert dict(answer.metadata)["gen"].string_value == "one"
        return failed.value.details() or ""

    # A config file that does not validate is refused the same way, naming entry and field.
    invalid = b"version: v3\nplugins:\n  - {name: x, entrypoint: scripted.py:Scripted, priority: high}\n"
    assert "priority" in await refused(invalid)
    # So is a file that is not text at all (was INTERNAL: a UnicodeDecodeError).
    assert "not UTF-8 text (byte 0x8a at offset 12)" in await refused(b"version: v4\n\x8a\xff\x00garbage\n")
    # And an empty file (an editor's truncation, a bad redirect): it would have turned every
    # plugin off (was OK, a generation with no plugins).
    assert "the file is empty" in await refused(b"")


async def test_disable_skips_the_plugin_and_enable_brings_it_back(serve):
    running = await serve(
        [
            entry("guard", config={"action": "block", "status": 403, "error_type": "denied"}),
            entry("after", config={"set_metadata": {"after": True}}),
        ]
    )
    admin, engine = running.admin(), running.engine()

    disabled = await admin.SetPluginEnabled(
        admin_pb.SetPluginEnabledRequest(name="guard", enabled=False), timeout=5
    )

    assert disabled.plugin.name == "guard"
    assert disabled.plugin.enabled is False
    assert disabled.plugin.status == pb.PLUGIN_STATUS_DISABLED
    answer = await engine.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert [(r.plugin, r.outcome) for r in answer.results] == [
        ("guard", pb.PLUGIN_OUTCOME_SKIPPED),
        ("after", pb.PLUGIN_OUTCOME_OK),
    ]
    listed = by_name(await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5))
    assert listed["guard"].status == pb.PLUGIN_STATUS_DISABLED

    enabled = await admin.SetPluginEnabled(
        admin_pb.SetPluginEnabledRequest(name="guard", enabled=True), timeout=5
    )
    assert enabled.plugin.status == pb.PLUGIN_STATUS_ACTIVE
    answer = await engine.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_BLOCK


async def test_enable_of_an_unknown_or_empty_name_is_refused(serve):
    running = await serve([entry("guard")])
    admin = running.admin()

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await admin.SetPluginEnabled(admin_pb.SetPluginEnabledRequest(name="nope", enabled=False), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in (unknown.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await admin.SetPluginEnabled(admin_pb.SetPluginEnabledRequest(enabled=False), timeout=5)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in (empty.value.details() or "")


async def test_the_admin_token_guards_the_admin_service_but_not_the_engine(serve):
    running = await serve([entry("guard")], server={"admin_token": TOKEN})
    admin = running.admin()
    request = admin_pb.ListPluginsRequest()

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.ListPlugins(request, timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in (missing.value.details() or "")

    for wrong in ("Bearer not-the-token", f"Basic {TOKEN}", "Bearer", TOKEN):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await admin.ListPlugins(request, timeout=5, metadata=(("authorization", wrong),))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, wrong
        assert TOKEN not in (denied.value.details() or "")

    for call, message in (
        (admin.ReloadConfig, admin_pb.ReloadConfigRequest()),
        (admin.SetPluginEnabled, admin_pb.SetPluginEnabledRequest(name="guard", enabled=False)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as guarded:
            await call(message, timeout=5)
        assert guarded.value.code() == grpc.StatusCode.UNAUTHENTICATED
    authorized = (("authorization", f"Bearer {TOKEN}"),)
    listing = await admin.ListPlugins(request, timeout=5, metadata=authorized)
    assert by_name(listing)["guard"].enabled is True  # the refused disable changed nothing
    reloaded = await admin.ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=5, metadata=authorized)
    assert reloaded.generation == 2

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH


async def test_the_admin_token_can_come_from_the_environment(serve, monkeypatch):
    monkeypatch.setenv("RINGD_ADMIN_TOKEN", TOKEN)
    running = await serve([entry("guard")])
    admin = running.admin()

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await admin.ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listing = await admin.ListPlugins(
        admin_pb.ListPluginsRequest(), timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)
    )
    assert [p.name for p in listing.plugins] == ["guard"]


async def test_bytes_that_are_not_a_protobuf_get_invalid_argument_from_admin_too(serve):
    running = await serve([entry("guard")])
    call = running.channel(running.admin_address).unary_unary("/ringd.v1.PluginAdminService/SetPluginEnabled")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"\xff\xff\xff\xff", timeout=5)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "not a valid ringd.v1.SetPluginEnabledRequest" in details
    assert "Traceback" not in details
    assert "<class" not in details
    listing = await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    assert [p.name for p in listing.plugins] == ["guard"]
