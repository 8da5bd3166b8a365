"""`make demo`: start ringd on its built-in default pipeline and drive requests through all
five rings with the Python client, printing what each ring did.

It plays the gateway: INGRESS + PRE_FLIGHT + ROUTING in one ExecuteRings call, a fake
upstream model, POST_FLIGHT on its answer, then BACKGROUND. Shown: a PII redaction (and its
restoration in the answer), a cache hit on the repeated request, a routing choice, a
rate-limit 429 and the usage totals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ringd.client import AsyncClient, RingResult
from ringd.server.app import build_server
from ringd.server.config import default_config

DEMO_KEY = "ringd-demo-key"  # the default config's trial key: tenant "trial", 3 requests a minute


def fake_upstream(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style answer that repeats the last user message, as a model might quote it."""
    last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    text = f"You said: {last}"
    return {
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "model": body.get("model", ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": len(last) // 4 + 8, "completion_tokens": len(text) // 4 + 1},
    }


def describe(outcome: RingResult) -> str:
    ran = ", ".join(f"{r.plugin}:{r.action or r.outcome}" for r in outcome.results) or "no plugins"
    verdict = outcome.action
    if outcome.action == "block":
        verdict += f" {outcome.status_code} {outcome.error_type}: {outcome.message}"
    return f"  {outcome.ring:<11} {verdict:<12} [{ran}]"


async def gateway_request(
    client: AsyncClient, body: dict[str, Any], *, headers: dict[str, str] | None = None, label: str
) -> dict[str, Any]:
    """One client request through the five rings, as a gateway drives it."""
    print(f"\n> {label}")
    print(f"  request: {json.dumps(body['messages'][-1]['content'])[:100]}")
    outcomes = await client.execute_rings(
        ["ingress", "pre_flight", "routing"],
        body,
        headers=headers or {},
        method="POST",
        path="/v1/chat/completions",
    )
    for outcome in outcomes:
        print(describe(outcome))
    last = outcomes[-1]
    summary: dict[str, Any] = {"outcomes": outcomes}
    if last.action == "block":
        print(f"  -> client gets HTTP {last.status_code}, retry after {retry_after(last)} s")
        summary["status"] = last.status_code
        return summary
    if last.action == "cache_hit":
        print("  -> answered from cache; the upstream model is not called")
        summary["status"], summary["answer"] = 200, last.cached_response
        return summary
    forwarded = last.body or body
    prompt = json.dumps(forwarded["messages"][-1]["content"])[:90]
    print(f"  -> upstream gets model {forwarded.get('model')!r}: {prompt}")
    answer = fake_upstream(forwarded)
    post = await client.execute_ring("post_flight", forwarded, metadata=last.metadata, response=answer)
    print(describe(post))
    final = post.response or answer
    print(f"  <- client gets: {json.dumps(final['choices'][0]['message']['content'])[:100]}")
    background = await client.execute_ring("background", forwarded, metadata=post.metadata, response=final)
    print(f"  background  queued={background.queued}")
    summary.update(status=200, answer=final, metadata=post.metadata)
    return summary


def retry_after(outcome: RingResult) -> Any:
    limiter = outcome.metadata.get("_rate_limiter") or {}
    return outcome.metadata.get("retry_after_s", limiter.get("reset_s"))


def usage_totals(store_file: Path) -> dict[str, int]:
    with sqlite3.connect(store_file) as db:
        rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'usage:%' ORDER BY key").fetchall()
    return {key: json.loads(value) for key, value in rows}


async def run_demo(workdir: Path, *, timeout_scale: float = 1.0) -> dict[str, Any]:
    """Serve the default pipeline from ``workdir`` and run the demo; return what happened."""
    config = default_config()
    if timeout_scale != 1.0:
        # Tests of the pipeline's behaviour on a busy machine give every plugin more time;
        # the default budgets (20-200 ms) are for a server that has its CPU.
        plugins = tuple(
            dataclasses.replace(entry, timeout_ms=int((entry.timeout_ms or 50) * timeout_scale))
            for entry in config.plugins
        )
        config = dataclasses.replace(config, plugins=plugins)
    server = await build_server(config, listen=["127.0.0.1:0"])
    results: dict[str, Any] = {}
    try:
        print(f"ringd serving the built-in default pipeline ({config.version}) on {server.addresses[0]}")
        async with AsyncClient(server.addresses[0]) as client:
            pii = {
                "model": "gpt-4o-mini",
                "temperature": 0,
                "messages": [
                    {
                        "role": "user",
                        "content": "Hi, I'm Jane: jane.doe@example.com, card 4111 1111 1111 1111.",
                    }
                ],
            }
            results["pii"] = await gateway_request(
                client, pii, label="a prompt with PII (masked, then restored)"
            )
            results["cached"] = await gateway_request(client, pii, label="the same request again")
            complex_prompt = {
                "model": "gpt-4o-mini",
                "messages": [
                    {
                        "role": "user",
                        "content": "Prove step by step that the algorithm terminates, explain the trade-off "
                        "between memory and speed, and optimize it. Why? How? What if n is huge?\n"
                        "```python\ndef f(n):\n    return f(n - 1) if n else 0\n```\n"
                        "```python\nprint(f(3))\n```",
                    }
                ],
            }
            results["routed"] = await gateway_request(
                client, complex_prompt, label="a complex prompt (routing)"
            )
            trial = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            statuses = []
            # The limit counts requests per minute of Unix time: the four go in one minute.
            left_s = 60.0 - time.time() % 60.0
            if left_s < 5.0:
                await asyncio.sleep(left_s + 0.05)
            for attempt in range(1, 5):
                summary = await gateway_request(
                    client,
                    trial,
                    headers={"authorization": f"Bearer {DEMO_KEY}"},
                    label=f"trial key, request {attempt}/4",
                )
                statuses.append(summary["status"])
            results["trial_statuses"] = statuses
    finally:
        await server.stop(5)  # drains the background queue: usage is counted before we read it
    totals = usage_totals(workdir / "ringd.db")
    results["usage"] = totals
    print("\nusage totals in the store (BACKGROUND usage_accounting):")
    for key, value in totals.items():
        print(f"  {key} = {value}")
    return results


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ringd-demo-") as tmp:
        workdir = Path(tmp)
        import os

        os.chdir(workdir)
        asyncio.run(run_demo(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
