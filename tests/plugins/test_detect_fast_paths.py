"""The scanners' fast paths find what the plain rules say: batches, dense text, many findings.

The detector checks card candidates in one batch (Luhn by digit sums), phone candidates by
one regex, addresses in "@"-dense text by one whole-address scan, and pii_redactor numbers
many findings at once; these tests hold each to the rule it replaces, on generated input.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ringd.plugins import _detect, pii_redactor
from ringd.plugins._detect import Detector, Finding, luhn_valid
from ringd.plugins._seal import open_sealed, parse_key
from ringd.plugins.pii_redactor import PiiRedactor, _Masker
from ringd.testing import run_plugin

PII_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
BOTH_SCANNERS = pytest.mark.usefixtures("scan_backend")  # the native and the Python scanner
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _grouped(draw: st.DrawFn, digits: str) -> str:
    separators = draw(
        st.lists(st.sampled_from(["", "", " ", "-"]), min_size=len(digits), max_size=len(digits))
    )
    return (
        "".join(digit + separator for digit, separator in zip(digits, separators[:-1], strict=False))
        + digits[-1]
    )


@st.composite
def card_candidates(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    if draw(st.booleans()):
        digits = draw(st.sampled_from("0123456789")) * length  # one digit repeated: never a card
    else:
        digits = draw(st.text("0123456789", min_size=length, max_size=length))
    return _grouped(draw, digits)


@BOTH_SCANNERS
@SETTINGS
@given(st.lists(card_candidates(), min_size=1, max_size=40))
def test_cards_checked_in_one_batch_follow_luhn(candidates: list[str]) -> None:
    text = " or ".join(candidates)
    found = [finding.value for finding in Detector(["credit_card"]).find(text)]
    expected = [c for c in candidates if luhn_valid(c.replace(" ", "").replace("-", ""))]
    assert found == expected


@SETTINGS
@given(st.text(" .-0123456789+()", min_size=1, max_size=30))
def test_phone_regex_follows_the_phone_rules(text: str) -> None:
    # Every candidate the phone pattern yields is accepted by the one-regex check
    # exactly when the rules spelled out in _phone_ok accept it.
    for match in _detect._PHONE_LINEAR.finditer(text):
        candidate = match.group()
        assert bool(_detect._PHONE_OK(candidate)) == _detect._phone_ok(candidate), candidate


@st.composite
def address_text(draw: st.DrawFn) -> str:
    piece = st.sampled_from(
        ["ana", "b.c", ".", "..", "x_1", "%", "+", "-", "@", "@@", "ex.com", "mail.example.org", " ", ", ",
         "jürgen", "müller.de", "a" * 70, "sk-" + "Q" * 24, "\n", "#"]
    )  # fmt: skip
    return "".join(draw(st.lists(piece, min_size=1, max_size=40)))


@BOTH_SCANNERS
@SETTINGS
@given(address_text(), st.integers(0, 300))
@example("b" + "a" * 64 + "@ex.com " + "a" * 64 + "@ex.com", 0)  # local parts of 65 and 64
@example("sk-" + "Q" * 24 + "@ex.com@mail.example.org", 0)  # the first overlaps a secret
@example("..ana@ex.com@@b.c@ex.com", 0)
def test_dense_and_sparse_email_scans_agree(text: str, padding: int) -> None:
    # Dense text (an "@" every few characters) is scanned whole by one regex; the same
    # text padded out to sparse goes "@" by "@". Both must find the same values.
    dense = Detector().find(text)
    sparse = Detector().find(text + " " * (len(text) * 100 + padding))
    assert [(f.kind, f.start, f.end) for f in dense] == [(f.kind, f.start, f.end) for f in sparse]


@BOTH_SCANNERS
def test_adversarial_corpora_still_yield_their_true_values() -> None:
    """Noise built to make the scanners work hard hides none of the real values in it."""
    addresses = [f"user{n}.x@mail{n % 97}.example.com" for n in range(3000)]
    emails = " ".join(addresses)
    assert [f.value for f in Detector().find(emails)] == addresses

    groups = " - ".join(f"{n % 9999} {n * 7 % 9999} {n * 13 % 999}" for n in range(2000))
    card = "4111 1111 1111 1111"
    text = f"{groups} ; card {card} ; {groups}"
    assert card in [f.value for f in Detector(["credit_card"]).find(text)]

    noise = ":".join(f"{n:x}" for n in range(5000)) + "::"
    text = f"{noise} host 2001:db8::8a2e:370:7334 up {noise}"
    assert "2001:db8::8a2e:370:7334" in [f.value for f in Detector(["ip_address"]).find(text)]


@BOTH_SCANNERS
async def test_many_values_masked_at_once_keep_numbering_and_the_first_spelling(make_ctx, chat) -> None:
    # 40 distinct addresses (the batch path), each mentioned twice, once in capitals;
    # [EMAIL_3] is already in the prompt, so that number is skipped.
    addresses = [f"person{n}@example.org" for n in range(40)]
    first = " ".join(addresses) + " see [EMAIL_3]"
    second = " ".join(address.upper() for address in addresses)
    ctx = make_ctx(chat(("user", first), ("user", second)))
    outcome = await run_plugin(PiiRedactor({"mode": "mask", "restore": True, "pii_key": PII_KEY}), ctx)
    masked_first, masked_second = (m["content"] for m in outcome.body["messages"])
    numbers = [n for n in range(1, 42) if n != 3]
    assert masked_first == " ".join(f"[EMAIL_{n}]" for n in numbers) + " see [EMAIL_3]"
    assert masked_second == " ".join(f"[EMAIL_{n}]" for n in numbers)
    assert ctx.metadata["pii_counts"] == {"email": 80}
    mapping = open_sealed(
        ctx.metadata["_pii_mapping"], key=parse_key(PII_KEY, "test key"), request_id=ctx.request_id
    )
    assert mapping == {f"[EMAIL_{n}]": address for n, address in zip(numbers, addresses, strict=True)}


@st.composite
def masker_findings(draw: st.DrawFn) -> list[Finding]:
    # Values that collide by identity (case, spaces, punctuation), of several kinds at once.
    values = {
        "email": ["a@x.org", "A@X.org", "b@x.org", "c@y.net"],
        "phone": ["+1 555 0100", "+1-555-0100", "+1 555 0199"],
        "secret": ["sk-" + "Q" * 24, "sk-" + "q" * 24],
        "iban": ["DE89 3704 0044 0532 0130 00", "de89370400440532013000"],
    }
    kinds = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=80))
    return [Finding(kind, 0, 0, draw(st.sampled_from(values[kind]))) for kind in kinds]


@SETTINGS
@given(
    st.lists(masker_findings(), min_size=1, max_size=3),
    st.sets(st.sampled_from(["[EMAIL_1]", "[EMAIL_3]", "[PHONE_2]", "[SECRET_1]"])),
)
def test_placeholders_given_in_batches_equal_one_by_one(chunks: list[list[Finding]], taken: set[str]) -> None:
    # _Masker numbers many findings at once (per kind, by C-level maps); the rule is the
    # one-by-one path: a value's placeholder is that of its first spelling, numbered per
    # kind in order of first appearance, numbers already in the prompt skipped.
    batched, single = _Masker(set(taken)), _Masker(set(taken))
    for findings in chunks:
        expected = [single._one(kind, value) for kind, _, _, value in findings]
        assert batched.assign(findings) == expected
    assert batched.mapping == single.mapping


def _numbered_by_the_rule(findings: list[Finding], taken: set[str]) -> list[str]:
    """Placeholders by the rule, one finding at a time: a value's identity (case, spaces and
    punctuation aside) keeps its first placeholder; a new one takes its kind's next number
    that is not already in the prompt."""
    known: dict[tuple[str, str], str] = {}
    last: dict[str, int] = {}
    names: list[str] = []
    for kind, _, _, value in findings:
        identity = (kind, _detect.IDENTITY[kind](value))
        if identity not in known:
            number = last.get(kind, 0) + 1
            while f"[{kind.upper()}_{number}]" in taken:
                number += 1
            last[kind] = number
            known[identity] = f"[{kind.upper()}_{number}]"
        names.append(known[identity])
    return names


@SETTINGS
@given(
    st.lists(masker_findings(), min_size=1, max_size=3),
    st.sets(st.sampled_from(["[EMAIL_1]", "[EMAIL_3]", "[EMAIL_4]", "[PHONE_2]", "[SECRET_1]", "[IBAN_1]"])),
    st.sampled_from([1, 2, 5, 1 << 16]),
)
def test_placeholders_follow_the_rule_past_the_kept_ones(
    chunks: list[list[Finding]], taken: set[str], kept: int
) -> None:
    # The placeholders up to a number are made once per process and kept; past it they are
    # made per request. Numbering is the same either way, chunk after chunk.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pii_redactor, "_CACHED_NUMBERS", kept)
        patch.setattr(pii_redactor, "_MADE", {kind: [] for kind in _detect.KINDS})
        masker = _Masker(set(taken))
        assigned = [name for findings in chunks for name in masker.assign(findings)]
    assert assigned == _numbered_by_the_rule([f for findings in chunks for f in findings], taken)
    first_values = {}
    for name, finding in zip(assigned, (f for findings in chunks for f in findings), strict=True):
        first_values.setdefault(name, finding.value)
    assert masker.mapping == first_values  # each placeholder stands for its first spelling


# The card and phone patterns as first written (greedy, backtracking): the possessive
# quantifiers of _detect must give the same matches.
_CARD_BACKTRACKING = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)", re.ASCII)
_PHONE_BACKTRACKING = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d+(?:[ .-]\d\d+){0,5}(?![\w-]|\.\d)", re.ASCII
)


@SETTINGS
@given(st.text(" .-0123456789+()a", min_size=1, max_size=120))
@example("1234 5678 9012 3456 78 90")  # 18 digits then another group: the greedy one steps back
@example("+1 (555) 123-4567 89")
def test_possessive_card_and_phone_patterns_match_as_the_backtracking_ones(text: str) -> None:
    fast, slow = _detect._PHONE_LINEAR, _PHONE_BACKTRACKING
    assert [m.span() for m in fast.finditer(text)] == [m.span() for m in slow.finditer(text)]
    # The cards are cut out by re.split: the same values, and the pieces add up to the text.
    pieces = _detect._CARD_SPLIT.split(text)
    assert pieces[1::2] == [m.group() for m in _CARD_BACKTRACKING.finditer(text)]
    assert "".join(pieces) == text


@SETTINGS
@given(address_text())
@example("..ana@ex.com@@b.c@ex.com")
def test_ascii_email_patterns_match_as_the_unicode_ones_on_ascii_text(text: str) -> None:
    # ASCII texts are scanned with the email patterns compiled with re.ASCII.
    text = text.replace("ü", "u")
    for fast, general in zip(_detect._EMAIL_SCANS[True], _detect._EMAIL_SCANS[False], strict=True):
        assert [m.span() for m in fast.finditer(text)] == [m.span() for m in general.finditer(text)]
        assert fast.split(text) == general.split(text)


def _private_keys_one_by_one(plain: str) -> list[tuple[int, int]]:
    """The PEM rule as first written: every "-----BEGIN" tried in Python, in order."""
    spans = _detect._Spans(len(plain))
    resume = 0
    index = plain.find("-----BEGIN")
    while index != -1:
        head = _detect._PEM_HEAD.match(plain, index) if index >= resume else None
        if head is not None:
            end_line = plain.find("-----END", head.end())
            end = -1
            if end_line != -1 and plain.find("\x00", head.end(), end_line) == -1:
                tail = _detect._PEM_TAIL.match(plain, end_line)
                end = tail.end() if tail else -1
            if end == -1:
                body = _detect._PEM_BODY.match(plain, head.end())
                end = body.end() if body else head.end()
            spans.add("secret", index, end, plain)
            resume = end
        index = plain.find("-----BEGIN", index + 1)
    return [(f.start, f.end) for f in spans.found]


@SETTINGS
@given(
    st.lists(
        st.sampled_from(
            [
                "-----BEGIN",
                "-----BEGIN RSA PRIVATE KEY-----",
                "-----BEGIN PRIVATE KEY-----",
                "-----",
                "-----END RSA PRIVATE KEY-----",
                "-----END",
                "MIIEow",
                "q2w3=",
                "\n",
                " x ",
                "\x00",
                "BEGIN",
                "BEGIN PRIVATE KEY-----",
            ]
        ),
        max_size=30,
    ).map("".join)
)
# A head inside a block's END line ("KEY-----BEGIN ... KEY-----") skipped, and a head that
# starts in its closing dashes, after the block: that key is found too.
@example(
    "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----BEGIN PRIVATE KEY-----BEGIN PRIVATE KEY-----\nMIIE"
)
def test_private_key_heads_found_by_regex_equal_every_head_tried(plain: str) -> None:
    spans = _detect._Spans(len(plain))
    _detect._private_keys(plain, plain, spans)
    assert [(f.start, f.end) for f in spans.found] == _private_keys_one_by_one(plain)


def _ipv6_spans(plain: str) -> list[tuple[int, int]]:
    spans = _detect._Spans(len(plain))
    _detect._ipv6(plain, plain, plain.translate(_detect._CLASS_MAP), spans)
    return [(f.start, f.end) for f in spans.found]


@st.composite
def colon_text(draw: st.DrawFn) -> str:
    piece = st.sampled_from(
        ["::", ":", "a:g:", "2001:db8::1", "fe80::1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8", "abcd", "0", " ",
         "\n", "x", "2001:db8:85a3:0:0:8a2e:370:7334", " " * 100, " " * 230, "::ffff:", "12:30"]
    )  # fmt: skip
    return "".join(draw(st.lists(piece, min_size=1, max_size=30)))


@SETTINGS
@given(colon_text(), st.integers(0, 40))
@example("a:g: " + " " * 240 + "2001:db8:85a3:0:0:8a2e:370:7334 end", 0)  # straddles the first window's end
@example(":: ::abcd", 0)  # a later hint's window must not find the earlier "::" again
@example("7:0:589:::b?41:ccc:3fc::2:e:3:13", 0)  # the first colon ends the hint before it
def test_ipv6_found_by_windows_or_one_scan_equal_one_whole_scan(text: str, padding: int) -> None:
    # Around sparse colon hints the IPv6 pattern runs in windows (an address cut by a
    # window's end is searched again with room for it); with hints every few characters,
    # over the whole text. Both find what one scan of the whole text finds.
    for plain in (text, " " * padding + text + " " * (16 * len(text))):  # as it comes, and sparse
        expected = [m.span() for m in _detect._IPV6.finditer(plain) if _detect._ipv6_ok(m.group())]
        assert _ipv6_spans(plain) == expected
