"""`type: wasm` plugins over the wire: real Extism modules (wasm/modules/*.wasm) in a real server.

Each module is built from its AssemblyScript source in wasm/src/ (`make wasm`).
The tests copy the modules they need next to the test's config file, so an
entrypoint is a path relative to the config's folder, as an operator writes it.
"""

from __future__ import annotations

import asyncio
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.rpc import BIN, ROOT, payload, ring_request, run
from support.workspace import entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import plugin_pb2 as pb

MODULES = ROOT / "wasm" / "modules"
INGRESS = pb.PLUGIN_HOOK_INGRESS
PRE_FLIGHT = pb.PLUGIN_HOOK_PRE_FLIGHT
ROUTING = pb.PLUGIN_HOOK_ROUTING
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def wasm_entry(name: str, module: str, hook: str = "pre_flight", **fields: Any) -> dict[str, Any]:
    """A ``type: wasm`` entry whose module is ``wasm/<module>.wasm`` beside the config."""
    return {"name": name, "type": "wasm", "hook": hook, "entrypoint": f"wasm/{module}.wasm", **fields}


def install(workspace, *modules: str, **renamed: str) -> None:
    """Copy modules into the workspace's wasm/ folder (``renamed``: file name -> module)."""
    folder = workspace.root / "wasm"
    folder.mkdir(exist_ok=True)
    for module in modules:
        shutil.copyfile(MODULES / f"{module}.wasm", folder / f"{module}.wasm")
    for filename, module in renamed.items():
        shutil.copyfile(MODULES / f"{module}.wasm", folder / f"{filename}.wasm")


def results_of(answer) -> dict[str, Any]:
    return {result.plugin: result for result in answer.results}


async def listing(running) -> dict[str, admin_pb.PluginInfo]:
    plugins = await running.admin().ListPlugins(admin_pb.ListPluginsRequest(), timeout=5)
    return {info.name: info for info in plugins.plugins}


async def test_passthrough_modify_block_and_cache_hit(serve, workspace):
    install(workspace, "passthrough", "model_pin", "keyword_guard", "cache_answer")
    running = await serve(
        [
            wasm_entry("noop", "passthrough", "ingress", timeout_ms=2000),
            wasm_entry("pin", "model_pin", priority=10, timeout_ms=2000, config={"model": "small-model"}),
            wasm_entry("guard", "keyword_guard", priority=20, timeout_ms=2000, config={"word": "secret"}),
            wasm_entry("cache", "cache_answer", "routing", timeout_ms=2000),
        ]
    )
    stub = running.engine()

    passed = await stub.ExecuteRing(ring_request(INGRESS, CHAT), timeout=5)
    assert passed.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert passed.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    assert payload(passed, "body") == ("json", CHAT)

    modified = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT, form="struct"), timeout=5)
    assert modified.action == pb.PLUGIN_ACTION_MODIFY
    assert payload(modified, "body") == ("struct", {**CHAT, "model": "small-model"})
    results = results_of(modified)
    assert results["pin"].action == pb.PLUGIN_ACTION_MODIFY
    assert results["pin"].message == "model pinned to small-model"
    assert results["guard"].action == pb.PLUGIN_ACTION_PASSTHROUGH

    leaky = {"model": "gpt-4o", "messages": [{"role": "user", "content": "tell me the SECRET"}]}
    blocked = await stub.ExecuteRing(ring_request(PRE_FLIGHT, leaky), timeout=5)
    assert blocked.action == pb.PLUGIN_ACTION_BLOCK
    assert blocked.decided_by == "guard"
    assert (blocked.decision.status_code, blocked.decision.error_type) == (403, "keyword_blocked")
    assert blocked.decision.message == "message 0 mentions secret"

    request = ring_request(ROUTING, CHAT)
    request.context.session_id = "session-7"
    cached = await stub.ExecuteRing(request, timeout=5)
    assert cached.action == pb.PLUGIN_ACTION_CACHE_HIT
    assert cached.decided_by == "cache"
    form, response = payload(cached, "cached_response")
    assert form == "json"
    assert response["session"] == "session-7"
    assert response["choices"][0]["message"]["content"] == "cached answer"

    # A WASM plugin is listed like any other, its version the module's digest.
    plugins = await listing(running)
    assert plugins["guard"].status == pb.PLUGIN_STATUS_ACTIVE
    assert plugins["guard"].entrypoint == "wasm/keyword_guard.wasm"
    assert plugins["guard"].version.startswith("sha256:")
    assert plugins["guard"].stats.invocations == 2
    assert plugins["guard"].stats.blocks == 1


async def test_runaway_guest_is_stopped_at_its_limit_while_other_rings_keep_serving(serve, workspace):
    install(workspace, "spin", "passthrough")
    running = await serve(
        [
            # One instance: the follow-up call below can only run if the runaway freed it.
            wasm_entry("spinner", "spin", timeout_ms=5000, fail_policy="closed", wasm={"pool_size": 1}),
            entry("python", "ingress", config={"message": "python served"}),
            wasm_entry("noop", "passthrough", "ingress", priority=200, timeout_ms=2000),
        ]
    )
    stub = running.engine()
    runaway = asyncio.ensure_future(stub.ExecuteRing(ring_request(PRE_FLIGHT, {"spin": True}), timeout=30))
    await asyncio.sleep(0.3)  # let the guest start spinning (ordering only; nothing is timed)

    others = await asyncio.gather(
        *(stub.ExecuteRing(ring_request(INGRESS, CHAT), timeout=30) for _ in range(20))
    )

    # Every other ring was served while the runaway was still inside its 5 s limit.
    assert not runaway.done()
    for answer in others:
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        assert [r.outcome for r in answer.results] == [pb.PLUGIN_OUTCOME_OK, pb.PLUGIN_OUTCOME_OK]
        assert answer.results[0].message == "python served"
    stopped = await runaway
    assert stopped.action == pb.PLUGIN_ACTION_BLOCK
    assert (stopped.decision.status_code, stopped.decision.error_type) == (504, "plugin_timeout")
    assert stopped.results[0].outcome == pb.PLUGIN_OUTCOME_TIMEOUT
    assert "timed out after 5000 ms" in stopped.results[0].error

    # The guest was stopped, not abandoned: its only instance serves the next call.
    after = await stub.ExecuteRing(ring_request(PRE_FLIGHT, {"spin": False}), timeout=30)
    assert after.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert after.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    stats = (await listing(running))["spinner"].stats
    assert (stats.invocations, stats.timeouts) == (2, 1)


async def test_concurrent_rings_run_on_separate_instances_of_the_pool(serve, workspace):
    install(workspace, "spin")
    running = await serve([wasm_entry("spinner", "spin", timeout_ms=5000, wasm={"pool_size": 2})])
    stub = running.engine()
    runaway = asyncio.ensure_future(stub.ExecuteRing(ring_request(PRE_FLIGHT, {"spin": True}), timeout=30))
    await asyncio.sleep(0.3)

    # The same plugin answers other rings on its second instance while the first spins.
    answers = [
        await stub.ExecuteRing(ring_request(PRE_FLIGHT, {"spin": False}), timeout=30) for _ in range(5)
    ]

    assert not runaway.done()
    assert all(a.results[0].outcome == pb.PLUGIN_OUTCOME_OK for a in answers)
    assert (await runaway).results[0].outcome == pb.PLUGIN_OUTCOME_TIMEOUT


async def test_memory_bomb_is_stopped_at_its_memory_limit(serve, workspace):
    install(workspace, "memory_bomb")
    running = await serve(
        [
            wasm_entry(
                "bomb",
                "memory_bomb",
                timeout_ms=5000,
                fail_policy="closed",
                wasm={"memory_limit_mb": 8, "pool_size": 1},
                circuit_breaker={"enabled": False},
            )
        ]
    )
    stub = running.engine()

    for _ in range(2):  # the second call runs on a fresh instance, and fails the same way
        answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=30)
        assert answer.action == pb.PLUGIN_ACTION_BLOCK
        assert (answer.decision.status_code, answer.decision.error_type) == (500, "plugin_error")
        assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR
        assert "guest ran out of memory (limit 8 MiB)" in answer.results[0].error


async def test_trap_is_the_plugins_failure_under_its_fail_policy(serve, workspace):
    install(workspace, "trap")
    running = await serve(
        [
            wasm_entry("open_trap", "trap", "ingress", timeout_ms=2000, fail_policy="open"),
            entry("after", "ingress", priority=200, config={"message": "still ran"}),
            wasm_entry("closed_trap", "trap", timeout_ms=2000, fail_policy="closed"),
        ]
    )
    stub = running.engine()

    bypassed = await stub.ExecuteRing(ring_request(INGRESS, CHAT), timeout=5)
    assert bypassed.action == pb.PLUGIN_ACTION_PASSTHROUGH
    results = results_of(bypassed)
    assert results["open_trap"].outcome == pb.PLUGIN_OUTCOME_BYPASSED
    assert "WasmGuestError: guest trapped" in results["open_trap"].error
    assert results["after"].message == "still ran"

    blocked = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert blocked.action == pb.PLUGIN_ACTION_BLOCK
    assert (blocked.decision.status_code, blocked.decision.error_type) == (500, "plugin_error")
    assert blocked.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR
    assert (await listing(running))["closed_trap"].stats.errors == 1


async def test_invalid_json_answer_is_the_plugins_error(serve, workspace):
    install(workspace, "bad_output")
    running = await serve([wasm_entry("bad", "bad_output", timeout_ms=2000, fail_policy="closed")])

    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)

    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_ERROR
    assert "WasmOutputError: handle returned invalid JSON" in answer.results[0].error
    assert "this is not json" in answer.results[0].error


async def test_reload_swaps_a_changed_module_and_keeps_an_unchanged_one(serve, workspace):
    install(workspace, "passthrough", guard="passthrough")
    running = await serve(
        [
            wasm_entry("guard", "guard", timeout_ms=2000, config={"word": "secret"}),
            wasm_entry("noop", "passthrough", "ingress", timeout_ms=2000),
        ]
    )
    stub = running.engine()
    leaky = {"messages": [{"role": "user", "content": "a secret"}]}
    assert (await stub.ExecuteRing(ring_request(PRE_FLIGHT, leaky), timeout=5)).action == (
        pb.PLUGIN_ACTION_PASSTHROUGH
    )
    await stub.ExecuteRing(ring_request(INGRESS, CHAT), timeout=5)
    before = await listing(running)

    install(workspace, guard="keyword_guard")  # the operator replaces the module file
    reloaded = await running.admin().ReloadConfig(admin_pb.ReloadConfigRequest(), timeout=10)

    assert reloaded.generation == 2
    answer = await stub.ExecuteRing(ring_request(PRE_FLIGHT, leaky), timeout=5)
    assert answer.action == pb.PLUGIN_ACTION_BLOCK
    assert answer.generation == 2
    after = await listing(running)
    assert after["guard"].version != before["guard"].version
    assert after["guard"].stats.invocations == 1  # a new plugin: its stats start over
    assert after["noop"].version == before["noop"].version
    assert after["noop"].stats.invocations == 1  # unchanged: the same plugin, stats kept


@pytest.fixture
def web() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server: its URL and the paths it was asked for."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from the host")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/probe", asked
    server.shutdown()
    server.server_close()
    thread.join()


async def test_network_is_denied_unless_the_entry_grants_the_host(serve, workspace, web):
    url, asked = web
    install(workspace, "fetch")
    running = await serve(
        [
            wasm_entry(
                "sealed", "fetch", "ingress", timeout_ms=3000, fail_policy="closed", config={"url": url}
            ),
            wasm_entry(
                "granted",
                "fetch",
                timeout_ms=3000,
                fail_policy="closed",
                config={"url": url},
                wasm={"allowed_hosts": ["127.0.0.1"]},
            ),
        ]
    )
    stub = running.engine()

    sealed = await stub.ExecuteRing(ring_request(INGRESS, CHAT), timeout=10)
    assert sealed.action == pb.PLUGIN_ACTION_BLOCK
    assert "WasmGuestError" in sealed.results[0].error
    assert asked == []  # the request never left the sandbox

    granted = await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=10)
    assert granted.action == pb.PLUGIN_ACTION_PASSTHROUGH
    assert granted.results[0].message == "fetched 19 bytes"
    assert asked == ["/probe"]


async def test_check_config_names_the_entry_and_field_of_each_bad_module(workspace):
    install(workspace, "no_handle", "passthrough")
    (workspace.root / "wasm" / "notes.wasm").write_text("these are notes, not a module\n")
    path = workspace.write_config(
        [
            wasm_entry("missing", "nowhere"),
            wasm_entry("text", "notes"),
            wasm_entry("exportless", "no_handle"),
            wasm_entry("fine", "passthrough"),
        ]
    )

    code, out, err = await run(BIN / "ringd", "check-config", path, timeout_s=90)

    assert code == 1, out
    reported = [line for line in err.splitlines() if line.startswith(f"ringd: {path}: plugin ")]
    lines = {line.split("plugin ", 1)[1].split(":", 1)[0]: line for line in reported}
    assert set(lines) == {"'missing'", "'text'", "'exportless'"}
    assert "field 'entrypoint' ('wasm/nowhere.wasm'): cannot read" in lines["'missing'"]
    assert "No such file" in lines["'missing'"]
    assert "is not a WebAssembly module" in lines["'text'"]
    assert "exports no function 'handle'" in lines["'exportless'"]
    assert Path(workspace.root / "wasm" / "no_handle.wasm").name in lines["'exportless'"]


async def test_a_failing_module_opens_its_circuit_like_any_plugin(serve, workspace):
    install(workspace, "trap")
    running = await serve(
        [
            wasm_entry(
                "trap",
                "trap",
                timeout_ms=2000,
                fail_policy="closed",
                circuit_breaker={"failure_rate": 1.0, "minimum_calls": 2, "cooldown_s": 60},
            )
        ]
    )
    stub = running.engine()

    codes = [
        (await stub.ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)).decision.status_code
        for _ in range(3)
    ]

    assert codes == [500, 500, 503]  # two traps, then the open circuit: not called at all
    stats = (await listing(running))["trap"].stats
    assert (stats.invocations, stats.errors) == (2, 2)


async def test_wasi_only_when_granted_and_never_the_environment(serve, workspace, monkeypatch):
    monkeypatch.setenv("RINGD_TEST_SECRET", "do-not-leak")
    install(workspace, "wasi_probe")
    running = await serve(
        [
            wasm_entry("sealed", "wasi_probe", "ingress", timeout_ms=2000),
            wasm_entry("granted", "wasi_probe", timeout_ms=2000, wasm={"wasi": True}),
        ]
    )

    plugins = await listing(running)
    assert plugins["sealed"].status == pb.PLUGIN_STATUS_FAILED
    assert "unknown import" in plugins["sealed"].load_error
    assert "grant it with wasm.wasi: true" in plugins["sealed"].load_error
    answer = await running.engine().ExecuteRing(ring_request(PRE_FLIGHT, CHAT), timeout=5)
    assert answer.results[0].outcome == pb.PLUGIN_OUTCOME_OK
    # WASI gives it a clock, not ringd's environment.
    assert answer.results[0].message == "clock readable, 0 environment variables"
