"""``StreamText``: the text a streaming POST_FLIGHT plugin's ``on_chunk`` is given."""

from __future__ import annotations


class StreamText(str):
    """A ``str`` with where it sits in the stream; plain ``str`` code works on it unchanged.

    Attributes:
        choice: The choice index (``choices[].index``) the text belongs to.
        final: True on the last call for this text: the stream ended, or a tool-call,
            refusal or finish delta of this choice follows. Then nothing more comes
            after the text, so a pattern touching its end is complete; when False,
            the text's last ``stream_holdback_chars`` characters will be shown
            again (as this call returned them) with what follows.
    """

    # A str subclass cannot have non-empty __slots__: the two attributes live in __dict__.
    choice: int
    final: bool

    def __new__(cls, text: str, *, choice: int = 0, final: bool = True) -> StreamText:
        """Make one; ringd does this, plugins and tests may too."""
        made = super().__new__(cls, text)
        made.choice = choice
        made.final = final
        return made
