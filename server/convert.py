"""Conversions between the ringd.v1 messages and SDK/engine types, both directions, in one place.

Nothing else in ringd touches protobuf types but the servicers, which call these.
Conversions translate and decide nothing: a ring's verdict is the engine's
(:class:`ringd.server.results.RingOutcome`), encoded here field for field.

Over 400 lines on purpose: STYLE asks for the conversions of one contract in one
module, both directions, so the mapping tables and the two payload forms (Struct and
raw JSON) are read side by side.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import struct_pb2
from ringd.sdk import (
    Headers,
    PluginAction,
    PluginContext,
    PluginHook,
    PluginResponse,
    PluginState,
    RequestInfo,
)
from ringd.server import wire
from ringd.server.exceptions import EncodeError, RequestError
from ringd.server.generations import PluginSlot
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome
from ringd.server.stream import StreamOutcome

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import plugin_pb2 as pb

RING_FROM_PROTO: dict[int, PluginHook] = {
    pb.PLUGIN_HOOK_INGRESS: PluginHook.INGRESS,
    pb.PLUGIN_HOOK_PRE_FLIGHT: PluginHook.PRE_FLIGHT,
    pb.PLUGIN_HOOK_ROUTING: PluginHook.ROUTING,
    pb.PLUGIN_HOOK_POST_FLIGHT: PluginHook.POST_FLIGHT,
    pb.PLUGIN_HOOK_BACKGROUND: PluginHook.BACKGROUND,
}
RING_TO_PROTO: dict[PluginHook, pb.PluginHook.ValueType] = {
    ring: pb.PluginHook.ValueType(number) for number, ring in RING_FROM_PROTO.items()
}
ACTION_TO_PROTO: dict[PluginAction, pb.PluginAction.ValueType] = {
    PluginAction.PASSTHROUGH: pb.PLUGIN_ACTION_PASSTHROUGH,
    PluginAction.MODIFY: pb.PLUGIN_ACTION_MODIFY,
    PluginAction.BLOCK: pb.PLUGIN_ACTION_BLOCK,
    PluginAction.CACHE_HIT: pb.PLUGIN_ACTION_CACHE_HIT,
}
OUTCOME_TO_PROTO: dict[PluginOutcome, pb.PluginOutcome.ValueType] = {
    PluginOutcome.OK: pb.PLUGIN_OUTCOME_OK,
    PluginOutcome.ERROR: pb.PLUGIN_OUTCOME_ERROR,
    PluginOutcome.TIMEOUT: pb.PLUGIN_OUTCOME_TIMEOUT,
    PluginOutcome.BYPASSED: pb.PLUGIN_OUTCOME_BYPASSED,
    PluginOutcome.SKIPPED: pb.PLUGIN_OUTCOME_SKIPPED,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a request may carry, from the server settings."""

    max_metadata_keys: int = 1024
    max_json_depth: int = 64
    max_headers: int = 256
    max_message_parts: int = 10_000


Where = str | tuple[Any, str | int]
"""Where a value sits in the answer: a name, or (the parent's place, key or index).

Built as tuples on the way down and rendered only for an error message, so the
common path formats no strings.
"""


def _path(where: Where) -> str:
    keys: list[str] = []
    while isinstance(where, tuple):
        where, key = where
        keys.append(f"[{key!r}]" if isinstance(key, str) else f"[{key}]")
    return where + "".join(reversed(keys))


# ---------------------------------------------------------------- proto -> SDK


def ring_from_proto(number: int, field: str = "ring") -> PluginHook:
    """The SDK ring of a ring enum value; UNSPECIFIED and unknown values are rejected."""
    ring = RING_FROM_PROTO.get(number)
    if ring is None:
        if number == pb.PLUGIN_HOOK_UNSPECIFIED:
            raise RequestError(f"{field} is PLUGIN_HOOK_UNSPECIFIED; name the ring to run", field=field)
        raise RequestError(f"{field} has unknown value {number}", field=field)
    return ring


_GATEWAY_ORDER = {ring: index for index, ring in enumerate(PluginHook)}


def rings_from_proto(numbers: Sequence[int]) -> list[PluginHook]:
    """The rings of an ExecuteRings request: at least one, each at most once, in gateway order.

    The order (INGRESS, PRE_FLIGHT, ROUTING, POST_FLIGHT, BACKGROUND) also bounds the
    list to five entries, so a caller cannot make one request run a ring many times.
    """
    if not numbers:
        raise RequestError("rings is empty; name at least one ring to run", field="rings")
    if len(numbers) > len(_GATEWAY_ORDER):
        raise RequestError(
            f"rings has {len(numbers)} entries; each ring may appear at most once"
            f" ({len(_GATEWAY_ORDER)} at most)",
            field="rings",
        )
    rings: list[PluginHook] = []
    for index, number in enumerate(numbers):
        ring = ring_from_proto(number, f"rings[{index}]")
        if rings and _GATEWAY_ORDER[ring] <= _GATEWAY_ORDER[rings[-1]]:
            order = ", ".join(member.name for member in PluginHook)
            raise RequestError(
                f"rings[{index}] is {ring.name} after {rings[-1].name};"
                f" rings run once each, in gateway order ({order})",
                field=f"rings[{index}]",
            )
        rings.append(ring)
    return rings


def _other_to_py(value: struct_pb2.Value, kind: str | None, depth: int, limit: int, where: Where) -> Any:
    """A Value of ``kind`` that is not a string (the callers read strings, most values, inline)."""
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) < 2**53:
            if not number and math.copysign(1.0, number) < 0:
                _UNECHOED[0] = True  # -0.0 decodes as the integer 0
            return int(number)
        if not math.isfinite(number):
            _UNECHOED[0] = True  # answered as null_value, as in the JSON form
        return number
    if kind == "struct_value":
        return _struct_to_py(value.struct_value, depth + 1, limit, where)
    if kind == "list_value":
        return _list_to_py(value.list_value, depth + 1, limit, where)
    if kind == "bool_value":
        return value.bool_value
    if kind is None:
        _UNECHOED[0] = True  # a Value with no kind set: answered as null_value
    return None


_UNECHOED = [False]
"""Set while a Struct is decoded when it would not encode back the same (see
:class:`StructEcho`): a Value with no kind, a NaN, an infinity or -0.0, a level past
:data:`STRUCT_DEPTH_LIMIT`. Rare, so the decoder checks for them only on the paths
where they arise; :func:`context_from_proto` clears it before a body and reads it after."""


def _list_to_py(list_value: struct_pb2.ListValue, depth: int, limit: int, where: Where) -> list[Any]:
    if depth >= limit or depth >= STRUCT_DEPTH_LIMIT:  # the list is one level below its container
        _too_deep(depth, limit, where)
    items: list[Any] = []
    for item in list_value.values:
        kind = item.WhichOneof("kind")
        if kind == "string_value":
            items.append(item.string_value)
        elif kind == "struct_value":
            items.append(_struct_to_py(item.struct_value, depth + 1, limit, where))
        else:
            items.append(_other_to_py(item, kind, depth, limit, where))
    return items


def _struct_to_py(struct: struct_pb2.Struct, depth: int, limit: int, where: Where) -> dict[str, Any]:
    if depth >= limit or depth >= STRUCT_DEPTH_LIMIT:
        _too_deep(depth, limit, where)
    fields = struct.fields
    data: dict[str, Any] = {}
    # Indexing the map is C; `.items()` goes through a Python-level ItemsView. Strings,
    # most values, are read here rather than through a call per value.
    for key in fields:
        value = fields[key]
        kind = value.WhichOneof("kind")
        data[key] = (
            value.string_value if kind == "string_value" else _other_to_py(value, kind, depth, limit, where)
        )
    return data


def _too_deep(depth: int, limit: int, where: Where) -> None:
    """A container at ``depth`` (0 at the top): refused past ``limit``; past what an answer's
    Struct may hold, it is decoded but will not be copied back as sent."""
    if depth >= limit:
        raise RequestError(f"{_path(where)} is nested deeper than {limit} levels", field=_path(where))
    _UNECHOED[0] = True


def _json_depth_ok(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue  # a scalar is not a level, as in the Struct form
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _object_from_json(raw: bytes, where: str, limit: int) -> dict[str, Any]:
    data = _parse_object(raw, where)
    _check_depth(raw, data, where, limit)
    return data


def _parse_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        problem = str(exc)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:  # orjson names no position for these: say where the byte is
            problem = f"byte 0x{raw[bad.start]:02x} at offset {bad.start} is not UTF-8 ({bad.reason})"
        raise RequestError(f"{where} is not valid UTF-8 JSON: {problem}", field=where) from None
    if not isinstance(data, dict):
        raise RequestError(f"{where} must be a JSON object, got a JSON {_json_kind(data)}", field=where)
    return data


def _check_depth(raw: bytes, data: dict[str, Any], where: str, limit: int) -> None:
    # Counting the brackets that open a level is cheap (two C-level passes, no copy);
    # walk the tree only when it could be too deep.
    if raw.count(b"{") + raw.count(b"[") > limit and not _json_depth_ok(data, limit):
        raise RequestError(f"{where} is nested deeper than {limit} levels", field=where)


def _message_parts(
    messages: Sequence[Any] | None,
    prompt: Sequence[Any] | None,
    content_parts: Callable[[Any], int],
    limit: int,
) -> int:
    """A body's messages, the parts of their content lists and a prompt list's entries,
    counted until past ``limit``: what every plugin walks in Python. ``messages`` and
    ``prompt`` are the lists, or None where the body has none; ``content_parts`` gives a
    message's number of content parts."""
    count = (len(messages) if messages is not None else 0) + (len(prompt) if prompt is not None else 0)
    for message in messages or ():
        if count > limit:
            break
        count += content_parts(message)
    return count


def _list_or_none(value: Any) -> list[Any] | None:
    return value if type(value) is list else None


def _dict_content_parts(message: Any) -> int:
    content = message.get("content") if type(message) is dict else None
    return len(content) if type(content) is list else 0


def _value_content_parts(message: Any) -> int:
    if message.WhichOneof("kind") != "struct_value" or "content" not in message.struct_value.fields:
        return 0
    content = message.struct_value.fields["content"]
    return len(content.list_value.values) if content.WhichOneof("kind") == "list_value" else 0


def _struct_list(struct: Any, key: str) -> Any:
    """The values of ``struct``'s list at ``key``, or None (read without inserting the key)."""
    if key not in struct.fields or struct.fields[key].WhichOneof("kind") != "list_value":
        return None
    return struct.fields[key].list_value.values


def _check_parts(parts: int, limit: int, where: str) -> None:
    if parts > limit:
        raise RequestError(
            f"{where} has more than {limit} messages and content parts (at least {parts}: its "
            f"messages, the parts of their content lists and the entries of a prompt list), "
            f"over server.max_message_parts ({limit})",
            field=f"{where}.messages",
        )


def _json_kind(data: Any) -> str:
    if isinstance(data, list):
        return "array"
    if isinstance(data, str):
        return "string"
    if isinstance(data, bool):
        return "boolean"
    if data is None:
        return "null"
    return "number"


def context_from_proto(
    message: pb.PluginContext, limits: Limits, state: PluginState, field: str = "context"
) -> tuple[PluginContext, bool, StructEcho | None]:
    """Decode a context sharing ``state``; returns it, whether the caller used the raw-JSON form,
    and the :class:`StructEcho` of a Struct body (None for any other).

    Raises:
        RequestError: a field is malformed, too deep or too large; the message names it.
    """
    depth = limits.max_json_depth
    body_kind = message.WhichOneof("body")
    json_form = body_kind == "body_json"
    # Their messages and parts are counted before the costlier walks (the depth check, the
    # Struct's conversion), so a body past the limit costs little to refuse.
    parts_limit = limits.max_message_parts
    echo = None
    if body_kind == "body_json":
        where = f"{field}.body_json"
        raw = message.body_json  # each read copies the bytes out of the message
        body = _parse_object(raw, where)
        messages, prompt = _list_or_none(body.get("messages")), _list_or_none(body.get("prompt"))
        parts = _message_parts(messages, prompt, _dict_content_parts, parts_limit)
        _check_parts(parts, parts_limit, where)
        _check_depth(raw, body, where, depth)
    elif body_kind == "body_struct":
        struct = message.body_struct
        # Each entry of a list takes 2 bytes or more on the wire, so only a Struct of more than
        # twice the limit in bytes can be past it (the count reads protobuf wrappers: ~10 us on
        # a 2 KB body, the size ~1 us).
        if struct.ByteSize() > 2 * parts_limit:
            messages, prompt = _struct_list(struct, "messages"), _struct_list(struct, "prompt")
            parts = _message_parts(messages, prompt, _value_content_parts, parts_limit)
            _check_parts(parts, parts_limit, f"{field}.body_struct")
        _UNECHOED[0] = False
        body = _struct_to_py(struct, 0, depth, f"{field}.body_struct")
        if not _UNECHOED[0]:
            echo = StructEcho(struct, orjson.dumps(body))
    else:
        body = {}
    response: dict[str, Any] | None = None
    response_kind = message.WhichOneof("response")
    if response_kind == "response_json":
        response = _object_from_json(message.response_json, f"{field}.response_json", depth)
        json_form = json_form or body_kind is None
    elif response_kind == "response_struct":
        response = _struct_to_py(message.response_struct, 0, depth, f"{field}.response_struct")
    metadata_in = message.metadata
    if len(metadata_in) > limits.max_metadata_keys:
        raise RequestError(
            f"{field}.metadata has {len(metadata_in)} keys; the limit is {limits.max_metadata_keys}",
            field=f"{field}.metadata",
        )
    metadata: dict[str, Any] = {}
    for key in metadata_in:  # strings, most values, read inline (as in _struct_to_py)
        value = metadata_in[key]
        kind = value.WhichOneof("kind")
        metadata[key] = (
            value.string_value
            if kind == "string_value"
            else _other_to_py(value, kind, 0, depth, (f"{field}.metadata", key))
        )
    if message.HasField("request"):
        request = message.request
        headers_in = request.headers
        if len(headers_in) > limits.max_headers:
            raise RequestError(
                f"{field}.request.headers has {len(headers_in)} entries; the limit is {limits.max_headers}",
                field=f"{field}.request.headers",
            )
        headers = _new_headers(Headers)  # empty: Headers.__init__ would only check that
        # Names lower-cased here, so the dict is filled in C rather than per name in Headers.__setitem__.
        dict.update(headers, {name.lower(): headers_in[name] for name in headers_in})
        # Positional (the SDK keeps LLMProxy's field order): a class called with keywords
        # packs them into a dict first, about 0.2 us a call.
        request_info = RequestInfo(request.method, request.path, headers, request.client_address)
    else:
        request_info = RequestInfo()
    # request, body, response, metadata, session_id, error, stop_chain, state, request_id
    ctx = PluginContext(
        request_info,
        body,
        response,
        metadata,
        message.session_id or "default",
        None,
        False,
        state,
        message.request_id,
    )
    return ctx, json_form, echo


_new_headers = dict.__new__


@dataclass(frozen=True, slots=True)
class StructEcho:
    """A Struct body as the caller sent it, with the JSON of its decoded form.

    When the final body's JSON is the same (no plugin changed the body, the common case),
    the answer copies the caller's Struct back (in C) instead of encoding the body again
    value by value: about 13 us less on a 2 KB body. Made only for a Struct that encodes
    back the same: no Value without a kind, no NaN, infinity or -0.0, no more levels
    than an answer's Struct may have (see ``_UNECHOED``).
    """

    struct: struct_pb2.Struct
    json: bytes


def _echoes(echo: StructEcho, body: dict[str, Any]) -> bool:
    """Whether ``body`` is still the body the caller sent (the same JSON)."""
    try:
        return orjson.dumps(body) == echo.json
    except TypeError:  # what the encoder refuses too, with its own message
        return False


MAX_CHOICES = 128
"""Choice indexes a streamed chunk may use: 0 to 127."""


def chunk_from_proto(data: bytes, where: str, limits: Limits) -> dict[str, Any] | None:
    """Decode one upstream chunk of a stream: ``chat.completion.chunk`` JSON, or its SSE event.

    Returns None for the SSE end marker ``data: [DONE]``.

    Raises:
        RequestError: not JSON, not a chunk object, or a malformed choice; the message
            names the place (``where``, e.g. ``chunk[3]``, then the JSON path).
    """
    raw = data if data[:1] == b"{" else data.strip()  # JSON allows the whitespace after it
    if raw[:1] != b"{":
        raw = _sse_data(raw, where)
        if raw == b"[DONE]":
            return None
    chunk = _object_from_json(raw, where, limits.max_json_depth)
    choices = chunk.get("choices", [])
    if not isinstance(choices, list):
        raise RequestError(f"{where}.choices must be a list, got a JSON {_json_kind(choices)}", field=where)
    # orjson makes exact types (no bool where an int is checked, no subclasses), so the
    # checks compare classes; a choice's place in the message is written out on failure only.
    for choice in choices:
        if choice.__class__ is not dict:
            break
        index = choice.get("index")
        if index.__class__ is not int or not 0 <= index < MAX_CHOICES:
            break
        delta = choice.get("delta")
        if delta is not None and (
            delta.__class__ is not dict or delta.get("content", "").__class__ not in _CONTENT_TYPES
        ):
            break
    else:
        return chunk
    _bad_choice(choices, where)
    return chunk  # not reached: _bad_choice raises


_CONTENT_TYPES = (str, type(None))


def _bad_choice(choices: list[Any], where: str) -> None:
    """Raise the RequestError for the first malformed choice of ``choices``."""
    for position, choice in enumerate(choices):
        at = f"{where}.choices[{position}]"
        if not isinstance(choice, dict):
            raise RequestError(f"{at} must be an object, got a JSON {_json_kind(choice)}", field=at)
        index = choice.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_CHOICES:
            raise RequestError(
                f"{at}.index must be an integer from 0 to {MAX_CHOICES - 1}, got {index!r}", field=at
            )
        delta = choice.get("delta")
        if delta is None:
            continue
        if not isinstance(delta, dict):
            raise RequestError(f"{at}.delta must be an object, got a JSON {_json_kind(delta)}", field=at)
        content = delta.get("content")
        if content is not None and not isinstance(content, str):
            raise RequestError(
                f"{at}.delta.content must be a string or null, got a JSON {_json_kind(content)}", field=at
            )


def _sse_data(event: bytes, where: str) -> bytes:
    """The data of one SSE event: its ``data:`` lines joined with newlines, other fields ignored."""
    lines = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value[:1] == b" " else value)
        elif line and not line.startswith((b":", b"event:", b"id:", b"retry:")):
            shown = line[:40].decode("utf-8", "replace")
            raise RequestError(
                f"{where} is neither a JSON chunk object nor an SSE event (line {shown!r})", field=where
            )
    if not lines:
        raise RequestError(f"{where} is an SSE event without a data: line", field=where)
    return b"\n".join(lines).strip()


# ---------------------------------------------------------------- SDK -> proto

STRUCT_DEPTH_LIMIT = 32
"""How deep a Struct-form value of an answer may nest (objects and arrays alike, the
metadata map counting as the first level, as on the way in). Protobuf decoders refuse
messages nested deeper than 100 levels, which a Struct reaches at about 33 JSON levels:
deeper, the caller could not decode the answer at all."""


def _text(value: Any, where: str) -> str:
    """A text field of the answer: must be a str; lone surrogates are escaped (the wire is UTF-8)."""
    if not isinstance(value, str):
        raise EncodeError(f"{where} is a {type(value).__name__}, expected a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return value


def _set_value(target: struct_pb2.Value, value: Any, where: Where, depth: int) -> None:
    # Most likely types first; bool before int, as bool is an int.
    if isinstance(value, str):
        try:
            target.string_value = value
        except ValueError:
            raise EncodeError(f"{_path(where)} is a string that is not valid Unicode") from None
    elif isinstance(value, dict):
        _fill_struct(target.struct_value, value, where, depth + 1)
    elif isinstance(value, list | tuple):
        if depth + 1 > STRUCT_DEPTH_LIMIT:
            raise EncodeError(
                f"{_path(where)} is nested deeper than {STRUCT_DEPTH_LIMIT} levels (or refers to itself)"
            )
        values = target.list_value.values
        target.list_value.SetInParent()
        for index, item in enumerate(value):
            _set_value(values.add(), item, (where, index), depth + 1)
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            target.null_value = struct_pb2.NULL_VALUE  # as orjson does in the JSON form
        else:
            target.number_value = value
    elif value is None:
        target.null_value = struct_pb2.NULL_VALUE
    else:
        raise EncodeError(f"{_path(where)} is a {type(value).__name__}, which JSON cannot carry")


def _fill_struct(target: struct_pb2.Struct, data: dict[str, Any], where: Where, depth: int) -> None:
    if depth > STRUCT_DEPTH_LIMIT:
        raise EncodeError(
            f"{_path(where)} is nested deeper than {STRUCT_DEPTH_LIMIT} levels (or refers to itself)"
        )
    target.SetInParent()
    _fill_fields(target.fields, data, where, depth)


def _fill_fields(fields: Any, data: dict[str, Any], where: Where, depth: int) -> None:
    """Fill a ``map<string, Value>`` (a Struct's fields, or the answer's metadata)."""
    for key, item in data.items():
        if not isinstance(key, str):
            raise EncodeError(f"{_path(where)} has a key {key!r} that is not a string")
        try:
            field = fields[key]
        except ValueError:
            raise EncodeError(f"{_path(where)} has a key {key!r} that is not valid Unicode") from None
        _set_value(field, item, (where, key), depth)


def _to_json(data: Any, where: str) -> bytes:
    """Compact UTF-8 JSON; a non-finite float becomes null, as in the Struct form."""
    try:
        return orjson.dumps(data)
    except TypeError as exc:  # orjson.JSONEncodeError: unsupported type, non-str key, too deep
        raise EncodeError(f"{where} cannot be encoded as JSON: {exc}") from None


def _set_object(message: Any, prefix: str, data: dict[str, Any], json_form: bool, where: str) -> None:
    """Set the ``<prefix>_json`` or ``<prefix>_struct`` member of a oneof."""
    if not isinstance(data, dict):
        raise EncodeError(f"{where} is a {type(data).__name__}, expected an object")
    if json_form:
        setattr(message, f"{prefix}_json", _to_json(data, where))
    else:
        _fill_struct(getattr(message, f"{prefix}_struct"), data, where, 1)


def _action_to_proto(action: Any, where: str) -> pb.PluginAction.ValueType:
    number = ACTION_TO_PROTO.get(action)
    if number is None:
        raise EncodeError(f"{where} is {action!r}, not a PluginAction")
    return number


def decision_to_proto(response: PluginResponse, target: pb.PluginResponse) -> None:
    """Fill a ring answer's ``decision`` from the deciding plugin's response.

    Its body and response are not repeated here: the answer carries them once, as
    ``body`` and ``cached_response``.

    Raises:
        EncodeError: a field holds what the contract does not allow (a plugin changed
            the response after building it); the message names the field.
    """
    target.action = _action_to_proto(response.action, "decision.action")
    status_code: Any = response.status_code
    if response.action is PluginAction.BLOCK:  # the status of a block; other actions answer 200
        if not isinstance(status_code, int) or isinstance(status_code, bool) or not 0 <= status_code < 1000:
            raise EncodeError(f"decision.status_code is {status_code!r}, not an HTTP status")
        target.status_code = status_code
    if response.error_type:
        target.error_type = _text(response.error_type, "decision.error_type")
    if response.message:
        target.message = _text(response.message, "decision.message")


def _result_to_proto(result: PluginResult, target: pb.PluginResult, *, strict: bool = True) -> None:
    """Fill one plugin's result; ``strict=False`` leaves out a bad action or message instead."""
    target.outcome = OUTCOME_TO_PROTO[result.outcome]
    if result.latency_ms:
        nanos = int(result.latency_ms * 1e6)
        if nanos < 1_000_000_000:
            target.latency.nanos = nanos
        else:
            target.latency.seconds, target.latency.nanos = divmod(nanos, 1_000_000_000)
    try:
        target.plugin = result.plugin
        target.version = result.version
        if result.action is not None:
            target.action = ACTION_TO_PROTO[result.action]
        if result.error:
            target.error = result.error
        if result.message:
            target.message = result.message
    except (KeyError, TypeError, ValueError):  # a field the wire refuses: find it, name it
        _checked_result_text(result, target, strict)


def _checked_result_text(result: PluginResult, target: pb.PluginResult, strict: bool) -> None:
    where = f"results[{result.plugin!r}]"
    target.plugin = _text(result.plugin, f"{where}.plugin")
    target.version = _text(result.version, f"{where}.version")
    if result.action is not None:
        action = ACTION_TO_PROTO.get(result.action)
        if action is not None:
            target.action = action
        elif strict:
            raise EncodeError(f"{where}.action is {result.action!r}, not a PluginAction")
    if result.error:
        target.error = _text(result.error, f"{where}.error")
    if result.message and (strict or isinstance(result.message, str)):
        target.message = _text(result.message, f"{where}.message")


def ring_outcome_to_wire(ring_outcome: RingOutcome, json_form: bool, echo: StructEcho | None = None) -> bytes:
    """A ring's outcome as an encoded ``ExecuteRingResponse``, bodies in the caller's form.

    ``echo``: the request's Struct body, copied back when the final body is still the same.
    The results and a JSON body are written as bytes after the rest of the message (a
    decoder reads fields in any order): one result costs about a fifth of filling a
    ``PluginResult``, and the body's JSON is not copied into a message to be copied out.

    Raises:
        EncodeError: the final context holds something the wire cannot carry; the
            engine's :meth:`RingOutcome.unencodable` is the answer then.
    """
    withheld = ring_outcome.context_withheld
    ctx = ring_outcome.context
    if not withheld:
        if not isinstance(ctx.body, dict):
            raise EncodeError(f"body is a {type(ctx.body).__name__}, expected an object")
        if not isinstance(ctx.metadata, dict):
            raise EncodeError(f"metadata is a {type(ctx.metadata).__name__}, expected an object")
    action = ring_outcome.action
    if action.__class__ is not PluginAction:
        _action_to_proto(action, "the action a plugin returned")  # raises, naming it
    head = _outcome_head(
        ring_outcome.ring, action, ring_outcome.config_version, ring_outcome.generation, ring_outcome.queued
    )
    target = engine_pb.ExecuteRingResponse()
    results = results_to_wire(ring_outcome.results, strict=not withheld)
    decision = ring_outcome.decision
    if decision is not None:
        decision_to_proto(decision, target.decision)
        target.decided_by = ring_outcome.decided_by or ""
        if decision.action is PluginAction.BLOCK:
            block = target.block
            block.status_code = target.decision.status_code or 403
            block.error_type = target.decision.error_type
            block.message = target.decision.message
            if decision.headers:  # checked by PluginResponse; a plugin may have edited them since
                try:
                    block.headers.update(decision.headers)
                except (TypeError, ValueError) as exc:
                    raise EncodeError(f"decision.headers: {exc}") from None
        elif decision.action is PluginAction.CACHE_HIT and decision.response is not None:
            _set_object(target, "cached_response", decision.response, json_form, "cached_response")
    if withheld:
        return b"".join((head, target.SerializeToString(), results))
    body = b""
    if json_form:
        data = _to_json(ctx.body, "body")
        body = b"".join((_BODY_JSON_TAG, wire.length(len(data)), data))
    elif echo is not None and _echoes(echo, ctx.body):
        target.body_struct.CopyFrom(echo.struct)
    else:
        _fill_struct(target.body_struct, ctx.body, "body", 1)
    if ctx.response is not None:
        _set_object(target, "response", ctx.response, json_form, "response")
    _fill_fields(target.metadata, ctx.metadata, "metadata", 1)
    return b"".join((head, target.SerializeToString(), body, results))


def results_to_wire(results: Sequence[PluginResult], *, strict: bool = True) -> bytes:
    """``results`` as the encoded ``results`` field (13) of an ``ExecuteRingResponse``.

    The same bytes protobuf makes (``tests/grpc/test_answer_wire.py`` compares them); a result
    with a field that is not plain text, or an action that is not a PluginAction, is
    filled through :func:`_result_to_proto`, which checks it (``strict``: as there).
    """
    parts: list[bytes] = []
    for result in results:
        try:
            data = _result_to_wire(result)
        except (AttributeError, KeyError, TypeError, ValueError):
            message = pb.PluginResult()
            _result_to_proto(result, message, strict=strict)
            data = message.SerializeToString()
        parts += (_RESULT_TAG, wire.length(len(data)), data)
    return b"".join(parts)


def _result_to_wire(result: PluginResult) -> bytes:
    """One result's fields, in protobuf's order; raises for what it does not write as bytes."""
    data = _result_head(result.plugin, result.version, result.action, result.outcome)
    latency_ms = result.latency_ms
    if latency_ms:
        data += _latency_to_wire(int(latency_ms * 1e6))
    if result.error:
        data += wire.field(0x32, result.error.encode())
    if result.message:
        data += wire.field(0x3A, result.message.encode())
    return data


def _latency_to_wire(nanos: int) -> bytes:
    """A result's ``latency`` field of ``nanos`` nanoseconds (a Duration); raises ValueError
    for a negative one, which :func:`_result_to_proto` writes (as negative varints)."""
    if nanos < 0:
        raise ValueError("a negative latency")
    if nanos < 1_000_000_000:
        duration = b"\x10" + wire.varint(nanos) if nanos else b""
    else:
        seconds, nanos = divmod(nanos, 1_000_000_000)
        duration = b"\x08" + wire.varint(seconds) + (b"\x10" + wire.varint(nanos) if nanos else b"")
    return wire.field(0x2A, duration)


@functools.lru_cache(maxsize=4096)  # bounded: names and versions come from configs, reloads add some
def _result_head(plugin: str, version: str, action: PluginAction | None, outcome: PluginOutcome) -> bytes:
    """A result's ``plugin``, ``version``, ``action`` and ``outcome`` fields: the same for
    every call of a plugin that ends the same way."""
    if plugin.__class__ is not str or version.__class__ is not str:
        raise TypeError("not plain text")
    name, number = plugin.encode(), version.encode()
    return b"".join(
        (
            wire.field(0x0A, name) if name else b"",
            wire.field(0x12, number) if number else b"",
            _ACTION_FIELDS[action] if action is not None else b"",
            _OUTCOME_FIELDS[outcome],
        )
    )


_RESULT_TAG = b"\x6a"
"""``ExecuteRingResponse.results`` (field 13), length-delimited."""
_ACTION_FIELDS = {action: bytes((0x18, number)) for action, number in ACTION_TO_PROTO.items()}
_OUTCOME_FIELDS = {outcome: bytes((0x20, number)) for outcome, number in OUTCOME_TO_PROTO.items()}


def _echo_object(request: Any, target: Any, prefix: str, json_form: bool) -> bool:
    """Copy the request's ``<prefix>_json`` or ``<prefix>_struct`` as sent, when it is in the
    answer's form; False when it is in the other form (the caller encodes the decoded value)."""
    kind = request.WhichOneof(prefix)
    if kind is None:
        return True
    if json_form and kind == f"{prefix}_json":
        setattr(target, kind, getattr(request, kind))  # the caller's bytes: no re-encoding
        return True
    if not json_form and kind == f"{prefix}_struct":
        getattr(target, kind).CopyFrom(getattr(request, kind))
        return True
    return False


def queued_to_wire(ring_outcome: RingOutcome, request: pb.PluginContext, json_form: bool) -> bytes:
    """The acknowledgement of a BACKGROUND ring accepted onto the queue, encoded.

    Its body, response and metadata are the request's (the contract), copied from the
    request message as the caller sent them, so the acknowledgement encodes nothing
    again: raw JSON bytes go back as they came, Structs and metadata are copied in C.
    Only a part sent in the other form than the answer's is encoded from ``ring_outcome``.
    The fields that name the ring and generation are the same for every acknowledgement
    of a generation, so they are encoded once; the fields come in another order than
    protobuf's own, which is the same message to every decoder.
    """
    ctx = ring_outcome.context
    head = _outcome_head(
        ring_outcome.ring,
        ring_outcome.action,
        ring_outcome.config_version,
        ring_outcome.generation,
        ring_outcome.queued,
    )
    target = engine_pb.ExecuteRingResponse()
    body_kind = request.WhichOneof("body")
    if body_kind is None:
        _set_object(target, "body", ctx.body, json_form, "body")  # an absent body answers {}
    elif body_kind == "body_json":  # a body sets the answer's form: the caller's bytes go back
        body = request.body_json
        head = b"".join((head, _BODY_JSON_TAG, wire.length(len(body)), body))
    else:
        target.body_struct.CopyFrom(request.body_struct)
    if not _echo_object(request, target, "response", json_form) and ctx.response is not None:
        _set_object(target, "response", ctx.response, json_form, "response")
    target.metadata.MergeFrom(request.metadata)
    return head + target.SerializeToString()


_BODY_JSON_TAG = b"\x32"
"""``ExecuteRingResponse.body_json`` (field 6), length-delimited."""


@functools.lru_cache(maxsize=256)
def _outcome_head(
    ring: PluginHook, action: PluginAction, config_version: str, generation: int, queued: bool
) -> bytes:
    """An answer's ring, action, config version, generation and ``queued``, encoded: the same
    for every answer of a ring that ends the same way on a generation."""
    return engine_pb.ExecuteRingResponse(
        ring=RING_TO_PROTO[ring],
        action=ACTION_TO_PROTO[action],
        config_version=config_version,
        generation=generation,
        queued=queued,
    ).SerializeToString()


STATUS_TO_PROTO: dict[str, pb.PluginStatus.ValueType] = {
    "active": pb.PLUGIN_STATUS_ACTIVE,
    "disabled": pb.PLUGIN_STATUS_DISABLED,
    "failed": pb.PLUGIN_STATUS_FAILED,
    "circuit_open": pb.PLUGIN_STATUS_CIRCUIT_OPEN,
}


def release_to_wire(chunks: Sequence[dict[str, Any]]) -> bytes:
    """A ``StreamRingResponse`` whose ``release`` carries ``chunks`` (as JSON), encoded.

    The same bytes protobuf makes of that message (``tests/stream`` compares them), written
    out directly: one of these is answered per chunk of every stream, and building the
    message to serialise it costs about three times as much.
    """
    if not chunks:
        return _RELEASE_NOTHING
    if len(chunks) == 1:  # most answers: one chunk released for one received
        data = orjson.dumps(chunks[0])
        head = _TAG_1_BYTES + wire.length(len(data))
        return b"".join((_TAG_1_BYTES, wire.length(len(head) + len(data)), head, data))
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        data = orjson.dumps(chunk)
        length = len(data)
        head = _TAG_1_BYTES + wire.length(length)
        parts += (head, data)
        size += len(head) + length
    return b"".join((_TAG_1_BYTES, wire.length(size), *parts))


_TAG_1_BYTES = b"\x0a"
"""Field 1, length-delimited: ``StreamRingResponse.release`` and ``StreamRelease.chunks`` alike."""
_RELEASE_NOTHING = _TAG_1_BYTES + b"\x00"
"""``release`` set and empty: everything is held back for now."""


def stream_outcome_to_proto(stream_outcome: StreamOutcome, target: engine_pb.StreamRingResponse) -> None:
    """Fill the last message of a stream: ``done``, or ``block`` when the stream was blocked.

    ``background_queued`` is the servicer's to set, once it has queued BACKGROUND.

    Raises:
        EncodeError: the answer or metadata holds what the wire cannot carry.
    """
    ring_outcome = stream_outcome.ring_outcome
    ctx = ring_outcome.context
    withheld = ring_outcome.context_withheld
    if not withheld and not isinstance(ctx.metadata, dict):
        raise EncodeError(f"metadata is a {type(ctx.metadata).__name__}, expected an object")
    end: Any
    if stream_outcome.blocked:
        end = target.block
        decision = ring_outcome.decision
        if decision is not None:
            probe = pb.PluginResponse()
            decision_to_proto(decision, probe)
            end.block.status_code = probe.status_code or 403
            end.block.error_type = probe.error_type
            end.block.message = probe.message
        end.decided_by = ring_outcome.decided_by or ""
    else:
        end = target.done
        end.answer_json = _to_json(stream_outcome.answer, "answer")
    end.released_chunks = stream_outcome.released_chunks
    end.config_version = ring_outcome.config_version
    end.generation = ring_outcome.generation
    for result in ring_outcome.results:
        _result_to_proto(result, end.results.add(), strict=not withheld)
    if not withheld:
        _fill_fields(end.metadata, ctx.metadata, "metadata", 1)


def plugin_info_to_proto(slot: PluginSlot, status: str, target: admin_pb.PluginInfo) -> None:
    """Fill an admin ``PluginInfo`` from a plugin's slot in the current generation."""
    loaded = slot.loaded
    entry = loaded.entry
    instance = loaded.instance
    target.name = entry.name
    target.ring = RING_TO_PROTO[loaded.ring]
    target.version = loaded.version
    if instance is not None:
        target.author = str(instance.author)
        target.description = str(instance.description)
    target.entrypoint = entry.entrypoint
    target.priority = slot.entry.priority
    target.enabled = slot.enabled
    target.status = STATUS_TO_PROTO[status]
    target.load_error = loaded.load_error or ""
    target.timeout.FromNanoseconds(int(loaded.timeout_s * 1e9))
    target.fail_policy = pb.FAIL_POLICY_CLOSED if loaded.fail_closed else pb.FAIL_POLICY_OPEN
    stats = loaded.metrics.snapshot()
    for key in ("invocations", "errors", "blocks", "timeouts", "bypasses", "stalls"):
        setattr(target.stats, key, int(stats[key]))
    for key in (
        "total_latency_ms",
        "avg_latency_ms",
        "p50_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
    ):
        setattr(target.stats, key, float(stats[key]))
