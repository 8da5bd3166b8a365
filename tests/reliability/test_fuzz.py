"""Property-based tests: random and malformed requests against one real ``ringd serve`` process.

The server runs the built-in default pipeline (every ring, every built-in plugin) plus
plugins that copy headers and metadata into the answer, so random input flows all the
way through decoding, the plugins and encoding. Property, for every request: the
answer is OK, or a deliberate INVALID_ARGUMENT / RESOURCE_EXHAUSTED with a message,
never UNKNOWN or INTERNAL; after each test the server is still SERVING and its log
holds no traceback.
"""

from __future__ import annotations

import json
import math
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import yaml
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.process import RingdProcess, health_check
from support.workspace import Workspace, entry

from ringd.v1 import admin_service_pb2 as admin_pb
from ringd.v1 import admin_service_pb2_grpc as admin_grpc
from ringd.v1 import engine_service_pb2 as engine_pb
from ringd.v1 import engine_service_pb2_grpc as engine_grpc
from ringd.v1 import plugin_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
EXECUTE_RING = "/ringd.v1.PluginEngineService/ExecuteRing"
EXECUTE_RINGS = "/ringd.v1.PluginEngineService/ExecuteRings"
LIST_PLUGINS = "/ringd.v1.PluginAdminService/ListPlugins"
DELIBERATE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
RINGS = [
    pb.PLUGIN_HOOK_INGRESS,
    pb.PLUGIN_HOOK_PRE_FLIGHT,
    pb.PLUGIN_HOOK_ROUTING,
    pb.PLUGIN_HOOK_POST_FLIGHT,
    pb.PLUGIN_HOOK_BACKGROUND,
]
PLUGIN_METADATA_KEYS = [
    "tenant", "api_key_id", "_api_key_auth_source", "_max_tokens_clamp", "_complexity_score",
    "route_model", "route_upstream", "route_rule", "pii_counts", "_pii_mapping",
    "prompt_guard_flags", "_rate_limiter", "retry_after_s", "_cache_status", "_cache_key",
    "_cache_stored", "_response_sanitizer", "usage",
]  # fmt: skip
MAX_METADATA_KEYS = 1024  # the server's default limits
MAX_HEADERS = 256
MAX_JSON_DEPTH = 64
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# RINGD_FUZZ_EXAMPLES=5000 for a long bug hunt; the default keeps the file well under a minute.
EXAMPLES = int(os.environ.get("RINGD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ------------------------------------------------------------------ the server


class Refusal:
    """A call the server refused, deliberately (the property is checked by :meth:`Fuzzed.call`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class Fuzzed:
    """The server process and raw and typed callables on one channel."""

    def __init__(self, process: RingdProcess, admin_address: str) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(
            process.address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        self.stub = engine_grpc.PluginEngineServiceStub(self.channel)
        self.raw_ring = self.channel.unary_unary(EXECUTE_RING)  # bytes go out as they are
        self.raw_rings = self.channel.unary_unary(EXECUTE_RINGS)
        # No admin token: the admin service is on its own unix socket (issue 15, item 4).
        self.admin_channel = grpc.insecure_channel(admin_address)
        self.raw_list = self.admin_channel.unary_unary(LIST_PLUGINS)
        self.answered: dict[str, int] = {}

    def call(self, method: Any, request: Any) -> Any:
        """Make one call and assert the property; returns the answer or a :class:`Refusal`."""
        try:
            answer = method(request, timeout=30)
        except grpc.RpcError as refused:
            code = refused.code()  # type: ignore[attr-defined]
            details = refused.details() or ""  # type: ignore[attr-defined]
            self.answered[code.name] = self.answered.get(code.name, 0) + 1
            assert code in DELIBERATE, f"{code.name}: {details}"
            assert details.strip(), f"{code.name} without a message"
            assert "Traceback" not in details
            return Refusal(code, details)
        self.answered["OK"] = self.answered.get("OK", 0) + 1
        return answer

    def assert_healthy(self) -> None:
        assert health_check(self.process.address) == "SERVING"
        log = self.process.log()
        assert "Traceback" not in log, log[-4000:]
        assert "unexpected error" not in log, log[-4000:]
        # Malformed trace headers are ignored without a log line quoting them (log flooding).
        assert "WARNING opentelemetry" not in log, log[-4000:]
        # and it still runs a ring normally
        answer = self.stub.ExecuteRing(
            engine_pb.ExecuteRingRequest(
                ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=pb.PluginContext(body_json=b'{"model": "gpt-4o"}')
            ),
            timeout=10,
        )
        assert answer.action != pb.PLUGIN_ACTION_UNSPECIFIED


def fuzz_config(workspace: Workspace) -> Path:
    """The default pipeline, with its store, audit log and limits moved for the test."""
    document = yaml.safe_load((ROOT / "server" / "default_config.yaml").read_text())
    document["version"] = "fuzz"
    document["store"] = str(workspace.store_path)
    document["server"] = {"listen": ["127.0.0.1:0"]}
    for plugin in document["plugins"]:
        if plugin["name"] == "audit_log":
            plugin["config"]["path"] = str(workspace.root / "audit.jsonl")
        if plugin["name"] == "rate_limiter":  # let the fuzzer through to the later rings
            plugin["config"]["requests_per_window"] = 10**9
            plugin["config"]["tokens_per_window"] = 10**12
    document["plugins"] += [
        entry("echo_headers", "ingress", config={"metadata_from_header": {"x-fuzz": "x_fuzz"}}),
        entry("appender", "pre_flight", priority=99, config={"append_message": "fuzzed"}),
        entry("tagger", "post_flight", fail_policy="closed", config={"set_metadata": {"seen": True}}),
        entry("grower", "routing", config={"body_from_metadata": {"grow": "grown"}}),
    ]
    workspace.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return workspace.config_path


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    workspace = Workspace(tmp_path_factory.mktemp("fuzz"))
    # Console tracing (into ringd.stdout) so the caller's traceparent is parsed too.
    run_dir = workspace.root / "run"
    env = {"OTEL_TRACES_EXPORTER": "console", "RINGD_RUNTIME_DIR": str(run_dir)}
    process = RingdProcess.for_config(fuzz_config(workspace), env=env).start()
    port = process.address.rsplit(":", 1)[1]
    server = Fuzzed(process, f"unix:{run_dir / f'admin-{port}.sock'}")
    try:
        yield server
    finally:
        server.channel.close()
        server.admin_channel.close()
        print(f"fuzz answers: {server.answered}")
        status = process.stop()
        assert status == 0, process.log()[-4000:]


# ------------------------------------------------------------------ strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=8)
# What a Struct can carry: doubles, NaN and infinities included.
struct_scalars = json_scalars | st.floats()
struct_values = st.recursive(
    struct_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
ring_numbers = st.sampled_from(RINGS) | st.integers(min_value=-(2**31), max_value=2**31 - 1)
chat_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt-4o", "gpt-4o-mini", ""]) | st.text(max_size=20),
        "messages": st.lists(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "system", "assistant"]) | st.text(max_size=8),
                    "content": st.text(max_size=200) | json_values,
                }
            ),
            max_size=4,
        )
        | json_values,
    },
    optional={"max_tokens": json_values, "temperature": json_values, "stream": json_values},
)


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    if isinstance(data, dict):
        value.struct_value.update(data)
    elif isinstance(data, list):
        value.list_value.extend(data)
    elif data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, int | float):
        value.number_value = data
    else:
        value.string_value = data
    return value


@st.composite
def contexts(draw: st.DrawFn) -> pb.PluginContext:
    context = pb.PluginContext(
        session_id=draw(st.text(max_size=20)),
        request_id=draw(st.text(max_size=20)),
    )
    body_form = draw(st.sampled_from(["none", "json", "json-bytes", "struct"]))
    body = draw(chat_bodies | json_objects)
    if body_form == "json":
        context.body_json = json.dumps(body).encode()
    elif body_form == "json-bytes":
        context.body_json = draw(st.binary(max_size=200) | st.just(json.dumps(draw(json_values)).encode()))
    elif body_form == "struct":
        context.body_struct.update(draw(st.dictionaries(st.text(max_size=10), struct_values, max_size=6)))
    response_form = draw(st.sampled_from(["none", "json", "struct"]))
    if response_form == "json":
        context.response_json = json.dumps(draw(json_objects)).encode()
    elif response_form == "struct":
        context.response_struct.update(draw(st.dictionaries(st.text(max_size=10), struct_values, max_size=6)))
    # Random keys, and the keys the built-in plugins read, with random values.
    keys = st.text(max_size=16) | st.sampled_from(PLUGIN_METADATA_KEYS)
    for key, item in draw(st.dictionaries(keys, struct_values, max_size=8)).items():
        context.metadata[key].CopyFrom(_value(item))
    if draw(st.booleans()):
        context.request.method = draw(st.sampled_from(["POST", "GET"]) | st.text(max_size=8))
        context.request.path = draw(st.text(max_size=40))
        context.request.client_address = draw(st.text(max_size=40))
        headers = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=6))
        headers.update(draw(st.fixed_dictionaries({}, optional={"x-fuzz": st.text(max_size=60)})))
        context.request.headers.update(headers)
    return context


# ------------------------------------------------------------------ wire-level building


def _varint(number: int) -> bytes:
    out = bytearray()
    number &= (1 << 64) - 1
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_value_bytes(depth: int, lists: bool) -> bytes:
    """A Value (as bytes) nested ``depth`` levels, built without protobuf's recursion."""
    value = _field(3, b"leaf")  # Value.string_value
    for _ in range(depth):
        if lists:
            value = _field(6, _field(1, value))  # Value.list_value -> ListValue.values
        else:
            value = _field(5, _field(1, _field(1, b"c") + _field(2, value)))  # struct_value -> fields
    return value


def nested_struct_bytes(depth: int, lists: bool) -> bytes:
    """A Struct (as bytes) whose one member ``top`` is nested ``depth`` levels."""
    return _field(1, _field(1, b"top") + _field(2, nested_value_bytes(depth, lists)))


def ring_request_bytes(ring: int, context: bytes) -> bytes:
    return _varint(1 << 3) + _varint(ring) + _field(2, context)


MARK = "\x01MARK\x01"


# ------------------------------------------------------------------ the properties


def test_random_protobuf_field_values(fuzzed: Fuzzed) -> None:
    @FUZZ
    @given(ring=ring_numbers, context=contexts())
    def check(ring: int, context: pb.PluginContext) -> None:
        request = engine_pb.ExecuteRingRequest(ring=ring, context=context)
        answer = fuzzed.call(fuzzed.stub.ExecuteRing, request)
        if isinstance(answer, Refusal):  # the message names what was wrong
            assert ("ring" in answer.details and ring not in RINGS) or "context" in answer.details
        else:
            assert ring in RINGS
            assert answer.ring == ring
            assert answer.config_version == "fuzz"
            if ring != pb.PLUGIN_HOOK_BACKGROUND:
                assert answer.action != pb.PLUGIN_ACTION_UNSPECIFIED

    check()
    fuzzed.assert_healthy()


def test_random_ring_lists_in_execute_rings(fuzzed: Fuzzed) -> None:
    valid_rings = st.lists(st.sampled_from(RINGS), min_size=1, max_size=5)
    valid_rings = valid_rings.map(lambda rings: sorted(set(rings)))  # gateway order, BACKGROUND last

    @FUZZ
    @given(rings=valid_rings | st.lists(ring_numbers, max_size=7), context=contexts())
    def check(rings: list[int], context: pb.PluginContext) -> None:
        request = engine_pb.ExecuteRingsRequest(rings=rings, context=context)
        answer = fuzzed.call(fuzzed.stub.ExecuteRings, request)
        if not isinstance(answer, Refusal):
            assert rings
            assert all(ring in RINGS for ring in rings)
            assert 1 <= len(answer.outcomes) <= len(rings)

    check()
    fuzzed.assert_healthy()


def test_random_json_in_the_raw_json_fields(fuzzed: Fuzzed) -> None:
    junk = st.binary(max_size=300)
    json_text = (json_objects | json_values).map(lambda data: json.dumps(data).encode())
    # JSON with a byte flipped, cut short, or with a non-UTF-8 byte spliced in.
    damaged = st.tuples(json_objects.map(lambda data: json.dumps(data).encode()), st.integers(0, 10**6)).map(
        lambda pair: (
            pair[0][: pair[1] % (len(pair[0]) + 1)] + b"\xff" + pair[0][pair[1] % (len(pair[0]) + 1) :]
        )
    )

    @FUZZ
    @given(body=junk | json_text | damaged, response=st.none() | junk | json_text)
    def check(body: bytes, response: bytes | None) -> None:
        context = pb.PluginContext(body_json=body)
        if response is not None:
            context.response_json = response
        answer = fuzzed.call(
            fuzzed.stub.ExecuteRing,
            engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_POST_FLIGHT, context=context),
        )
        if not isinstance(answer, Refusal):  # only JSON objects are accepted
            assert isinstance(orjson.loads(body), dict)
            assert response is None or isinstance(orjson.loads(response), dict)

    check()
    fuzzed.assert_healthy()


def test_deep_nesting_in_every_form(fuzzed: Fuzzed) -> None:
    @FUZZ
    @given(
        depth=st.integers(1, MAX_JSON_DEPTH + 4) | st.integers(1, 3000),
        lists=st.booleans(),
        where=st.sampled_from(["body_json", "body_struct", "response_struct", "metadata"]),
    )
    def check(depth: int, lists: bool, where: str) -> None:
        if where == "body_json":
            inner = "[" * depth + "]" * depth if lists else '{"c":' * depth + "1" + "}" * depth
            context = _field(2, f'{{"top": {inner}}}'.encode())
        elif where == "metadata":
            context = _field(3, _field(1, b"deep") + _field(2, nested_value_bytes(depth, lists)))
        else:
            number = 1 if where == "body_struct" else 5
            context = _field(number, nested_struct_bytes(depth, lists))
        answer = fuzzed.call(fuzzed.raw_ring, ring_request_bytes(pb.PLUGIN_HOOK_POST_FLIGHT, context))
        if depth + 1 > MAX_JSON_DEPTH:  # the top object (or the metadata map), then `depth` levels
            assert isinstance(answer, Refusal), f"{where} nested {depth} levels was accepted"
            assert answer.code == grpc.StatusCode.INVALID_ARGUMENT

    check()
    fuzzed.assert_healthy()


def test_huge_strings(fuzzed: Fuzzed) -> None:
    sizes = st.integers(100_000, 900_000)

    @settings(FUZZ, max_examples=40)
    @given(
        size=sizes,
        where=st.sampled_from(["content", "metadata", "header", "request_id", "key"]),
        char=st.sampled_from(["x", "é", "€", "🙂", " ", "\x00"]),
        form=st.sampled_from(["json", "struct"]),
    )
    def check(size: int, where: str, char: str, form: str) -> None:
        text = char * (size // len(char.encode()))
        body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        context = pb.PluginContext(request_id=text if where == "request_id" else "r")
        if where == "content":
            body["messages"][0]["content"] = text
        if where == "key":
            body[text] = 1
        if form == "json":
            context.body_json = json.dumps(body).encode()
        else:
            context.body_struct.update(body)
        if where == "metadata":
            context.metadata["big"].string_value = text
        if where == "header":
            context.request.headers["x-fuzz"] = text
        request = engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=context)
        answer = fuzzed.call(fuzzed.stub.ExecuteRing, request)
        if request.ByteSize() < MAX_MESSAGE_BYTES // 3:  # room for the answer, which echoes it back
            assert not isinstance(answer, Refusal), f"{where}: a {size}-byte string: {answer.details}"

    check()
    fuzzed.assert_healthy()


def test_oversize_requests_are_resource_exhausted(fuzzed: Fuzzed) -> None:
    request = engine_pb.ExecuteRingRequest(
        ring=pb.PLUGIN_HOOK_PRE_FLIGHT,
        context=pb.PluginContext(body_json=json.dumps({"prompt": "x" * MAX_MESSAGE_BYTES}).encode()),
    )
    with pytest.raises(grpc.RpcError) as refused:
        fuzzed.stub.ExecuteRing(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    fuzzed.assert_healthy()


def test_an_answer_over_the_size_limit_is_resource_exhausted(fuzzed: Fuzzed) -> None:
    """The request fits, but the answer does not: the ROUTING ring's ``grower`` copies a
    metadata value into the body, so the answer carries it twice."""
    request = engine_pb.ExecuteRingRequest(
        ring=pb.PLUGIN_HOOK_ROUTING, context=pb.PluginContext(body_json=b'{"model": "gpt-4o"}')
    )
    request.context.metadata["grow"].string_value = "x" * (MAX_MESSAGE_BYTES * 6 // 10)

    refusal = fuzzed.call(fuzzed.stub.ExecuteRing, request)

    assert isinstance(refusal, Refusal)
    assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "server.max_message_bytes" in refusal.details
    fuzzed.assert_healthy()  # and no traceback from gRPC core in the log


def test_invalid_utf8_in_string_fields_at_the_wire_level(fuzzed: Fuzzed) -> None:
    # Byte strings that are not UTF-8: lone continuation bytes, overlongs, surrogates,
    # truncated sequences, and bytes above U+10FFFF; mixed with valid ones.
    invalid_pieces = st.sampled_from(
        [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xc3"]
    )
    raw_values = st.lists(invalid_pieces | st.binary(min_size=1, max_size=4), min_size=1, max_size=8).map(
        b"".join
    )

    @FUZZ
    @given(
        patch=raw_values,
        where=st.sampled_from(
            ["header value", "header name", "request_id", "session_id", "metadata key", "path"]
        ),
    )
    def check(patch: bytes, where: str) -> None:
        # A message with a placeholder exactly as long as the patch, so every length
        # prefix stays right, then the placeholder's bytes replaced on the wire.
        marker = MARK + "Q" * len(patch) + MARK
        context = pb.PluginContext(body_json=b'{"model": "gpt-4o"}', request_id="r", session_id="s")
        context.request.headers["x-fuzz"] = "value"
        if where == "header value":
            context.request.headers["x-fuzz"] = marker
        elif where == "header name":
            context.request.headers[marker] = "value"
        elif where == "request_id":
            context.request_id = marker
        elif where == "session_id":
            context.session_id = marker
        elif where == "metadata key":
            context.metadata[marker].string_value = "v"
        else:
            context.request.path = marker
        raw = engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_INGRESS, context=context).SerializeToString()
        encoded_marker = marker.encode()
        assert raw.count(encoded_marker) == 1
        patched = raw.replace(encoded_marker, MARK.encode() + patch + MARK.encode())
        answer = fuzzed.call(fuzzed.raw_ring, patched)
        try:
            patch.decode("utf-8")
        except UnicodeDecodeError:
            assert isinstance(answer, Refusal), f"invalid UTF-8 in {where} was accepted"
            assert answer.code == grpc.StatusCode.INVALID_ARGUMENT

    check()
    fuzzed.assert_healthy()


def test_thousands_of_metadata_keys_and_headers(fuzzed: Fuzzed) -> None:
    @settings(FUZZ, max_examples=60)
    @given(
        keys=st.integers(500, 5000),
        where=st.sampled_from(["metadata", "headers"]),
        value=st.sampled_from(["", "v", "x" * 100]),
    )
    def check(keys: int, where: str, value: str) -> None:
        context = pb.PluginContext(body_json=b'{"model": "gpt-4o"}')
        for index in range(keys):
            if where == "metadata":
                context.metadata[f"k{index}"].string_value = value
            else:
                context.request.headers[f"x-h{index}"] = value
        answer = fuzzed.call(
            fuzzed.stub.ExecuteRing,
            engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_INGRESS, context=context),
        )
        limit = MAX_METADATA_KEYS if where == "metadata" else MAX_HEADERS
        if keys > limit:
            assert isinstance(answer, Refusal)
            assert answer.code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"the limit is {limit}" in answer.details
        else:
            assert not isinstance(answer, Refusal), answer.details

    check()
    fuzzed.assert_healthy()


def test_raw_random_bytes_as_the_whole_request(fuzzed: Fuzzed) -> None:
    @settings(FUZZ, max_examples=200)
    @given(
        raw=st.binary(max_size=2000)
        | st.builds(
            lambda good, cut, flip: (good[:cut] + bytes([flip]) + good[cut + 1 :]) if good else good,
            contexts().map(lambda c: ring_request_bytes(pb.PLUGIN_HOOK_PRE_FLIGHT, c.SerializeToString())),
            st.integers(0, 400),
            st.integers(0, 255),
        ),
        method=st.sampled_from(["ring", "rings", "admin"]),
    )
    def check(raw: bytes, method: str) -> None:
        call = {"ring": fuzzed.raw_ring, "rings": fuzzed.raw_rings, "admin": fuzzed.raw_list}[method]
        fuzzed.call(call, raw)

    check()
    fuzzed.assert_healthy()


def test_random_grpc_call_metadata(fuzzed: Fuzzed) -> None:
    """Random call metadata (HTTP/2 headers): trace context, authorization, binary headers."""
    ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)
    hexes = st.text(alphabet="0123456789abcdef-", min_size=0, max_size=60)
    traceparent = hexes | st.builds(
        "{}-{}-{}-{}".format,
        st.text("0123456789abcdef", min_size=2, max_size=2),
        st.text("0123456789abcdef", min_size=32, max_size=32),
        st.text("0123456789abcdef", min_size=16, max_size=16),
        st.text("0123456789abcdef", min_size=2, max_size=2),
    )
    pairs = st.lists(
        st.tuples(st.just("traceparent"), traceparent | ascii_text)
        | st.tuples(st.sampled_from(["tracestate", "baggage", "authorization", "x-request-id"]), ascii_text)
        | st.tuples(
            st.from_regex(r"x-[a-z0-9_.-]{1,20}", fullmatch=True).filter(lambda k: not k.endswith("-bin")),
            ascii_text,
        )
        | st.tuples(st.from_regex(r"x-[a-z0-9]{1,10}-bin", fullmatch=True), st.binary(max_size=100)),
        max_size=12,
    )

    @FUZZ
    @given(metadata=pairs, admin=st.booleans())
    def check(metadata: list[tuple[str, str | bytes]], admin: bool) -> None:
        if admin:
            stub = admin_grpc.PluginAdminServiceStub(fuzzed.admin_channel)
            answer = fuzzed.call(
                lambda request, timeout: stub.ListPlugins(request, timeout=timeout, metadata=metadata),
                admin_pb.ListPluginsRequest(),
            )
        else:
            request = engine_pb.ExecuteRingRequest(
                ring=pb.PLUGIN_HOOK_PRE_FLIGHT, context=pb.PluginContext(body_json=b'{"model": "gpt-4o"}')
            )
            answer = fuzzed.call(
                lambda request, timeout: fuzzed.stub.ExecuteRing(request, timeout=timeout, metadata=metadata),
                request,
            )
        assert not isinstance(answer, Refusal), answer.details

    check()
    fuzzed.assert_healthy()


def test_metadata_values_round_trip(fuzzed: Fuzzed) -> None:
    """What comes back is what went in (NaN and infinities as null, as in JSON)."""

    @FUZZ
    @given(
        metadata=st.dictionaries(st.text(string.ascii_letters, max_size=12).map("m_".__add__), struct_values)
    )
    def check(metadata: dict[str, Any]) -> None:
        context = pb.PluginContext(body_json=b'{"model": "gpt-4o"}')
        for key, item in metadata.items():
            context.metadata[key].CopyFrom(_value(item))
        answer = fuzzed.call(
            fuzzed.stub.ExecuteRing,
            engine_pb.ExecuteRingRequest(ring=pb.PLUGIN_HOOK_POST_FLIGHT, context=context),
        )
        assert not isinstance(answer, Refusal), answer.details
        assert answer.action == pb.PLUGIN_ACTION_PASSTHROUGH
        for key in metadata:
            assert _plain(answer.metadata[key]) == _expected(_plain(context.metadata[key]))
        assert answer.metadata["seen"].bool_value is True

    check()
    fuzzed.assert_healthy()


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind == "number_value":
        return value.number_value
    return None if kind in {"null_value", None} else getattr(value, kind)


def _expected(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _expected(item) for key, item in data.items()}
    if isinstance(data, list):
        return [_expected(item) for item in data]
    return data
