"""The native scan of :mod:`ringd.plugins._detect` (plugins/_scan.c)."""

from ringd.plugins._detect import Finding

def configure(finding_type: type[Finding], kinds: tuple[str, ...], /) -> None:
    """The named tuple type of a finding and the kind names, in precedence order."""

def find(text: str, kinds: int, offset: int, /) -> list[Finding]:
    """``Detector.find`` of ``text``: ``kinds`` a mask (bit i: ``KINDS[i]``)."""

def find_split(text: str, kinds: int, sizes: list[int], /) -> list[list[Finding]] | None:
    """:meth:`find` of texts of ``sizes`` joined by one character each, per text (their own
    bounds); None when a finding reaches past the end of its text. ValueError unless the
    sizes add up to the text (one character between each); OverflowError (:meth:`find`)
    when ``offset`` plus the text's length is past the largest index."""
