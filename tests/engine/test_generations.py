"""Hot swap: reloads under load, rejected reloads, draining and on_unload, stats across reloads."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import PluginOutcome, ReloadError

# A plugin that records, in the ring's metadata, the generation its config says it
# belongs to, and keeps what a test needs to check draining: how many calls are in
# flight, when the last one ended, and when (and with how many in flight) it was unloaded.
TAGGED = """
import asyncio
import time

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Tagged(BasePlugin):
    name = "tagged"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 2000

    def __init__(self, config=None):
        super().__init__(config)
        self.active = 0
        self.last_end = 0.0
        self.loaded_count = 0
        self.unloaded_at = None
        self.active_at_unload = None
        self.unload_count = 0

    async def on_load(self):
        self.loaded_count += 1

    async def execute(self, ctx):
        self.active += 1
        try:
            # A test may hold one ring in flight longer through the body.
            await asyncio.sleep(ctx.body.get("hold_s", self.config.get("sleep_s", 0.0)))
            ctx.metadata.setdefault("gens", {})[self.config["slot"]] = self.config.get("gen")
            return PluginResponse.passthrough()
        finally:
            self.active -= 1
            self.last_end = time.monotonic()

    async def on_unload(self):
        self.unload_count += 1
        self.unloaded_at = time.monotonic()
        self.active_at_unload = self.active
"""


async def eventually(predicate, what: str, timeout_s: float = 10.0) -> None:
    """Poll until ``predicate()`` holds (unloads run in tasks of their own); a bound for a busy machine."""
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s} s: {what}") from None


def tagged(name: str, gen: object, sleep_s: float = 0.0, **fields: object) -> str:
    parts = [
        f"name: {name}",
        "entrypoint: tagged.py:Tagged",
        f"config: {{slot: {name}, gen: {gen!r}, sleep_s: {sleep_s}}}",
    ]
    parts += [f"{key}: {value}" for key, value in fields.items()]
    return "{" + ", ".join(parts) + "}"


def config_text(version: str, *entries: str) -> str:
    lines = "\n".join(f"  - {entry}" for entry in entries)
    return f"version: {version}\nplugins:\n{lines}\n"


def instances(engine):
    return {name: slot.loaded.instance for name, slot in engine.generation.slots.items()}


@pytest.fixture
def with_tagged(workspace):
    workspace.plugin("tagged.py", TAGGED)
    return workspace


def generation_config(workspace, gen: int):
    return workspace.config(
        config_text(
            f"gen-{gen}",
            tagged("a", gen, 0.004),
            tagged("b", gen, 0.003),
            tagged("c", gen, 0.004),
            tagged("steady", "same", 0.0),  # identical in every generation
        )
    )


async def test_hot_swap_under_200_concurrent_rings(with_tagged, make_engine):
    engine = await make_engine(generation_config(with_tagged, 1))
    gen1 = instances(engine)
    finished: dict[str, float] = {}  # config version -> when its last ring returned
    rng = random.Random(7)
    started = 0
    swap_due = [asyncio.Event(), asyncio.Event()]  # set when a wave is well under way
    swapped = [asyncio.Event(), asyncio.Event()]
    in_flight_at_swap: dict[str, int] = {}

    async def one_ring(index: int):
        nonlocal started
        # Three waves of ~67 rings; wave k > 0 starts once swap k is done. Starts spread
        # over 40 ms, each ring ~11 ms long: ~20 rings in flight at a time.
        wave = index * 3 // 200
        if wave:
            await swapped[wave - 1].wait()
        await asyncio.sleep(rng.uniform(0, 0.04))
        body = {"model": "m", "i": index}
        started += 1
        if started in (40, 107):
            # The ring that triggers a swap stays in flight across it, whatever the load.
            body["hold_s"] = 0.1
            swap_due[wave].set()
        outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=body))
        finished[outcome.config_version] = time.monotonic()
        return outcome

    async def swaps():
        for index, gen in enumerate((2, 3)):
            await swap_due[index].wait()
            previous = engine.generation
            await engine.reload(generation_config(with_tagged, gen))
            in_flight_at_swap[previous.version] = previous.inflight
            swapped[index].set()

    *outcomes, _ = await asyncio.gather(*(one_ring(i) for i in range(200)), swaps())

    served = {}
    for outcome in outcomes:
        # None fails: every plugin ran and let the request through.
        assert outcome.action is PluginAction.PASSTHROUGH
        assert [r.outcome for r in outcome.results] == [PluginOutcome.OK] * 4
        # No ring sees two generations: all its plugins carry the ring's config version.
        gens = outcome.context.metadata["gens"]
        assert set(gens) == {"a", "b", "c", "steady"}
        assert {gens["a"], gens["b"], gens["c"]} == {int(outcome.config_version.split("-")[1])}
        served[outcome.config_version] = served.get(outcome.config_version, 0) + 1
    assert set(served) == {"gen-1", "gen-2", "gen-3"}, served
    assert sum(served.values()) == 200
    # Each swap happened with rings of the old generation still in flight.
    assert in_flight_at_swap["gen-1"] > 0
    assert in_flight_at_swap["gen-2"] > 0

    gen3 = instances(engine)
    # The unchanged plugin is one instance throughout, never unloaded, counting every ring.
    assert gen3["steady"] is gen1["steady"]
    assert gen1["steady"].unload_count == 0
    assert gen1["steady"].stats["invocations"] == 200

    await eventually(lambda: all(gen1[n].unload_count for n in ("a", "b", "c")), "gen-1 plugins unloaded")
    for name in ("a", "b", "c"):
        old = gen1[name]
        assert old is not gen3[name]
        assert old.unload_count == 1
        assert old.active_at_unload == 0, "unloaded while a call was still running"
        assert old.unloaded_at >= old.last_end
        assert old.unloaded_at >= finished["gen-1"], "unloaded before its last ring returned"
        assert gen3[name].unload_count == 0


async def test_new_rings_use_the_new_generation_at_once(with_tagged, make_engine):
    engine = await make_engine(generation_config(with_tagged, 1))
    slow = asyncio.create_task(engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()))
    await asyncio.sleep(0.002)
    await engine.reload(generation_config(with_tagged, 2))
    fast = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert fast.config_version == "gen-2"
    old = await slow
    assert old.config_version == "gen-1"
    assert old.context.metadata["gens"]["c"] == 1
    assert old.generation < fast.generation


async def test_a_plugin_kept_across_two_reloads_is_unloaded_after_the_oldest_ring(with_tagged, make_engine):
    # `shared` is unchanged from gen-1 to gen-2 and removed in gen-3. A gen-1 ring still
    # running it must finish before it is unloaded, though gen-2 drains at once.
    slow_shared = tagged("shared", "same", 1.0)  # outlasts two reloads even on a busy machine
    engine = await make_engine(with_tagged.config(config_text("gen-1", slow_shared)))
    shared = instances(engine)["shared"]
    ring = asyncio.create_task(engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()))
    await eventually(lambda: shared.active == 1, "the gen-1 ring is inside `shared`")
    await engine.reload(with_tagged.config(config_text("gen-2", slow_shared, tagged("x", 2))))
    await engine.reload(with_tagged.config(config_text("gen-3", tagged("x", 3))))
    await asyncio.sleep(0.02)
    assert not ring.done(), "the machine was too slow for this test's 1 s ring"
    assert shared.unload_count == 0, "unloaded while a gen-1 ring was still running it"
    outcome = await ring
    assert outcome.results[0].outcome is PluginOutcome.OK
    await eventually(lambda: shared.unload_count == 1, "`shared` unloaded after the ring")
    assert shared.active_at_unload == 0


async def test_a_reload_with_a_broken_plugin_is_rejected_and_the_old_generation_serves(
    with_tagged, make_engine
):
    workspace = with_tagged
    engine = await make_engine(generation_config(workspace, 1))
    before = engine.generation
    gen1 = instances(engine)
    workspace.plugin("broken.py", "from ringd.sdk import BasePlugin\nclass Broken(BasePlugin)\n    pass\n")
    bad = workspace.config(
        config_text(
            "gen-2",
            tagged("a", 2),
            tagged("fresh", 2),
            "{name: broken_plugin, entrypoint: 'broken.py:Broken'}",
        )
    )
    with pytest.raises(ReloadError) as caught:
        await engine.reload(bad)
    assert set(caught.value.errors) == {"broken_plugin"}
    assert "syntax error" in caught.value.errors["broken_plugin"]
    assert "broken_plugin" in str(caught.value)

    assert engine.generation is before
    assert instances(engine) == gen1
    assert all(plugin.unload_count == 0 for plugin in gen1.values())
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.config_version == "gen-1"
    assert outcome.context.metadata["gens"]["a"] == 1
    assert outcome.action is PluginAction.PASSTHROUGH

    # A later good reload still works.
    await engine.reload(generation_config(workspace, 2))
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.config_version == "gen-2"


async def test_a_rejected_reload_unloads_what_it_built_aside(workspace, make_engine):
    events = workspace.root / "events.log"
    workspace.plugin(
        "recorder.py",
        f"""
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Recorder(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            name = "recorder"

            def _log(self, what):
                with open({str(events)!r}, "a") as log:
                    log.write(f"{{what}} {{self.config['tag']}}\\n")

            async def on_load(self):
                self._log("load")

            async def on_unload(self):
                self._log("unload")

            async def execute(self, ctx):
                return PluginResponse.passthrough()
        """,
    )
    engine = await make_engine(
        workspace.config(config_text("v1", "{name: r, entrypoint: recorder.py:Recorder, config: {tag: old}}"))
    )
    bad = workspace.config(
        config_text(
            "v2",
            "{name: r, entrypoint: recorder.py:Recorder, config: {tag: new}}",
            "{name: gone, entrypoint: 'missing.py:Plugin'}",
        )
    )
    with pytest.raises(ReloadError):
        await engine.reload(bad)
    assert events.read_text().splitlines() == ["load old", "load new", "unload new"]
    assert engine.generation.config.version == "v1"


async def test_stats_survive_for_unchanged_plugins_and_restart_for_changed_ones(with_tagged, make_engine):
    workspace = with_tagged
    workspace.plugin(
        "edited.py",
        """
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Edited(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            name = "edited"
            version = "1.0.0"

            async def execute(self, ctx):
                ctx.metadata["edited"] = 1
                return PluginResponse.passthrough()
        """,
    )
    edited = "{name: edited, entrypoint: edited.py:Edited}"
    engine = await make_engine(
        workspace.config(
            config_text(
                "v1",
                tagged("keep", "k"),
                tagged("retuned", 1),
                tagged("removed", 1),
                edited,
            )
        )
    )
    v1 = instances(engine)
    for _ in range(5):
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert v1["keep"].stats["invocations"] == 5

    workspace.plugin(
        "edited.py",
        (workspace.root / "edited.py")
        .read_text()
        .replace('"1.0.0"', '"1.1.0"')
        .replace('metadata["edited"] = 1', 'metadata["edited"] = 2'),
    )
    await engine.reload(
        workspace.config(
            config_text(
                "v2",
                tagged("keep", "k", priority=1),  # order changes, the instance does not
                tagged("retuned", 2),
                tagged("added", 2),
                edited,
            )
        )
    )
    v2 = instances(engine)
    for _ in range(3):
        outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.results[0].plugin == "keep"
    assert outcome.context.metadata["edited"] == 2, "the edited file's new code runs"
    assert {r.plugin: r.version for r in outcome.results}["edited"] == "1.1.0"

    assert v2["keep"] is v1["keep"]
    assert v2["keep"].stats["invocations"] == 8
    assert v2["keep"].loaded_count == 1, "an unchanged plugin is not loaded again"
    for name in ("retuned", "edited"):
        assert v2[name] is not v1[name]
        assert v2[name].stats["invocations"] == 3
        assert v1[name].stats["invocations"] == 5
    assert v2["added"].stats["invocations"] == 3
    await eventually(lambda: v1["retuned"].unload_count and v1["removed"].unload_count, "v1 plugins unloaded")
    assert v1["keep"].unload_count == 0
    assert v1["retuned"].unload_count == 1
    assert v1["removed"].unload_count == 1


async def test_a_plugin_that_failed_to_load_is_retried_on_reload(workspace, make_engine):
    workspace.plugin("late.py", "from ringd.sdk import BasePlugin\nclass Late(BasePlugin)\n")
    cfg = workspace.write_yaml(config_text("v1", "{name: late, entrypoint: late.py:Late}"))
    from ringd.server.config import load_config

    engine = await make_engine(load_config(cfg))
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.decision is not None
    assert outcome.decision.status_code == 503

    workspace.plugin(
        "late.py",
        """
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Late(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            async def execute(self, ctx):
                return PluginResponse.passthrough()
        """,
    )
    await engine.reload(load_config(cfg))
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is PluginOutcome.OK


async def test_close_waits_for_rings_in_flight_then_unloads(with_tagged, make_engine):
    engine = await make_engine(with_tagged.config(config_text("v1", tagged("slow", 1, 0.05))))
    plugin = instances(engine)["slow"]
    ring = asyncio.create_task(engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()))
    await asyncio.sleep(0.01)
    await engine.close(grace_s=2.0)
    assert ring.done()
    assert (await ring).results[0].outcome is PluginOutcome.OK
    assert plugin.unload_count == 1
    assert plugin.active_at_unload == 0


async def test_a_reload_that_only_changes_priorities_reorders_the_ring(with_tagged, make_engine):
    workspace = with_tagged
    engine = await make_engine(
        workspace.config(config_text("v1", tagged("a", 0, priority=10), tagged("b", 0, priority=20)))
    )
    before = instances(engine)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert [r.plugin for r in outcome.results] == ["a", "b"]

    await engine.reload(
        workspace.config(config_text("v2", tagged("a", 0, priority=30), tagged("b", 0, priority=20)))
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert [r.plugin for r in outcome.results] == ["b", "a"]
    assert instances(engine) == before, "a priority change keeps the instances (and their stats)"


async def test_stream_mode_on_a_class_hooked_plugin_outside_post_flight_fails_its_load(
    workspace, make_engine
):
    # The entry names no hook, so the config cannot check stream_mode; the load does.
    workspace.plugin(
        "early.py",
        """
        from ringd.sdk import BasePlugin, PluginHook

        class Early(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
        """,
    )
    engine = await make_engine(
        workspace.config(
            """
            version: v1
            plugins:
              - {name: early, entrypoint: early.py:Early, stream_mode: buffer}
            """
        )
    )
    loaded = engine.generation.slots["early"].loaded
    assert loaded.instance is None
    assert (
        loaded.load_error
        == "field 'stream_mode' applies to post_flight plugins only; its ring is 'pre_flight'"
    )
