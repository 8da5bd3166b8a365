"""The hold-back is exact: for any split of an answer into chunks, the released text is the
text the unary POST_FLIGHT ring makes of the whole answer, with the same built-in plugins.

The plugins are the default pipeline's: ``pii_redactor`` masks the prompt (keeping the
mapping in metadata) and ``response_sanitizer`` restores its placeholders, redacts
secrets and e-mail addresses and removes the canary, in the answer. The answer is made
of words and of what those plugins look for, in any order; the chunk boundaries are
anywhere, inside a placeholder, a secret or the canary included.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ringd.sdk import PluginContext, PluginHook, PluginState
from ringd.server.config import parse_config
from ringd.server.engine import Engine
from support.stream import chunks_of, released_text

CANARY = "RINGD-CANARY-7f3a"
CONFIG = f"""
version: property
plugins:
  - name: pii_redactor
    hook: pre_flight
    entrypoint: ringd.plugins.pii_redactor:PiiRedactor
    config: {{mode: mask, restore: true}}
  - name: response_sanitizer
    hook: post_flight
    entrypoint: ringd.plugins.response_sanitizer:ResponseSanitizer
    timeout_ms: 5000
    config: {{restore_pii: true, canary: {CANARY}, types: [secret, email]}}
"""
PROMPT = "Mail ann@corp.example and bo@mail.example.net; my key is sk-live0123456789abcdefghijKL"

SECRET = st.builds(
    lambda tail: "sk-" + tail,
    st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz0123456789", min_size=24, max_size=40),
)
TOKEN = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12),
    st.sampled_from(["[EMAIL_1]", "[EMAIL_2]", "[SECRET_1]", "[EMAIL_9]", "[PHONE_1]", CANARY]),
    SECRET,
    st.sampled_from(["carl@leak.example", "dee@other.example.org"]),
)
SEPARATOR = st.sampled_from([" ", "  ", "\n", ", ", ". "])


@st.composite
def answers(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(TOKEN, min_size=1, max_size=30))
    text = tokens[0]
    for token in tokens[1:]:
        text += draw(SEPARATOR) + token
    return text


class Harness:
    """An engine on its own loop, and the metadata pii_redactor left for the answer."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.engine = Engine(PluginState())
        self.runner.run(self.engine.start(parse_config(CONFIG)))
        ctx = PluginContext(body={"messages": [{"role": "user", "content": PROMPT}]})
        self.runner.run(self.engine.execute_ring(PluginHook.PRE_FLIGHT, ctx))
        self.metadata = ctx.metadata
        assert isinstance(self.metadata["_pii_mapping"], str)  # sealed: opened by the sanitizer

    def unary(self, text: str) -> str:
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        ctx = PluginContext(metadata=copy.deepcopy(self.metadata), response=answer)
        outcome = self.runner.run(self.engine.execute_ring(PluginHook.POST_FLIGHT, ctx))
        content: str = outcome.context.response["choices"][0]["message"]["content"]
        return content

    def streamed(self, text: str, cuts: list[int]) -> tuple[str, dict[str, Any]]:
        async def run() -> tuple[str, dict[str, Any]]:
            ctx = PluginContext(metadata=copy.deepcopy(self.metadata))
            released: list[dict[str, Any]] = []
            with self.engine.open_stream(ctx) as session:
                for chunk in chunks_of(text, cuts):
                    out, ended = await session.feed(chunk)
                    assert ended is None
                    released.extend(out)
                out, outcome = await session.finish()
                released.extend(out)
            assert not outcome.blocked
            return released_text(released), outcome.answer

        return self.runner.run(run())

    def close(self) -> None:
        self.runner.run(self.engine.close(grace_s=1.0))
        self.runner.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_released_text_equals_the_unary_ring_on_the_whole_answer(
    harness: Harness, data: st.DataObject
) -> None:
    text = data.draw(answers(), label="answer")
    cuts = data.draw(
        st.lists(st.integers(min_value=1, max_value=max(1, len(text) - 1)), max_size=40), label="cuts"
    )

    streamed, assembled = harness.streamed(text, cuts)

    expected = harness.unary(text)
    assert streamed == expected
    assert assembled["choices"][0]["message"]["content"] == expected


def test_the_sample_answer_is_restored_and_redacted(harness: Harness) -> None:
    text = f"Write to [EMAIL_1] about carl@leak.example; key [SECRET_1] and sk-{'x' * 30}. {CANARY} bye"
    every_char = list(range(1, len(text)))

    streamed, _ = harness.streamed(text, every_char)

    assert streamed == (
        "Write to ann@corp.example about [REDACTED_EMAIL]; key sk-live0123456789abcdefghijKL and "
        "[REDACTED_SECRET].  bye"
    )
