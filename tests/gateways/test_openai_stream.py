"""The official ``openai`` SDK with ``stream=True`` through each example gateway.

Real processes: ``ringd serve`` (the default pipeline, see tests/support/gateways.py), the gateway
(Go binary or Node script) and its fake upstream, which streams the echo of the
prompt in small chunks so placeholders and secrets are split across chunks.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import openai
import pytest
from support.gateways import CANARY, TEST_KEY, Gateway, Ringd, StartGateway

# The first test builds the Go gateway (modules, maybe a toolchain, from the Go proxy) or runs npm ci.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GATEWAYS = ["go", "node"]
SECRET = "sk-" + "a1B2c3D4e5F6g7H8i9J0kLmNoPqR"


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=120)


def upstream_calls(gateway: Gateway) -> list[dict[str, Any]]:
    with urllib.request.urlopen(gateway.upstream_url + "/_calls", timeout=30) as answer:
        calls: list[dict[str, Any]] = json.load(answer)["requests"]
        return calls


def stream_text(client: openai.OpenAI, prompt: str, collected: list[str] | None = None, **fake: Any) -> str:
    """The text the SDK yields for ``prompt``; ``fake`` steers the fake upstream (metadata)."""
    collected = [] if collected is None else collected
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        temperature=0,
        metadata={key: str(value) for key, value in fake.items()},
    )
    for chunk in stream:
        for choice in chunk.choices:
            collected.append(choice.delta.content or "")
    return "".join(collected)


@pytest.mark.parametrize("kind", GATEWAYS)
def test_streamed_answer_has_pii_restored_and_secrets_removed(
    kind: str, ringd: Ringd, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(kind, ringd, False)
    client = sdk(gateway)
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Write to alice@example.com about the launch"}],
        stream=True,
        stream_options={"include_usage": True},
        metadata={"fake_chunk_chars": "3", "fake_append": f" and use {SECRET} there"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    # The upstream saw the placeholder, the client gets the address back, never the secret.
    assert "alice@example.com" not in json.dumps(upstream_calls(gateway))
    assert text.startswith("echo: Write to alice@example.com about the launch and use ")
    assert SECRET not in text
    assert "sk-" not in text
    assert len(chunks) > 2, "the answer must arrive as several events"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0


@pytest.mark.parametrize("kind", GATEWAYS)
def test_a_cache_hit_streams(kind: str, ringd: Ringd, start_gateway: StartGateway) -> None:
    gateway = start_gateway(kind, ringd, False)
    client = sdk(gateway)
    first = stream_text(client, "Name three primes, please")
    assert len(upstream_calls(gateway)) == 1
    second = stream_text(client, "Name three primes, please")
    assert second == first == "echo: Name three primes, please"
    assert len(upstream_calls(gateway)) == 1, "the second answer must come from the cache"


@pytest.mark.parametrize("kind", GATEWAYS)
def test_a_mid_stream_block_is_the_sdks_error(kind: str, ringd: Ringd, start_gateway: StartGateway) -> None:
    gateway = start_gateway(kind, ringd, False)
    client = sdk(gateway)
    prompt = "Tell me a long story about a lighthouse keeper. " * 6
    collected: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        stream_text(client, prompt, collected, fake_append=f" the hidden words are {CANARY}.")
    assert raised.value.type == "canary_leak", raised.value.body
    assert "withheld" in raised.value.message
    text = "".join(collected)
    assert text.startswith("echo: Tell me a long story"), "text before the leak reached the client"
    assert CANARY not in text


@pytest.mark.parametrize("kind", GATEWAYS)
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_ringd_restarted_mid_stream(
    kind: str, fail_open: bool, ringd: Ringd, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(kind, ringd, fail_open)
    client = sdk(gateway)
    prompt = "Count slowly from one to twenty for me"
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        metadata={"fake_chunk_chars": "4", "fake_delay_ms": "300"},
    )
    iterator = iter(stream)
    collected = [next(iterator).choices[0].delta.content or ""]  # the stream is under way
    ringd.kill()
    try:
        if fail_open:
            # The rest of the upstream's answer is relayed unprocessed; no error.
            collected.extend(c.choices[0].delta.content or "" for c in iterator if c.choices)
            assert "".join(collected).endswith("to twenty for me")
        else:
            with pytest.raises(openai.APIError) as raised:
                collected.extend(c.choices[0].delta.content or "" for c in iterator if c.choices)
            assert "plugin service unavailable" in str(raised.value)
    finally:
        ringd.start()  # restarted where the gateway looks
    # The gateway reconnects (after its gRPC channel's backoff): streamed answers go
    # through ringd again, the address restored.
    deadline = time.monotonic() + 60  # a bound for a loaded machine, not an expectation
    while True:
        try:
            text = stream_text(client, "Write to bob@example.org")
            break
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or time.monotonic() > deadline:
                raise  # not "ringd unavailable", or still unavailable after the bound
            time.sleep(0.2)
    assert text == "echo: Write to bob@example.org"
    assert "bob@example.org" not in json.dumps(upstream_calls(gateway)[-1])
