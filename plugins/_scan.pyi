"""The native scan of :mod:`ringd.plugins._detect` (plugins/_scan.c), for ASCII texts."""

from ringd.plugins._detect import Finding

def configure(finding_type: type[Finding], kinds: tuple[str, ...], /) -> None:
    """The named tuple type of a finding and the kind names, in precedence order."""

def find(text: str, kinds: int, offset: int, /) -> list[Finding]:
    """``Detector.find`` of an ASCII ``text``: ``kinds`` a mask (bit i: ``KINDS[i]``)."""
