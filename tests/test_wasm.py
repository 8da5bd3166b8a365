"""`type: wasm` entries below the wire: config validation, the guest's own hard limit, answers.

The gRPC behaviour (rings, limits, reload, check-config) is in tests/grpc/test_wasm_plugins.py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.config import ConfigError, PluginType, parse_config
from ringd.server.engine import PluginOutcome
from ringd.server.loader import entry_fingerprint, load_entry_class
from ringd.server.wasm import WasmGuestError, WasmOutputError, parse_answer

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "wasm" / "modules"


def test_a_wasm_entry_is_parsed_with_its_sandbox_settings(workspace):
    config = workspace.config(
        """
        plugins:
          - name: guard
            type: wasm
            hook: pre_flight
            entrypoint: wasm/guard.wasm
            timeout_ms: 50
            config: {word: secret}
            wasm:
              memory_limit_mb: 16
              pool_size: 3
              wasi: true
              allowed_hosts: [api.example.com]
              allowed_paths: {data: /data}
          - name: plain
            type: wasm
            entrypoint: plain.wasm
        """
    )
    guard, plain = config.plugins
    assert guard.type is PluginType.WASM
    assert (guard.wasm.memory_limit_mb, guard.wasm.pool_size, guard.wasm.wasi) == (16, 3, True)
    assert guard.wasm.allowed_hosts == ("api.example.com",)
    assert guard.wasm.allowed_paths == ((str(workspace.root / "data"), "/data"),)
    # Nothing granted by default.
    assert (plain.wasm.memory_limit_mb, plain.wasm.pool_size) == (64, 4)
    assert (plain.wasm.wasi, plain.wasm.allowed_hosts, plain.wasm.allowed_paths) == (False, (), ())


def test_bad_wasm_entries_are_refused_naming_entry_and_field(workspace):
    with pytest.raises(ConfigError) as caught:
        workspace.config(
            """
            plugins:
              - {name: a, type: wasm, entrypoint: "plugins.guard:Guard"}
              - {name: b, type: wasm, entrypoint: b.wasm, wasm: {pool_size: 0, memory_limit_mb: -1, x: 1}}
              - {name: c, type: wasm, entrypoint: c.wasm, wasm: {allowed_paths: {data: /data}}}
              - {name: d, type: wasm, entrypoint: d.wasm, run_in_thread: true}
              - {name: e, entrypoint: "x.py:X", wasm: {pool_size: 2}}
              - {name: f, entrypoint: f.wasm}
              - {name: g, type: lua, entrypoint: g.lua}
              - {name: h, type: wasm, entrypoint: h.wasm, wasm: {pool_size: 65, memory_limit_mb: 4097}}
            """
        )
    message = str(caught.value)
    assert "plugins[0] ('a') field 'entrypoint': a type: wasm entry names a module file" in message
    assert "plugins[1] ('b') field 'wasm'.pool_size: must be an integer >= 1" in message
    assert "plugins[1] ('b') field 'wasm'.memory_limit_mb: must be an integer >= 1" in message
    assert "plugins[1] ('b') field 'wasm'.x: unknown field" in message
    assert "plugins[2] ('c') field 'wasm'.allowed_paths: needs wasi: true" in message
    assert "plugins[3] ('d') field 'run_in_thread': not for type: wasm" in message
    assert "plugins[4] ('e') field 'wasm': only for type: wasm entries" in message
    assert "plugins[5] ('f') field 'entrypoint'" in message
    assert "a .wasm module needs 'type: wasm'" in message
    assert "plugins[6] ('g') field 'type': unknown value 'lua'; expected one of python, wasm" in message
    assert "plugins[7] ('h') field 'wasm'.pool_size: must be at most 64 (one thread each), got 65" in message
    assert "plugins[7] ('h') field 'wasm'.memory_limit_mb: must be at most 4096" in message


def _install(workspace, module: str, filename: str = "plugin.wasm") -> None:
    shutil.copyfile(MODULES / f"{module}.wasm", workspace.root / filename)


async def test_the_guests_own_limit_stops_it_when_nobody_cancels(workspace):
    """Without the engine's timer, the module's Extism limit still stops the loop and frees the instance."""
    _install(workspace, "spin")
    config = workspace.config(
        """
        plugins:
          - {name: spinner, type: wasm, entrypoint: plugin.wasm, timeout_ms: 200, wasm: {pool_size: 1}}
        """
    )
    plugin = load_entry_class(config.plugins[0], config.base_dir)({})
    await plugin.on_load()
    try:
        with pytest.raises(WasmGuestError, match=r"guest stopped at its time limit \(200 ms\)"):
            await plugin.execute(PluginContext(body={"spin": True}))
        answer = await plugin.execute(PluginContext(body={"spin": False}))  # the one instance was replaced
        assert answer.action is PluginAction.PASSTHROUGH
    finally:
        await plugin.on_unload()


async def test_many_concurrent_calls_share_the_pool(workspace):
    _install(workspace, "keyword_guard")
    config = workspace.config(
        """
        plugins:
          - {name: guard, type: wasm, entrypoint: plugin.wasm, timeout_ms: 5000, wasm: {pool_size: 3}}
        """
    )
    plugin = load_entry_class(config.plugins[0], config.base_dir)({"word": "secret"})
    await plugin.on_load()
    try:
        contents = [f"message {i} {'secret' if i % 2 else 'fine'}" for i in range(40)]
        answers = await asyncio.gather(
            *(plugin.execute(PluginContext(body={"messages": [{"content": c}]})) for c in contents)
        )
    finally:
        await plugin.on_unload()
    actions = [answer.action for answer in answers]
    assert actions == [PluginAction.BLOCK if i % 2 else PluginAction.PASSTHROUGH for i in range(40)]


def test_the_fingerprint_follows_the_module_file_and_the_sandbox(workspace):
    _install(workspace, "passthrough")
    text = "plugins:\n  - {name: p, type: wasm, entrypoint: plugin.wasm%s}\n"
    entry = workspace.config(text % "").plugins[0]
    first = entry_fingerprint(entry, workspace.root)
    assert entry_fingerprint(entry, workspace.root) == first
    assert (
        entry_fingerprint(workspace.config(text % ", wasm: {memory_limit_mb: 8}").plugins[0], workspace.root)
        != first
    )
    _install(workspace, "keyword_guard")
    assert entry_fingerprint(entry, workspace.root) != first


@pytest.mark.parametrize(
    ("output", "action", "detail"),
    [
        (b"", PluginAction.PASSTHROUGH, None),
        (b"{}", PluginAction.PASSTHROUGH, None),
        (b'{"action":"ALLOW"}', PluginAction.PASSTHROUGH, None),  # LLMProxy's legacy names
        (b'{"action":"modified","body":{"a":1}}', PluginAction.MODIFY, {"a": 1}),
        (b'{"action":"block","status_code":429,"error_type":"slow_down"}', PluginAction.BLOCK, 429),
    ],
)
def test_answers_are_read_as_llmproxy_reads_them(output, action, detail):
    answer = parse_answer(output, "p")
    assert answer.action is action
    if action is PluginAction.MODIFY:
        assert answer.body == detail
    if action is PluginAction.BLOCK:
        assert answer.status_code == detail
        assert answer.message == "blocked by WASM plugin 'p'"


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (b"not json", "invalid JSON"),
        (b"[1, 2]", "a JSON list, expected an object"),
        (b'{"action":"explode"}', "unknown action 'explode'"),
        (b'{"action":"block","status_code":"403"}', "status_code '403', expected an integer"),
        (b'{"action":"modify","body":[1]}', "invalid modify"),
        (b'{"action":"cache_hit"}', "invalid cache_hit"),
    ],
)
def test_invalid_answers_are_errors_that_say_what_is_wrong(output, problem):
    with pytest.raises(WasmOutputError, match=problem):
        parse_answer(output, "p")


def test_the_readme_shows_the_built_example_and_a_valid_entry():
    readme = (ROOT / "README.md").read_text()
    source = (ROOT / "wasm" / "src" / "keyword_guard.ts").read_text().rstrip("\n")
    assert f"```typescript\n{source}\n```" in readme
    section = readme.split("### WASM plugins", 1)[1]
    yaml_block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (entry,) = parse_config(yaml_block).plugins
    assert (entry.type, entry.entrypoint, entry.config) == (
        PluginType.WASM,
        "wasm/keyword_guard.wasm",
        {"word": "secret"},
    )
    assert (entry.wasm.memory_limit_mb, entry.wasm.pool_size, entry.wasm.wasi) == (64, 4, False)


async def test_a_call_the_engine_gives_up_on_is_stopped_at_once(workspace, make_engine):
    """Cut by the caller's deadline long before its own 10 s limit, the guest is cancelled then."""
    _install(workspace, "spin")
    config = workspace.config(
        """
        plugins:
          - {name: spinner, type: wasm, entrypoint: plugin.wasm, timeout_ms: 10000, wasm: {pool_size: 1}}
        """
    )
    engine = await make_engine(config)

    cut = await engine.execute_ring(
        PluginHook.PRE_FLIGHT, PluginContext(body={"spin": True}), deadline=time.monotonic() + 0.3
    )
    assert cut.results[0].outcome is PluginOutcome.TIMEOUT

    # The only instance is free again well within the 10 s the guest could still have run.
    after = await engine.execute_ring(
        PluginHook.PRE_FLIGHT, PluginContext(body={"spin": False}), deadline=time.monotonic() + 5.0
    )
    assert after.results[0].outcome is PluginOutcome.OK
    assert after.action is PluginAction.PASSTHROUGH


async def test_a_stopped_call_does_not_break_the_other_instances(workspace, make_engine):
    """Instances that never ran must not inherit another instance's timeout (shared runtime state)."""
    _install(workspace, "spin")
    config = workspace.config(
        """
        plugins:
          - {name: spinner, type: wasm, entrypoint: plugin.wasm, timeout_ms: 300, wasm: {pool_size: 3}}
        """
    )
    engine = await make_engine(config)

    stopped = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body={"spin": True}))
    assert stopped.results[0].outcome is PluginOutcome.TIMEOUT

    later = [
        await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext(body={"spin": False}))
        for _ in range(6)
    ]
    assert [ring.results[0].outcome for ring in later] == [PluginOutcome.OK] * 6, [
        ring.results[0].error for ring in later
    ]
