"""Protobuf wire-format pieces for the messages ringd writes as bytes itself.

The stream's release messages (:func:`ringd.server.convert.release_to_wire`) and the
OTLP export of spans (:mod:`ringd.server.otlp`) are written without building protobuf
messages first; tests compare their bytes with what protobuf makes of the same message.
"""

from __future__ import annotations


def _varint_of(number: int) -> bytes:
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_SHORT = 1 << 14
_VARINTS = [_varint_of(number) for number in range(_SHORT)]
"""The varint of every number below 16 Ki (one or two bytes), looked up rather than computed."""


def varint(number: int) -> bytes:
    """``number`` (>= 0) as a base-128 varint."""
    if 0 <= number < _SHORT:
        return _VARINTS[number]
    if _SHORT <= number < 1 << 28:  # three or four bytes (a latency up to 268 ms), written out
        low, middle = number & 0x7F | 0x80, number >> 7 & 0x7F | 0x80
        if number < 1 << 21:
            return bytes((low, middle, number >> 14))
        return bytes((low, middle, number >> 14 & 0x7F | 0x80, number >> 21))
    return _varint_of(number)


length = varint
"""The length prefix of a length-delimited field of ``size`` bytes: its varint."""


def field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its one-byte key ``tag``, the length, ``payload``."""
    return b"".join((_KEYS[tag], length(len(payload)), payload))


_KEYS = [bytes((tag,)) for tag in range(256)]
