"""The Python client's stream_ring (async and sync) against a real server with the built-ins."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from ringd.client import AsyncClient, Client, StreamBlocked
from ringd.plugins._seal import seal
from support.stream import chunks_of
from support.workspace import entry

CANARY = "RINGD-CANARY-7f3a"
PII_KEY = "11" * 32  # the key both plugins open the sealed PII mapping with (hex)
PROMPT = "Reply to jane.doe@example.com please"


def pipeline(audit: str) -> list[dict[str, object]]:
    return [
        entry(
            "pii_redactor",
            "pre_flight",
            entrypoint="ringd.plugins.pii_redactor:PiiRedactor",
            config={"mode": "mask", "restore": True, "pii_key": PII_KEY},
        ),
        entry(
            "response_sanitizer",
            "post_flight",
            entrypoint="ringd.plugins.response_sanitizer:ResponseSanitizer",
            config={"restore_pii": True, "canary": CANARY, "block_on_canary": False, "pii_key": PII_KEY},
        ),
        entry(
            "audit_log",
            "background",
            entrypoint="ringd.plugins.audit_log:AuditLog",
            config={"path": audit},
        ),
    ]


def upstream_text() -> str:
    return f"Sure, I wrote to [EMAIL_1]. {CANARY} Use key sk-abcdefghijklmnopqrstuvwx123 now."


async def test_async_stream_restores_pii_and_removes_secrets_split_anywhere(serve, workspace):
    audit = workspace.root / "audit.jsonl"
    running = await serve(pipeline(str(audit)))
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    text = upstream_text()

    async with AsyncClient(running.address) as client:
        pre_flight = (await client.execute_rings(["pre_flight"], body))[-1]
        assert "[EMAIL_1]" in pre_flight.body["messages"][0]["content"]

        async def upstream() -> AsyncIterator[bytes]:
            for chunk in chunks_of(text, cuts=range(1, len(text), 3)):  # every 3 characters
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                await asyncio.sleep(0)

        async with client.stream_ring(upstream(), pre_flight.body, metadata=pre_flight.metadata) as stream:
            chunks = [chunk async for chunk in stream]

    released = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert released == "Sure, I wrote to jane.doe@example.com.  Use key [REDACTED_SECRET] now."
    assert stream.result is not None
    assert stream.result.action == "passthrough"
    assert stream.result.answer["choices"][0]["message"]["content"] == released
    assert stream.result.metadata["_response_sanitizer"]["canary_found"] is True
    assert stream.result.background_queued
    for _ in range(200):
        if audit.exists() and audit.read_text().strip():
            break
        await asyncio.sleep(0.05)
    assert json.loads(audit.read_text().splitlines()[-1])["outcome"] == "ok"


async def test_a_block_mid_stream_raises_stream_blocked_with_its_sse_event(serve, workspace):
    config = pipeline(str(workspace.root / "audit.jsonl"))
    config[1]["config"] = {"canary": CANARY, "block_on_canary": True}
    running = await serve(config)

    async with AsyncClient(running.address) as client:
        stream = client.stream_ring(chunks_of(f"fine so far. {CANARY} leaked", cuts=[5, 14, 20]), {})
        got: list[dict[str, object]] = []

        async def collect() -> None:
            async for chunk in stream:
                got.append(chunk)

        with pytest.raises(StreamBlocked) as raised:
            await collect()

    blocked = raised.value
    assert (blocked.status_code, blocked.error_type, blocked.decided_by) == (
        502,
        "canary_leak",
        "response_sanitizer",
    )
    assert CANARY not in json.dumps(got)
    event = blocked.sse_event()
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["type"] == "canary_leak"


async def test_the_sync_client_streams_too(serve, workspace):
    running = await serve(pipeline(str(workspace.root / "audit.jsonl")))
    # As pii_redactor leaves it in PRE_FLIGHT's answer: sealed for this request.
    sealed = seal({"[EMAIL_1]": "jane.doe@example.com"}, key=bytes.fromhex(PII_KEY), request_id="sync-1")
    metadata = {"_pii_mapping": sealed}

    def run() -> tuple[str, object]:
        with Client(running.address) as client:
            stream = client.stream_ring(
                chunks_of("mail [EMAIL_1] now", cuts=[7, 9]), {}, metadata=metadata, request_id="sync-1"
            )
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in stream if c["choices"])
            return text, stream.result

    text, result = await asyncio.to_thread(run)

    assert text == "mail jane.doe@example.com now"
    assert result.answer["choices"][0]["message"]["content"] == text


def test_response_is_refused_on_a_stream():
    client = Client("127.0.0.1:1")
    try:
        with pytest.raises(ValueError, match="arrives as chunks"):
            client.stream_ring([], {}, response={"choices": []})
    finally:
        client.close()
