"""No PII in the clear beyond the request: the default pipeline over gRPC, DEBUG logging on.

A PRE_FLIGHT -> POST_FLIGHT -> BACKGROUND request and then the same request again
(answered from the cache) run on a real server with the built-in default config,
its SQLite store and audit file in the test's folder. The client's email, card
number and API secret may be in what the client sends and in the answer it gets
back, and nowhere else: not in any log record (ringd's and its dependencies', at
DEBUG), not in the store file or its WAL, not in the audit file, not in any
metadata value of any answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from ringd.client import AsyncClient, RingResult

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
SECRET = "sk-proj-Zx9Yw8Vu7TZx9Yw8Vu7TZx9Yw8Vu7T"
RAW = (EMAIL, CARD, CARD.replace(" ", ""), SECRET)


def upstream(body: dict[str, Any]) -> dict[str, Any]:
    """A model that quotes the prompt it was sent (so the answer carries the placeholders)."""
    prompt = body["messages"][-1]["content"]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"Noted: {prompt}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 20, "total_tokens": 40},
    }


async def request_once(client: AsyncClient, body: dict[str, Any], request_id: str) -> list[RingResult]:
    """One client request through the rings as a gateway drives them; every answer, in order."""
    answers = await client.execute_rings(
        ["ingress", "pre_flight", "routing"], body, request_id=request_id, method="POST", path="/v1/chat"
    )
    last = answers[-1]
    if last.action == "cache_hit":
        return answers
    assert last.action in {"passthrough", "modify"}, (last.action, last.message)
    forwarded = last.body or body
    post = await client.execute_ring(
        "post_flight", forwarded, metadata=last.metadata, response=upstream(forwarded), request_id=request_id
    )
    assert post.action in {"passthrough", "modify"}, (post.action, post.message)
    background = await client.execute_ring(
        "background", forwarded, metadata=post.metadata, response=post.response, request_id=request_id
    )
    return [*answers, post, background]


def leaks(where: str, text: str) -> list[str]:
    return [f"{value!r} in {where}" for value in RAW if value in text]


async def test_pii_stays_out_of_logs_store_audit_and_metadata(
    serve_default, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, ringd's and its dependencies' (aiosqlite...)
    server = await serve_default()
    body = {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": f"I am {EMAIL}, card {CARD}, my key is {SECRET}."}],
    }
    audit = tmp_path / "ringd-audit.jsonl"
    store_files = [tmp_path / "ringd.db", tmp_path / "ringd.db-wal"]
    found: list[str] = []
    async with AsyncClient(server.addresses[0]) as client:
        first = await request_once(client, body, "req-1")
        second = await request_once(client, body, "req-2")
        for _ in range(200):  # BACKGROUND runs after its acknowledgement
            if audit.exists() and audit.read_text().count("\n") >= 1:
                break
            await asyncio.sleep(0.05)
        # The store and its WAL while the server still holds them open.
        found += [
            leak
            for file in store_files
            if file.exists()
            for leak in leaks(file.name, file.read_bytes().decode("latin-1"))
        ]

    # What the client gets back: its own data restored, the first time and from the cache.
    answer = first[-2].response
    assert answer is not None
    text = answer["choices"][0]["message"]["content"]
    assert all(value in text for value in (EMAIL, CARD, SECRET)), text
    assert second[-1].action == "cache_hit"
    assert second[-1].cached_response == answer
    # The upstream only ever saw placeholders.
    forwarded = json.dumps(first[1].body)
    assert not leaks("the body sent upstream", forwarded)
    assert all(placeholder in forwarded for placeholder in ("[EMAIL_1]", "[CREDIT_CARD_1]", "[SECRET_1]"))

    await server.stop(2.0)
    for answer_ in [*first, *second]:
        for key, value in answer_.metadata.items():
            found += leaks(f"{answer_.ring} answer metadata[{key!r}]", json.dumps(value))
    found += [
        leak
        for file in store_files
        if file.exists()
        for leak in leaks(file.name, file.read_bytes().decode("latin-1"))
    ]
    assert audit.read_text().count("\n") == 1
    found += leaks("the audit file", audit.read_text())
    found += leaks("the log (DEBUG)", caplog.text)
    found += leaks("stderr", capfd.readouterr().err)
    assert not found, found
