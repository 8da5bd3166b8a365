"""ringd.testing, as a plugin author uses it: one plugin on a context, a ring from a snippet.

The ring tests check the engine's semantics come through the kit unchanged: priority
order, fail policies, timeouts (a plugin that hangs, never a tight bound), load failures,
config errors naming the field, and a store that lasts across runs.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from ringd.sdk import BasePlugin, PluginAction, PluginContext, PluginHook, PluginResponse
from ringd.server.config import ConfigError
from ringd.testing import RingHarness, make_context, plugin_state, run_plugin, run_ring


class Counter(BasePlugin):
    name = "counter"
    hook = PluginHook.INGRESS

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        seen = await ctx.state.extra["store"].incr("counter:" + ctx.request.headers.get("x-user", "?"))
        ctx.metadata["seen"] = seen
        if seen > self.config.get("limit", 2):
            return PluginResponse.block(429, "too_many", f"seen {seen} times")
        return PluginResponse.passthrough()


class ReturnsText(BasePlugin):
    name = "returns_text"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        return "ok"  # type: ignore[return-value]


async def test_run_plugin_on_a_context_with_a_store() -> None:
    plugin = Counter({"limit": 1})
    async with plugin_state() as state:
        first = make_context({"model": "m"}, state=state, headers={"X-User": "ann"})
        second = make_context({"model": "m"}, state=state, headers={"X-User": "ann"})

        allowed = await run_plugin(plugin, first)
        refused = await run_plugin(plugin, second)

    assert allowed.action is PluginAction.PASSTHROUGH
    assert first.metadata == {"seen": 1}
    assert first.request.headers == {"x-user": "ann"}  # lower-cased, as ringd sends them
    assert (refused.action, refused.status_code, refused.message) == (PluginAction.BLOCK, 429, "seen 2 times")


async def test_a_file_store_outlives_the_block(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with plugin_state(path) as state:
        await run_plugin(Counter(), make_context(state=state, headers={"x-user": "bo"}))
    async with plugin_state(path) as state:
        assert await state.extra["store"].get_state("counter:bo") == 1


async def test_run_plugin_names_a_plugin_that_returns_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="plugin 'returns_text' returned str, not a PluginResponse"):
        await run_plugin(ReturnsText(), make_context())


async def test_run_plugin_lets_the_plugins_exception_through() -> None:
    with pytest.raises(KeyError):  # no store in a bare context: the plugin's own error
        await run_plugin(Counter(), make_context())


PLUGINS = """
import asyncio
from ringd.sdk import BasePlugin, PluginResponse


class Tag(BasePlugin):
    name = "tag"

    async def execute(self, ctx):
        ctx.metadata.setdefault("order", []).append(self.config["tag"])
        return PluginResponse.passthrough()


class Boom(BasePlugin):
    name = "boom"

    async def execute(self, ctx):
        raise RuntimeError("kaput")


class Hang(BasePlugin):
    name = "hang"

    async def execute(self, ctx):
        await asyncio.sleep(3600)
        return PluginResponse.passthrough()


class Rewrite(BasePlugin):
    name = "rewrite"

    async def execute(self, ctx):
        return PluginResponse.modify(body={**ctx.body, "model": "small"})
"""


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    # The loader caches plugin modules by content: a token keeps this test's module its own.
    (tmp_path / "plugins.py").write_text(PLUGINS + f"\n# {uuid.uuid4().hex}\n")
    return tmp_path


async def test_a_ring_runs_in_priority_order_from_a_list_of_entries(plugins_dir: Path) -> None:
    entries = [
        {
            "name": "late",
            "entrypoint": "plugins.py:Tag",
            "hook": "pre_flight",
            "priority": 90,
            "config": {"tag": "late"},
        },
        {
            "name": "early",
            "entrypoint": "plugins.py:Tag",
            "hook": "pre_flight",
            "priority": 5,
            "config": {"tag": "early"},
        },
        {"name": "rewrite", "entrypoint": "plugins.py:Rewrite", "hook": "pre_flight", "priority": 50},
    ]

    outcome = await run_ring(entries, "pre_flight", {"model": "big"}, base_dir=plugins_dir)

    assert outcome.action is PluginAction.MODIFY
    assert outcome.context.metadata["order"] == ["early", "late"]
    assert outcome.context.body == {"model": "small"}
    assert [r.plugin for r in outcome.results] == ["early", "rewrite", "late"]


async def test_fail_policies_from_a_yaml_snippet(plugins_dir: Path) -> None:
    config = textwrap.dedent(
        """
        plugins:
          - {name: boom_open, entrypoint: plugins.py:Boom, hook: post_flight, fail_policy: open}
          - {name: tag, entrypoint: plugins.py:Tag, hook: post_flight, config: {tag: after}}
          - {name: boom_closed, entrypoint: plugins.py:Boom, hook: ingress}
        """
    )
    async with RingHarness(config, base_dir=plugins_dir) as rings:
        post = await rings.run("post_flight", {}, response={"choices": []})
        ingress = await rings.run("ingress", {})

    assert post.action is PluginAction.PASSTHROUGH
    assert [(r.plugin, r.outcome.value) for r in post.results] == [("boom_open", "bypassed"), ("tag", "ok")]
    assert "kaput" in (post.results[0].error or "")
    assert ingress.action is PluginAction.BLOCK
    assert ingress.decision is not None
    assert (ingress.decision.status_code, ingress.decision.error_type) == (500, "plugin_error")


async def test_a_plugin_past_its_timeout_blocks_with_504(plugins_dir: Path) -> None:
    config = {
        "plugins": [{"name": "hang", "entrypoint": "plugins.py:Hang", "hook": "routing", "timeout_ms": 50}]
    }

    outcome = await run_ring(config, "routing", {}, base_dir=plugins_dir)

    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (504, "plugin_timeout")
    assert outcome.results[0].outcome.value == "timeout"


async def test_the_callers_deadline_cuts_a_plugins_time(plugins_dir: Path) -> None:
    config = [{"name": "hang", "entrypoint": "plugins.py:Hang", "hook": "routing", "timeout_ms": 3_600_000}]

    async with RingHarness(config, base_dir=plugins_dir) as rings:
        outcome = await rings.run("routing", {}, deadline_s=0.1)

    assert outcome.decision is not None
    assert outcome.decision.error_type == "plugin_timeout"


async def test_run_rings_carries_the_context_and_stops_at_a_block(plugins_dir: Path) -> None:
    config = [
        {"name": "tag", "entrypoint": "plugins.py:Tag", "hook": "ingress", "config": {"tag": "in"}},
        {"name": "rewrite", "entrypoint": "plugins.py:Rewrite", "hook": "pre_flight"},
        {"name": "boom", "entrypoint": "plugins.py:Boom", "hook": "routing"},
        {"name": "never", "entrypoint": "plugins.py:Tag", "hook": "post_flight", "config": {"tag": "x"}},
    ]
    async with RingHarness(config, base_dir=plugins_dir) as rings:
        outcomes = await rings.run_rings(
            ["ingress", "pre_flight", "routing", "post_flight"], {"model": "big"}
        )

    assert [o.ring.value for o in outcomes] == ["ingress", "pre_flight", "routing"]
    assert outcomes[-1].action is PluginAction.BLOCK
    assert outcomes[-1].context.body == {"model": "small"}
    assert outcomes[-1].context.metadata["order"] == ["in"]


async def test_a_plugin_that_fails_to_load_is_a_503_block(tmp_path: Path) -> None:
    config = [{"name": "missing", "entrypoint": "nowhere.py:Nothing", "hook": "ingress"}]

    outcome = await run_ring(config, "ingress", {}, base_dir=tmp_path)

    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (503, "plugin_unavailable")


async def test_config_errors_name_the_entry_and_field() -> None:
    with pytest.raises(ConfigError, match="timeout_ms"):
        RingHarness([{"name": "x", "entrypoint": "plugins.py:Tag", "timeout_ms": "soon"}])
    with pytest.raises(TypeError, match="config must be YAML text, a mapping or a list"):
        RingHarness(42)  # type: ignore[arg-type]


async def test_an_unknown_ring_is_named(plugins_dir: Path) -> None:
    async with RingHarness([], base_dir=plugins_dir) as rings:
        with pytest.raises(ValueError, match="unknown ring 'preflight'"):
            await rings.run("preflight", {})


async def test_the_store_lasts_across_runs_and_can_be_inspected(ring_harness, tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(_counter_source())
    rings = await ring_harness([{"name": "counter", "entrypoint": "counter.py:Counter"}], base_dir=tmp_path)

    answers = [await rings.run("ingress", {}, headers={"x-user": "cy"}) for _ in range(3)]

    assert [a.action.value for a in answers] == ["passthrough", "passthrough", "block"]
    assert await rings.store.get_state("counter:cy") == 3


def _counter_source() -> str:
    return textwrap.dedent(
        f"""
        from ringd.sdk import BasePlugin, PluginHook, PluginResponse


        class Counter(BasePlugin):
            name = "counter"
            hook = PluginHook.INGRESS

            async def execute(self, ctx):
                seen = await ctx.state.extra["store"].incr("counter:" + ctx.request.headers["x-user"])
                if seen > 2:
                    return PluginResponse.block(429, "too_many", "slow down")
                return PluginResponse.passthrough()

        # {uuid.uuid4().hex}
        """
    )


async def test_the_fixtures_give_a_context_on_a_fresh_store(make_ctx, plugin_state) -> None:
    ctx = make_ctx({"model": "m"}, headers={"x-user": "di"})

    await run_plugin(Counter(), ctx)

    assert ctx.state is plugin_state
    assert await plugin_state.extra["store"].get_state("counter:di") == 1
