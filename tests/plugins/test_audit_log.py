"""audit_log: one JSON line per request, written off the event loop, without secrets."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ringd.plugins.audit_log import AuditLog
from ringd.sdk import PluginContext

LoadAudit = Callable[..., Awaitable[AuditLog]]
SECRET_KEY = "sk-live-very-secret-key-000111"


@pytest.fixture
async def load_audit(tmp_path: Path) -> AsyncIterator[LoadAudit]:
    """Construct and load an AuditLog writing to tmp_path/audit.jsonl; unloaded afterwards."""
    loaded: list[AuditLog] = []

    async def load(**config: Any) -> AuditLog:
        plugin = AuditLog({"path": str(tmp_path / "audit.jsonl"), **config})
        await plugin.on_load()
        loaded.append(plugin)
        return plugin

    yield load
    for plugin in loaded:
        await plugin.on_unload()


async def lines(plugin: AuditLog, tmp_path: Path) -> list[dict[str, Any]]:
    """The file's records once everything ``plugin`` queued is written."""
    await plugin.flush()
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_one_line_per_request(load_audit, make_ctx, chat, completion, tmp_path) -> None:
    plugin = await load_audit()
    ctx = make_ctx(
        chat(("user", "my card is 4111 1111 1111 1111")),
        headers={"authorization": f"Bearer {SECRET_KEY}", "user-agent": "curl/8", "cookie": "s=1"},
        metadata={
            "tenant": "acme",
            "api_key_id": "key-1",
            "route_model": "gpt-4o",
            "route_rule": "vip",
            "pii_counts": {"credit_card": 1},
            "_pii_mapping": {"[CREDIT_CARD_1]": "4111 1111 1111 1111"},
            "something_else": "not allow-listed",
        },
        response=completion("ok", model="gpt-4o-2024-08-06", usage={"prompt_tokens": 9}),
        request_id="req-1",
        session_id="sess-1",
    )
    await plugin.execute(ctx)
    await plugin.execute(make_ctx(chat(("user", "again")), request_id="req-2"))

    first, second = await lines(plugin, tmp_path)
    assert first["request_id"] == "req-1"
    assert first["session_id"] == "sess-1"
    assert first["tenant"] == "acme"
    assert first["api_key_id"] == "key-1"
    assert first["model"] == "gpt-4o-2024-08-06"
    assert first["requested_model"] == "gpt-4o-mini"
    assert first["method"] == "POST"
    assert first["path"] == "/v1/chat/completions"
    assert first["client_address"] == "203.0.113.9"
    assert first["headers"] == {"user-agent": "curl/8"}
    assert first["outcome"] == "ok"
    assert first["finish_reasons"] == ["stop"]
    assert first["usage"] == {"prompt_tokens": 9}
    assert first["metadata"] == {
        "tenant": "acme",
        "api_key_id": "key-1",
        "route_model": "gpt-4o",
        "route_rule": "vip",
        "pii_counts": {"credit_card": 1},
    }
    assert first["time"].endswith("+00:00")
    assert isinstance(first["time_unix"], float)
    assert "content" not in first
    assert second["request_id"] == "req-2"
    assert second["outcome"] == "no_response"

    raw = (tmp_path / "audit.jsonl").read_text()
    for secret in (SECRET_KEY, "4111 1111 1111 1111", "s=1", "my card"):
        assert secret not in raw


async def test_include_content(load_audit, make_ctx, chat, completion, tmp_path) -> None:
    plugin = await load_audit(include_content=True, include_client_address=False)
    parts = [{"type": "text", "text": "Ünïcödé ✓"}, {"type": "image_url", "image_url": {"url": "data:xyz"}}]
    await plugin.execute(make_ctx(chat(("user", parts)), response=completion("answer ✓")))
    (record,) = await lines(plugin, tmp_path)
    assert record["content"] == {
        "messages": [{"role": "user", "text": "Ünïcödé ✓"}],
        "response": ["answer ✓"],
    }
    assert "data:xyz" not in (tmp_path / "audit.jsonl").read_text()
    assert "client_address" not in record


async def test_concurrent_writes_stay_whole_lines(load_audit, make_ctx, chat, tmp_path) -> None:
    plugin = await load_audit(include_content=True)
    big = "x" * 100_000
    await asyncio.gather(
        *(plugin.execute(make_ctx(chat(("user", big)), request_id=f"r{i}")) for i in range(40))
    )
    records = await lines(plugin, tmp_path)
    assert sorted(r["request_id"] for r in records) == sorted(f"r{i}" for i in range(40))


async def test_appends_across_reloads(load_audit, make_ctx, tmp_path) -> None:
    first = await load_audit()
    await first.execute(make_ctx(request_id="a"))
    await first.on_unload()
    second = await load_audit()
    await second.execute(make_ctx(request_id="b"))
    assert [r["request_id"] for r in await lines(second, tmp_path)] == ["a", "b"]
    assert stat.S_IMODE((tmp_path / "audit.jsonl").stat().st_mode) == 0o600


async def test_error_outcome_and_odd_bodies(load_audit, make_ctx, tmp_path) -> None:
    plugin = await load_audit(include_content=True)
    await plugin.execute(make_ctx({"messages": "oops"}, response={"error": {"message": "down"}}))
    (record,) = await lines(plugin, tmp_path)
    assert record["outcome"] == "error"
    assert record["content"] == {"messages": [], "response": []}


async def test_execute_needs_on_load(tmp_path) -> None:
    plugin = AuditLog({"path": str(tmp_path / "audit.jsonl")})
    with pytest.raises(RuntimeError, match="audit_log: the log file is not open"):
        await plugin.execute(PluginContext())
    await plugin.on_load()
    await plugin.on_unload()
    with pytest.raises(RuntimeError, match="audit_log"):
        await plugin.execute(PluginContext())


async def test_unwritable_path_fails_the_load(tmp_path) -> None:
    plugin = AuditLog({"path": str(tmp_path / "missing-dir" / "audit.jsonl")})
    with pytest.raises(FileNotFoundError):
        await plugin.on_load()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "path"),
        ({"path": ""}, "path"),
        ({"path": "a.jsonl", "headers": ["user-agent", "Authorization"]}, "headers"),
        ({"path": "a.jsonl", "headers": ["x-api-key"]}, "headers"),
        ({"path": "a.jsonl", "metadata_keys": ["tenant", "_pii_mapping"]}, "metadata_keys"),
        ({"path": "a.jsonl", "include_content": "no"}, "include_content"),
        ({"path": "a.jsonl", "file": "b"}, "file"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"audit_log.*'{key}'"):
        AuditLog(config)


def test_pii_mapping_allowed_with_content() -> None:
    plugin = AuditLog({"path": "a.jsonl", "include_content": True, "metadata_keys": ["_pii_mapping"]})
    assert plugin.metadata_keys == ("_pii_mapping",)


async def test_existing_audit_file_open_to_others_is_made_owner_only(tmp_path, caplog) -> None:
    import stat

    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o644)
    plugin = AuditLog({"path": str(path)})
    await plugin.on_load()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        await plugin.on_unload()
    assert "was mode 0644; made it 0600" in caplog.text


async def test_unload_writes_every_queued_line(make_ctx, tmp_path) -> None:
    plugin = AuditLog({"path": str(tmp_path / "audit.jsonl")})
    plugin.MAX_QUEUED_BYTES = 4096  # some calls wait for the writer on the way
    await plugin.on_load()
    await asyncio.gather(*(plugin.execute(make_ctx(request_id=f"r{i}")) for i in range(500)))
    await plugin.on_unload()  # a clean shutdown right after the calls: nothing is lost
    text = (tmp_path / "audit.jsonl").read_text()
    assert sorted(json.loads(line)["request_id"] for line in text.splitlines()) == sorted(
        f"r{i}" for i in range(500)
    )


async def test_lines_reach_the_file_without_a_flush(load_audit, make_ctx, tmp_path) -> None:
    plugin = await load_audit()
    await plugin.execute(make_ctx(request_id="on-its-own"))
    path = tmp_path / "audit.jsonl"
    for _ in range(1000):  # the writer's interval is 50 ms; up to 10 s on a busy machine
        if path.read_text():
            break
        await asyncio.sleep(0.01)
    assert json.loads(path.read_text())["request_id"] == "on-its-own"


async def test_calls_from_a_plugin_thread_are_written_too(load_audit, make_ctx, tmp_path) -> None:
    # run_in_thread: execute runs on a worker thread's own event loop.
    plugin = await load_audit()
    await plugin.execute(make_ctx(request_id="on-the-loop"))
    await asyncio.to_thread(asyncio.run, plugin.execute(make_ctx(request_id="on-a-thread")))
    assert sorted(r["request_id"] for r in await lines(plugin, tmp_path)) == ["on-a-thread", "on-the-loop"]


async def test_a_failing_write_keeps_its_lines_and_fails_calls_until_the_file_works(
    load_audit, make_ctx, chat, tmp_path
) -> None:
    """A real write failure (the file size limit, EFBIG, with a short write before it):
    no acknowledged line is lost or written twice, and calls fail while writes fail."""
    import resource
    import signal

    plugin = await load_audit()
    for index in range(3):
        await plugin.execute(make_ctx(chat(("user", "hello")), request_id=f"before-{index}"))
    await plugin.flush()
    size = (tmp_path / "audit.jsonl").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    messages: list[str] = []
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 200, hard))  # room for part of a line
        for index in range(21):
            if index == 20:  # a write has failed by now (flush waits for the writer's round)
                with pytest.raises(RuntimeError, match="failed"):
                    await plugin.flush()
            try:
                await plugin.execute(make_ctx(chat(("user", "hello")), request_id=f"during-{index}"))
            except RuntimeError as exc:
                messages.append(str(exc))
            await asyncio.sleep(0.01)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert messages  # while the file refused writes, calls said so
    assert all("writing to" in message and "File too large" in message for message in messages)
    await plugin.flush()  # the writer's next round writes what was kept
    await plugin.execute(make_ctx(chat(("user", "hello")), request_id="after"))  # calls work again
    ids = [record["request_id"] for record in await lines(plugin, tmp_path)]
    expected = [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(21)] + ["after"]
    assert ids == expected
