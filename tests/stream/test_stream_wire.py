"""The stream's messages on the wire: the release ringd writes by hand is the one protobuf makes
(gateways decode it as such), and a chunk is taken as sent or refused naming the bad choice."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from ringd.server.convert import Limits, chunk_from_proto, release_to_wire
from ringd.server.exceptions import RequestError

from ringd.v1 import engine_service_pb2 as engine_pb


def _chunk(text: str) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


@pytest.mark.parametrize(
    "texts",
    [
        [],  # everything held back: release set, no chunks
        ["hi "],
        ["é, 漢字 and 🙂 "],
        ["a" * 90, "b" * 20],  # each chunk under 128 bytes, the release over
        ["x" * 20_000],  # a chunk over 16 KiB: a three-byte length
        ["y" * 3_000] * 7,  # many chunks, the release over 16 KiB
    ],
)
def test_release_bytes_are_the_protobuf_message(texts: list[str]) -> None:
    chunks = [_chunk(text) for text in texts]
    wire = release_to_wire(chunks)
    made = engine_pb.StreamRingResponse(
        release=engine_pb.StreamRelease(chunks=[orjson.dumps(chunk) for chunk in chunks])
    ).SerializeToString()
    assert wire == made
    decoded = engine_pb.StreamRingResponse.FromString(wire)
    assert decoded.WhichOneof("kind") == "release"
    assert [orjson.loads(data) for data in decoded.release.chunks] == chunks


@pytest.mark.parametrize(
    ("data", "place"),
    [
        (b'{"choices": [5]}', "chunk[3].choices[0] must be an object"),
        (b'{"choices": [{"index": true}]}', "chunk[3].choices[0].index must be an integer"),
        (b'{"choices": [{"index": 1.0}]}', "chunk[3].choices[0].index must be an integer"),
        (b'{"choices": [{"index": -1}]}', "chunk[3].choices[0].index must be an integer"),
        (
            b'{"choices": [{"index": 0}, {"index": 0, "delta": []}]}',
            "chunk[3].choices[1].delta must be an object",
        ),
        (
            b'{"choices": [{"index": 0, "delta": {"content": 5}}]}',
            "chunk[3].choices[0].delta.content must be",
        ),
        (
            b'{"choices": [{"index": 0, "delta": {"content": ["a"]}}]}',
            "chunk[3].choices[0].delta.content must be",
        ),
    ],
)
def test_a_malformed_choice_is_refused_naming_its_place(data: bytes, place: str) -> None:
    with pytest.raises(RequestError, match=re.escape(place)):
        chunk_from_proto(data, "chunk[3]", Limits())


@pytest.mark.parametrize(
    "data",
    [
        b'{"choices": []}',
        b'{"id": "c"}',
        b'{"choices": [{"index": 0}]}',
        b'{"choices": [{"index": 0, "delta": null}]}',
        b'{"choices": [{"index": 0, "delta": {}}]}',
        b'{"choices": [{"index": 0, "delta": {"content": null, "role": "assistant"}}]}',
        b'{"choices": [{"index": 1, "delta": {"content": "hi"}, "finish_reason": "stop"}]}',
        b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}',
    ],
)
def test_a_well_formed_chunk_is_taken_as_sent(data: bytes) -> None:
    chunk = chunk_from_proto(data, "chunk[3]", Limits())

    assert chunk == orjson.loads(data.removeprefix(b"data: "))
