"""The native scan (plugins/_scan.c) finds exactly what the Python scanner finds.

``Detector.find`` hands a text to the C extension ``ringd.plugins._scan`` when it is
built; ``Detector.find_python`` is the Python scanner it ports, the reference. Both
are run on generated texts made of what the detectors look for (token anchors, digit
groups, colons, "@", PEM lines, NUL separators, and non-ASCII letters, digits, marks and
IDN addresses, whose e-mail classes are Unicode ones) with random sets of kinds, and on the
benchmark's adversarial corpora (also with non-ASCII characters in them): the same
findings (kinds, bounds, values, order).

``RINGD_NATIVE_EXAMPLES`` raises the number of generated texts for a long run by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ringd.plugins import _detect, prompt_guard
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
# Non-ASCII: letters (Ll, Lu, Lo, Lm), decimals (Nd), other digits and numerals (No, Nl),
# combining marks (Mn, Mc), symbols, emoji, a zero-width joiner, spaces, a lone surrogate.
UNICODE = "éüßÄЖжΩλ中文字ーユªºˆ٣３५०²Ⅻ½\u0301\u093e\u0903€😀\u200d\u00a0\u2009\u3000\ud800"
UNICODE_PIECES = [
    "jürgen@müller.de", "ユーザー@例え.jp", "user@xn--mller-kva.de", "δοκιμή@παράδειγμα.δοκιμή", "a@b.٣٣",
    "a@b.c²d", "x@y.Ⅻx", "é@", "@é", "a\u0301@b\u0301.de", "५@५.in", "a@ex.comé", "a@ex.com٣", "ª@º.ªº",
    "\u200d@a.co", "😀@a.co", "a@😀.co", "é4111 1111 1111 1111", "DE89é", "é192.168.1.1", "fe80::1é",
    "sk-" + "é" * 20, "password=é123456789", "+1 (555) 123-4567é", "-----BEGIN PRIVATE KEY-----\né",
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
unicode_piece = st.one_of(
    piece,
    st.sampled_from(UNICODE_PIECES),
    st.text(UNICODE, min_size=1, max_size=4),
    st.text(UNICODE + "@._-%+abZ09", max_size=10),
)
unicode_texts = st.lists(unicode_piece, max_size=30).map("".join)
kind_sets = st.one_of(st.just(KINDS), st.sets(st.sampled_from(KINDS), min_size=1).map(tuple))


def _assert_same(native: list[Finding], python: list[Finding]) -> None:
    assert native == python
    assert all(type(finding) is Finding for finding in native)


def test_the_native_scan_is_built() -> None:
    # CI builds it (make venv: pip install -e .); falling back silently would lose its speed.
    assert _detect.NATIVE is not None, "_scan not built or stale (a warning says which): run `make venv`"


def _stand_in(abi: int | None, functions: tuple[str, ...]) -> types.ModuleType:
    """A module as an extension built from another version of _scan.c would be: the real
    module's functions named in ``functions``, ``ABI`` unless None."""
    real = _detect.NATIVE
    assert real is not None, "ringd.plugins._scan is not built: run `make venv` (pip install -e .)"
    stale = types.ModuleType("ringd.plugins._scan")
    stale.__file__ = "/site/ringd/plugins/_scan.cpython-311-x86_64-linux-gnu.so"
    for name in functions:
        setattr(stale, name, getattr(real, name))
    if abi is not None:
        stale.ABI = abi
    return stale


@pytest.mark.parametrize(
    ("abi", "functions", "said"),
    [
        (None, ("configure", "find", "find_split"), "ABI None"),  # from before find_window and the masking
        (_detect._NATIVE_ABI - 1, _detect._NATIVE_FUNCTIONS, f"ABI {_detect._NATIVE_ABI - 1}"),
        (_detect._NATIVE_ABI + 1, _detect._NATIVE_FUNCTIONS, f"ABI {_detect._NATIVE_ABI + 1}"),
        (_detect._NATIVE_ABI, _detect._NATIVE_FUNCTIONS[:-1], f"missing {_detect._NATIVE_FUNCTIONS[-1]}"),
    ],
)
def test_a_stale_native_scan_is_left_for_the_python_one_with_a_warning(
    abi: int | None, functions: tuple[str, ...], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # After `git pull` without a rebuild, the extension on disk is from an older _scan.c: its
    # functions fail on some texts (ValueError) or are missing. It is not used, and the log
    # says which file and how to rebuild it.
    with caplog.at_level(logging.WARNING):
        assert _detect._checked(_stand_in(abi, functions)) is None
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "/site/ringd/plugins/_scan.cpython-311-x86_64-linux-gnu.so is stale" in message
    assert said in message
    assert "make venv" in message
    assert "pip install -e ." in message


def test_a_process_with_a_stale_native_scan_on_disk_scans_by_python() -> None:
    # The import as a process does it: an extension of an older _scan.c (no ABI, no
    # find_window) in the place of the built one; the detector and the redactor still work.
    code = """if True:
        import sys, types
        stale = types.ModuleType("ringd.plugins._scan")
        stale.__file__ = "/old/_scan.so"
        stale.configure = lambda finding_type, kinds: None
        stale.find = stale.find_split = lambda *args: (_ for _ in ()).throw(ValueError("not ASCII"))
        sys.modules["ringd.plugins._scan"] = stale
        from ringd.plugins import _detect
        print(_detect.NATIVE is None, _detect.Detector().find("é a@b.co"))
    """
    env = {key: value for key, value in os.environ.items() if key != "RINGD_PURE_PYTHON_SCAN"}
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "True [Finding(kind='email', start=2, end=8, value='a@b.co')]"
    assert "/old/_scan.so is stale" in child.stderr
    assert "make venv" in child.stderr


def test_a_gc_callback_reading_every_list_meanwhile_cannot_crash_the_interpreter() -> None:
    # A collection can start while the scan fills its lists of findings (each finding is
    # allocated); a gc callback (as memory profilers register) that read every list read
    # their unfilled items and crashed the interpreter (SIGSEGV). Run in a child.
    code = """if True:
        import gc
        from ringd.plugins import _detect
        assert _detect.NATIVE is not None, "ringd.plugins._scan is not built"
        texts = [" ".join(f"u{n}@x.de" for n in range(3000))] * 2
        read = 0

        def reader(phase, info):
            global read
            for found in gc.get_objects():
                if type(found) is list and len(found) in (2, 3000):
                    read += len(list(found))

        gc.callbacks.append(reader)
        detector = _detect.Detector()
        counts = [
            len(detector.find(texts[0])),
            sum(map(len, detector.find_all(texts))),
            len(detector.find_window(texts[0], 0, len(texts[0]), 0, len(texts[0]))),
        ]
        gc.callbacks.remove(reader)
        print(counts)
    """
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (child.returncode, child.stdout.strip()) == (0, "[3000, 6000, 3000]"), child.stderr


def test_the_native_scan_built_from_this_checkout_passes_its_check(caplog: pytest.LogCaptureFixture) -> None:
    real = _detect.NATIVE
    assert real is not None, "ringd.plugins._scan is not built: run `make venv` (pip install -e .)"
    with caplog.at_level(logging.WARNING):
        assert _detect._checked(_stand_in(real.ABI, _detect._NATIVE_FUNCTIONS)) is not None
    assert caplog.records == []
    assert real.ABI == _detect._NATIVE_ABI


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
# after a refused match, an address whose first colon the previous colon hint ended at
@example(" " * 400 + "7:0:589:::b?41:ccc:3fc::2:e:3:13" + " " * 400, ("ip_address",), 0)
# an IPv6 candidate rejected ("1:::") whose end falls inside the next colon pair's hint
@example("6.1.1.1:::'b::%\x0cpwd:'DE89(-----E", ("ip_address",), 0)
@example("gh5558882;8888::ffff:\x7fA::b.co.uk", KINDS, 0)
def test_native_finds_what_python_finds(text: str, kinds: tuple[str, ...], offset: int) -> None:
    detector = Detector(kinds)
    _assert_same(detector.find(text, offset), detector.find_python(text, offset))


@SETTINGS
@given(unicode_texts, kind_sets, st.integers(0, 5000))
@example("Grüße an jürgen@müller.de, ユーザー@例え.jp, ٣@b.c²d, x@y.Ⅻ", KINDS, 0)
@example("a@b.co\u0301 a@b.\u0301co a@é.٣ é@é.éé", ("email",), 3)
def test_native_finds_what_python_finds_in_non_ascii_text(
    text: str, kinds: tuple[str, ...], offset: int
) -> None:
    detector = Detector(kinds)
    _assert_same(detector.find(text, offset), detector.find_python(text, offset))


@pytest.mark.parametrize("char", list("\u00e9\u00aa\u0663\uff13\u00b2\u216b\u0301\u200d"))
def test_the_email_classes_are_sres_unicode_ones(char: str) -> None:
    # A letter, a Lo letter, decimals, a superscript (No), a numeral (Nl), a mark, a joiner:
    # in a local part, a domain label and a TLD, as \w, [^\W_] and [^\W\d_] read them.
    text = f"{char}@{char}x.de x{char}@a{char}.{char}{char} a@b.c{char} {char}.a@x.y{char}z"
    detector = Detector(["email"])
    _assert_same(detector.find(text), detector.find_python(text))


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


@pytest.mark.parametrize("variant", ["ascii", "one é first", "non-ascii every 100th"])
def test_native_finds_what_python_finds_on_the_adversarial_corpora(variant: str) -> None:
    detector = Detector()
    for name, corpus in _corpora().items():
        text = corpus
        if variant == "one é first":
            text = "é" + corpus
        elif variant == "non-ascii every 100th":
            text = "".join(
                corpus[i : i + 99] + "éü٣ß中ª²😀"[(i // 100) % 8] for i in range(0, len(corpus), 100)
            )
        native = detector.find(text)
        assert native == detector.find_python(text), name
        assert all(type(finding) is Finding for finding in native)


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(texts, unicode_texts), min_size=1, max_size=6), kind_sets, st.integers(1, 400))
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


def test_an_ipv6_address_after_a_rejected_candidate_is_found_by_both_scanners() -> None:
    # The Python scanner searches windows at "hints" (two colons close together); a hint
    # that took the colon of the next pair hid "b::" once the rejected "1:::" was matched.
    detector = Detector(("ip_address",))
    text = "6.1.1.1:::'b::% and 8888::ffff:\x7fA::b"
    expected = ["6.1.1.1", "b::", "A::b"]
    assert [finding.value for finding in detector.find_python(text)] == expected
    assert [finding.value for finding in detector.find(text)] == expected


def test_non_ascii_text_is_scanned_with_unicode_emails() -> None:
    # Internationalised addresses need Python's Unicode \w: the native scan reads them so too.
    assert _detect.NATIVE is not None
    text = "Grüße an jürgen@müller.de, call +1 (555) 123-4567"
    assert [f.value for f in Detector().find(text)] == ["jürgen@müller.de", "+1 (555) 123-4567"]
    native = _detect.NATIVE.find(text, 0b111111, 0)
    assert [f.value for f in native] == ["jürgen@müller.de", "+1 (555) 123-4567"]


def test_an_offset_too_large_for_the_native_bounds_raises_rather_than_wrapping() -> None:
    # start + offset past the largest Py_ssize_t was a signed overflow: a negative bound.
    native = _detect.NATIVE
    assert native is not None
    detector = Detector(("email",))
    largest = sys.maxsize - len("a@b.com")
    assert detector.find("a@b.com", largest) == [Finding("email", largest, sys.maxsize, "a@b.com")]
    with pytest.raises(OverflowError):
        detector.find("a@b.com", largest + 1)


def test_find_split_refuses_sizes_past_the_text() -> None:
    # offset + size was computed unchecked (a signed overflow for huge sizes), and sizes
    # not adding up to the text gave empty lists (the findings past them lost), no error.
    native = _detect.NATIVE
    assert native is not None
    mask = Detector()._mask
    assert native.find_split("a@b.co\x00x", mask, [6, 1]) == [[Finding("email", 0, 6, "a@b.co")], []]
    for sizes in ([2**62, 2**62], [9], [6], [6, 0]):
        with pytest.raises(ValueError, match="add up to the text"):
            native.find_split("a@b.co\x00x", mask, sizes)


def test_a_text_dense_with_anchors_costs_the_native_scan_little_memory() -> None:
    # "ghgh..." is a token anchor every two characters: the scan lists their places. It
    # held them twice (a (place, anchor) list grown by doubling, then sorted by anchor):
    # 13 bytes per character of request body at its peak; 5 now (the places and one byte).
    import tracemalloc

    text = "gh" * 500_000
    detector = Detector(("secret",))
    tracemalloc.start()
    try:
        assert detector.find(text) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * len(text)


@SETTINGS
@given(st.one_of(texts, unicode_texts), kind_sets, st.lists(st.integers(0, 5000), min_size=4, max_size=4))
@example("a@b.co x ユーザー@例え.jp é 192.168.1.1", KINDS, [1, 200, 0, 33])
def test_a_window_scanned_in_place_is_the_window_scanned_alone(
    text: str, kinds: tuple[str, ...], picks: list[int]
) -> None:
    # find_window scans text[low:high] where it lies and keeps the findings starting in
    # [start, stop): what the Python scanner finds in the window cut out, cut the same way.
    native = _detect.NATIVE
    assert native is not None
    low = picks[0] % (len(text) + 1)
    high = low + picks[1] % (len(text) - low + 1)
    start = low - 2 + picks[2] % (high - low + 5)
    stop = start + picks[3] % (high + 3 - start)
    detector = Detector(kinds)
    expected = [found for found in detector.find_python(text[low:high], low) if start <= found.start < stop]
    _assert_same(native.find_window(text, detector._mask, low, high, start, stop), expected)


def test_a_window_outside_the_text_is_refused() -> None:
    native = _detect.NATIVE
    assert native is not None
    mask = Detector()._mask
    for low, high in ((-1, 3), (3, 2), (0, 7), (7, 7)):
        with pytest.raises(ValueError, match="bound a stretch"):
            native.find_window("a@b.co", mask, low, high, 0, 6)
    assert native.find_window("a@b.co", mask, 0, 6, 0, 6) == [Finding("email", 0, 6, "a@b.co")]


# prompt_guard's words: the native words_in against the Python split it replaces.
_GUARD_WORDS = sorted(prompt_guard._ALL_BUILTIN_WORDS)
word_texts = st.lists(
    st.one_of(
        st.sampled_from(_GUARD_WORDS),
        st.sampled_from(_GUARD_WORDS).map(str.upper),
        st.text("ab_09 .,-\t\n?é\u00df\U0001d4b3\u0130\x00", max_size=6),
        st.sampled_from(UNICODE_PIECES),
    ),
    max_size=40,
).map("".join)


@SETTINGS
@given(word_texts)
def test_native_words_are_the_python_words(text: str) -> None:
    native = prompt_guard._words(text)
    saved = _detect.NATIVE
    _detect.NATIVE = None
    try:
        python = prompt_guard._words(text)
    finally:
        _detect.NATIVE = saved
    assert native == python
    assert type(native) is frozenset


@SETTINGS
@given(
    st.text(ALPHABET + "é\U0001d4b3", max_size=40),
    st.frozensets(st.text("ab_0 -é", max_size=5), max_size=20),
)
def test_words_in_finds_exactly_the_whole_ascii_words(text: str, words: frozenset[str]) -> None:
    plain = text.encode("ascii", "replace").decode("ascii")
    runs = set(re.findall(r"[A-Za-z0-9_]+", plain))
    ascii_words = frozenset(word for word in words if word.isascii())
    assert _scan_native().words_in(text, ascii_words) == ascii_words & runs
    if ascii_words != words:  # a non-ASCII word is refused, not silently never found
        with pytest.raises(TypeError, match="ASCII"):
            _scan_native().words_in(text, words)


def _scan_native() -> _detect._NativeScan:
    assert _detect.NATIVE is not None, "_scan not built or stale: run `make venv`"
    return _detect.NATIVE


def test_words_in_refuses_more_words_than_its_table_holds() -> None:
    with pytest.raises(ValueError, match="at most 128 words, got 129"):
        _scan_native().words_in("a", frozenset(f"w{index}" for index in range(129)))
