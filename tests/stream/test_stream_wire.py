"""The release message ringd writes by hand is the one protobuf makes: gateways decode it as such."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from ringd.server.convert import release_to_wire

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
