"""PII and secret detectors shared by ``pii_redactor`` and ``response_sanitizer``.

Kinds, in precedence order (when two matches overlap, the earlier kind wins):

``secret``
    API keys and credentials: OpenAI/Anthropic ``sk-...``, Stripe ``sk_live_...``,
    AWS ``AKIA...``/``ASIA...``, GitHub ``ghp_...``/``github_pat_...``, Slack
    ``xox?-...``, Google ``AIza...``, JWTs, ``Bearer <token>``, PEM private key
    blocks, and ``password=...``-style assignments whose value looks random.
``email``
    ``local@domain.tld``.
``credit_card``
    13 to 19 digits, optionally grouped by spaces or dashes, passing the Luhn check.
``iban``
    Country code, check digits and 11 to 30 more letters or digits (optionally in
    groups of four), passing the ISO 13616 mod-97 check.
``ip_address``
    IPv4 dotted quads and IPv6 addresses (validated by :mod:`ipaddress`).
``phone``
    7 to 15 digits written as a phone number: a leading ``+``, an area code in
    parentheses, or digit groups separated by spaces, dots or dashes. Dates and
    bare digit runs are not phone numbers.

All patterns are compiled once, at import. Apart from email addresses (which may
be internationalised, ``jürgen@müller.de``), detection is ASCII-only: digits are
0-9, and letters outside ASCII never belong to a finding.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, itemgetter, methodcaller, mod, not_, sub
from types import ModuleType
from typing import NamedTuple, Protocol, cast

KINDS: tuple[str, ...] = ("secret", "email", "credit_card", "iban", "ip_address", "phone")
"""Every detector kind, in precedence order."""


class Finding(NamedTuple):
    """One detected value in a text (a named tuple: a 1 MB text can hold tens of thousands).

    Attributes:
        kind: One of :data:`KINDS`.
        start: Index of the first character in the text.
        end: Index after the last character.
        value: The matched text, ``text[start:end]``.
    """

    kind: str
    start: int
    end: int
    value: str


_NOT_DIGIT_OR_PLUS = str.maketrans("", "", " .-()/")


def _iban_identity(value: str) -> str:
    return value.replace(" ", "").upper()


_WITHOUT_PUNCTUATION = methodcaller("translate", _NOT_DIGIT_OR_PLUS)
IDENTITY: dict[str, Callable[[str], str]] = {
    "secret": str.__str__,
    "email": str.casefold,
    "credit_card": _WITHOUT_PUNCTUATION,
    "iban": _iban_identity,
    "ip_address": str.casefold,
    "phone": _WITHOUT_PUNCTUATION,
}
"""A finding's value normalised by kind, so that one email, card or phone written two ways
is one value (``map`` over many values at once)."""

# --------------------------------------------------------------------------- validators


_DOUBLED = str.maketrans("0123456789", "0246813579")  # a digit doubled, minus 9 above 9


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (and is not one repeated digit)."""
    if not digits or digits.count(digits[0]) == len(digits):
        return False
    kept, doubled = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(map(int, kept)) + sum(map(int, doubled))) % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Whether ``candidate`` (spaces allowed) is an IBAN passing the mod-97 check."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(numeric) % 97 == 1


def _credit_card_ok(value: str) -> bool:
    digits = value.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _ipv6_ok(value: str) -> bool:
    # The forms of RFC 4291 (``::`` at most once; no embedded IPv4: the scan stops at dots),
    # checked by one regex instead of ipaddress, which costs ~40 us per candidate.
    if value.count("::") > 1 or value.strip(":") == "":
        return False
    return _IPV6_FORMS.fullmatch(value) is not None


_PHONE_SEPARATOR = re.compile(r"[ .-]")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


_PHONE_PUNCTUATION = str.maketrans("", "", " .-()+")  # a phone candidate is digits and these


def _phone_ok(value: str) -> bool:
    digits = len(value.translate(_PHONE_PUNCTUATION))
    if not 7 <= digits <= 15:
        return False
    if value.startswith("+") or "(" in value:
        return True
    if _DATE.fullmatch(value):
        return False
    spaces, dots, dashes = value.count(" "), value.count("."), value.count("-")
    # A bare run of digits is an order number or an amount as often as a phone number.
    if not spaces + dots + dashes:
        return False
    # ``3.14159265`` is a decimal, ``1 000 000`` an amount.
    if dots == 1 and not spaces and not dashes:
        return False
    groups = _PHONE_SEPARATOR.split(value)
    return not (len(groups[0]) <= 3 and all(len(group) == 3 for group in groups[1:]))


# _phone_ok as one regex, for matching every candidate in C (``map(_PHONE_OK, ...)``):
# 7 to 15 digits; then a "+" or "(" accepts; otherwise a date, a number without a
# separator, a decimal (one dot and nothing else) or thousands grouping rejects.
_PHONE_OK = re.compile(
    r"(?=(?:\D*+\d){7,15}+\D*+\Z)"
    r"(?:\+|(?=[^(]*\()"
    r"|(?!(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})\Z)"
    r"(?=[^ .-]*[ .-])(?![^ .-]*\.[^ .-]*\Z)(?!\d{1,3}(?:[ .-]\d{3})*\Z))",
    re.ASCII,
).match
_GROUP = re.Match.group
_LUHN_BLOCK = 20  # even, and wider than the 19 digits a card has at most


def _cards_ok(values: list[str]) -> list[bool]:
    """:func:`_credit_card_ok` of each of ``values`` (13 to 19 digits, spaces or dashes between).

    One C-level pass for all of them: each candidate's digits are right-aligned in a
    block of 20 (zeros on the left leave the Luhn sum as it is); every other digit of
    the whole run is doubled, which, the blocks having even width, is every other
    digit from the right of each block; and a block read as a base-11 number is its
    digit sum modulo 10 (11 is 1 modulo 10).
    """
    if not values:
        return []
    # (str.replace twice costs a quarter of str.translate with a deleting table)
    digits = list(
        map(str.replace, map(str.replace, values, repeat(" "), repeat("")), repeat("-"), repeat(""))
    )
    run = "".join(map(str.zfill, digits, repeat(_LUHN_BLOCK)))
    mixed = bytearray(run, "ascii")
    mixed[0::2] = run[0::2].translate(_DOUBLED).encode("ascii")
    doubled = mixed.decode("ascii")
    size = len(doubled)
    blocks = map(
        doubled.__getitem__,
        map(slice, range(0, size, _LUHN_BLOCK), range(_LUHN_BLOCK, size + 1, _LUHN_BLOCK)),
    )
    passed = list(map(not_, map(mod, map(int, blocks, repeat(11)), repeat(10))))
    for index in compress(range(len(passed)), passed):  # a tenth of them: one repeated digit fails
        number = digits[index]
        passed[index] = number.count(number[0]) != len(number)
    return passed


def _cards(text: str, plain: str, clusters: _Clusters, spans: _Spans) -> None:
    """Cards in the clusters of 13 digits or more: the candidates by :data:`_CARD_SPLIT`, then Luhn."""
    starts: list[int] = []
    ends: list[int] = []
    values: list[str] = []
    for start, end in clusters.with_digits(13):
        # A candidate starts at a digit, two characters or more into the cluster: its
        # look-behind sees the same character in the cut as in the text.
        pieces = _CARD_SPLIT.split(plain[start:end])  # between, card, between, ..., between
        bounds = list(accumulate(map(len, pieces), initial=start))
        starts += bounds[1:-1:2]
        ends += bounds[2:-1:2]
        values += pieces[1::2]
    for start, end in compress(zip(starts, ends, strict=True), _cards_ok(values)):
        spans.add("credit_card", start, end, text)


def _assignment_ok(value: str) -> bool:
    # ``password: required`` is prose; ``password: hunter2024`` is a credential.
    return any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value)


# --------------------------------------------------------------------------- patterns
#
# Running a dozen general regexes over every text costs far more than the 1 ms a ring
# may take, and Python code per candidate is what hostile text makes expensive. So
# candidates come from C-level passes, and Python runs per candidate only where one
# can match:
#
# * regexes that start with a literal (``sk-``, ``AKIA``, ``@``, and, in an ASCII
#   lower-cased copy, ``bearer``, ``password``...), which the regex engine finds with
#   its literal search, matching in C; ``-----BEGIN`` with ``str.find``;
# * a character-class map of the text made by one ``str.translate`` (digits,
#   separators, capitals, colons), searched for literal runs: digit clusters
#   (cards, phones, IPv4), capital-capital-digit-digit (IBAN), two colons close
#   together (IPv6);
# * no pattern has two ways to read the same text (the phone pattern needs a
#   separator between digit groups), so none backtracks more than a few characters.
#
# The patterns are ASCII-only (``re.ASCII``: ``\d`` is 0-9 and ``\w`` an ASCII word
# character), except the email domain, which allows internationalised names.

_A = re.ASCII

_PEM_HEAD = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----", _A)
_PEM_TAIL = re.compile(r"-----END[A-Z0-9 ]*PRIVATE KEY-----", _A)
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s]*", _A)  # a block without its END line
_TAIL_BOUNDARY = r"(?![\w-])"
# (literal anchor, pattern matched at the anchor); the anchor must not follow [\w-].
_TOKENS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (anchor, re.compile(pattern + _TAIL_BOUNDARY, _A))
    for anchor, pattern in (
        ("sk-", r"sk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}"),
        ("sk_", r"sk_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("rk_", r"rk_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("AKIA", r"AKIA[0-9A-Z]{16}"),
        ("ASIA", r"ASIA[0-9A-Z]{16}"),
        ("gh", r"gh[pousr]_[A-Za-z0-9]{36,}"),
        ("github_pat_", r"github_pat_[A-Za-z0-9_]{22,}"),
        ("xox", r"xox[abprs]-[A-Za-z0-9-]{10,}"),
        ("AIza", r"AIza[0-9A-Za-z_-]{35}"),
        ("eyJ", r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    )
)
# Unicode letters allowed (IDN domains); an ASCII TLD or a Unicode one, two letters or more.
_EMAIL_DOMAIN = re.compile(r"[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,}\b")
# (a separator taken possessively: had it been left out, a digit would have to stand there)
# re.split: the cards and what is between (the look-behind before the group: most tries fail there)
_CARD_SPLIT = re.compile(r"(?<![\d-])(\d(?:[ -]?+\d){12,18}(?!\d))", _A)
_IBAN = re.compile(r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", _A)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)", _A)
_IPV4_CORE = re.compile(r"\.\d{1,3}\.\d", _A)  # in every IPv4 address; searched for its dots
_IPV6 = re.compile(r"(?<![:\w])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![:\w])", _A)

# Digit groups with a separator between them: one way to read a run of digits, so no
# backtracking over ways to split it (the grouping rules are checked by _phone_ok). A run
# of digits is taken whole (possessive): after a shorter one comes a digit, which nothing allows.
_PHONE_LINEAR = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d++(?:[ .-]\d\d++){0,5}(?![\w-]|\.\d)", _A
)
_HEX = "[0-9a-f]{1,4}"
_IPV6_FORMS = re.compile(
    "|".join(
        (
            rf"(?:{_HEX}:){{7}}{_HEX}",
            rf"(?:{_HEX}:){{1,7}}:",
            rf"(?:{_HEX}:){{1,6}}:{_HEX}",
            rf"(?:{_HEX}:){{1,5}}(?::{_HEX}){{1,2}}",
            rf"(?:{_HEX}:){{1,4}}(?::{_HEX}){{1,3}}",
            rf"(?:{_HEX}:){{1,3}}(?::{_HEX}){{1,4}}",
            rf"(?:{_HEX}:){{1,2}}(?::{_HEX}){{1,5}}",
            rf"{_HEX}:(?::{_HEX}){{1,6}}",
            rf":(?:(?::{_HEX}){{1,7}}|:)",
        )
    ),
    _A | re.IGNORECASE,
)
# An "@" with a local-part character before it and a domain's first character after it:
# the only places an address can be, found in C ("@@@@" or "a@ b" cost nothing in Python).
_EMAIL_AT = re.compile(r"@(?<=[\w.%+-]@)(?=[^\W_])")
# A whole address, for texts dense with "@": from the start of a run of local-part
# characters (64 at most, then "@"), leading dots left out (group 1: the local part).
# Scanning a text costs ~25 ns a character, less than the Python per "@" of _emails
# once there is an "@" every 40 characters or so (half of them fail cheaply).
_EMAIL_WHOLE = re.compile(
    r"(?<![\w.%+-])(?=[\w.%+-]{1,64}+@)\.*+([\w%+-][\w.%+-]*+)@" + _EMAIL_DOMAIN.pattern
)
# _EMAIL_WHOLE as a splitter (group 1: the leading dots, group 2: the address): re.split gives
# the addresses and the text between them as strings, whose lengths give the bounds; no
# match object per address, no slice (a third of the cost of finditer for 30k addresses).
_EMAIL_SPLIT = re.compile(
    r"(?<![\w.%+-])(?=[\w.%+-]{1,64}+@)(\.*+)([\w%+-][\w.%+-]*+@" + _EMAIL_DOMAIN.pattern + ")"
)
_DENSE_AT_CHARS = 40
# The local part read backwards from the "@" in the reversed text: 65 characters means too long.
_EMAIL_LOCAL_REVERSED = re.compile(r"[\w.%+-]{1,65}")
# The five compiled with re.ASCII, for ASCII texts: the same matches there (an ASCII
# character is a Unicode word character, digit or letter exactly when it is an ASCII
# one), found 1.5 to 2 times faster (a class is a bitmap, no Unicode lookups).
_EMAIL_SCANS = {
    is_ascii: tuple(re.compile(p.pattern, _A if is_ascii else 0) for p in patterns)
    for is_ascii, patterns in (
        (False, (_EMAIL_AT, _EMAIL_LOCAL_REVERSED, _EMAIL_DOMAIN, _EMAIL_WHOLE, _EMAIL_SPLIT)),
        (True, (_EMAIL_AT, _EMAIL_LOCAL_REVERSED, _EMAIL_DOMAIN, _EMAIL_WHOLE, _EMAIL_SPLIT)),
    )
}
# Anchored token patterns with their literal anchor first, so the regex engine's literal
# search finds candidates (as str.find does) and matching runs in C; the character
# before a match is checked in Python, per match only. A pattern runs only on a text
# holding a character its anchor needs ("-", "_", ...: ``in`` with one character is a
# memchr, 40 times cheaper than a scan) and then its anchor ("_" for gh[pousr]_, as "gh"
# is common in prose).
_GATES = {"sk-": "-", "AKIA": "K", "ASIA": "S", "xox": "x", "AIza": "z", "eyJ": "J"}  # else "_"
_TOKEN_SCANS = tuple(
    (_GATES.get(anchor, "_"), "_" if anchor == "gh" else anchor, pattern) for anchor, pattern in _TOKENS
)
_BEARER_LOWER = re.compile(r"bearer\s+([a-z0-9._~+/-]{16,}=*)", _A)  # on the lower-cased text
_ASSIGNMENT_SCANS = tuple(
    (
        re.sub(r"[^a-z].*", "", name_pattern),
        re.compile(name_pattern + r"\b[\"']?\s*[:=]\s*[\"']?([^\s\"',;\x00]{8,})", _A),
    )
    for name_pattern in (
        r"api[_-]?key",
        r"secret(?:[_-]?key)?",
        r"access[_-]?token",
        r"auth[_-]?token",
        r"password",
        r"passwd",
        r"pwd",
    )
)  # (the literal start of the name, which the lower-cased text must hold; the pattern)

# The character-class map: digit "1", phone/card/IP separator "2", capital "3",
# colon "4", any other character "0" (non-ASCII characters are "?" by then).
_CLASS_MAP = str.maketrans(
    {
        chr(code): (
            "1"
            if chr(code).isdigit()
            else "2"
            if chr(code) in " .-()+"
            else "3"
            if "A" <= chr(code) <= "Z"
            else "4"
            if chr(code) == ":"
            else "0"
        )
        for code in range(128)
    }
)
_SEPARATOR = "\x00"  # joins texts in find_all; no pattern matches across it
_IBAN_START = re.compile("3311")
# Each colon with another within 5 characters (a look-ahead: the next colon is a hint too,
# or an address starting just after a window's match could lose the hint at its first colon).
_IPV6_HINT = re.compile("4(?=[013]{0,4}4)")
_IPV6_WINDOW = 256
_IPV6_DENSE_HINT_CHARS = 16  # a hint every fewer characters than this: one scan of the text
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_TOKEN_BEFORE = _WORD | {"-"}


def _after(text: str, index: int, forbidden: frozenset[str]) -> bool:
    """Whether the character before ``index`` is not in ``forbidden`` (or there is none)."""
    return index == 0 or text[index - 1] not in forbidden


class _Spans:
    """Accepted findings, never overlapping; earlier additions win overlaps.

    A byte per character marks what is taken, so checking and marking a span
    costs its length whatever the number of findings (a 1 MB text can hold
    tens of thousands).
    """

    __slots__ = ("block_ends", "block_starts", "found", "offset", "taken")

    def __init__(self, size: int, offset: int = 0) -> None:
        self.taken = bytearray(size)
        self.offset = offset  # added to the findings' bounds (a window's place in its text)
        self.found: list[Finding] = []
        # Findings added at once by add_disjoint, as sorted bounds (not marked in taken).
        self.block_starts: list[int] = []
        self.block_ends: list[int] = []

    def add(self, kind: str, start: int, end: int, text: str) -> bool:
        """Add a finding unless it is empty or overlaps one already taken; whether it was added."""
        if end <= start or self.taken.find(1, start, end) != -1:
            return False
        if self.block_starts:
            index = bisect_right(self.block_starts, end - 1) - 1
            if index >= 0 and self.block_ends[index] > start:
                return False
        self.taken[start:end] = b"\x01" * (end - start)
        offset = self.offset
        self.found.append(_new_finding(Finding, (kind, start + offset, end + offset, text[start:end])))
        return True

    def add_disjoint(self, kind: str, starts: list[int], ends: list[int], values: Iterable[str]) -> None:
        """Add findings in order, none empty, none overlapping another, before any other.

        The findings are made by C-level maps; their bounds are kept sorted for
        :meth:`add` to check by bisection. ``values`` are the texts at those bounds.
        """
        if self.found:
            raise ValueError("add_disjoint is for the first findings only")
        offset = self.offset
        bounds = (
            (map(add, starts, repeat(offset)), map(add, ends, repeat(offset))) if offset else (starts, ends)
        )
        self.found.extend(map(_new_finding, repeat(Finding), zip(repeat(kind), *bounds, values)))
        self.block_starts, self.block_ends = starts, ends

    def in_order(self) -> list[Finding]:
        """The findings ordered by position."""
        return sorted(self.found, key=_start)


_start = itemgetter(1)  # a Finding's start


class _NativeScan(Protocol):
    """What ``ringd.plugins._scan`` (plugins/_scan.c) offers."""

    ABI: int

    def configure(self, finding_type: type[Finding], kinds: tuple[str, ...], /) -> None: ...

    def find(self, text: str, kinds: int, offset: int, /) -> list[Finding]: ...

    def find_split(self, text: str, kinds: int, sizes: list[int], /) -> list[list[Finding]] | None: ...

    def find_window(
        self, text: str, kinds: int, low: int, high: int, start: int, stop: int, /
    ) -> list[Finding]: ...

    def assign(
        self,
        values: list[str],
        identity: Callable[[str], str],
        known: dict[str, str],
        mapping: dict[str, str],
        supply: list[str],
        /,
    ) -> tuple[list[str], int]: ...

    def interleave(
        self, text: str, findings: list[Finding], replacements: list[str], begin: int, end: int, /
    ) -> str: ...

    def words_in(self, text: str, words: frozenset[str], /) -> frozenset[str]: ...


_new_finding = tuple.__new__  # Finding(...) without the Python frame of its __new__


class Detector:
    """Finds the values of some kinds in a text; construct once, use for every request."""

    __slots__ = ("_mask", "_wanted", "kinds")

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        """Detect ``kinds`` (a subset of :data:`KINDS`).

        Raises:
            ValueError: an unknown kind; the message lists the known ones.
        """
        wanted = list(kinds)
        for kind in wanted:
            if kind not in KINDS:
                raise ValueError(f"unknown PII type {kind!r} (known: {', '.join(KINDS)})")
        self.kinds: tuple[str, ...] = tuple(k for k in KINDS if k in wanted)
        self._wanted = frozenset(self.kinds)
        self._mask = sum(1 << KINDS.index(kind) for kind in self.kinds)  # the native scan's kinds

    def find(self, text: str, offset: int = 0) -> list[Finding]:
        """The findings in ``text``, ordered by position, never overlapping.

        ``offset`` is added to their bounds (``text`` is a window of a longer text).
        The native scanner scans it where it is built (:data:`NATIVE`).
        """
        if NATIVE is not None:
            return NATIVE.find(text, self._mask, offset)
        return self.find_python(text, offset)

    def find_python(self, text: str, offset: int = 0) -> list[Finding]:
        """:meth:`find` by the Python scanner: the reference the native one is held to."""
        wanted = self._wanted
        if not text or not wanted:
            return []
        # One character per character: non-ASCII ones become "?", so offsets still agree.
        plain = text if text.isascii() else text.encode("ascii", "replace").decode("ascii")
        spans = _Spans(len(text), offset)
        if "secret" in wanted:
            _secrets(text, plain, spans)
        if "email" in wanted and "@" in plain:
            _emails(text, plain, spans)
        if wanted.isdisjoint(("credit_card", "iban", "ip_address", "phone")):
            return spans.in_order()
        classes = plain.translate(_CLASS_MAP)
        if "1" not in classes:  # no digit: no card, IBAN, phone number or IPv4 address
            if "ip_address" in wanted and ":" in plain:
                _ipv6(text, plain, classes, spans)
            return spans.in_order()
        clusters = _Clusters(classes) if not wanted.isdisjoint(_DIGIT_KINDS) else _NO_CLUSTERS
        if "credit_card" in wanted:
            _cards(text, plain, clusters, spans)
        if "iban" in wanted:
            for hint in _IBAN_START.finditer(classes):
                index = hint.start()
                if _after(plain, index, _WORD):
                    iban = _IBAN.match(plain, index)
                    if iban and iban_valid(iban.group()):
                        spans.add("iban", index, iban.end(), text)
        if "ip_address" in wanted:
            if "." in plain:
                for start, end in clusters.holding(map(_START, _IPV4_CORE.finditer(plain)), 4):
                    for match in _IPV4.finditer(plain, start, end):
                        spans.add("ip_address", match.start(), match.end(), text)
            if ":" in plain:
                _ipv6(text, plain, classes, spans)
        if "phone" in wanted:
            candidates = [
                match
                for start, end in clusters.with_digits(7)
                for match in _PHONE_LINEAR.finditer(plain, start, end)
            ]
            for match in compress(candidates, map(_PHONE_OK, map(_GROUP, candidates))):
                spans.add("phone", match.start(), match.end(), text)
        return spans.in_order()

    def find_window(self, text: str, low: int, high: int, start: int, stop: int) -> list[Finding]:
        """The findings of ``text[low:high]`` (their bounds in ``text``) that start in
        ``[start, stop)``: :meth:`find` of a window, cut to the part it answers for."""
        if NATIVE is not None:  # as below, without the copies
            return NATIVE.find_window(text, self._mask, low, high, start, stop)
        found = self.find(text[low:high], low)
        first = bisect_left(found, start, key=_start)
        return found[first : bisect_left(found, stop, first, key=_start)]

    def find_all(self, texts: Sequence[str]) -> list[list[Finding]]:
        """The findings of each of ``texts``, like :meth:`find` on each, in one pass.

        The texts are scanned joined by NUL characters, which no finding can
        contain, so the fixed cost of a scan is paid once rather than per text.
        """
        if len(texts) < 2:
            return [self.find(text) for text in texts]
        joined = _SEPARATOR.join(texts)
        if NATIVE is not None:
            split = NATIVE.find_split(joined, self._mask, list(map(len, texts)))  # as below, in C
            return split if split is not None else [self.find(text) for text in texts]
        found = self.find(joined)
        results: list[list[Finding]] = [[] for _ in texts]
        if not found:
            return results
        offsets: list[int] = []
        position = 0
        for text in texts:
            offsets.append(position)
            position += len(text) + 1
        index = 0
        while index < len(found):
            # The findings of one text: those starting before the next text's offset.
            text_index = bisect_right(offsets, found[index].start) - 1
            offset = offsets[text_index]
            bound = offset + len(texts[text_index])
            last = bisect_left(found, bound + 1, index, key=_start)
            if found[last - 1].end > bound:
                # Cannot happen with the patterns above; if one ever reaches across a
                # separator, scanning text by text is still right.
                return [self.find(text) for text in texts]
            results[text_index] = _shifted(found[index:last], -offset)
            index = last
        return results

    def replace(self, text: str, placeholder: Callable[[Finding], str]) -> tuple[str, list[Finding]]:
        """``text`` with each finding replaced by ``placeholder(finding)``, and the findings.

        Returns ``text`` itself (the same object) when nothing was found.
        """
        findings = self.find(text)
        return substitute(text, findings, placeholder), findings


def substitute(text: str, findings: list[Finding], placeholder: Callable[[Finding], str]) -> str:
    """``text`` with each of its ``findings`` replaced by ``placeholder(finding)``, in order.

    Returns ``text`` itself (the same object) when ``findings`` is empty.
    """
    return replaced(text, findings, list(map(placeholder, findings)))


def replaced(text: str, findings: Sequence[Finding], replacements: Sequence[str]) -> str:
    """``text`` with each of its ``findings`` (in order) replaced by the replacement at its index.

    Returns ``text`` itself (the same object) when ``findings`` is empty. The pieces
    are cut and interleaved by C-level maps and slice assignments.
    """
    if not findings:
        return text
    if len(findings) < 8:  # few: a plain loop costs less than building the maps
        pieces: list[str] = []
        position = 0
        for finding, replacement in zip(findings, replacements, strict=True):
            pieces.append(text[position : finding.start])
            pieces.append(replacement)
            position = finding.end
        pieces.append(text[position:])
        return "".join(pieces)
    return _interleaved(text, findings, replacements, 0, len(text))


def _interleaved(
    text: str, findings: Sequence[Finding], replacements: Sequence[str], begin: int, end: int
) -> str:
    """``text[begin:end]`` with its ``findings`` replaced (:func:`replaced` of a stretch)."""
    if NATIVE is not None and type(findings) is list and type(replacements) is list:
        return NATIVE.interleave(text, findings, replacements, begin, end)  # as below, in one copy
    ends = list(map(_END_OF, findings))
    cuts = map(slice, chain((begin,), ends), chain(map(_start, findings), (end,)))
    pieces = [""] * (2 * len(findings) + 1)
    pieces[0::2] = map(text.__getitem__, cuts)
    pieces[1::2] = replacements
    return "".join(pieces)


async def replaced_yielding(
    text: str, findings: Sequence[Finding], replacements: Sequence[str], chunk: int = 8192
) -> str:
    """:func:`replaced`, yielding to the event loop after every ``chunk`` findings."""
    if len(findings) <= chunk:
        return replaced(text, findings, replacements)
    parts: list[str] = []
    position = 0
    for low in range(0, len(findings), chunk):
        part = findings[low : low + chunk]
        # The text from ``position`` to the chunk's last finding, its findings replaced.
        parts.append(_interleaved(text, part, replacements[low : low + chunk], position, part[-1].end))
        position = part[-1].end
        await asyncio.sleep(0)
    parts.append(text[position:])
    return "".join(parts)


# --------------------------------------------------------------------------- big inputs
#
# A scanner runs on the event loop; a plugin's timeout only applies when the plugin
# gives the loop back. Texts longer than a chunk are therefore scanned in windows,
# with ``await asyncio.sleep(0)`` between them: other rings run meanwhile and the
# engine's timeout cancels a scan that runs past its budget at the next window.

SCAN_CHUNK_CHARS = 16_384
"""How many characters a scanner handles between two yields to the event loop (a window
scans :data:`WINDOW_OVERLAP_CHARS` more: 27 % rescanned; 32 Ki would rescan 13 % but doubled
the other rings' p99 while a 4 MB hostile body was scanned, 5 -> 24 ms)."""

DEFAULT_MAX_SCAN_CHARS = 1_048_576
"""The default of the scanners' ``max_scan_chars``: the text they scan per request, at most."""

WINDOW_OVERLAP_CHARS = 4_096
"""How far past its window a finding may run: a longer one (a token over 4 KiB) is cut."""

_WINDOW_CONTEXT_CHARS = 256  # text before a window, for the patterns' look-behinds


async def find_all_yielding(
    detector: Detector, texts: Sequence[str], chunk_chars: int = SCAN_CHUNK_CHARS
) -> list[list[Finding]]:
    """:meth:`Detector.find_all`, yielding to the event loop after every ``chunk_chars`` scanned.

    Short texts are scanned together; a text longer than ``chunk_chars`` is scanned
    window by window (each window sees :data:`WINDOW_OVERLAP_CHARS` past its end,
    so a finding that starts in it is found whole).
    """
    if sum(len(text) for text in texts) <= chunk_chars:
        return detector.find_all(texts)
    results: list[list[Finding]] = [[] for _ in texts]
    batch: list[int] = []
    batched = 0
    for index, text in enumerate(texts):
        if len(text) > chunk_chars:
            results[index] = await _find_windowed(detector, text, chunk_chars)
            continue
        batch.append(index)
        batched += len(text)
        if batched >= chunk_chars:
            for position, found in zip(batch, detector.find_all([texts[i] for i in batch]), strict=True):
                results[position] = found
            batch.clear()
            batched = 0
            await asyncio.sleep(0)
    if batch:
        for position, found in zip(batch, detector.find_all([texts[i] for i in batch]), strict=True):
            results[position] = found
    return results


async def _find_windowed(detector: Detector, text: str, chunk_chars: int) -> list[Finding]:
    findings: list[Finding] = []
    size = len(text)
    start = 0
    while start < size:
        stop = min(size, start + chunk_chars)
        low = max(0, start - _WINDOW_CONTEXT_CHARS)
        # Those starting in [start, stop): before, the previous window's; after, the next's.
        found = detector.find_window(text, low, min(size, stop + WINDOW_OVERLAP_CHARS), start, stop)
        findings += found
        start = max(stop, found[-1].end) if found else stop
        await asyncio.sleep(0)
    return findings


def _shifted(findings: list[Finding], offset: int) -> list[Finding]:
    """``findings`` with ``offset`` added to their bounds (made by C-level maps)."""
    if not offset or not findings:
        return findings
    if len(findings) < 16:
        return [Finding(kind, start + offset, end + offset, value) for kind, start, end, value in findings]
    return list(
        map(
            tuple.__new__,
            repeat(Finding),
            zip(
                map(_KIND, findings),
                map(add, map(_start, findings), repeat(offset)),
                map(add, map(_END_OF, findings), repeat(offset)),
                map(_VALUE, findings),
                strict=True,
            ),
        )
    )


_KIND, _END_OF, _VALUE = itemgetter(0), itemgetter(2), itemgetter(3)


def scan_prefix(texts: Sequence[str], max_chars: int) -> list[str]:
    """``texts`` cut so that together they hold at most ``max_chars`` characters (the first ones)."""
    kept: list[str] = []
    left = max_chars
    for text in texts:
        kept.append(text[:left] if len(text) > left else text)
        left = max(0, left - len(text))
    return kept


async def substitute_yielding(
    text: str, findings: list[Finding], placeholder: Callable[[Finding], str], chunk: int = 8192
) -> str:
    """:func:`substitute`, yielding to the event loop after every ``chunk`` findings."""
    if len(findings) <= chunk:
        return substitute(text, findings, placeholder)
    replacements: list[str] = []
    for low in range(0, len(findings), chunk):
        replacements.extend(map(placeholder, findings[low : low + chunk]))
        await asyncio.sleep(0)
    return await replaced_yielding(text, findings, replacements, chunk)


_DIGIT_KINDS = ("credit_card", "ip_address", "phone")


class _Clusters:
    """The runs of digits and separators with enough digits, as ``(start, end)`` bounds to scan.

    ``end`` is one past the character after the last digit, so lookaheads in the
    patterns see that character; ``start`` is two characters before the first digit
    (a phone number's ``+`` or ``(``: a pattern cannot match from a character there
    that is not a separator, as it would need a digit or separator after it). The
    runs with at least so many digits come from a regex of their own, so a text of
    short numbers (tens of thousands) costs no Python per number.
    """

    __slots__ = ("classes", "digits", "runs")

    def __init__(self, classes: str) -> None:
        self.classes = classes
        self.runs: list[re.Match[str]] | None = None  # the runs with 7+ digits, once asked for
        self.digits: list[int] = []  # their digit counts, once asked for (many runs only)

    def _bounds(self, runs: list[re.Match[str]]) -> tuple[list[int], list[int]]:
        starts = list(map(sub, map(_START, runs), repeat(2)))
        ends = list(map(add, map(_END, runs), repeat(1)))
        if runs:  # runs are 4+ characters apart and in order: only the first and last need a clamp
            starts[0] = max(0, starts[0])
            ends[-1] = min(len(self.classes), ends[-1])
        return starts, ends

    def with_digits(self, least: int) -> list[tuple[int, int]]:
        """The bounds of the clusters with ``least`` (7 or more) digits or more, in order."""
        if self.runs is None:
            self.runs = list(_CLUSTERS_WITH[7].finditer(self.classes))
        runs = self.runs
        if len(runs) < 32:  # few: a plain loop costs less than building the maps
            size = len(self.classes)
            return [
                (max(0, run.start() - 2), min(size, run.end() + 1))
                for run in runs
                if least <= 7 or run.group().count("1") >= least
            ]
        if least > 7:
            if not self.digits:
                self.digits = list(map(str.count, map(_GROUP, runs), repeat("1")))
            runs = list(compress(runs, map(least.__le__, self.digits)))
        starts, ends = self._bounds(runs)
        return list(zip(starts, ends, strict=True))

    def holding(self, positions: Iterable[int], least: int) -> list[tuple[int, int]]:
        """The bounds of the clusters with ``least`` digits or more holding one of ``positions``."""
        wanted = list(positions)
        if not wanted:
            return []
        runs = list(_CLUSTERS_WITH[least].finditer(self.classes))
        starts, ends = self._bounds(runs)
        held: dict[int, None] = {}
        # Each position's cluster by a C-level map of bisections (positions can be many).
        for position, after in zip(wanted, map(bisect_right, repeat(starts), wanted), strict=True):
            if after and position < ends[after - 1]:
                held[after - 1] = None
        return [(starts[index], ends[index]) for index in held]


# Runs of digits and separators with n digits or more (from the first digit to the last).
# (``[12]*1`` runs to the end and steps back to the last digit: sre's fast single-character
# repeat, where a repeated group would cost a step per digit of a long run)
# A digit right after a digit is not a run's start: when the start fails, so do the rest.
_CLUSTERS_WITH = {least: re.compile(f"1(?<!11)(?:2*1){{{least - 1}}}(?:[12]*1)?") for least in (4, 7)}
_NO_CLUSTERS = _Clusters("")
_START = re.Match.start
_END = re.Match.end


def _secrets(text: str, plain: str, spans: _Spans) -> None:
    _private_keys(text, plain, spans)
    for char, anchor, pattern in _TOKEN_SCANS:
        if char not in plain or anchor not in plain:
            continue
        for match in pattern.finditer(plain):
            if _after(plain, match.start(), _TOKEN_BEFORE):
                spans.add("secret", match.start(), match.end(), text)
    lowered = plain.lower()  # ASCII: same length, same offsets
    if "bearer" in lowered:
        for match in _BEARER_LOWER.finditer(lowered):
            if _after(plain, match.start(), _WORD):
                spans.add("secret", match.start(1), match.end(1), text)
    if not _assignment_possible(lowered):
        return
    for name, pattern in _ASSIGNMENT_SCANS:
        if name not in lowered:
            continue
        for match in pattern.finditer(lowered):
            if _after(plain, match.start(), _WORD) and _assignment_ok(match.group(1)):
                spans.add("secret", match.start(1), match.end(1), text)


_ASCII_SPACE = frozenset(" \t\n\r\f\v")  # \\s with re.ASCII
_NAME_ENDS = frozenset("ytnd")  # the last letters of the names in _ASSIGNMENT_SCANS


def _assignment_possible(lowered: str) -> bool:
    """Whether a ":" or "=" in ``lowered`` follows (a quote and spaces after) the end of a name.

    Every assignment pattern needs one; prose seldom has one ("Note: ...", "9:00").
    Gives up (True) after many separators or a long run of spaces.
    """
    seen = 0
    for separator in ":=":
        index = lowered.find(separator)
        while index != -1:
            seen += 1
            if seen > 32:
                return True
            end = index
            while end > 0 and lowered[end - 1] in _ASCII_SPACE:
                end -= 1
                if index - end > 64:
                    return True
            if end > 0 and lowered[end - 1] in "\"'":
                end -= 1
            if end > 0 and lowered[end - 1] in _NAME_ENDS:
                return True
            index = lowered.find(separator, index + 1)
    return False


def _private_keys(text: str, plain: str, spans: _Spans) -> None:
    """PEM private key blocks: to their END line, or over the base64 that follows."""
    if "-----BEGIN" not in plain:
        return
    end_line = -2  # where the next "-----END" is (-1: there is none), found once per stretch
    # The heads by the regex's literal search: no Python per "-----BEGIN" that heads nothing.
    # Each search starts where the last block ended, not after the last head: a head inside
    # a block ("...KEY-----BEGIN ... KEY-----") can end after the start of the next one.
    head = _PEM_HEAD.search(plain)
    while head is not None:
        index = head.start()
        if end_line != -1 and end_line < head.end():
            end_line = plain.find("-----END", head.end())
        end = -1
        if end_line != -1 and plain.find(_SEPARATOR, head.end(), end_line) == -1:
            tail = _PEM_TAIL.match(plain, end_line)
            end = tail.end() if tail else -1
        if end == -1:
            body = _PEM_BODY.match(plain, head.end())
            end = body.end() if body else head.end()
        spans.add("secret", index, end, text)
        head = _PEM_HEAD.search(plain, end)


def _emails(text: str, plain: str, spans: _Spans) -> None:
    # Internationalised addresses (jürgen@müller.de) are matched on the original text.
    size = len(text)
    email_at, local_reversed, email_domain, email_whole, email_split = _EMAIL_SCANS[plain is text]
    if text.count("@") * _DENSE_AT_CHARS > size:
        # Perhaps dense: the candidates counted by findall (a list of the one cached "@"
        # string, no match object per "@").
        count = len(email_at.findall(text))
        if not count:
            return
        if count * _DENSE_AT_CHARS > size:
            _dense_emails(text, spans, email_whole, email_split)
            return
    ats = list(email_at.finditer(text))
    # The local part is read backwards: from a reversed copy of the text when there are
    # many "@", else from the 65 characters before each one, reversed.
    reversed_text = text[::-1] if len(ats) > 16 else ""
    for at_match in ats:
        at = at_match.start()
        if reversed_text:
            local = local_reversed.match(reversed_text, size - at, size - at + 65)
        else:
            local = local_reversed.match(text[max(0, at - 65) : at][::-1])
        if local is None or local.end() - local.start() > 64:
            continue  # a local part longer than 64 characters: not an address
        domain = email_domain.match(text, at + 1)
        if domain is None:
            continue
        start = at - (local.end() - local.start())
        while start < at and text[start] == ".":
            start += 1
        if start < at:
            spans.add("email", start, domain.end(), text)


def _dense_emails(
    text: str,
    spans: _Spans,
    email_whole: re.Pattern[str],
    email_split: re.Pattern[str],
) -> None:
    """:func:`_emails` by one scan of :data:`_EMAIL_WHOLE`: the same addresses.

    Each "@" of _emails has one candidate, from the start of the run of local-part
    characters before it; the scan tries those starts in order. Two candidates
    overlap only when one's local part is the other's domain, and then the later
    one is refused if the earlier was taken; if the earlier was refused (it overlaps
    a secret), the scan goes on right after its "@".
    """
    position = 0
    search = email_whole.search
    if not spans.found:  # nothing to overlap: every address found is taken
        pieces = email_split.split(text)  # between, dots, address, between, ..., between
        bounds = list(accumulate(map(len, pieces), initial=0))
        spans.add_disjoint("email", bounds[2:-1:3], bounds[3:-1:3], pieces[2::3])
        return
    match = search(text)
    while match is not None:
        start, end = match.start(1), match.end()
        position = end if spans.add("email", start, end, text) else match.end(1) + 1
        match = search(text, position)


def _ipv6(text: str, plain: str, classes: str, spans: _Spans) -> None:
    size = len(plain)
    searched_to = -1
    # The hints' positions by C-level maps; Python only visits those past what is searched.
    hints = list(map(_START, _IPV6_HINT.finditer(classes)))
    if len(hints) * _IPV6_DENSE_HINT_CHARS > size:
        # Hints every few characters: one scan of the whole text costs less than the windows
        # (the same addresses: the windows find what this scan finds, a test holds them to it).
        matches = list(_IPV6.finditer(plain))
        for address in compress(matches, map(_ipv6_ok, map(_GROUP, matches))):
            spans.add("ip_address", address.start(), address.end(), text)
        return
    index = -1
    matched_to = 0  # the end of the last match: as for one scan, the next starts there or later
    while True:
        index = bisect_left(hints, searched_to, index + 1)  # the next hint, not before searched_to
        if index == len(hints):
            return
        colon = hints[index]
        # An address is at most 39 characters and has at most 4 before its first colon,
        # so a window that finds none also rules out addresses starting up to 44
        # characters before its end.
        window_end = min(size, colon + _IPV6_WINDOW)
        start = max(matched_to, colon - 5)
        match = _IPV6.search(plain, start, window_end)
        while match is not None and match.end() == window_end < size and match.start() + 64 > window_end:
            # Cut by the window's end: again with room for a whole address after its start.
            window_end = min(size, match.start() + 64)
            match = _IPV6.search(plain, start, window_end)
        if match is None:
            searched_to = window_end - 44
            continue
        searched_to = colon + 1
        end = matched_to = match.end()
        searched_to = max(searched_to, end)
        if end < size and (plain[end] in _WORD or plain[end] == ":"):
            continue  # cut short by the window: part of something longer
        if _ipv6_ok(match.group()):
            spans.add("ip_address", match.start(), end, text)


PLACEHOLDER_PATTERN = re.compile(r"\[(" + "|".join(k.upper() for k in KINDS) + r")_(\d+)\]")
"""Matches the placeholders ``pii_redactor`` writes: ``[EMAIL_1]``, ``[CREDIT_CARD_2]``, ..."""


PLACEHOLDERS = re.compile(r"\[(?:" + "|".join(k.upper() for k in KINDS) + r")_\d+\]")
""":data:`PLACEHOLDER_PATTERN` without its groups, for ``findall``."""


def placeholder_for(kind: str, number: int) -> str:
    """The placeholder for the ``number``-th distinct value of ``kind``: ``[EMAIL_1]``."""
    return f"[{kind.upper()}_{number}]"


_NATIVE_ABI = 2
"""The ``ABI`` of plugins/_scan.c this module is written for (``SCAN_ABI`` there, bumped
with it whenever a native function's contract changes)."""
_NATIVE_FUNCTIONS = tuple(
    name for name, member in vars(_NativeScan).items() if not name.startswith("_") and callable(member)
)
"""The functions :class:`_NativeScan` declares, in its order."""


def _checked(module: ModuleType) -> _NativeScan | None:
    """``module`` configured, if it is the native scan this code is written for; else None,
    with a warning (an extension built from an older ``_scan.c``, as after ``git pull``
    without a rebuild, would fail on some texts or lack a function)."""
    abi = getattr(module, "ABI", None)
    missing = [name for name in _NATIVE_FUNCTIONS if not callable(getattr(module, name, None))]
    if abi != _NATIVE_ABI or missing:
        logging.getLogger("plugin.pii_scan").warning(
            "%s is stale (ABI %s, this code needs %s%s): the slower Python scanner is used;"
            " rebuild it with `make venv` (or `pip install -e .`)",
            getattr(module, "__file__", module.__name__),
            abi,
            _NATIVE_ABI,
            f"; missing {', '.join(missing)}" if missing else "",
        )
        return None
    native = cast(_NativeScan, module)
    native.configure(Finding, KINDS)
    return native


def _native_scanner() -> _NativeScan | None:
    """The native scan (``ringd.plugins._scan``), unless not built, stale or turned off.

    ``RINGD_PURE_PYTHON_SCAN=1`` keeps the Python scanner (tests compare the two).
    """
    if os.environ.get("RINGD_PURE_PYTHON_SCAN") == "1":
        return None
    try:
        from ringd.plugins import _scan
    except ImportError:  # built without a C compiler: the Python scanner does it all
        return None
    return _checked(_scan)


NATIVE: _NativeScan | None = _native_scanner()
"""The native scanner :meth:`Detector.find` uses, or None (the Python one)."""
