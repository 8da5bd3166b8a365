"""Plugins that misbehave, over gRPC against a real server, each with its outcome asserted.

A plugin may raise anything (BaseException subclasses included), hang, return garbage,
leave the context unserialisable, recurse, allocate, or block the event loop. The
answer is always a deliberate one (a block naming the problem, or a bypass under
fail_policy open), never UNKNOWN or INTERNAL; the watchdog counts and logs loop stalls
against the plugin, ``run_in_thread`` keeps them off the loop, and other rings keep
answering fast while one misbehaves.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.rpc import context, metadata_of, ring_request
from support.workspace import Workspace, entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
from faulty import EXCEPTIONS, GARBAGE

FAULTY_FILE = Path(__file__).parent / "plugins" / "faulty.py"
FAULTY = "faulty.py:Faulty"  # copied into each test's config folder: plugin files live there


@pytest.fixture(autouse=True)
def _faulty_beside_the_config(workspace: Workspace) -> None:
    workspace.plugin("faulty.py", FAULTY_FILE.read_text())


PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
INGRESS = pb.PLUGIN_HOOK_INGRESS
ROUTING = pb.PLUGIN_HOOK_ROUTING
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
FORMS = ["json", "struct"]


def faulty(name: str, hook: str = "pre_flight", **fields: Any) -> dict[str, Any]:
    return entry(name, hook, entrypoint=FAULTY, **fields)


def healthy(name: str = "healthy", hook: str = "ingress") -> dict[str, Any]:
    return faulty(name, hook, config={"fault": "pass", "mark": f"{name}_ran"})


async def assert_still_serving(running: Any) -> None:
    """The server answers the next call on another ring normally."""
    answer = await running.engine().ExecuteRing(ring_request(INGRESS, CHAT), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(answer) == {"healthy_ran": True}


def assert_failed_block(answer: Any, name: str, status: int = 500, error_type: str = "plugin_error") -> None:
    assert answer.action == pb.PLUGIN_ACTION_BLOCK, answer
    assert (answer.block.status_code, answer.block.error_type) == (status, error_type)
    assert answer.decided_by == name
    assert name in answer.block.message


async def stats_of(running: Any, name: str) -> admin_pb.PluginStats:
    listing = await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    return next(p.stats for p in listing.plugins if p.name == name)


# ------------------------------------------------------------------ exceptions


@pytest.mark.parametrize("suspend_first", [False, True], ids=["at-once", "after-await"])
@pytest.mark.parametrize("exception", list(EXCEPTIONS))
async def test_a_plugin_that_raises_is_a_500_block_naming_the_exception(serve, exception, suspend_first):
    running = await serve(
        [
            faulty(
                "raiser", config={"fault": "raise", "exception": exception, "suspend_first": suspend_first}
            ),
            healthy(),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert_failed_block(answer, "raiser")
    assert answer.block.message == "plugin 'raiser' failed"
    (result,) = answer.results
    assert result.outcome == pb.PLUGIN_OUTCOME_ERROR
    # The engine names the exception; StopIteration out of a coroutine is a RuntimeError by then.
    expected = {"StopIteration": "RuntimeError", "SurrogateMessage": "ValueError"}.get(exception, exception)
    assert expected in result.error
    if exception == "SurrogateMessage":  # the wire is UTF-8: the lone surrogate arrives escaped
        assert "lone surrogate \\udcff" in result.error
    assert "Traceback" not in result.error
    await assert_still_serving(running)


@pytest.mark.parametrize("exception", ["RuntimeError", "SystemExit", "KeyboardInterrupt", "UnprintableError"])
async def test_a_fail_open_plugin_that_raises_is_bypassed(serve, exception):
    running = await serve(
        [
            faulty("raiser", fail_policy="open", config={"fault": "raise", "exception": exception}),
            faulty("after", config={"fault": "pass", "mark": "after_ran"}),
            healthy(),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert [(r.plugin, r.outcome) for r in answer.results] == [
        ("raiser", pb.PLUGIN_OUTCOME_BYPASSED),
        ("after", pb.PLUGIN_OUTCOME_OK),
    ]
    assert exception in answer.results[0].error
    assert metadata_of(answer) == {"after_ran": True}
    stats = await stats_of(running, "raiser")
    assert (stats.invocations, stats.errors, stats.bypasses) == (1, 1, 1)
    await assert_still_serving(running)


async def test_recursion_and_memory_errors_are_the_plugins_errors(serve):
    running = await serve(
        [
            faulty("recursive", fail_policy="open", config={"fault": "recurse"}),
            faulty("greedy", fail_policy="open", config={"fault": "memory_error"}),
            faulty("closed_recursive", config={"fault": "recurse"}),
            healthy(),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert_failed_block(answer, "closed_recursive")
    errors = {r.plugin: (r.outcome, r.error) for r in answer.results}
    assert errors["recursive"][0] == pb.PLUGIN_OUTCOME_BYPASSED
    assert "RecursionError" in errors["recursive"][1]
    assert errors["greedy"] == (pb.PLUGIN_OUTCOME_BYPASSED, "MemoryError")
    assert errors["closed_recursive"][0] == pb.PLUGIN_OUTCOME_ERROR
    await assert_still_serving(running)


async def test_a_large_allocation_that_returns_is_fine(serve):
    running = await serve([faulty("allocator", config={"fault": "allocate", "mb": 200}), healthy()])

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    assert answer.results[0].message == "allocated 200 MB"
    await assert_still_serving(running)


# ------------------------------------------------------------------ hangs


async def test_a_plugin_that_hangs_forever_is_a_504_within_its_timeout(serve):
    running = await serve([faulty("hanger", timeout_ms=300, config={"fault": "hang"}), healthy()])
    stub = running.engine()
    await assert_still_serving(running)  # connected

    started = time.monotonic()
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.3  # cut at its timeout: the 504 and its message show it was not left to hang
    assert_failed_block(answer, "hanger", 504, "plugin_timeout")
    (result,) = answer.results
    assert result.outcome == pb.PLUGIN_OUTCOME_TIMEOUT
    assert "timed out after 300 ms" in result.error
    stats = await stats_of(running, "hanger")
    assert (stats.invocations, stats.timeouts) == (1, 1)


async def test_a_fail_open_plugin_that_hangs_is_bypassed_after_its_timeout(serve):
    running = await serve(
        [
            faulty("hanger", fail_policy="open", timeout_ms=100, config={"fault": "hang"}),
            faulty("after", config={"fault": "pass", "mark": "after_ran"}),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert [(r.plugin, r.outcome) for r in answer.results] == [
        ("hanger", pb.PLUGIN_OUTCOME_BYPASSED),
        ("after", pb.PLUGIN_OUTCOME_OK),
    ]
    assert "timed out" in answer.results[0].error


# ------------------------------------------------------------------ garbage


@pytest.mark.parametrize("suspend_first", [False, True], ids=["at-once", "after-await"])
@pytest.mark.parametrize("garbage", list(GARBAGE))
async def test_a_plugin_that_returns_garbage_is_a_500_block(serve, garbage, suspend_first):
    running = await serve(
        [
            faulty("liar", config={"fault": "return", "value": garbage, "suspend_first": suspend_first}),
            healthy(),
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert (answer.block.status_code, answer.block.error_type) == (500, "plugin_error")
    assert answer.decided_by == "liar"
    if garbage.startswith("bad_"):
        # A real PluginResponse whose fields were broken after it was built: the answer
        # cannot carry it, and says which field.
        field = garbage.removeprefix("bad_")
        assert "a plugin left a value the wire cannot carry" in answer.block.message
        assert field in answer.block.message
    else:
        assert answer.block.message == "plugin 'liar' failed"
        assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR
        # The wrong type, or (late_action) a PluginResponse the ring's check refuses.
        expected = "Invalid PluginResponse action" if garbage == "late_action" else "expected PluginResponse"
        assert expected in answer.results[0].error
    await assert_still_serving(running)


# ------------------------------------------------------------------ unserialisable context

# What each mutation leaves, and the words the 500 block must name.
UNSERIALISABLE = {
    "set_in_metadata": ["metadata['tags']", "set"],
    "object_in_body": ["body", "object"],
    "bytes_in_body": ["body", "bytes"],
    "self_ref_in_metadata": ["metadata['loop']"],
    "self_ref_in_body": ["body"],
    "deep_metadata": ["metadata['deep']", "nested"],
    "int_key_in_metadata": ["metadata", "7"],
    "surrogate_key_in_metadata": ["metadata"],
    "surrogate_in_metadata": ["metadata['text']", "Unicode"],
    "metadata_replaced": ["metadata", "NoneType"],
    "body_replaced": ["body", "str"],
    "response_replaced": ["response", "list"],
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mutation", list(UNSERIALISABLE))
async def test_an_unserialisable_context_is_a_500_block_naming_the_problem(serve, mutation, form):
    running = await serve(
        [faulty("mutator", fail_policy="open", config={"fault": "mutate", "what": mutation}), healthy()]
    )
    request = ring_request(PRE_FLIGHT, CHAT, form=form, response={"id": "cmpl-1"})

    answer = await running.engine().ExecuteRing(request, timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK, answer
    assert (answer.block.status_code, answer.block.error_type) == (500, "plugin_error")
    assert answer.block.message.startswith("a plugin left a value the wire cannot carry")
    for word in UNSERIALISABLE[mutation]:
        assert word in answer.block.message, answer.block.message
    assert answer.decided_by == "mutator"
    assert [r.plugin for r in answer.results] == ["mutator"]
    assert answer.config_version == "v1"
    await assert_still_serving(running)


@pytest.mark.parametrize("form", FORMS)
async def test_nan_and_infinity_in_metadata_become_null(serve, form):
    running = await serve([faulty("mutator", config={"fault": "mutate", "what": "nan_in_metadata"})])

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form=form), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(answer) == {"score": None, "ceiling": None}


async def test_stop_chain_with_a_non_string_error_is_still_a_deliberate_block(serve):
    running = await serve(
        [faulty("stopper", config={"fault": "mutate", "what": "stop_chain_error_object"}), healthy()]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert answer.decided_by == "stopper"
    assert answer.block.status_code in {403, 500}
    await assert_still_serving(running)


async def test_execute_rings_stops_at_a_ring_it_cannot_encode(serve, workspace):
    background_ran = workspace.root / "background.ran"
    running = await serve(
        [
            faulty("tenant", "ingress", config={"fault": "pass", "mark": "tenant_ran"}),
            faulty("mutator", config={"fault": "mutate", "what": "set_in_metadata"}),
            faulty("router", "routing", config={"fault": "pass", "mark": "router_ran"}),
            entry("usage", "background", config={"touch": str(background_ran)}),
        ]
    )

    reply = await running.engine().ExecuteRings(
        engine_pb.ExecuteRingsRequest(
            rings=[INGRESS, PRE_FLIGHT, ROUTING, pb.PLUGIN_HOOK_BACKGROUND], context=context(CHAT)
        ),
        timeout=5,
    )

    # The run stops at the 500 block as after any block: no routing, no background ring.
    first, second = reply.outcomes
    assert first.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert metadata_of(first) == {"tenant_ran": True}
    assert second.action == pb.PLUGIN_ACTION_BLOCK
    assert (second.block.status_code, second.block.error_type) == (500, "plugin_error")
    assert "metadata['tags']" in second.block.message
    await asyncio.sleep(0.2)
    assert not background_ran.exists()


# ------------------------------------------------------------------ event-loop stalls


@pytest.mark.parametrize("fault", ["sleep_sync", "cpu"])
async def test_a_plugin_that_blocks_the_loop_is_counted_and_logged(serve, caplog, fault):
    caplog.set_level(logging.WARNING, logger="ringd.watchdog")
    running = await serve([faulty("blocker", timeout_ms=2000, config={"fault": fault, "seconds": 0.3})])

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    # The watchdog thread logs once the loop turns again; give it a moment (a busy
    # machine may not schedule it for a while).
    async with asyncio.timeout(20):
        while (await stats_of(running, "blocker")).stalls < 1:
            await asyncio.sleep(0.02)
    assert (await stats_of(running, "blocker")).stalls == 1  # one episode, counted once
    warnings = [r for r in caplog.records if r.name == "ringd.watchdog" and r.levelno == logging.WARNING]
    assert any("'blocker'" in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]


@pytest.mark.parametrize("fault", ["sleep_sync", "cpu"])
async def test_run_in_thread_keeps_a_blocking_plugin_off_the_loop(serve, caplog, fault):
    caplog.set_level(logging.WARNING, logger="ringd.watchdog")
    running = await serve(
        [
            faulty(
                "blocker",
                timeout_ms=2000,
                run_in_thread=True,
                config={"fault": fault, "seconds": 0.3, "mark": "blocker_ran"},
            )
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    assert metadata_of(answer)["blocker_ran"] is True  # its context edits came back
    await asyncio.sleep(0.2)  # time for the watchdog to have noticed, were there a stall
    assert (await stats_of(running, "blocker")).stalls == 0
    assert not [r for r in caplog.records if "'blocker'" in r.getMessage()]


async def test_a_run_in_thread_plugin_still_times_out(serve):
    running = await serve(
        [
            faulty(
                "sleeper",
                timeout_ms=200,
                run_in_thread=True,
                config={"fault": "sleep_sync", "seconds": 1.0, "mark": "sleeper_ran"},
            )
        ]
    )

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    # Cut at 200 ms: had the ring waited for the thread's 1 s, the outcome would be OK.
    assert_failed_block(answer, "sleeper", 504, "plugin_timeout")
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_TIMEOUT
    # A late plugin's edits do not reach the ring.
    assert "sleeper_ran" not in metadata_of(answer)


# ------------------------------------------------------------------ other rings keep their latency


async def latencies_of(stub: Any, calls: int, request: Any) -> list[float]:
    """Sequential calls; each one's latency in ms."""
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        answer = await stub.ExecuteRing(request, timeout=5)
        latencies.append((time.perf_counter() - started) * 1000)
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    return latencies


@pytest.mark.parametrize("fault", ["sleep_sync", "cpu", "hang"])
async def test_other_rings_keep_answering_while_one_misbehaves(serve, fault):
    """Ordering, not latency: while the misbehaving ring runs its one second, the fast ring
    answers call after call. Were the event loop blocked for that second, no fast call
    could be answered until the misbehaving one had been."""
    in_thread = fault != "hang"
    running = await serve(
        [
            faulty(
                "misbehaving",
                timeout_ms=5000 if in_thread else 1000,
                fail_policy="open",
                run_in_thread=in_thread,
                config={"fault": fault, "seconds": 1.0},
            ),
            healthy("fast", "ingress"),
        ]
    )
    stub = running.engine()
    fast_request = ring_request(INGRESS, CHAT)
    await latencies_of(stub, 5, fast_request)  # warm up the channel

    misbehaving = [
        asyncio.ensure_future(stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=30))
        for _ in range(1 if fault == "cpu" else 2)
    ]
    answered_meanwhile = 0
    while not all(call.done() for call in misbehaving):
        answer = await stub.ExecuteRing(fast_request, timeout=30)
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        answered_meanwhile += 1
    misbehaving_answers = await asyncio.gather(*misbehaving)

    assert answered_meanwhile >= 5, f"only {answered_meanwhile} fast answers during the misbehaving ring"
    for answer in misbehaving_answers:
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        expected = pb.PLUGIN_OUTCOME_BYPASSED if fault == "hang" else pb.PLUGIN_OUTCOME_OK
        assert answer.results[0].outcome == expected
    if in_thread:
        assert (await stats_of(running, "misbehaving")).stalls == 0


async def test_every_fault_at_once_under_fail_open_is_one_deliberate_answer(serve):
    """Every fault at once in one ring under fail_policy open: one deliberate answer."""
    plugins = [
        faulty(f"raise_{name.lower()}", fail_policy="open", config={"fault": "raise", "exception": name})
        for name in EXCEPTIONS
    ] + [
        faulty(f"return_{name}", fail_policy="open", config={"fault": "return", "value": name})
        for name in GARBAGE
        if not name.startswith("bad_")
    ]
    running = await serve(plugins)

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert len(answer.results) == len(plugins)
    assert all(r.outcome == pb.PLUGIN_OUTCOME_BYPASSED for r in answer.results)
