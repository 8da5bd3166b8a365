"""pii_redactor's native masking (plugins/_scan.c) gives what its Python code gives.

``_scan.assign`` names the values of one kind (``_Masker._of_kind``: identities,
placeholders, the mapping) and ``_scan.interleave`` writes the masked text
(``_detect._interleaved``); where the extension is not built, or with
``RINGD_PURE_PYTHON_SCAN=1``, the Python code does both. Each is run both ways on
generated inputs (ASCII and non-ASCII values, values differing only in case or folding
to one another, placeholders already in the prompt, several kinds) and the answers
compared: the placeholders, the mapping and its order, the masked body, the counts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ringd.plugins import _detect
from ringd.plugins._detect import IDENTITY, KINDS, Finding
from ringd.plugins._seal import open_sealed, parse_key
from ringd.plugins.pii_redactor import PiiRedactor, _Masker
from ringd.testing import make_context

pytestmark = pytest.mark.skipif(
    _detect.NATIVE is None and os.environ.get("RINGD_PURE_PYTHON_SCAN") == "1",
    reason="RINGD_PURE_PYTHON_SCAN=1: the Python code alone, on purpose",
)

EXAMPLES = int(os.environ.get("RINGD_NATIVE_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PII_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


@contextmanager
def python_only() -> Iterator[None]:
    """The Python code instead of the native one, for the duration."""
    saved = _detect.NATIVE
    _detect.NATIVE = None
    try:
        yield
    finally:
        _detect.NATIVE = saved


def native() -> Any:
    assert _detect.NATIVE is not None, "ringd.plugins._scan is not built: run `make venv` (pip install -e .)"
    return _detect.NATIVE


# --------------------------------------------------------------------------- identities

# Characters whose case folding is not themselves: capitals, sharp s (-> ss), long s
# (-> s), the Kelvin sign, micro (-> mu), sigmas, dotted and dotless i, ligatures, a
# Cherokee letter, astral capitals (Deseret, Adlam), a titlecase digraph, a combining mark
# that folds to a letter (ypogegrammeni); and some that fold to themselves, lone
# surrogates among them.
FOLDING = (
    "AZaz09@._-+\u00df\u1e9e\u017f\u212a\u00b5\u03a3\u03c3\u03c2\u0130\u0131\ufb00\ufb03\u13f8\uab70"
    "\U00010400\U00010428\U0001e900\u01c5\u0345éÉüÜжЖΩωｱ中ー😀\u0301\x00\ud800\udfff"
)


def test_the_native_casefold_identity_is_str_casefold_on_every_code_point() -> None:
    # assign computes str.casefold itself (a value that folds to itself is kept): on every
    # code point, and on one long string of them all, its identities are str.casefold's.
    values = [chr(code) for code in range(sys.maxunicode + 1)]
    values += ["".join(values[start : start + 4096]) for start in range(0, len(values), 4096)]
    known: dict[str, str] = {}
    supply = [f"[EMAIL_{n}]" for n in range(1, len(values) + 1)]
    names, used = native().assign(values, str.casefold, known, {}, supply)
    expected = list(dict.fromkeys(value.casefold() for value in values))
    assert list(known) == expected
    assert used == len(expected)
    assert names == [known[value.casefold()] for value in values]


# --------------------------------------------------------------------------- placeholders


def _values_for(kind: str) -> st.SearchStrategy[str]:
    if kind in ("email", "ip_address"):
        return st.text(FOLDING, min_size=1, max_size=6)
    if kind in ("credit_card", "phone"):
        return st.text("0123456789 .-()/+", min_size=1, max_size=8)
    if kind == "iban":
        return st.text("DEGBde0189 ", min_size=1, max_size=8)
    return st.text(FOLDING, min_size=1, max_size=4)


CASES = [str.__str__, str.upper, str.lower, str.swapcase, str.casefold, str.title]


@st.composite
def findings_of_few_values(draw: st.DrawFn) -> list[Finding]:
    """Findings whose values are drawn from a few, each in some case (so values differing
    only in case, or folding to one another, meet)."""
    pool = draw(
        st.lists(
            st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), _values_for(k))),
            min_size=1,
            max_size=6,
        )
    )
    picks = draw(st.lists(st.tuples(st.sampled_from(pool), st.sampled_from(CASES)), max_size=120))
    return [Finding(kind, 0, 1, case(value)) for (kind, value), case in picks]


taken = st.sets(
    st.builds(lambda kind, number: f"[{kind.upper()}_{number}]", st.sampled_from(KINDS), st.integers(1, 40)),
    max_size=12,
)


def _masked(findings: list[Finding], cuts: list[int], taken: set[str]) -> tuple[Any, ...]:
    """The placeholders a masker gives to findings handed to it in the pieces ``cuts`` make,
    and what it holds after."""
    masker = _Masker(set(taken))
    names: list[str] = []
    low = 0
    for high in [*sorted(cut % (len(findings) + 1) for cut in cuts), len(findings)]:
        names += masker.assign(findings[low:high])
        low = max(low, high)
    known = {kind: list(identities.items()) for kind, identities in masker.by_identity.items()}
    return names, list(masker.mapping.items()), dict(masker.next_number), known


@SETTINGS
@given(
    findings_of_few_values(),
    st.lists(st.integers(0, 200), max_size=3),
    taken,
    st.integers(0, 3),
)
@example([Finding("email", 0, 6, v) for v in ["Ab@c.d", "aB@C.D", "ß@x.de", "ss@x.de"] * 10], [], set(), 0)
@example([Finding("email", 0, 1, "a")] * 40, [], {"[EMAIL_1]", "[EMAIL_2]"}, 0)
def test_native_placeholders_are_the_python_ones(
    findings: list[Finding], cuts: list[int], taken: set[str], repeats: int
) -> None:
    # Repeated runs of the same findings: most values known by then (no new identity).
    findings = findings * (repeats + 1)
    native()
    with python_only():
        expected = _masked(findings, cuts, taken)
    assert _masked(findings, cuts, taken) == expected


def test_an_identity_that_raises_fails_the_call() -> None:
    def broken(value: str) -> str:
        raise KeyError(value)

    with pytest.raises(KeyError):
        native().assign(["a", "b"], broken, {}, {}, ["[EMAIL_1]", "[EMAIL_2]"])


def test_a_supply_too_short_is_refused() -> None:
    known: dict[str, str] = {}
    with pytest.raises(ValueError, match="supply"):
        native().assign(["a", "b", "a"], str.casefold, known, {}, ["[EMAIL_1]"])
    with pytest.raises(TypeError):
        native().assign(["a"], str.casefold, known, {}, ("[EMAIL_1]",))


def test_identities_other_than_str_methods_are_called() -> None:
    # credit_card and phone drop punctuation, iban drops spaces and upper-cases.
    mapping: dict[str, str] = {}
    known: dict[str, str] = {}
    values = ["4111 1111", "4111-1111", "41111111", "(41) 11.1112"]
    names, used = native().assign(
        values, IDENTITY["credit_card"], known, mapping, ["[C_1]", "[C_2]", "[C_3]"]
    )
    assert (names, used) == (["[C_1]", "[C_1]", "[C_1]", "[C_2]"], 2)
    assert mapping == {"[C_1]": "4111 1111", "[C_2]": "(41) 11.1112"}
    assert known == {"41111111": "[C_1]", "41111112": "[C_2]"}


# --------------------------------------------------------------------------- the masked text

WIDE = "aZ 09@.é\u00ffĀ中ー\u0301😀\U0010ffff\ud800"
texts = st.one_of(st.text("ab @.", max_size=60), st.text(WIDE, max_size=60))
replacements = st.one_of(st.sampled_from(["[EMAIL_1]", "[PHONE_12]", ""]), st.text(WIDE, max_size=5))


@st.composite
def stretches(draw: st.DrawFn) -> tuple[str, list[Finding], list[str], int, int]:
    text = draw(texts)
    bounds = sorted(draw(st.lists(st.integers(0, len(text)), max_size=16)))
    begin, end = (bounds[0], bounds[-1]) if len(bounds) >= 2 and draw(st.booleans()) else (0, len(text))
    inner = [bound for bound in bounds if begin <= bound <= end]
    pairs = zip(inner[::2], inner[1::2], strict=False)  # (an odd bound left over)
    findings = [Finding("email", start, stop, text[start:stop]) for start, stop in pairs]
    return text, findings, [draw(replacements) for _ in findings], begin, end


@SETTINGS
@given(stretches())
@example(("jürgen@müller.de x", [Finding("email", 0, 16, "jürgen@müller.de")], ["[EMAIL_1]"], 0, 18))
@example(("é中", [Finding("email", 1, 2, "中")], ["ā"], 0, 2))  # UCS-2 text, Latin-1 result
@example(("a😀", [Finding("email", 1, 2, "😀")], ["b"], 0, 2))  # UCS-4 text, ASCII result
@example(("ab", [Finding("email", 0, 1, "a")], ["😀"], 0, 2))  # ASCII text, UCS-4 result
def test_native_masked_text_is_the_python_one(case: tuple[str, list[Finding], list[str], int, int]) -> None:
    text, findings, replacements, begin, end = case
    with python_only():
        expected = _detect._interleaved(text, findings, replacements, begin, end)
    got = native().interleave(text, findings, replacements, begin, end)
    assert got == expected
    # The same width as Python's (every str is built as narrow as its characters allow).
    assert (got.isascii(), sys.getsizeof(got)) == (expected.isascii(), sys.getsizeof(expected))


@pytest.mark.parametrize(
    ("findings", "replacements", "begin", "end", "error"),
    [
        (
            [Finding("email", 2, 3, "c"), Finding("email", 0, 1, "a")],
            ["x", "y"],
            0,
            5,
            ValueError,
        ),  # out of order
        (
            [Finding("email", 0, 2, "ab"), Finding("email", 1, 3, "bc")],
            ["x", "y"],
            0,
            5,
            ValueError,
        ),  # overlap
        ([Finding("email", 3, 2, "")], ["x"], 0, 5, ValueError),  # ends before it starts
        ([Finding("email", 0, 1, "a")], ["x"], 1, 5, ValueError),  # before begin
        ([Finding("email", 4, 6, "e")], ["x"], 0, 5, ValueError),  # past end
        ([Finding("email", 0, 1, "a")], ["x"], 0, 6, ValueError),  # end past the text
        ([Finding("email", 0, 1, "a")], [], 0, 5, ValueError),  # a replacement missing
        ([Finding("email", 0, 1, "a")], [7], 0, 5, TypeError),  # not a string
        ([("email", 0)], ["x"], 0, 5, TypeError),  # not a finding
        ([Finding("email", 2**70, 1, "a")], ["x"], 0, 5, OverflowError),  # a bound past any index
    ],
)
def test_findings_out_of_place_are_refused(
    findings: list[Any], replacements: list[Any], begin: int, end: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        native().interleave("abcde", findings, replacements, begin, end)


# --------------------------------------------------------------------------- the whole plugin

PIECES = [
    "Jürgen@Müller.de", "jürgen@müller.de", "JÜRGEN@MÜLLER.DE", "straße@x.de", "strasse@x.de", "STRASSE@X.DE",
    "ana@example.com", "Ana@Example.COM", "ユーザー@例え.jp", "δοκιμή@παράδειγμα.δοκιμή",
    "ΔΟΚΙΜΉ@ΠΑΡΆΔΕΙΓΜΑ.ΔΟΚΙΜΉ",
    "fe80::1", "FE80::1", "192.168.1.1", "+1 (555) 123-4567", "555.123.4567", "4111 1111 1111 1111",
    "4111-1111-1111-1111", "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "ghp_" + "A1b2C3d4E5" * 4,
    "[EMAIL_1]", "[EMAIL_2]", "[EMAIL_3]", "[PHONE_1]", "[IP_ADDRESS_2]", "[SECRET_1]",
    " ", ", ", "\n", "é", "中",
]  # fmt: skip
messages = st.lists(st.lists(st.sampled_from(PIECES), max_size=90).map(" ".join), min_size=1, max_size=3)


async def _redacted(contents: list[str]) -> tuple[Any, ...]:
    redactor = PiiRedactor({"mode": "mask", "restore": True, "pii_key": PII_KEY})
    body = {"messages": [{"role": "user", "content": content} for content in contents]}
    ctx = make_context(body, request_id="req-1")
    outcome = await redactor.execute(ctx)
    sealed = ctx.metadata.get("_pii_mapping")
    mapping = (
        None
        if sealed is None
        else open_sealed(sealed, key=parse_key(PII_KEY, "test key"), request_id="req-1")
    )
    return outcome.action, outcome.body, ctx.metadata["pii_counts"], mapping and list(mapping.items())


@settings(max_examples=max(50, EXAMPLES // 3), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
@example(
    ["Jürgen@Müller.de jürgen@müller.de [EMAIL_1] " * 20, "JÜRGEN@MÜLLER.DE straße@x.de STRASSE@X.DE " * 20]
)
def test_native_masking_gives_the_python_body_counts_and_mapping(contents: list[str]) -> None:
    native()
    with python_only():
        expected = asyncio.run(_redacted(contents))
    assert asyncio.run(_redacted(contents)) == expected


def test_a_megabyte_of_idn_addresses_is_masked_as_python_masks_it() -> None:
    # The benchmark's "emails, IDN" corpus (tens of thousands of findings, masked in chunks),
    # with case variants and a placeholder already there.
    unit = "jürgen{0}@müller{1}.de ユーザー{0}@例え.jp JÜRGEN{0}@MÜLLER{1}.DE [EMAIL_{0}] user{1}@mail.com "
    text = "".join(unit.format(n % 7000, n % 13) for n in range(10_000))
    native()
    with python_only():
        expected = asyncio.run(_redacted([text]))
    assert asyncio.run(_redacted([text])) == expected


# --------------------------------------------------------------------------- memory


def test_the_native_masking_holds_no_memory_after_a_call() -> None:
    # Every reference taken is given back, on success and on each refusal: the memory
    # Python allocates stays flat over thousands of calls.
    scan = native()
    values = ["Jürgen@Müller.de", "jürgen@müller.de", "ana@example.com", "ß@x.de", "ユーザー@例え.jp"] * 20
    supply = [f"[EMAIL_{n}]" for n in range(1, len(values) + 1)]
    text = "é ".join(values)
    findings = []
    position = 0
    for value in values:
        findings.append(Finding("email", position, position + len(value), value))
        position += len(value) + 2
    bad = [findings[1], findings[0]]
    mask = _detect.Detector()._mask

    def broken(value: str) -> str:
        raise KeyError(value)

    def calls() -> None:
        for _ in range(300):
            scan.assign(values, str.casefold, {}, {}, supply)
            scan.assign(values, IDENTITY["phone"], {}, {}, supply)
            scan.interleave(text, findings, supply, 0, len(text))
            scan.find_window(text, mask, 3, len(text) - 3, 40, 400)
            for call in (
                lambda: scan.assign(values, broken, {}, {}, supply),
                lambda: scan.assign(values, str.casefold, {}, {}, supply[:2]),
                lambda: scan.interleave(text, bad, supply[:2], 0, len(text)),
                lambda: scan.find_window(text, mask, 5, 4, 0, 9),
            ):
                with pytest.raises((KeyError, ValueError)):
                    call()

    calls()  # caches and free lists filled
    tracemalloc.start()
    try:
        calls()
        before, _ = tracemalloc.get_traced_memory()
        calls()
        calls()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4096  # a reference kept per call would hold over 100 KB


def test_an_identity_that_reads_every_list_meanwhile_cannot_crash_the_interpreter() -> None:
    # assign calls identity (Python code) while the list of names it returns is half filled;
    # gc.get_objects() there handed that list over, and reading its unfilled items crashed
    # the interpreter (SIGSEGV). Run in a child, so that a crash fails this test alone.
    code = """if True:
        import gc
        from ringd.plugins import _detect
        assert _detect.NATIVE is not None, "ringd.plugins._scan is not built"
        values = [f"v{n}@x.de" for n in range(50)]
        supply = [f"[EMAIL_{n}]" for n in range(1, 51)]

        def identity(value):
            if value == "v1@x.de":
                for found in gc.get_objects():
                    if type(found) is list and len(found) == 50 and found not in (values, supply):
                        list(found)
            return value

        print(_detect.NATIVE.assign(values, identity, {}, {}, supply) == (supply, 50))
    """
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert (child.returncode, child.stdout.strip()) == (0, "True"), child.stderr
