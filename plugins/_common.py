"""Helpers shared by the built-in plugins: config validation, message text, tokens, globs.

Everything here works on plain JSON-shaped data (an OpenAI-style chat request or
chat completion) and tolerates malformed shapes: a message that is not a dict, a
``content`` that is ``None`` or a list with non-text parts is skipped, never an
error. Functions that change text copy what they change and leave the input alone.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ringd.sdk import PluginContext, PluginResponse, Store

# A content part carries text when its type is one of these (OpenAI chat uses "text",
# the Responses API "input_text"/"output_text").
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

CHARS_PER_TOKEN = 4
"""The token estimate's ratio: about four characters of English text per token."""


# --------------------------------------------------------------------------- config


class ConfigReader:
    """Reads and validates one plugin's config mapping, naming the plugin and key on error.

    Every getter raises :class:`ValueError` with a message such as
    ``"rate_limiter: config 'window_s' must be a positive number, got -1"``.
    """

    def __init__(self, plugin: str, config: Mapping[str, Any]) -> None:
        """Read ``config`` on behalf of the plugin called ``plugin``."""
        self.plugin = plugin
        self.config = config

    def error(self, key: str, expected: str, value: Any) -> ValueError:
        """The ValueError for config ``key`` holding ``value`` instead of ``expected``."""
        return ValueError(f"{self.plugin}: config {key!r} must be {expected}, got {value!r}")

    def reject_unknown(self, known: set[str]) -> None:
        """Raise on a key that is not in ``known`` (a typo would otherwise be ignored).

        Keys starting with ``__`` are left for the engine.
        """
        unknown = sorted(k for k in self.config if k not in known and not str(k).startswith("__"))
        if unknown:
            raise ValueError(
                f"{self.plugin}: unknown config key {unknown[0]!r} (known keys: {', '.join(sorted(known))})"
            )

    def get_bool(self, key: str, default: bool) -> bool:
        """A boolean, ``default`` when absent."""
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def get_int(self, key: str, default: int | None, *, minimum: int = 1) -> int | None:
        """An integer ``>= minimum`` (``None`` only when absent and ``default`` is None).

        Whole floats (``60.0``, as a protobuf Struct carries numbers) are accepted.
        """
        value = self.config.get(key, default)
        if value is None and default is None:
            return None
        return self.as_int(key, value, minimum=minimum)

    def as_int(self, key: str, value: Any, *, minimum: int = 1) -> int:
        """``value`` (read from config ``key``) as an integer ``>= minimum``."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self.error(key, expected, value)
        return value

    def get_number(
        self, key: str, default: float | None, *, minimum: float = 0.0, exclusive: bool = True
    ) -> float | None:
        """A finite number above ``minimum`` (or at least it when not ``exclusive``)."""
        value = self.config.get(key, default)
        if value is None and default is None:
            return None
        return self.as_number(key, value, minimum=minimum, exclusive=exclusive)

    def as_number(self, key: str, value: Any, *, minimum: float = 0.0, exclusive: bool = True) -> float:
        """``value`` (read from config ``key``) as a finite float above ``minimum``."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and (not math.isfinite(value) or value < minimum or (exclusive and value == minimum)):
            ok = False
        if not ok:
            if minimum == 0.0:
                expected = "a positive number" if exclusive else "a number >= 0"
            else:
                expected = f"a number {'>' if exclusive else '>='} {minimum:g}"
            raise self.error(key, expected, value)
        return float(value)

    def get_str(self, key: str, default: str | None, *, allow_empty: bool = False) -> str | None:
        """A string (non-empty unless ``allow_empty``); ``None`` only when absent with no default."""
        value = self.config.get(key, default)
        if value is None and default is None:
            return None
        if not isinstance(value, str) or (not allow_empty and not value):
            raise self.error(key, "a non-empty string", value)
        return value

    def get_choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        value = self.config.get(key, default)
        if value not in choices:
            raise self.error(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return str(value)

    def get_str_list(self, key: str, default: list[str] | None) -> list[str] | None:
        """A list of non-empty strings (a single string is taken as a list of one)."""
        value = self.config.get(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "a list of non-empty strings", value)
        return list(value)

    def get_mapping(self, key: str) -> dict[str, Any]:
        """A mapping with string keys (empty when absent)."""
        value = self.config.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.error(key, "a mapping with string keys", value)
        return dict(value)


def key_part(value: str) -> str:
    """``value`` safe as one ``:``-separated part of a store key (``%`` and ``:`` escaped)."""
    return value.replace("%", "%25").replace(":", "%3A")


def require_store(ctx: PluginContext, plugin: str) -> Store:
    """The store in ``ctx.state.extra["store"]``.

    Raises:
        RuntimeError: there is none; the engine normally injects it, so a missing
            store is a deployment error, not something to carry on without.
    """
    store = ctx.state.extra.get("store")
    if store is None:
        raise RuntimeError(
            f"{plugin}: no store in ctx.state.extra['store']; this plugin needs the ringd store"
        )
    result: Store = store
    return result


# --------------------------------------------------------------------------- text


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") in _TEXT_PART_TYPES:
        text = part.get("text")
        if isinstance(text, str):
            return text
    return None


def content_texts(content: Any) -> Iterator[str]:
    """The texts of one message ``content``: a string, or a list of content parts.

    Image, audio and file parts carry no text and are skipped.
    """
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            text = _part_text(part)
            if text is not None:
                yield text


def _selected_messages(
    messages: Any, roles: frozenset[str] | None
) -> Iterator[tuple[int, dict[str, Any], str]]:
    """``(index, message, role)`` of each message dict whose role is selected (all when None)."""
    if not isinstance(messages, list):
        return
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else ""
        if roles is None or role in roles:
            yield index, message, role


def iter_message_texts(
    body: Mapping[str, Any], roles: frozenset[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(role, text)`` for every text of the request's messages.

    Covers ``messages[].content`` as a string or as OpenAI content parts, and the
    legacy completions ``prompt`` (a string or list of strings, reported as role
    ``"user"``). ``roles`` keeps only messages with those roles (all when None).
    """
    for _, message, role in _selected_messages(body.get("messages"), roles):
        for text in content_texts(message.get("content")):
            yield role, text
    prompt = body.get("prompt")
    if roles is None or "user" in roles:
        for text in content_texts(prompt):
            yield "user", text


def _map_content(content: Any, role: str, fn: Callable[[str, str], str]) -> Any:
    """``content`` with ``fn(text, role)`` applied to each text, or ``content`` itself if unchanged."""
    if isinstance(content, str):
        return fn(content, role)
    if not isinstance(content, list):
        return content
    new_parts: list[Any] | None = None
    for index, part in enumerate(content):
        text = _part_text(part)
        if text is None:
            continue
        new_text = fn(text, role)
        if new_text == text:
            continue
        if new_parts is None:
            new_parts = list(content)
        new_parts[index] = new_text if isinstance(part, str) else {**part, "text": new_text}
    return content if new_parts is None else new_parts


def map_message_texts(
    body: Mapping[str, Any],
    fn: Callable[[str, str], str],
    roles: frozenset[str] | None = None,
) -> dict[str, Any] | None:
    """A copy of ``body`` with ``fn(text, role)`` applied to each message text.

    Returns None when ``fn`` changed nothing. Only what changed is copied; the
    input is never mutated. Covers the same texts as :func:`iter_message_texts`.
    """
    new_body: dict[str, Any] | None = None
    messages: Any = body.get("messages")
    new_messages: list[Any] | None = None
    for index, message, role in _selected_messages(messages, roles):
        content = message.get("content")
        new_content = _map_content(content, role, fn)
        if new_content is content or new_content == content:
            continue
        if new_messages is None:
            new_messages = list(messages)
        new_messages[index] = {**message, "content": new_content}
    if new_messages is not None:
        new_body = {**body, "messages": new_messages}
    prompt = body.get("prompt")
    if roles is None or "user" in roles:
        new_prompt = _map_content(prompt, "user", fn)
        if new_prompt is not prompt and new_prompt != prompt:
            new_body = {**(new_body if new_body is not None else body), "prompt": new_prompt}
    return new_body


def iter_response_texts(response: Mapping[str, Any] | None) -> Iterator[str]:
    """The texts of an upstream answer: ``choices[].message.content`` and ``choices[].text``."""
    if not isinstance(response, Mapping):
        return
    choices = response.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            yield from content_texts(message.get("content"))
        text = choice.get("text")
        if isinstance(text, str):
            yield text


def map_response_texts(response: dict[str, Any] | None, fn: Callable[[str], str]) -> bool:
    """Apply ``fn`` to each text of an upstream answer, in place; return whether any changed.

    Covers the texts of :func:`iter_response_texts`. The choices are edited in
    place because POST_FLIGHT plugins hand the answer on by editing ``ctx.response``.
    """
    if not isinstance(response, dict):
        return False
    choices = response.get("choices")
    if not isinstance(choices, list):
        return False
    changed = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            new_content = _map_content(content, "assistant", lambda text, _role: fn(text))
            if new_content is not content and new_content != content:
                message["content"] = new_content
                changed = True
        text = choice.get("text")
        if isinstance(text, str):
            new_text = fn(text)
            if new_text != text:
                choice["text"] = new_text
                changed = True
    return changed


# --------------------------------------------------------------------------- tokens


def tokens_for_chars(chars: int) -> int:
    """Estimated tokens in ``chars`` characters: one per :data:`CHARS_PER_TOKEN`, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated tokens of all message texts of a request (see :func:`iter_message_texts`)."""
    messages = body.get("messages")
    if isinstance(messages, list) and body.get("prompt") is None:
        # The common shape (every content a string or absent) without the generators.
        chars = 0
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, str):
                    chars += len(content)
                elif content is not None:
                    break
        else:
            return tokens_for_chars(chars)
    return tokens_for_chars(sum(len(text) for _, text in iter_message_texts(body)))


def as_count(value: Any) -> int | None:
    """``value`` as a non-negative integer count, or None (JSON numbers may arrive as floats)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 0:
        return value
    return None


# --------------------------------------------------------------------------- globs


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A shell-style glob (``gpt-4o*``, ``claude-?-opus``, ``[ab]*``) as a case-sensitive regex."""
    return re.compile(fnmatch.translate(pattern))


def glob_match(pattern: re.Pattern[str], value: str) -> bool:
    """Whether the whole of ``value`` matches a pattern from :func:`compile_glob`."""
    return pattern.match(value) is not None


def prompt_too_large(plugin: str, total: int, max_scan_chars: int) -> PluginResponse:
    """The 413 a scanner answers for a prompt over its ``max_scan_chars`` (``oversize: block``)."""
    return PluginResponse.block(
        status_code=413,
        error_type="prompt_too_large",
        message=f"the prompt has {total} characters of text; {plugin} scans at most "
        f"{max_scan_chars} (config max_scan_chars)",
    )


_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")})
_NON_WORD = re.compile(r"\W+")


def words(text: str) -> list[str]:
    """The words of ``text``: maximal runs of word characters, as ``\\w`` means (C-level
    ``translate`` and ``split`` for ASCII text, one regex split otherwise; may hold "")."""
    if text.isascii():
        return text.translate(_ASCII_NON_WORD).split()
    return _NON_WORD.split(text)
