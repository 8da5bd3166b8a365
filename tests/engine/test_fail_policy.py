"""Every kind of plugin failure under both fail policies (:mod:`ringd.server.ring`)."""

from __future__ import annotations

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome
from support.engine import SCRIPTED, chat_body, instance, ring_config, scripted

FAILING = """
import asyncio

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class QuotaBackendDown(Exception):
    pass


class RaisesKeyError(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "raises_key_error"

    async def execute(self, ctx):
        return ctx.body["no_such_field"]


class RaisesCustom(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "raises_custom"

    async def execute(self, ctx):
        raise QuotaBackendDown("quota backend down")


class BackendTimesOut(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "backend_times_out"
    timeout_ms = 1000

    async def execute(self, ctx):
        # The plugin's own call times out: its error, not a ringd timeout.
        await asyncio.wait_for(asyncio.sleep(1), 0.001)
        return PluginResponse.passthrough()


class RaisesCancelled(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "raises_cancelled"

    async def execute(self, ctx):
        await asyncio.sleep(0)
        raise asyncio.CancelledError()


class ReturnsNone(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "returns_none"

    async def execute(self, ctx):
        return None


class ReturnsString(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "returns_string"

    async def execute(self, ctx):
        return "ok"


class ModifiesWithoutBody(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "modifies_without_body"

    async def execute(self, ctx):
        ctx.body["seen"] = True
        return PluginResponse.modify()


class CacheHitWithoutResponse(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "cache_hit_without_response"

    async def execute(self, ctx):
        return PluginResponse.cache_hit()


class PassesWithHeaders(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "passes_with_headers"

    async def execute(self, ctx):
        response = PluginResponse.passthrough()
        response.headers = {"Retry-After": "30"}  # headers travel on a BLOCK only
        return response


class PassesWithHeadersAfterAwait(PassesWithHeaders):
    async def execute(self, ctx):
        await asyncio.sleep(0)
        return await super().execute(ctx)


class FailsOnLoad(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "fails_on_load"

    async def on_load(self):
        raise RuntimeError("model file missing")


class NoTimeout(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "no_timeout"
    timeout_ms = None


class ZeroTimeout(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "zero_timeout"
    timeout_ms = 0


class FailsInInit(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "fails_in_init"

    def __init__(self, config=None):
        super().__init__(config)
        raise ValueError("bad setting")
"""

RUNTIME_FAILURES = {
    "key_error": ("failing.py:RaisesKeyError", "KeyError: 'no_such_field'"),
    "custom_exception": ("failing.py:RaisesCustom", "QuotaBackendDown: quota backend down"),
    "own_timeout_error": ("failing.py:BackendTimesOut", "TimeoutError"),
    "raises_cancelled": ("failing.py:RaisesCancelled", "CancelledError raised by the plugin"),
    "returns_string": ("failing.py:ReturnsString", "returned str, expected PluginResponse"),
    "invalid_response": (
        "failing.py:CacheHitWithoutResponse",
        "PluginResponseError: CACHE_HIT needs response",
    ),
    # Alike whether the plugin finished at once (the ring's fast path) or suspended first.
    "passthrough_with_headers": (
        "failing.py:PassesWithHeaders",
        "PluginResponseError: headers are for BLOCK responses only",
    ),
    "passthrough_with_headers_after_await": (
        "failing.py:PassesWithHeadersAfterAwait",
        "PluginResponseError: headers are for BLOCK responses only",
    ),
}

LOAD_FAILURES = {
    "on_load_raises": ("failing.py:FailsOnLoad", "on_load raised RuntimeError: model file missing"),
    "init_raises": ("failing.py:FailsInInit", "construction raised ValueError: bad setting"),
    "syntax_error": ("broken.py:Anything", "syntax error in"),
    "import_raises": ("explodes.py:Anything", "raised ZeroDivisionError"),
    "missing_class": ("failing.py:NoSuchClass", "has no class or function 'NoSuchClass'"),
    "missing_file": ("not_there.py:Plugin", "cannot read plugin file"),
    "missing_module": ("no_such_pkg.plugins:Plugin", "cannot import module 'no_such_pkg.plugins'"),
    "not_a_plugin": ("failing.py:QuotaBackendDown", "is not a BasePlugin subclass or a function"),
    "class_timeout_none": ("failing.py:NoTimeout", "class attribute timeout_ms is None"),
    "class_timeout_zero": ("failing.py:ZeroTimeout", "class attribute timeout_ms is 0"),
}


@pytest.fixture
def with_failing(workspace):
    workspace.plugin("failing.py", FAILING)
    workspace.plugin("scripted.py", SCRIPTED)
    workspace.plugin(
        "broken.py",
        """
        from ringd.sdk import BasePlugin

        class Anything(BasePlugin)
            name = "broken"
        """,
    )
    workspace.plugin("explodes.py", "from ringd.sdk import BasePlugin\nVALUE = 1 / 0\n")
    return workspace


@pytest.mark.parametrize("kind", RUNTIME_FAILURES)
async def test_runtime_failure_under_fail_closed_blocks_500(with_failing, make_engine, kind):
    entrypoint, error_text = RUNTIME_FAILURES[kind]
    engine = await make_engine(
        with_failing.config(
            ring_config(
                f"{{name: bad, entrypoint: '{entrypoint}', fail_policy: closed}}",
                scripted("after"),
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "bad"
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (500, "plugin_error")
    assert "bad" in (outcome.decision.message or "")
    [result] = outcome.results
    assert result.outcome is PluginOutcome.ERROR
    assert error_text in (result.error or "")
    assert "ran" not in outcome.context.metadata
    stats = instance(engine, "bad").stats
    assert (stats["invocations"], stats["errors"], stats["timeouts"], stats["blocks"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("kind", RUNTIME_FAILURES)
async def test_runtime_failure_under_fail_open_is_bypassed(with_failing, make_engine, kind):
    entrypoint, error_text = RUNTIME_FAILURES[kind]
    engine = await make_engine(
        with_failing.config(
            ring_config(f"{{name: bad, entrypoint: '{entrypoint}', fail_policy: open}}", scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.decision is None
    assert [(r.plugin, r.outcome) for r in outcome.results] == [
        ("bad", PluginOutcome.BYPASSED),
        ("after", PluginOutcome.OK),
    ]
    assert error_text in (outcome.results[0].error or "")
    assert outcome.context.metadata["ran"] == ["after"]
    stats = instance(engine, "bad").stats
    assert (stats["invocations"], stats["errors"], stats["bypasses"]) == (1, 1, 1)


@pytest.mark.parametrize("kind", LOAD_FAILURES)
async def test_load_failure_under_fail_closed_blocks_503(with_failing, make_engine, kind):
    entrypoint, error_text = LOAD_FAILURES[kind]
    engine = await make_engine(
        with_failing.config(
            ring_config(scripted("before"), f"{{name: bad, entrypoint: '{entrypoint}'}}", scripted("after"))
        )
    )
    loaded = engine.generation.slots["bad"].loaded
    assert loaded.instance is None
    assert error_text in (loaded.load_error or "")
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "bad"
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (503, "plugin_unavailable")
    assert [(r.plugin, r.outcome) for r in outcome.results] == [
        ("before", PluginOutcome.OK),
        ("bad", PluginOutcome.ERROR),
    ]
    assert "failed to load" in (outcome.results[1].error or "")
    assert error_text in (outcome.results[1].error or "")
    assert outcome.context.metadata["ran"] == ["before"]


@pytest.mark.parametrize("kind", LOAD_FAILURES)
async def test_load_failure_under_fail_open_is_bypassed(with_failing, make_engine, kind):
    entrypoint, error_text = LOAD_FAILURES[kind]
    engine = await make_engine(
        with_failing.config(
            ring_config(f"{{name: bad, entrypoint: '{entrypoint}', fail_policy: open}}", scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.PASSTHROUGH
    assert [(r.plugin, r.outcome) for r in outcome.results] == [
        ("bad", PluginOutcome.BYPASSED),
        ("after", PluginOutcome.OK),
    ]
    assert error_text in (outcome.results[0].error or "")
    assert outcome.context.metadata["ran"] == ["after"]
    assert engine.generation.slots["bad"].loaded.metrics.bypasses == 1


async def test_a_load_failure_does_not_stop_the_others_loading(with_failing, make_engine):
    engine = await make_engine(
        with_failing.config(
            ring_config(
                scripted("first"),
                "{name: syntax, entrypoint: 'broken.py:Anything', fail_policy: open}",
                "{name: on_load, entrypoint: 'failing.py:FailsOnLoad', fail_policy: open}",
                "{name: missing, entrypoint: 'not_there.py:Plugin', fail_policy: open}",
                scripted("last"),
            )
        )
    )
    slots = engine.generation.slots
    assert {name for name, slot in slots.items() if slot.loaded.instance is not None} == {"first", "last"}
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["first", "last"]
    assert [r.outcome for r in outcome.results] == [
        PluginOutcome.OK,
        PluginOutcome.BYPASSED,
        PluginOutcome.BYPASSED,
        PluginOutcome.BYPASSED,
        PluginOutcome.OK,
    ]


@pytest.mark.parametrize(
    ("hook", "blocks"),
    [
        (PluginHook.INGRESS, True),
        (PluginHook.PRE_FLIGHT, True),
        (PluginHook.ROUTING, True),
        (PluginHook.POST_FLIGHT, False),
        (PluginHook.BACKGROUND, False),
    ],
)
async def test_default_fail_policy_per_ring(with_failing, make_engine, hook, blocks):
    engine = await make_engine(
        with_failing.config(
            ring_config(
                f"{{name: bad, entrypoint: 'failing.py:RaisesCustom', hook: {hook.value}}}",
                scripted("after", hook=hook.value),
            )
        )
    )
    outcome = await engine.execute_ring(hook, PluginContext(response={"id": "upstream"}))
    if blocks:
        assert outcome.action is PluginAction.BLOCK
        assert outcome.decision is not None
        assert outcome.decision.status_code == 500
        assert outcome.results[0].outcome is PluginOutcome.ERROR
        assert "ran" not in outcome.context.metadata
    else:
        assert outcome.action is PluginAction.PASSTHROUGH
        assert outcome.results[0].outcome is PluginOutcome.BYPASSED
        assert outcome.context.metadata["ran"] == ["after"]


async def test_a_valid_block_from_a_fail_open_plugin_still_blocks(with_failing, make_engine):
    block = {"do": "block", "status": 451, "error_type": "legal"}
    engine = await make_engine(
        with_failing.config(
            ring_config(
                scripted("blocker", config=block, fail_policy="open", hook="post_flight"),
                scripted("after", hook="post_flight"),
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.POST_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (451, "legal")
    assert outcome.context.metadata["ran"] == ["blocker"]


async def test_fail_policy_closed_on_a_post_flight_plugin_blocks(with_failing, make_engine):
    engine = await make_engine(
        with_failing.config(
            ring_config(
                "{name: bad, entrypoint: 'failing.py:ReturnsString', hook: post_flight, fail_policy: closed}"
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.POST_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decision is not None
    assert outcome.decision.status_code == 500


# --------------------------------------------------------------------------- circuit breaker


SETS_ACTION = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class SetsAction(BasePlugin):
    hook = PluginHook.PRE_FLIGHT
    name = "sets_action"

    async def execute(self, ctx):
        response = PluginResponse.passthrough()
        response.action = self.config["action"]  # a string, set after construction
        return response
"""


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("passthrough", PluginAction.PASSTHROUGH),
        ("modify", PluginAction.MODIFY),
        ("block", PluginAction.BLOCK),
    ],
)
async def test_an_action_set_as_a_string_after_construction_counts_as_its_member(
    workspace, make_engine, action, expected
):
    workspace.plugin("sets_action.py", SETS_ACTION)
    workspace.plugin("scripted.py", SCRIPTED)
    entry = f"{{name: setter, entrypoint: 'sets_action.py:SetsAction', config: {{action: {action}}}}}"
    engine = await make_engine(workspace.config(ring_config(entry, scripted("after"))))

    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))

    ran = [result.plugin for result in outcome.results]
    assert outcome.action is expected
    if expected is PluginAction.BLOCK:
        assert ran == ["setter"]
        assert outcome.decision is not None
        assert outcome.decision.status_code == 403
        assert instance(engine, "setter").stats["blocks"] == 1
    else:  # the ring goes on to the next plugin
        assert ran == ["setter", "after"]
        assert outcome.results[0].action is expected
    if expected is PluginAction.PASSTHROUGH:
        assert outcome.decision is None
        assert outcome.decided_by is None


async def test_an_unknown_action_set_after_construction_is_the_plugins_error(workspace, make_engine):
    workspace.plugin("sets_action.py", SETS_ACTION)
    workspace.plugin("scripted.py", SCRIPTED)
    entry = "{name: setter, entrypoint: 'sets_action.py:SetsAction', config: {action: allow}}"
    engine = await make_engine(workspace.config(ring_config(entry, scripted("after"))))

    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))

    assert outcome.action is PluginAction.BLOCK  # fail-closed: PRE_FLIGHT's default
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (500, "plugin_error")
    [result] = outcome.results
    assert result.outcome is PluginOutcome.ERROR
    assert "Invalid PluginResponse action 'allow'" in (result.error or "")
