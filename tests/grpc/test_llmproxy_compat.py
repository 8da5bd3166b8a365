"""LLMProxy-style plugin files load from a config and run in every ring over gRPC.

The plugins below are written the way LLMProxy's marketplace plugins are (our own
code, in their style): they import from ``core.plugin_sdk`` and ``core.plugin_engine``,
log through ``self.logger`` in ``on_load``, compare actions to strings, read the
upstream answer through ``ctx.response.body.decode()``, build responses leniently,
return ``None`` for a passthrough, and one is a legacy function plugin.
"""

from __future__ import annotations

import json
import logging
import textwrap

import pytest
from support.rpc import metadata_of, payload, ring_request, wait_for
from support.workspace import entry

from ringd.v1 import plugin_pb2 as pb

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "I am fine, thanks."}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
}

TENANT_GATE = '''
"""An LLMProxy-style INGRESS plugin: header auth and a tenant tier."""
from typing import Any, Dict

from core.plugin_sdk import BasePlugin, PluginHook, PluginResponse
from core.plugin_engine import PluginContext, PluginState


class TenantGate(BasePlugin):
    name = "tenant_gate"
    hook = PluginHook.INGRESS
    version = "1.0.0"
    author = "compat-tests"
    description = "Rejects requests without a tenant header"

    def __init__(self, config: Dict[str, Any] = None):
        super().__init__(config)
        self.tiers = self.config.get("tiers", {})

    async def on_load(self):
        self.logger.info(f"TenantGate loaded with {len(self.tiers)} tiers")

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        assert isinstance(ctx.state, PluginState)
        tenant = ctx.request.headers.get("X-Tenant")  # Starlette headers read in any case
        if not tenant:
            return PluginResponse(action="block", status_code=401, error_type="no_tenant",
                                  message="X-Tenant header required")
        ctx.metadata["_tenant_tier"] = self.tiers.get(tenant, "free")
        ctx.metadata["client_host"] = ctx.request.client.host if ctx.request.client else None
        ctx.metadata["path"] = ctx.request.url.path
        # No return statement: LLMProxy treats None as passthrough.
'''

ACTION_PROBE = '''
"""Compares actions the way LLMProxy plugins do: as plain strings."""
from core.plugin_sdk import BasePlugin, PluginHook, PluginResponse, PluginAction
from core.plugin_engine import PluginContext

ROUTES = {"passthrough": "go", "block": "stop", "modify": "go", "cache_hit": "stop"}


class ActionProbe(BasePlugin):
    name = "action_probe"
    hook = PluginHook.PRE_FLIGHT
    version = "0.3.0"

    async def on_load(self):
        self.logger.info("probe ready")

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        probe = PluginResponse.block()
        default = PluginResponse()
        ctx.metadata["probe"] = {
            "eq": probe.action == "block",
            "in_set": probe.action in {"block", "cache_hit"},
            "lookup": ROUTES[probe.action],
            "fstring": f"{probe.action}",
            "default_action": default.action == "passthrough",
            "default_status": default.status_code,
            "block_defaults": [probe.status_code, probe.error_type, probe.message],
            "value": PluginAction.MODIFY.value,
        }
        ctx.body["probed"] = True
        # LLMProxy's lenient MODIFY: no body given, the in-place edit is kept.
        return PluginResponse(action="modify")
'''

BUDGET = """
from core.plugin_sdk import BasePlugin, PluginHook, PluginResponse
from core.plugin_engine import PluginContext


class Budget(BasePlugin):
    name = "budget"
    hook = PluginHook.PRE_FLIGHT

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        store = ctx.state.extra.get("store") if ctx.state else None
        session = ctx.session_id or "default"
        spent = await store.get_state(f"budget:{session}", 0) if store else 0
        if spent >= self.config.get("limit", 2):
            # A BLOCK with a code below 400 becomes 403, as in LLMProxy.
            return PluginResponse("block", 200, "budget_exceeded", f"session {session} is over budget")
        if store:
            await store.set_state(f"budget:{session}", spent + 1)
        return PluginResponse.passthrough()
"""

QUALITY_GATE = """
import json

from core.plugin_sdk import BasePlugin, PluginHook, PluginResponse
from core.plugin_engine import PluginContext


class QualityGate(BasePlugin):
    name = "quality_gate"
    hook = PluginHook.POST_FLIGHT
    timeout_ms = 50

    def _content(self, ctx: PluginContext) -> str:
        if not ctx.response or not hasattr(ctx.response, "body"):
            return ""
        data = json.loads(ctx.response.body.decode())
        return data["choices"][0]["message"]["content"]

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        content = self._content(ctx)
        ctx.metadata["_quality_status"] = "ok" if content.endswith(".") else "truncated"
        ctx.metadata["upstream_status"] = ctx.response.status_code
        ctx.response["choices"][0]["message"]["content"] = content.upper()
        return PluginResponse.passthrough()
"""

LEGACY = '''
"""LLMProxy legacy function plugins: the manifest names a function."""
import asyncio
import json


async def tag_request(ctx):
    ctx.metadata["legacy_tag"] = ctx.body.get("model")


def sync_counter(ctx):
    ctx.metadata["sync_thread"] = True


async def kill_switch(ctx):
    if ctx.metadata.get("kill"):
        ctx.error = "kill switch engaged"
        ctx.stop_chain = True


async def record_usage(ctx):
    store = ctx.state.extra["store"]
    usage = json.loads(ctx.response.body.decode())["usage"]
    await store.set_state(f"usage:{ctx.request_id}", usage["total_tokens"])
'''

BROKEN_CACHE = """
from core.plugin_sdk import BasePlugin, PluginHook, PluginResponse


class ForgetfulCache(BasePlugin):
    name = "forgetful_cache"
    hook = PluginHook.ROUTING

    async def execute(self, ctx):
        if ctx.metadata.get("hit"):
            return PluginResponse(action="cache_hit")  # no response: this plugin's error
        return PluginResponse.cache_hit(response={"id": "cached", "choices": []})
"""

LLMPROXY_PLUGINS = {
    "tenant_gate.py": TENANT_GATE,
    "action_probe.py": ACTION_PROBE,
    "budget.py": BUDGET,
    "quality_gate.py": QUALITY_GATE,
    "legacy.py": LEGACY,
    "broken_cache.py": BROKEN_CACHE,
}


@pytest.fixture
async def llmproxy(serve, workspace):
    for name, source in LLMPROXY_PLUGINS.items():
        (workspace.root / name).write_text(textwrap.dedent(source).lstrip())
    return await serve(
        [
            entry(
                "tenant_gate",
                "ingress",
                entrypoint="tenant_gate.py:TenantGate",
                config={"tiers": {"acme": "gold"}},
            ),
            entry("action_probe", "pre_flight", entrypoint="action_probe.py:ActionProbe"),
            entry("budget", "pre_flight", entrypoint="budget.py:Budget", config={"limit": 2}),
            entry("tag_request", "pre_flight", entrypoint="legacy.py:tag_request"),
            entry("sync_counter", "pre_flight", entrypoint="legacy.py:sync_counter"),
            entry("kill_switch", "routing", entrypoint="legacy.py:kill_switch", priority=1),
            entry("forgetful_cache", "routing", entrypoint="broken_cache.py:ForgetfulCache", priority=2),
            entry("quality_gate", "post_flight", entrypoint="quality_gate.py:QualityGate"),
            entry("record_usage", "background", entrypoint="legacy.py:record_usage"),
        ]
    )


async def test_every_llmproxy_style_plugin_loads(llmproxy, caplog):
    from ringd.v1 import admin_service_pb2 as admin_pb

    listed = await llmproxy.admin().ListPlugins(admin_pb.ListPluginsRequest())
    status = {plugin.name: (plugin.status, plugin.load_error) for plugin in listed.plugins}
    assert len(status) == 9
    failed = {name: error for name, (state, error) in status.items() if error}
    assert failed == {}


async def test_on_load_logs_through_self_logger(serve, workspace, caplog):
    (workspace.root / "tenant_gate.py").write_text(textwrap.dedent(TENANT_GATE).lstrip())
    with caplog.at_level(logging.INFO, logger="plugin.tenant_gate"):
        await serve([entry("tenant_gate", "ingress", entrypoint="tenant_gate.py:TenantGate")])
    assert any(
        r.name == "plugin.tenant_gate" and "TenantGate loaded" in r.getMessage() for r in caplog.records
    )


async def test_ingress_reads_starlette_style_request_and_returning_none_passes(llmproxy):
    engine = llmproxy.engine()
    request = ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT, headers={"x-tenant": "acme"})
    request.context.request.client_address = "203.0.113.7:51234"
    request.context.request.path = "/v1/chat/completions"
    answer = await engine.ExecuteRing(request)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(answer) == {
        "_tenant_tier": "gold",
        "client_host": "203.0.113.7",
        "path": "/v1/chat/completions",
    }
    refused = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_INGRESS, CHAT))
    assert refused.action == pb.PLUGIN_ACTION_BLOCK
    assert (refused.block.status_code, refused.block.error_type) == (401, "no_tenant")
    assert refused.decided_by == "tenant_gate"


async def test_pre_flight_string_actions_lenient_modify_legacy_functions(llmproxy):
    answer = await llmproxy.engine().ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT))
    assert answer.action == pb.PLUGIN_ACTION_MODIFY
    assert answer.decided_by == "action_probe"
    _, body = payload(answer, "body")
    assert body == {**CHAT, "probed": True}  # MODIFY without a body kept the in-place edit
    metadata = metadata_of(answer)
    assert metadata["probe"] == {
        "eq": True,
        "in_set": True,
        "lookup": "stop",
        "fstring": "block",
        "default_action": True,
        "default_status": 200,
        "block_defaults": [403, "plugin_block", "Blocked by plugin"],
        "value": "modify",
    }
    assert metadata["legacy_tag"] == "gpt-4o"
    assert metadata["sync_thread"] is True
    outcomes = {result.plugin: result.outcome for result in answer.results}
    assert set(outcomes.values()) == {pb.PLUGIN_OUTCOME_OK}


async def test_block_below_400_from_a_positional_response_becomes_403(llmproxy):
    engine = llmproxy.engine()
    for _ in range(2):
        ok = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT))
        assert ok.action == pb.PLUGIN_ACTION_MODIFY
    over = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_PRE_FLIGHT, CHAT))
    assert over.action == pb.PLUGIN_ACTION_BLOCK
    assert over.decided_by == "budget"
    assert (over.block.status_code, over.block.error_type) == (403, "budget_exceeded")
    assert over.block.message == "session default is over budget"  # no session id: "default"


async def test_routing_stop_chain_and_cache_hit_without_response(llmproxy):
    engine = llmproxy.engine()
    stopped = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_ROUTING, CHAT, metadata={"kill": True}))
    assert stopped.action == pb.PLUGIN_ACTION_BLOCK
    assert stopped.decided_by == "kill_switch"
    assert stopped.block.message == "kill switch engaged"

    cached = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_ROUTING, CHAT))
    assert cached.action == pb.PLUGIN_ACTION_CACHE_HIT
    assert payload(cached, "cached_response")[1] == {"id": "cached", "choices": []}

    # CACHE_HIT without a response is accepted at construction and fails the plugin
    # when the ring runs: ROUTING is fail-closed, so a 500 plugin_error block.
    broken = await engine.ExecuteRing(ring_request(pb.PLUGIN_HOOK_ROUTING, CHAT, metadata={"hit": True}))
    assert broken.action == pb.PLUGIN_ACTION_BLOCK
    assert (broken.block.status_code, broken.block.error_type) == (500, "plugin_error")
    failed = next(r for r in broken.results if r.plugin == "forgetful_cache")
    assert failed.outcome == pb.PLUGIN_OUTCOME_ERROR
    assert "CACHE_HIT needs response" in failed.error


async def test_post_flight_reads_response_body_bytes_and_status(llmproxy):
    answer = await llmproxy.engine().ExecuteRing(
        ring_request(pb.PLUGIN_HOOK_POST_FLIGHT, CHAT, response=ANSWER)
    )
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(answer) == {"_quality_status": "ok", "upstream_status": 200}
    _, response = payload(answer, "response")
    assert response["choices"][0]["message"]["content"] == "I AM FINE, THANKS."


async def test_background_legacy_function_reads_the_answer(llmproxy, workspace):
    request = ring_request(pb.PLUGIN_HOOK_BACKGROUND, CHAT, response=ANSWER, request_id="req-42")
    ack = await llmproxy.engine().ExecuteRing(request)
    assert ack.queued
    usage = await wait_for(lambda: workspace.stored("usage:req-42"))
    assert usage == 14


async def test_a_legacy_function_entry_without_a_hook_names_the_problem(serve, workspace):
    (workspace.root / "legacy.py").write_text(textwrap.dedent(LEGACY).lstrip())
    running = await serve([{"name": "tag", "entrypoint": "legacy.py:tag_request"}])
    from ringd.v1 import admin_service_pb2 as admin_pb

    listed = await running.admin().ListPlugins(admin_pb.ListPluginsRequest())
    (plugin,) = listed.plugins
    assert "set 'hook' in the entry" in plugin.load_error


def test_response_body_is_json_bytes_of_the_current_answer():
    from ringd.sdk import PluginContext

    ctx = PluginContext(response=dict(ANSWER))
    assert json.loads(ctx.response.body.decode()) == ANSWER
    ctx.response["id"] = "changed"
    assert json.loads(ctx.response.body.decode())["id"] == "changed"
    assert ctx.response.status_code == 200
    assert ctx.response["usage"]["total_tokens"] == 14
