"""Protobuf wire-format pieces for the messages ringd writes as bytes itself.

The stream's release messages (:func:`ringd.server.convert.release_to_wire`) and the
OTLP export of spans (:mod:`ringd.server.otlp`) are written without building protobuf
messages first; tests compare their bytes with what protobuf makes of the same message.
"""

from __future__ import annotations


def varint(number: int) -> bytes:
    """``number`` (>= 0) as a base-128 varint."""
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_SHORT = 1 << 14
_VARINTS = [varint(number) for number in range(_SHORT)]
"""The varint of every length below 16 KiB (one or two bytes), looked up rather than computed."""


def length(size: int) -> bytes:
    """The length prefix of a length-delimited field of ``size`` bytes."""
    return _VARINTS[size] if size < _SHORT else varint(size)


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its one-byte key ``tag``, the length, ``payload``."""
    return bytes((tag,)) + length(len(payload)) + payload
