"""A text without a digit skips the card, IBAN, phone and IPv4 scans: it finds what a full scan finds.

Most streamed chunks are prose with no digit, and response_sanitizer scans each chunk's
buffer again; the detector then runs only the scans that need no digit (secrets,
e-mail addresses, IPv6). Appending `` 1`` to such a text forces every scan (the suffix
is no finding and ends every token before it), so both must agree on the text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ringd.plugins._detect import KINDS, Detector

pytestmark = pytest.mark.usefixtures("scan_backend")  # each test with the native and the Python scanner
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PIECES = st.sampled_from(
    [
        "the ",
        "report ",
        "dead:beef::cafe ",
        "fe:: ",
        "::abcd ",
        "a.b@example.com ",
        "Bearer abcdefghijklmnopqrstuv ",
        'password = "hunterhunter" ',
        "api_key: abcdefghijkl ",
        "GB ",
        "WEST ",
        "Note: ",
        ". ",
        "- ",
        "(",
        ")",
        "+",
        "é ",
    ]
)


@SETTINGS
@example(["dead:beef::cafe ", "the "], KINDS)
@example(["a.b@example.com ", "Bearer abcdefghijklmnopqrstuv "], KINDS)
@given(
    st.lists(PIECES, min_size=1, max_size=12),
    st.sampled_from([KINDS, ("ip_address",), ("secret", "phone", "iban")]),
)
def test_a_text_without_digits_finds_what_the_full_scan_finds(
    pieces: list[str], kinds: tuple[str, ...]
) -> None:
    text = "".join(pieces)
    detector = Detector(kinds)

    assert detector.find(text) == detector.find(text + " 1")


def test_an_ipv6_address_without_digits_is_found() -> None:
    found = Detector().find("the gateway dead:beef::cafe is up")

    assert [(finding.kind, finding.value) for finding in found] == [("ip_address", "dead:beef::cafe")]
