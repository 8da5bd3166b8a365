"""The native scan (plugins/_scan.c) finds exactly what the Python scanner finds, on ASCII text.

``Detector.find`` hands an ASCII text to the C extension ``ringd.plugins._scan`` when it
is built; ``Detector.find_python`` is the Python scanner it ports, the reference. Both
are run on generated texts made of what the detectors look for (token anchors, digit
groups, colons, "@", PEM lines, NUL separators...) with random sets of kinds, and on the
benchmark's adversarial corpora: the same findings (kinds, bounds, values, order).

``RINGD_NATIVE_EXAMPLES`` raises the number of generated texts for a long run by hand.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ringd.plugins import _detect
from ringd.plugins._detect import KINDS, Detector, Finding, find_all_yielding

pytestmark = pytest.mark.skipif(
    _detect.NATIVE is None and os.environ.get("RINGD_PURE_PYTHON_SCAN") == "1",
    reason="RINGD_PURE_PYTHON_SCAN=1: the Python scanner alone, on purpose",
)

EXAMPLES = int(os.environ.get("RINGD_NATIVE_EXAMPLES", "400"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = [
    # secrets: anchors, prefixes, names, PEM lines
    "sk-", "sk-proj-", "sk_live_", "rk_test_", "sk_test", "AKIA", "ASIA", "ghp_", "gho_", "gh", "github_pat_",
    "xoxb-", "xox", "AIza", "eyJ", ".eyJ", "bearer ", "Bearer\t", "BEARER  ", "password=", "Password: ",
    'passwd"=', "pwd:'", "api_key: ", "API-KEY=", "apikey", "secret", "secret_key = ", "Secret-Key:",
    "access_token=", "auth-token: ", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----", "-----END PRIVATE KEY-----", "-----BEGIN", "-----END",
    "PRIVATE KEY-----", "-----", "MIIEow+/=", "\x00",
    # e-mail
    "@", "a.b@ex.com", "@mail.example.org", ".com", ".co.uk", "x_1", "%", "+", "..", "-x-",
    # digits: cards, IBANs, IPs, phones, dates
    "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432", "GB82 WEST 1234 5698 7654 32", "DE89", "192.168.10.42", "255.", "256.1.1.1",
    "1.2.3.4.5", "10.0.0.", "fe80::1", "2001:db8::8a2e:370:7334", "::", ":", "::ffff:", "a:b:c:d:e:f:1:2",
    "+1 (555) 123-4567", "+44 20 7946 0958", "555.123.4567", "(555)", "+1", "2024-01-31", "12/31/2024",
    "1 000 000", "3.14159265",
]  # fmt: skip
ALPHABET = "0123456789 .-()+:/@_=\"',;\t\nabcdefxyzABCDEFKQSXZ~%\x00"
RUNS = "aQ09f:. -_=eyJ1"


def _run(char: str, count: int) -> str:
    return char * count


piece = st.one_of(
    st.sampled_from(PIECES),
    st.text(ALPHABET, max_size=8),
    st.builds(_run, st.sampled_from(RUNS), st.integers(1, 70)),
    st.text("0123456789", min_size=1, max_size=20),
    st.text("0123456789abcdefABCDEF:", min_size=1, max_size=20),
)
texts = st.lists(piece, max_size=30).map("".join)
kind_sets = st.one_of(st.just(KINDS), st.sets(st.sampled_from(KINDS), min_size=1).map(tuple))


def _assert_same(native: list[Finding], python: list[Finding]) -> None:
    assert native == python
    assert all(type(finding) is Finding for finding in native)


def test_the_native_scan_is_built() -> None:
    # CI builds it (make venv: pip install -e .); falling back silently would lose its speed.
    assert _detect.NATIVE is not None, "ringd.plugins._scan is not built: run `make venv` (pip install -e .)"


@SETTINGS
@given(texts, kind_sets, st.integers(0, 5000))
@example("sk-" + "a" * 20 + " xsk-" + "b" * 30, KINDS, 0)  # the second follows a word character
@example("eyJ" * 5 + "aaaaaaaa.eyJbbbbbbbb.cccccccc", KINDS, 0)  # the leftmost "eyJ" starts it
@example("Bearer " + "a" * 16 + "== and bearer short", KINDS, 7)
@example("a.b@c.com@d.org ..x@ab.cd-e a@b.c1 a@b.co_ a@b-.com", ("email", "phone"), 0)
@example("+1234 5678 901 (12) 345-6789 12.34.56.78 1.2.3.4 01.2.3.4", KINDS, 0)
@example("DE89 3704 0044 0532 0130 00 GB82 WEST 1234 5698 7654 32 ABC", KINDS, 0)
@example("1:2:3:4:5:6:7:8 ::1:2:3:4:5:6:7 1::2:3:4:5:6:7 a::b::c :a::b a::b: ::: ::", KINDS, 0)
@example("-----BEGIN RSA PRIVATE KEY-----\nMIIE\x00-----END RSA PRIVATE KEY-----", KINDS, 0)
def test_native_finds_what_python_finds(text: str, kinds: tuple[str, ...], offset: int) -> None:
    detector = Detector(kinds)
    _assert_same(detector.find(text, offset), detector.find_python(text, offset))


@settings(max_examples=max(50, EXAMPLES // 4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(piece, max_size=12), st.integers(0, 6000), kind_sets)
def test_native_finds_what_python_finds_in_sparse_text(
    pieces: list[str], gap: int, kinds: tuple[str, ...]
) -> None:
    # Far apart: the native scan skips to the next digit, capital pair, colon or "@" (16
    # characters a step, memchr), and takes colons for dense after a near one.
    text = (" " * gap + "x").join(pieces)
    detector = Detector(kinds)
    _assert_same(detector.find(text), detector.find_python(text))


def _corpora() -> dict[str, str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from engine_bench import adversarial_corpora
    finally:
        sys.path.pop(0)
    corpora: dict[str, str] = adversarial_corpora(1_000_000)
    return corpora


def test_native_finds_what_python_finds_on_the_adversarial_corpora() -> None:
    detector = Detector()
    for name, text in _corpora().items():
        native = detector.find(text)
        assert native == detector.find_python(text), name
        assert all(type(finding) is Finding for finding in native)


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(texts, min_size=1, max_size=6), kind_sets, st.integers(1, 400))
def test_find_all_and_windowed_scans_agree_with_python(
    many: list[str], kinds: tuple[str, ...], chunk: int
) -> None:
    # find_all scans texts joined by NUL; find_all_yielding cuts long texts into windows
    # (small chunks here, so that windows and their offsets come into play).
    detector = Detector(kinds)
    native_all = detector.find_all(many)
    native_windows = asyncio.run(find_all_yielding(detector, many, chunk))
    saved = _detect.NATIVE
    _detect.NATIVE = None
    try:
        python_all = detector.find_all(many)
        python_windows = asyncio.run(find_all_yielding(detector, many, chunk))
    finally:
        _detect.NATIVE = saved
    assert native_all == python_all
    assert native_windows == python_windows


def test_non_ascii_text_keeps_the_python_scanner() -> None:
    # Internationalised addresses need Python's Unicode \w: such a text is not scanned natively.
    text = "Grüße an jürgen@müller.de, call +1 (555) 123-4567"
    assert [f.value for f in Detector().find(text)] == ["jürgen@müller.de", "+1 (555) 123-4567"]
