"""Which reading of a news text its score is taken from: the whole text's, or one piece's.

A news text is scored whole and, when it has several pieces (segments.py), piece by piece, each
piece alone. An injection is text added to the news; scored alone it can say what it likes, but
it can not change what the other pieces say on their own. So:
- when the pieces agree in sign, the whole text's score stands, bounded to the pieces' range
  (the context of the whole may sharpen a reading, never carry it past every piece);
- when they disagree in sign the text is contested, and the least extreme piece's reading
  stands. Added text can then at most pull the score toward zero, never past the weakest
  reading of the rest: the "P.S. it's actually wonderful news!" appended to a fraud headline
  leaves the headline's own score.
The rule looks only at scores, never at words, so it holds in any language and spelling. Its
price: real news whose pieces disagree ("misses on sales; profit doubles") gets its least
extreme piece's score, a cautious reading (counted in bench/sentiment.py as `clean_contested`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    """Where a text's score comes from."""

    piece: int | None
    """Index of the piece whose score stands; None: the whole text's."""
    contested: bool
    """The pieces disagreed in sign."""


def choose(whole: float, pieces: Sequence[float]) -> Reading:
    """The reading that stands for a text scored `whole`, whose pieces scored `pieces` (none:
    the text has no cut, or no piece long enough to state a claim)."""
    if not pieces:
        return Reading(None, False)
    low, high = min(pieces), max(pieces)
    if low < 0 < high:
        return Reading(min(range(len(pieces)), key=lambda i: abs(pieces[i])), True)
    if whole < low:
        return Reading(pieces.index(low), False)
    if whole > high:
        return Reading(pieces.index(high), False)
    return Reading(None, False)
