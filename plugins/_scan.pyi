"""The native scan of :mod:`ringd.plugins._detect` (plugins/_scan.c)."""

from collections.abc import Callable

from ringd.plugins._detect import Finding

ABI: int
"""The version of the functions' contracts (``_detect._NATIVE_ABI`` must equal it)."""

def configure(finding_type: type[Finding], kinds: tuple[str, ...], /) -> None:
    """The named tuple type of a finding and the kind names, in precedence order."""

def find(text: str, kinds: int, offset: int, /) -> list[Finding]:
    """``Detector.find`` of ``text``: ``kinds`` a mask (bit i: ``KINDS[i]``)."""

def find_split(text: str, kinds: int, sizes: list[int], /) -> list[list[Finding]] | None:
    """:meth:`find` of texts of ``sizes`` joined by one character each, per text (their own
    bounds); None when a finding reaches past the end of its text. ValueError unless the
    sizes add up to the text (one character between each); OverflowError (:meth:`find`)
    when ``offset`` plus the text's length is past the largest index."""

def find_window(text: str, kinds: int, low: int, high: int, start: int, stop: int, /) -> list[Finding]:
    """The findings of ``text[low:high]`` (their bounds in ``text``) that start in ``[start, stop)``:
    :meth:`find` of the window, cut, without copying it. ValueError unless
    ``0 <= low <= high <= len(text)``."""

def assign(
    values: list[str],
    identity: Callable[[str], str],
    known: dict[str, str],
    mapping: dict[str, str],
    supply: list[str],
    /,
) -> tuple[list[str], int]:
    """``_Masker._of_kind`` of pii_redactor: the placeholder of each of ``values`` (all of
    one kind), and how many of ``supply`` were taken. ``known`` maps ``identity(value)`` to
    its placeholder; each new identity, in order of first appearance, takes the next of
    ``supply`` (ValueError when it runs out); ``mapping`` takes each placeholder's first
    value. An exception from ``identity`` leaves ``known`` and ``mapping`` part done."""

def interleave(text: str, findings: list[Finding], replacements: list[str], begin: int, end: int, /) -> str:
    """``text[begin:end]`` with each of ``findings`` (in order, within it) replaced by the
    replacement at its index. ValueError for findings out of order or outside the stretch."""

def words_in(text: str, words: frozenset[str], /) -> frozenset[str]:
    """The members of ``words`` (at most 128, each ASCII; TypeError otherwise) that occur in
    ``text`` as a whole word: a maximal run of ``[A-Za-z0-9_]``, any other character,
    non-ASCII ones included, separating."""
