"""model_router: ordered rules on tenant, length, complexity and model; the default route."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ringd.plugins.model_router import (
    _ONE_WORD_KEYWORDS,
    _REASONING,
    _SEVERAL_WORDS_START,
    ModelRouter,
    _reasoning_keywords,
    complexity_score,
)
from ringd.sdk import PluginAction

RULES = {
    "rules": [
        {"name": "vip", "match": {"tenant": ["acme", "big-*"]}, "model": "gpt-4o", "upstream": "azure"},
        {"name": "long", "match": {"min_tokens": 2000}, "model": "gpt-4o-128k", "upstream": "openai"},
        {"name": "hard", "match": {"min_complexity": 0.6}, "model": "o1", "upstream": "openai"},
        {"name": "claude", "match": {"model": "claude-*"}, "upstream": "anthropic"},
    ],
    "default": {"model": "gpt-4o-mini", "upstream": "openai"},
}

HARD_PROMPT = (
    "Prove step by step that the algorithm below is correct, analyze its complexity, "
    "and explain the trade-offs. Why does it terminate? Is it optimal? Can we do better?\n"
    "```python\ndef f(xs):\n    return sorted(xs)\n```\n```python\nprint(f([3, 1]))\n```\n"
)


def test_complexity_score_orders_prompts(chat) -> None:
    trivial = complexity_score(chat(("user", "hi there")))
    hard = complexity_score(chat(("user", HARD_PROMPT * 20)))
    assert 0.0 <= trivial < 0.1
    assert 0.8 < hard <= 1.0
    # System prompts do not make a request look harder.
    assert complexity_score(chat(("system", HARD_PROMPT), ("user", "hi there"))) == trivial


async def test_default_route(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "hello"), model="gpt-4o-mini"))
    outcome = await ModelRouter(RULES).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH  # the model is already the default's
    assert ctx.metadata["route_model"] == "gpt-4o-mini"
    assert ctx.metadata["route_upstream"] == "openai"
    assert ctx.metadata["route_rule"] == "default"
    assert isinstance(ctx.metadata["_complexity_score"], float)


async def test_tenant_rule_with_glob(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "hello")), metadata={"tenant": "big-bank"})
    outcome = await ModelRouter(RULES).execute(ctx)
    assert outcome.action is PluginAction.MODIFY
    assert outcome.body is not None
    assert outcome.body["model"] == "gpt-4o"
    assert ctx.metadata["route_rule"] == "vip"
    assert ctx.metadata["route_upstream"] == "azure"


async def test_first_matching_rule_wins(make_ctx, chat) -> None:
    # Long and hard: "long" comes first.
    ctx = make_ctx(chat(("user", HARD_PROMPT * 40)))
    await ModelRouter(RULES).execute(ctx)
    assert ctx.metadata["route_rule"] == "long"
    # Hard but short.
    ctx = make_ctx(chat(("user", HARD_PROMPT)))
    await ModelRouter(RULES).execute(ctx)
    assert ctx.metadata["_complexity_score"] >= 0.6
    assert ctx.metadata["route_rule"] == "hard"
    assert ctx.metadata["route_model"] == "o1"


async def test_rule_without_model_keeps_the_requested_one(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "hello"), model="claude-3-5-sonnet"))
    outcome = await ModelRouter(RULES).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert ctx.metadata["route_model"] == "claude-3-5-sonnet"
    assert ctx.metadata["route_upstream"] == "anthropic"


async def test_char_bounds_and_missing_tenant(make_ctx, chat) -> None:
    router = ModelRouter(
        {
            "rules": [
                {"match": {"tenant": "*"}, "upstream": "tenanted"},
                {"match": {"max_chars": 5}, "model": "tiny"},
            ]
        }
    )
    ctx = make_ctx(chat(("user", "hey")))
    outcome = await router.execute(ctx)
    # No tenant: even "*" does not match; the second rule (rule_1) does.
    assert ctx.metadata["route_rule"] == "rule_1"
    assert ctx.metadata["route_upstream"] == "default"
    assert outcome.body is not None
    assert outcome.body["model"] == "tiny"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": None, "model": 7},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
    ],
)
async def test_bodies_without_text_or_model(make_ctx, body) -> None:
    ctx = make_ctx(body)
    outcome = await ModelRouter(RULES).execute(ctx)
    assert ctx.metadata["route_rule"] == "default"
    assert ctx.metadata["_complexity_score"] == 0.0
    assert outcome.body is not None
    assert outcome.body["model"] == "gpt-4o-mini"


async def test_multimodal_and_huge_prompts(make_ctx, chat) -> None:
    parts = [{"type": "text", "text": "Ünïcödé " * 130_000}, {"type": "image_url"}]
    ctx = make_ctx(chat(("user", parts)))
    await ModelRouter(RULES).execute(ctx)
    assert ctx.metadata["route_rule"] == "long"


async def test_no_default_model_keeps_the_request(make_ctx, chat) -> None:
    ctx = make_ctx(chat(("user", "x"), model="m"))
    outcome = await ModelRouter({}).execute(ctx)
    assert outcome.action is PluginAction.PASSTHROUGH
    assert ctx.metadata["route_model"] == "m"
    assert ctx.metadata["route_upstream"] == "default"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"rules": {"a": 1}}, "rules"),
        ({"rules": ["x"]}, r"rules\[0\]"),
        ({"rules": [{"match": {}}]}, "model"),
        ({"rules": [{"model": "m", "match": {"tenants": "a"}}]}, "tenants"),
        ({"rules": [{"model": "m", "match": {"min_complexity": "high"}}]}, "min_complexity"),
        ({"rules": [{"model": "m", "match": {"max_chars": -1}}]}, "max_chars"),
        ({"rules": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}, "rules"),
        ({"default": {"upstream": ""}}, "upstream"),
    ],
)
def test_config_errors_name_the_key(config, key) -> None:
    with pytest.raises(ValueError, match=rf"model_router.*{key}"):
        ModelRouter(config)


_KEYWORD_TEXT = (
    "prove proof proofs derive derivation analyze analyses analysis step by - explain why trade off "
    "tradeoffs "
    "trade-offs optimise optimize reason reasoning reasons debug theorem x é ü _ 1 . , \n"
)
# Every word the keyword regex spells (and the word path's tables), so a keyword missing
# from or misspelt in the tables fails here.
_KEYWORD_PIECES = [
    *_KEYWORD_TEXT.split(" "),
    *sorted({*re.findall(r"[a-z]{2,}", _REASONING.pattern), *_ONE_WORD_KEYWORDS, *_SEVERAL_WORDS_START}),
    " ",
    "-",
    "step-by-step",
    "explain  why",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_KEYWORD_PIECES), max_size=25))
def test_keywords_from_words_match_the_keyword_regex(pieces: list[str]) -> None:
    text = "".join(pieces).lower()
    assert _reasoning_keywords(text) == set(_REASONING.findall(text))


def test_256_ki_characters_are_searched_latest_first_but_all_count_for_length() -> None:
    # Scoring 4 MB of user text held the event loop for 160 ms; the parts saturate long before.
    filler = "plain words " * 30_000  # 360,000 characters, past the 262,144 searched
    ask = " prove? derive? analyze? "

    def score(*texts: str) -> float:
        return complexity_score({"messages": [{"role": "user", "content": text} for text in texts]})

    assert score(filler) == 0.35  # length only
    assert score(ask + filler) == 0.75  # length, three questions and three keywords
    assert score(filler + ask) == 0.75  # the end of a long paste is searched too
    assert score(filler[:150_000] + ask + filler[150_000:]) == 0.35  # its middle is not
    assert score(ask, filler) == 0.35  # the latest message takes the whole budget first
    assert score(filler, ask) == 0.75
