"""Ring semantics through the real loader: plugin files and a YAML config under tmp_path.

Covers the four actions, ordering, metadata and in-place edits, stop_chain, disabled
plugins, timeouts and deadlines, every kind of failure under both fail policies, and
the circuit breaker.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.engine import Outcome, UnknownPluginError

# One configurable plugin: each config entry names its own instance, so a test lays a
# ring out in YAML alone. `ran` in the metadata lists the plugins that ran, in order.
SCRIPTED = """
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Scripted(BasePlugin):
    name = "scripted"
    hook = PluginHook.PRE_FLIGHT
    version = "1.2.3"

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        tag = self.config["tag"]
        ctx.metadata.setdefault("ran", []).append(tag)
        seen = ctx.metadata.setdefault("seen", {})
        seen[tag] = {"model": ctx.body.get("model"), "meta": ctx.metadata.get("note")}
        do = self.config.get("do", "pass")
        if do == "note":
            ctx.metadata["note"] = f"from {tag}"
        elif do == "append":
            ctx.body.setdefault("messages", []).append({"role": "system", "content": tag})
        elif do == "modify":
            return PluginResponse.modify(body=dict(self.config["body"]), message="rewritten")
        elif do == "block":
            return PluginResponse.block(
                self.config["status"], self.config["error_type"], self.config.get("message", "")
            )
        elif do == "cache":
            return PluginResponse.cache_hit(response=dict(self.config["response"]))
        elif do == "stop":
            ctx.error = self.config["error"]
            ctx.stop_chain = True
        return PluginResponse.passthrough(message=f"{tag} ok")
"""


def ring_config(*entries: str, extra: str = "") -> str:
    """A config whose plugins are ``entries`` (YAML mappings written inline)."""
    lines = "\n".join(f"  - {entry}" for entry in entries)
    return f"version: test-1\n{extra}plugins:\n{lines}\n"


def scripted(name: str, **fields: object) -> str:
    """An inline YAML entry for the Scripted plugin; ``config`` gets ``tag: name``."""
    config = {"tag": name, **fields.pop("config", {})}  # type: ignore[dict-item]
    parts = [f"name: {name}", "entrypoint: scripted.py:Scripted", f"config: {config!r}"]
    parts += [f"{key}: {value}" for key, value in fields.items()]
    return "{" + ", ".join(parts) + "}"


@pytest.fixture
def with_scripted(ws):
    ws.plugin("scripted.py", SCRIPTED)
    return ws


def instance(engine, name):
    return engine.generation.slots[name].loaded.instance


def chat_body() -> dict:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


# --------------------------------------------------------------------------- actions


async def test_passthrough_ring_runs_every_plugin_and_keeps_the_body(with_scripted, make_engine):
    engine = await make_engine(with_scripted.config(ring_config(scripted("a"), scripted("b"))))
    ctx = PluginContext(body=chat_body())
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert not outcome.ended
    assert outcome.decision is None
    assert outcome.decided_by is None
    assert outcome.context is ctx
    assert ctx.body == chat_body()
    assert ctx.metadata["ran"] == ["a", "b"]
    assert [(r.plugin, r.outcome, r.action) for r in outcome.results] == [
        ("a", Outcome.OK, PluginAction.PASSTHROUGH),
        ("b", Outcome.OK, PluginAction.PASSTHROUGH),
    ]
    assert [r.message for r in outcome.results] == ["a ok", "b ok"]
    assert all(r.version == "1.2.3" and r.error is None for r in outcome.results)
    assert all(r.latency_ms >= 0 for r in outcome.results)
    assert outcome.config_version == "test-1"
    assert instance(engine, "a").stats["invocations"] == 1


async def test_modify_replaces_the_body_for_later_plugins(with_scripted, make_engine):
    new_body = {"model": "small-model", "messages": []}
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("first"),
                scripted("rewriter", config={"do": "modify", "body": new_body}),
                scripted("last"),
            )
        )
    )
    ctx = PluginContext(body=chat_body())
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    assert outcome.action is PluginAction.MODIFY
    assert outcome.context.body == new_body
    assert ctx.metadata["seen"]["first"]["model"] == "gpt-4o"
    assert ctx.metadata["seen"]["last"]["model"] == "small-model"
    assert outcome.results[1].action is PluginAction.MODIFY
    assert outcome.results[1].message == "rewritten"
    assert outcome.decided_by is None, "MODIFY does not end the ring"


async def test_in_place_body_edits_are_kept(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("x", config={"do": "append"}), scripted("y", config={"do": "append"}))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.context.body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "x"},
        {"role": "system", "content": "y"},
    ]


async def test_metadata_passes_between_plugins_and_from_the_caller(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("reader_before"), scripted("writer", config={"do": "note"}), scripted("reader")
            )
        )
    )
    ctx = PluginContext(body=chat_body(), metadata={"_from_gateway": 7})
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    seen = outcome.context.metadata["seen"]
    assert seen["reader_before"]["meta"] is None
    assert seen["reader"]["meta"] == "from writer"
    assert outcome.context.metadata["_from_gateway"] == 7


async def test_block_ends_the_ring_with_its_status_and_error_type(with_scripted, make_engine):
    block = {"do": "block", "status": 429, "error_type": "rate_limited", "message": "slow down"}
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("before"), scripted("limiter", config=block), scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.ended
    assert outcome.decided_by == "limiter"
    assert outcome.decision is not None
    assert outcome.decision.status_code == 429
    assert outcome.decision.error_type == "rate_limited"
    assert outcome.decision.message == "slow down"
    assert outcome.context.metadata["ran"] == ["before", "limiter"]
    assert [r.plugin for r in outcome.results] == ["before", "limiter"]
    assert instance(engine, "after").stats["invocations"] == 0
    stats = instance(engine, "limiter").stats
    assert (stats["blocks"], stats["errors"]) == (1, 0)


async def test_cache_hit_ends_the_ring_with_the_response(with_scripted, make_engine):
    cached = {"id": "chatcmpl-cached", "choices": [{"message": {"content": "hello"}}]}
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("cache", config={"do": "cache", "response": cached}), scripted("after"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.CACHE_HIT
    assert outcome.ended
    assert outcome.decided_by == "cache"
    assert outcome.decision is not None
    assert outcome.decision.response == cached
    assert outcome.context.metadata["ran"] == ["cache"]
    assert instance(engine, "cache").stats["blocks"] == 0


async def test_priority_orders_the_ring_and_ties_keep_config_order(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("p20", priority=20),
                scripted("p10_first", priority=10),
                scripted("p10_second", priority=10),
                scripted("p5", priority=5),
                scripted("default"),  # priority 100
                scripted("negative", priority=-1),
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    expected = ["negative", "p5", "p10_first", "p10_second", "p20", "default"]
    assert outcome.context.metadata["ran"] == expected
    assert [r.plugin for r in outcome.results] == expected


async def test_stop_chain_ends_the_ring_as_a_block_carrying_ctx_error(with_scripted, make_engine):
    stop = {"do": "stop", "error": "prompt injection detected"}
    engine = await make_engine(
        with_scripted.config(ring_config(scripted("guard", config=stop), scripted("after")))
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body=chat_body()))
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "guard"
    assert outcome.decision is not None
    assert outcome.decision.status_code >= 400
    assert outcome.decision.message == "prompt injection detected"
    assert outcome.context.metadata["ran"] == ["guard"]
    assert instance(engine, "guard").stats["blocks"] == 1


async def test_disabled_in_config_is_skipped_and_not_run(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(scripted("first"), scripted("disabled", enabled="false"), scripted("last"))
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["first", "last"]
    assert [(r.plugin, r.outcome) for r in outcome.results] == [
        ("first", Outcome.OK),
        ("disabled", Outcome.SKIPPED),
        ("last", Outcome.OK),
    ]
    assert outcome.results[1].action is None
    assert instance(engine, "disabled").stats["invocations"] == 0


async def test_set_enabled_turns_a_plugin_off_and_on(with_scripted, make_engine):
    engine = await make_engine(with_scripted.config(ring_config(scripted("a"), scripted("b"))))
    engine.set_enabled("a", False)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["b"]
    assert outcome.results[0].outcome is Outcome.SKIPPED
    assert instance(engine, "a").stats["invocations"] == 0

    engine.set_enabled("a", True)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["a", "b"]
    assert instance(engine, "a").stats["invocations"] == 1

    with pytest.raises(UnknownPluginError):
        engine.set_enabled("nope", False)


async def test_a_disabled_blocker_does_not_block(with_scripted, make_engine):
    block = {"do": "block", "status": 403, "error_type": "denied"}
    engine = await make_engine(
        with_scripted.config(ring_config(scripted("deny", config=block, enabled="false"), scripted("b")))
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.context.metadata["ran"] == ["b"]


async def test_each_ring_runs_only_its_own_plugins(with_scripted, make_engine):
    engine = await make_engine(
        with_scripted.config(
            ring_config(
                scripted("auth", hook="ingress"),
                scripted("pii"),  # the class attribute: pre_flight
                scripted("router", hook="ROUTING"),
            )
        )
    )
    ran = {}
    for hook in PluginHook:
        outcome = await engine.execute_ring(hook, PluginContext())
        ran[hook] = outcome.context.metadata.get("ran", [])
    assert ran == {
        PluginHook.INGRESS: ["auth"],
        PluginHook.PRE_FLIGHT: ["pii"],
        PluginHook.ROUTING: ["router"],
        PluginHook.POST_FLIGHT: [],
        PluginHook.BACKGROUND: [],
    }


async def test_engine_injects_the_shared_state_with_the_store(ws, make_engine, store):
    ws.plugin(
        "counter.py",
        """
        from ringd.sdk import BasePlugin, PluginResponse

        class Counter(BasePlugin):
            name = "counter"

            async def execute(self, ctx):
                count = await ctx.state.extra["store"].incr("requests")
                ctx.metadata["count"] = count
                return PluginResponse.passthrough()
        """,
    )
    engine = await make_engine(
        ws.config(ring_config("{name: counter, entrypoint: counter.py:Counter, timeout_ms: 1000}"))
    )
    outcomes = [await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()) for _ in range(3)]
    assert [o.context.metadata["count"] for o in outcomes] == [1, 2, 3]
    assert await store.get_state("requests") == 3


# --------------------------------------------------------------------------- timeouts

SLEEPER = """
import asyncio

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Sleeper(BasePlugin):
    name = "sleeper"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 50

    def __init__(self, config=None):
        super().__init__(config)
        self.cancelled = 0
        self.finished = 0
        self.started = 0

    async def execute(self, ctx):
        self.started += 1
        try:
            await asyncio.sleep(self.config.get("sleep_s", 30.0))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return PluginResponse.passthrough()


class PatientSleeper(Sleeper):
    timeout_ms = 2000
"""


@pytest.fixture
def with_sleeper(ws):
    ws.plugin("sleeper.py", SLEEPER)
    ws.plugin("scripted.py", SCRIPTED)
    return ws


async def timed_ring(engine, hook=PluginHook.PRE_FLIGHT, **kwargs):
    started = time.monotonic()
    outcome = await engine.execute_ring(hook, PluginContext(body=chat_body()), **kwargs)
    return outcome, time.monotonic() - started


async def test_a_plugin_past_its_timeout_is_cut_and_cancelled(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper}", scripted("after")))
    )
    outcome, elapsed = await timed_ring(engine)
    # Behaviour, not speed (the machine may be busy): cut at the timeout, not left to sleep 30 s.
    assert 0.050 <= elapsed < 10.0
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decided_by == "slow"
    assert outcome.decision is not None
    assert (outcome.decision.status_code, outcome.decision.error_type) == (504, "plugin_timeout")
    result = outcome.results[0]
    assert result.outcome is Outcome.TIMEOUT
    assert "timed out after 50 ms" in (result.error or "")
    assert result.latency_ms >= 50
    assert "ran" not in outcome.context.metadata, "fail closed: nothing after the timeout ran"
    slow = instance(engine, "slow")
    stats = slow.stats
    assert (stats["invocations"], stats["timeouts"], stats["errors"]) == (1, 1, 1)
    assert slow.cancelled == 1, "the plugin's coroutine was cancelled, not left running"
    assert slow.finished == 0


async def test_config_timeout_overrides_the_class_attribute(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: quick, entrypoint: sleeper.py:PatientSleeper, timeout_ms: 30}",
                "{name: patient, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000,"
                " fail_policy: open, config: {sleep_s: 0.1}}",
            )
        )
    )
    engine.set_enabled("quick", False)
    outcome, elapsed = await timed_ring(engine)
    # 100 ms is past the class's 50 ms but within the entry's 5000 ms: it completes.
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[1].outcome is Outcome.OK
    assert elapsed >= 0.1

    # The class allows 2000 ms; the entry's 30 ms wins.
    engine.set_enabled("quick", True)
    outcome, elapsed = await timed_ring(engine)
    assert elapsed >= 0.030
    assert outcome.results[0].outcome is Outcome.TIMEOUT
    assert "timed out after 30 ms" in (outcome.results[0].error or "")
    assert instance(engine, "quick").stats["timeouts"] == 1
    assert instance(engine, "patient").stats["timeouts"] == 0


async def test_a_deadline_shorter_than_the_timeout_cuts_it_further(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 20000}"))
    )
    outcome, elapsed = await timed_ring(engine, deadline=time.monotonic() + 0.03)
    assert 0.025 <= elapsed < 10.0, "cut at the 30 ms deadline, far before the 20 s timeout"
    assert outcome.decision is not None
    assert outcome.decision.status_code == 504
    assert outcome.results[0].outcome is Outcome.TIMEOUT
    stats = instance(engine, "slow").stats
    assert (stats["timeouts"], stats["errors"]) == (1, 1)


async def test_a_deadline_spans_the_whole_ring(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: one, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.4}}",
                "{name: two, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.4}}",
                "{name: three, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.4}}",
            )
        )
    )
    # Each plugin alone fits its 5 s, but the three together overrun a 1 s deadline
    # (two fit with 200 ms to spare, a margin for a busy machine).
    outcome, elapsed = await timed_ring(engine, deadline=time.monotonic() + 1.0)
    assert elapsed >= 1.0
    assert [r.outcome for r in outcome.results] == [Outcome.OK, Outcome.OK, Outcome.TIMEOUT]


async def test_a_passed_deadline_fails_without_calling_the_plugin(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, config: {sleep_s: 0}}"))
    )
    outcome, _ = await timed_ring(engine, deadline=time.monotonic() - 0.001)
    assert outcome.results[0].outcome is Outcome.TIMEOUT
    assert outcome.decision is not None
    assert outcome.decision.status_code == 504
    stats = instance(engine, "slow").stats
    # The caller's deadline had passed before the plugin's turn: it was not called,
    # so the miss is not counted against the plugin.
    assert (stats["invocations"], stats["timeouts"], stats["errors"]) == (0, 0, 0)


async def test_a_timeout_under_fail_open_is_bypassed(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 20, fail_policy: open}",
                scripted("after"),
            )
        )
    )
    outcome, elapsed = await timed_ring(engine)
    assert elapsed < 10.0, "cut at 20 ms, not left to sleep its 30 s"
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is Outcome.BYPASSED
    assert "timed out" in (outcome.results[0].error or "")
    assert outcome.context.metadata["ran"] == ["after"]
    stats = instance(engine, "slow").stats
    assert (stats["timeouts"], stats["errors"], stats["bypasses"]) == (1, 1, 1)


async def test_the_callers_cancellation_stops_the_ring(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(ring_config("{name: slow, entrypoint: sleeper.py:Sleeper, timeout_ms: 1000}"))
    )
    task = asyncio.create_task(engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext()))
    slow = instance(engine, "slow")
    while not slow.started:  # the plugin is inside its sleep: now the caller goes away
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.cancelled == 1
    assert engine.generation.inflight == 0


# --------------------------------------------------------------------------- failures

FAILING = """
import asyncio

from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class QuotaBackendDown(Exception):
    pass


class RaisesKeyError(BasePlugin):
    name = "raises_key_error"

    async def execute(self, ctx):
        return ctx.body["no_such_field"]


class RaisesCustom(BasePlugin):
    name = "raises_custom"

    async def execute(self, ctx):
        raise QuotaBackendDown("quota backend down")


class BackendTimesOut(BasePlugin):
    name = "backend_times_out"
    timeout_ms = 1000

    async def execute(self, ctx):
        # The plugin's own call times out: its error, not a ringd timeout.
        await asyncio.wait_for(asyncio.sleep(1), 0.001)
        return PluginResponse.passthrough()


class RaisesCancelled(BasePlugin):
    name = "raises_cancelled"

    async def execute(self, ctx):
        await asyncio.sleep(0)
        raise asyncio.CancelledError()


class ReturnsNone(BasePlugin):
    name = "returns_none"

    async def execute(self, ctx):
        return None


class ReturnsString(BasePlugin):
    name = "returns_string"

    async def execute(self, ctx):
        return "ok"


class ModifiesWithoutBody(BasePlugin):
    name = "modifies_without_body"

    async def execute(self, ctx):
        return PluginResponse.modify()


class FailsOnLoad(BasePlugin):
    name = "fails_on_load"

    async def on_load(self):
        raise RuntimeError("model file missing")


class NoTimeout(BasePlugin):
    name = "no_timeout"
    timeout_ms = None


class ZeroTimeout(BasePlugin):
    name = "zero_timeout"
    timeout_ms = 0


class FailsInInit(BasePlugin):
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
    "returns_none": ("failing.py:ReturnsNone", "returned NoneType, expected PluginResponse"),
    "returns_string": ("failing.py:ReturnsString", "returned str, expected PluginResponse"),
    "invalid_response": ("failing.py:ModifiesWithoutBody", "PluginResponseError: MODIFY needs body"),
}

LOAD_FAILURES = {
    "on_load_raises": ("failing.py:FailsOnLoad", "on_load raised RuntimeError: model file missing"),
    "init_raises": ("failing.py:FailsInInit", "construction raised ValueError: bad setting"),
    "syntax_error": ("broken.py:Anything", "syntax error in"),
    "import_raises": ("explodes.py:Anything", "raised ZeroDivisionError"),
    "missing_class": ("failing.py:NoSuchClass", "has no class 'NoSuchClass'"),
    "missing_file": ("not_there.py:Plugin", "cannot read plugin file"),
    "missing_module": ("no_such_pkg.plugins:Plugin", "cannot import module 'no_such_pkg.plugins'"),
    "not_a_plugin": ("failing.py:QuotaBackendDown", "is not a subclass of ringd.sdk.BasePlugin"),
    "class_timeout_none": ("failing.py:NoTimeout", "class attribute timeout_ms is None"),
    "class_timeout_zero": ("failing.py:ZeroTimeout", "class attribute timeout_ms is 0"),
}


@pytest.fixture
def with_failing(ws):
    ws.plugin("failing.py", FAILING)
    ws.plugin("scripted.py", SCRIPTED)
    ws.plugin(
        "broken.py",
        """
        from ringd.sdk import BasePlugin

        class Anything(BasePlugin)
            name = "broken"
        """,
    )
    ws.plugin("explodes.py", "from ringd.sdk import BasePlugin\nVALUE = 1 / 0\n")
    return ws


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
    assert result.outcome is Outcome.ERROR
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
        ("bad", Outcome.BYPASSED),
        ("after", Outcome.OK),
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
        ("before", Outcome.OK),
        ("bad", Outcome.ERROR),
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
        ("bad", Outcome.BYPASSED),
        ("after", Outcome.OK),
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
        Outcome.OK,
        Outcome.BYPASSED,
        Outcome.BYPASSED,
        Outcome.BYPASSED,
        Outcome.OK,
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
        assert outcome.results[0].outcome is Outcome.ERROR
        assert "ran" not in outcome.context.metadata
    else:
        assert outcome.action is PluginAction.PASSTHROUGH
        assert outcome.results[0].outcome is Outcome.BYPASSED
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
                "{name: bad, entrypoint: 'failing.py:ReturnsNone', hook: post_flight, fail_policy: closed}"
            )
        )
    )
    outcome = await engine.execute_ring(PluginHook.POST_FLIGHT, PluginContext())
    assert outcome.action is PluginAction.BLOCK
    assert outcome.decision is not None
    assert outcome.decision.status_code == 500


# --------------------------------------------------------------------------- circuit breaker

FLAKY = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Flaky(BasePlugin):
    name = "flaky"
    hook = PluginHook.INGRESS
    timeout_ms = 1000  # a store read: room for a busy machine

    async def execute(self, ctx):
        if await ctx.state.extra["store"].get_state("flaky_broken", False):
            raise ConnectionError("auth backend unreachable")
        return PluginResponse.passthrough()
"""

# A cooldown long enough that the calls a test makes while the breaker is open fit in
# it on a busy machine, short enough that waiting it out costs a second.
BREAKER = "circuit_breaker: {failure_threshold: 3, cooldown_s: 1.0}"


async def ingress(engine):
    return await engine.execute_ring(PluginHook.INGRESS, PluginContext())


def status(outcome):
    return outcome.decision.status_code if outcome.decision else None


async def test_breaker_opens_after_n_failures_answers_503_and_closes_after_cooldown(ws, make_engine, store):
    ws.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        ws.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    flaky = instance(engine, "flaky")
    assert status(await ingress(engine)) is None

    await store.set_state("flaky_broken", True)
    first_three = [await ingress(engine) for _ in range(3)]
    opened_at = time.monotonic()
    assert [status(o) for o in first_three] == [500, 500, 500]
    assert all("auth backend unreachable" in (o.results[0].error or "") for o in first_three)
    assert flaky.stats["invocations"] == 4

    # Open: fail closed answers 503 without calling the plugin.
    while_open = [await ingress(engine) for _ in range(5)]
    assert [status(o) for o in while_open] == [503] * 5
    assert all(o.decision.error_type == "plugin_unavailable" for o in while_open)
    assert all(o.results[0].outcome is Outcome.ERROR for o in while_open)
    assert all("circuit open" in (o.results[0].error or "") for o in while_open)
    assert flaky.stats["invocations"] == 4

    # The backend recovers. Traffic keeps coming every 10 ms; the breaker must let a
    # call through once the cooldown since it opened has passed, not keep postponing it.
    await store.set_state("flaky_broken", False)
    recovered_after = None
    while time.monotonic() - opened_at < 10.0:  # a bound far past the cooldown, for a busy machine
        outcome = await ingress(engine)
        if status(outcome) is None:
            recovered_after = time.monotonic() - opened_at
            break
        assert status(outcome) == 503
        await asyncio.sleep(0.01)
    assert recovered_after is not None, "the breaker never closed under steady traffic"
    assert recovered_after >= 0.9, "not before the cooldown"  # it opened a moment before opened_at
    assert flaky.stats["invocations"] == 5
    assert [status(await ingress(engine)) for _ in range(3)] == [None, None, None]


async def test_a_failure_after_the_cooldown_reopens_the_breaker(ws, make_engine, store):
    ws.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        ws.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    flaky = instance(engine, "flaky")
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(4)] == [500, 500, 500, 503]
    await asyncio.sleep(1.05)
    # Half-open: one trial call, which fails and reopens the breaker at once.
    assert status(await ingress(engine)) == 500
    assert flaky.stats["invocations"] == 4
    assert status(await ingress(engine)) == 503
    assert flaky.stats["invocations"] == 4


async def test_an_open_breaker_on_a_fail_open_plugin_bypasses_without_calling(ws, make_engine, store):
    ws.plugin("flaky.py", FLAKY)
    ws.plugin("scripted.py", SCRIPTED)
    engine = await make_engine(
        ws.config(
            ring_config(
                f"{{name: flaky, entrypoint: flaky.py:Flaky, fail_policy: open, {BREAKER}}}",
                scripted("after", hook="ingress"),
            )
        )
    )
    await store.set_state("flaky_broken", True)
    outcomes = [await ingress(engine) for _ in range(6)]
    assert all(o.action is PluginAction.PASSTHROUGH for o in outcomes)
    assert all(o.results[0].outcome is Outcome.BYPASSED for o in outcomes)
    assert all(o.context.metadata["ran"] == ["after"] for o in outcomes)
    assert "circuit open" in (outcomes[-1].results[0].error or "")
    stats = instance(engine, "flaky").stats
    assert (stats["invocations"], stats["errors"], stats["bypasses"]) == (3, 3, 6)


async def test_a_success_resets_the_consecutive_failure_count(ws, make_engine, store):
    ws.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        ws.config(ring_config(f"{{name: flaky, entrypoint: flaky.py:Flaky, {BREAKER}}}"))
    )
    statuses = []
    for broken in (True, True, False, True, True, False, True, True):
        await store.set_state("flaky_broken", broken)
        statuses.append(status(await ingress(engine)))
    assert 503 not in statuses
    assert instance(engine, "flaky").stats["invocations"] == 8


async def test_breaker_threshold_zero_never_opens(ws, make_engine, store):
    ws.plugin("flaky.py", FLAKY)
    engine = await make_engine(
        ws.config(
            ring_config(
                "{name: flaky, entrypoint: flaky.py:Flaky,"
                " circuit_breaker: {failure_threshold: 0, cooldown_s: 10}}"
            )
        )
    )
    await store.set_state("flaky_broken", True)
    assert [status(await ingress(engine)) for _ in range(10)] == [500] * 10
    assert instance(engine, "flaky").stats["invocations"] == 10


async def test_the_callers_short_deadlines_do_not_open_the_breaker(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: s, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.3},"
                f" {BREAKER}}}"
            )
        )
    )
    for _ in range(4):  # 50 ms: the plugin is called (a busy machine), and cut well before its 300 ms
        outcome, _ = await timed_ring(engine, deadline=time.monotonic() + 0.05)
        assert outcome.results[0].outcome is Outcome.TIMEOUT
    # The plugin itself is healthy: with time to run, it runs.
    outcome, _ = await timed_ring(engine)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert outcome.results[0].outcome is Outcome.OK
    assert instance(engine, "s").stats["invocations"] == 5


# --------------------------------------------------------------------------- metrics


async def test_stats_are_live_and_have_percentiles(with_sleeper, make_engine):
    engine = await make_engine(
        with_sleeper.config(
            ring_config(
                "{name: s, entrypoint: sleeper.py:Sleeper, timeout_ms: 5000, config: {sleep_s: 0.01}}"
            )
        )
    )
    plugin = instance(engine, "s")
    for _ in range(5):
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    stats = plugin.stats
    assert stats["invocations"] == 5
    assert stats["errors"] == 0
    assert stats["total_latency_ms"] >= 50
    assert stats["avg_latency_ms"] == pytest.approx(stats["total_latency_ms"] / 5)
    assert 10 <= stats["p50_latency_ms"] <= stats["p95_latency_ms"] <= stats["p99_latency_ms"]
    assert stats["p99_latency_ms"] <= stats["total_latency_ms"]


PACER = """
import asyncio

from ringd.sdk import BasePlugin, PluginResponse


class Pacer(BasePlugin):
    timeout_ms = 5000

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = 0

    async def execute(self, ctx):
        pattern = self.config["sleeps"]
        await asyncio.sleep(pattern[self.calls % len(pattern)])
        self.calls += 1
        return PluginResponse.passthrough()
"""


@pytest.mark.parametrize(
    ("sleeps", "fast", "slow"),
    [
        # Two calls, one fast and one slow: the median is the fast one (nearest rank).
        ([0, 0.5], ["p50_latency_ms"], ["p95_latency_ms", "p99_latency_ms"]),
        # Nineteen fast calls and one slow: 95% of calls were fast, so p95 is fast too.
        ([0] * 19 + [0.5], ["p50_latency_ms", "p95_latency_ms"], ["p99_latency_ms"]),
    ],
)
async def test_percentiles_are_nearest_rank(ws, make_engine, sleeps, fast, slow):
    ws.plugin("pacer.py", PACER)
    engine = await make_engine(
        ws.config(ring_config(f"{{name: pacer, entrypoint: pacer.py:Pacer, config: {{sleeps: {sleeps}}}}}"))
    )
    for _ in sleeps:
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    stats = instance(engine, "pacer").stats
    assert stats["invocations"] == len(sleeps)
    for key in fast:  # a sleep(0) call: far under the slow one's 500 ms even on a busy machine
        assert stats[key] < 250, (key, stats)
    for key in slow:
        assert stats[key] >= 500, (key, stats)
