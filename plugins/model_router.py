"""ROUTING ``model_router``: pick the model and upstream by ordered rules.

Rules are tried in config order; the first whose every condition holds decides.
A rule without conditions always matches. When none matches, the ``default``
route applies.

Conditions (all optional, under a rule's ``match``):
    tenant (str | list[str]): globs matched against metadata ``tenant``; a
        request without a tenant never matches this condition.
    model (str | list[str]): globs matched against the requested ``model``
        (an absent model is matched as ``""``).
    min_chars / max_chars (int): bounds (inclusive) on the prompt length in
        characters, over every message text.
    min_tokens / max_tokens (int): the same in estimated tokens (4 chars/token).
    min_complexity / max_complexity (float, 0..1): bounds on the complexity score.

The complexity score is a heuristic over the user messages, from 0 (a short
chat line) to 1: prompt length (0.35 at 1000 estimated tokens and beyond),
fenced code blocks (0.25 at two or more), question marks (0.15 at three or
more) and distinct reasoning keywords such as "prove", "step by step",
"trade-off", "optimize" (0.25 at three or more). Length counts all the user text;
code blocks, question marks and keywords are looked for in 256 Ki characters of it,
the latest message first, and of a message longer than what is left, its beginning
and its end (scoring 4 MB held the event loop for 160 ms).

Config:
    rules (list[dict], default []): each ``{name, match, model, upstream}``:
        name (str, default ``"rule_<index>"``), match (dict, default {}: always),
        model (str, optional: the model to use; absent keeps the requested one),
        upstream (str, optional: defaults to the default route's upstream).
        A rule must set ``model`` or ``upstream``.
    default (dict, default ``{"upstream": "default"}``): the route when no rule
        matches: ``model`` (optional) and ``upstream`` (str, default "default").

Metadata written:
    ``_complexity_score`` (float): the score, rounded to 3 decimals.
    ``route_model`` (str | None): the model the request goes to.
    ``route_upstream`` (str): the upstream's name.
    ``route_rule`` (str): the deciding rule's name, or ``"default"``.

The body's ``model`` is set to the route's model (MODIFY) when that changes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ringd.plugins._common import (
    ConfigReader,
    compile_glob,
    glob_match,
    iter_message_texts,
    tokens_for_chars,
    words,
)
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_USER_ROLES = frozenset({"user"})
_SCORED_CHARS = 256 * 1024  # user text searched for fences, questions and keywords
_CODE_FENCE = re.compile(r"^\s*(?:```|~~~)", re.MULTILINE)
_REASONING = re.compile(
    r"\b(?:prove|proof|derive|derivation|step[- ]by[- ]step|explain why|analy[sz]e|analysis"
    r"|compare|trade-?offs?|optimi[sz]e|algorithm|complexity|debug|refactor|architecture"
    r"|reason(?:ing)?|evaluate|calculate|theorem|equation|implement)\b"
)
"""Matched on the lower-cased text: an IGNORECASE alternation costs sre about 3x as much."""
# The one-word keywords of _REASONING: with \b on both sides, each match is a whole word
# (a maximal run of word characters), so a text's keywords are its words among these,
# unless it has a word that starts a keyword of several words; then _REASONING runs.
_ONE_WORD_KEYWORDS = frozenset(
    {
        "prove",
        "proof",
        "derive",
        "derivation",
        "analyze",
        "analyse",
        "analysis",
        "compare",
        "tradeoff",
        "tradeoffs",
        "optimize",
        "optimise",
        "algorithm",
        "complexity",
        "debug",
        "refactor",
        "architecture",
        "reason",
        "reasoning",
        "evaluate",
        "calculate",
        "theorem",
        "equation",
        "implement",
    }
)
_SEVERAL_WORDS_START = frozenset({"step", "explain", "trade"})
_MATCH_KEYS = {
    "tenant",
    "model",
    "min_chars",
    "max_chars",
    "min_tokens",
    "max_tokens",
    "min_complexity",
    "max_complexity",
}


def complexity_score(body: Mapping[str, Any]) -> float:
    """The request's complexity from 0 to 1 (see the module docstring), over user messages."""
    return _complexity([text for _, text in iter_message_texts(body, _USER_ROLES)])


def _reasoning_keywords(lowered: str) -> set[str]:
    """``set(_REASONING.findall(lowered))``, by the words of ``lowered`` where that is the same."""
    found = set(words(lowered))
    if found.isdisjoint(_SEVERAL_WORDS_START):
        return found & _ONE_WORD_KEYWORDS
    return set(_REASONING.findall(lowered))


def _complexity(user_texts: list[str]) -> float:
    chars = 0
    fences = 0
    questions = 0
    keywords: set[str] = set()
    budget = _SCORED_CHARS
    for whole in reversed(user_texts):  # the latest message first
        chars += len(whole)
        if budget <= 0:
            continue
        if len(whole) <= budget:
            searched: tuple[str, ...] = (whole,)
            budget -= len(whole)
        else:  # a long paste: its beginning and its end, where the question usually is
            head = budget // 2
            searched = (whole[:head], whole[len(whole) - (budget - head) :])
            budget = 0
        for text in searched:
            questions += text.count("?")
            if "```" in text or "~~~" in text:
                fences += len(_CODE_FENCE.findall(text))
            keywords |= _reasoning_keywords(text.lower())
    code_blocks = (fences + 1) // 2
    score = (
        0.35 * min(tokens_for_chars(chars) / 1000, 1.0)
        + 0.25 * min(code_blocks / 2, 1.0)
        + 0.15 * min(questions / 3, 1.0)
        + 0.25 * min(len(keywords) / 3, 1.0)
    )
    return round(min(score, 1.0), 3)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    model: str | None
    upstream: str
    tenants: tuple[re.Pattern[str], ...] | None
    models: tuple[re.Pattern[str], ...] | None
    min_chars: int | None
    max_chars: int | None
    min_tokens: int | None
    max_tokens: int | None
    min_complexity: float | None
    max_complexity: float | None


class ModelRouter(BasePlugin):
    """Sets the model and upstream from the first matching rule, or the default route."""

    name: ClassVar[str] = "model_router"
    hook: ClassVar[PluginHook] = PluginHook.ROUTING
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Routes by tenant, prompt length, complexity and model"
    timeout_ms: ClassVar[int] = 10

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"rules", "default"})
        default = reader.get_mapping("default") or {"upstream": "default"}
        default_reader = ConfigReader(f"{self.name}: default", default)
        default_reader.reject_unknown({"model", "upstream"})
        self.default_model = default_reader.get_str("model", None)
        self.default_upstream = default_reader.get_str("upstream", "default") or "default"

        rules = self.config.get("rules", [])
        if not isinstance(rules, list):
            raise reader.error("rules", "a list of rules", rules)
        self.rules = [self._rule(index, rule) for index, rule in enumerate(rules)]
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise reader.error("rules", "rules with distinct names", duplicates[0])

    def _rule(self, index: int, entry: Any) -> _Rule:
        label = f"{self.name}: rules[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigReader(self.name, self.config).error(f"rules[{index}]", "a mapping", entry)
        reader = ConfigReader(label, entry)
        reader.reject_unknown({"name", "match", "model", "upstream"})
        name = reader.get_str("name", f"rule_{index}") or f"rule_{index}"
        model = reader.get_str("model", None)
        upstream = reader.get_str("upstream", None)
        if model is None and upstream is None:
            raise ValueError(f"{label} must set 'model' or 'upstream'")
        conditions = reader.get_mapping("match")
        match = ConfigReader(f"{label}.match", conditions)
        match.reject_unknown(_MATCH_KEYS)
        tenants = match.get_str_list("tenant", None)
        models = match.get_str_list("model", None)

        def bound(key: str) -> float | None:
            return match.get_number(key, None, exclusive=False)

        return _Rule(
            name=name,
            model=model,
            upstream=upstream or self.default_upstream,
            tenants=tuple(compile_glob(p) for p in tenants) if tenants is not None else None,
            models=tuple(compile_glob(p) for p in models) if models is not None else None,
            min_chars=match.get_int("min_chars", None, minimum=0),
            max_chars=match.get_int("max_chars", None, minimum=0),
            min_tokens=match.get_int("min_tokens", None, minimum=0),
            max_tokens=match.get_int("max_tokens", None, minimum=0),
            min_complexity=bound("min_complexity"),
            max_complexity=bound("max_complexity"),
        )

    @staticmethod
    def _matches(rule: _Rule, tenant: str | None, model: str, chars: int, tokens: int, score: float) -> bool:
        if rule.tenants is not None and (
            tenant is None or not any(glob_match(p, tenant) for p in rule.tenants)
        ):
            return False
        if rule.models is not None and not any(glob_match(p, model) for p in rule.models):
            return False
        checks = (
            (rule.min_chars, chars, rule.max_chars),
            (rule.min_tokens, tokens, rule.max_tokens),
            (rule.min_complexity, score, rule.max_complexity),
        )
        for low, value, high in checks:
            if low is not None and value < low:
                return False
            if high is not None and value > high:
                return False
        return True

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Score the prompt, pick the route, record it, and set the body's model."""
        body = ctx.body
        requested = body.get("model")
        requested_model = requested if isinstance(requested, str) else ""
        tenant_value = ctx.metadata.get("tenant")
        tenant = str(tenant_value) if tenant_value is not None else None
        chars = 0
        user_texts: list[str] = []
        for role, text in iter_message_texts(body):
            chars += len(text)
            if role in _USER_ROLES:
                user_texts.append(text)
        tokens = tokens_for_chars(chars)
        score = _complexity(user_texts)
        ctx.metadata["_complexity_score"] = score

        rule_name, model, upstream = "default", self.default_model, self.default_upstream
        for rule in self.rules:
            if self._matches(rule, tenant, requested_model, chars, tokens, score):
                rule_name, model, upstream = rule.name, rule.model, rule.upstream
                break
        target = model if model is not None else (requested_model or None)
        ctx.metadata["route_model"] = target
        ctx.metadata["route_upstream"] = upstream
        ctx.metadata["route_rule"] = rule_name
        if target is not None and target != requested:
            return PluginResponse.modify(
                body={**body, "model": target}, message=f"routed by {rule_name} to {target}"
            )
        return PluginResponse.passthrough()
