"""A news text cut into the pieces it is also scored by: sentences, lines, asides, markup.

The cut follows the text's form, never its wording: sentence boundaries (pysbd, a rule-based
segmenter that knows abbreviations such as `Inc.`, `U.S.` and `P.S.`, instead of a hand-written
regex), line breaks, bracketed and dash-separated asides, Markdown rules and headings, HTML
comments and defused special tokens (`‹im_end›`, services/common/prompt_text.py). A piece of
fewer than `MIN_WORDS` words ("Reuters", "NEWS", "assistant: positive") states no claim of its
own: it stays in the whole text but is not scored as a piece, so it can neither bound the whole
nor win a contest.
"""

from __future__ import annotations

import re
from functools import cache

import pysbd

MIN_WORDS = 3
# Line breaks, bracketed asides, spaced dashes, Markdown rules and headings, HTML comments and
# defused special tokens end a piece wherever a sentence would not.
_FORM_BREAK = re.compile(
    r"\n+|[()\[\]{}]|\s[-\u2013\u2014]{1,2}\s|#{2,}|[*=_~\-]{3,}|<!--|-->|‹[^‹›\n]{0,40}›"
)
# Trailing punctuation that does not change a claim: "X fell." and "X fell" score alike.
_TRAILING = " \t.,;:"


@cache
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def _sentences(text: str) -> list[str]:
    return [str(s) for s in _segmenter().segment(text)]


def cut(text: str) -> list[str]:
    """Every piece of `text`, short ones included, in order (tidied, none empty)."""
    found: list[str] = []
    for part in _FORM_BREAK.split(text):
        if part.strip():
            found.extend(tidy(s) for s in _sentences(part))
    return [p for p in found if p]


def pieces(text: str) -> list[str]:
    """The pieces of `text` that are scored on their own: none when the text has no cut (the
    whole is its only reading), else those of at least `MIN_WORDS` words."""
    found = cut(text)
    if len(found) < 2:
        return []
    return [p for p in found if len(p.split()) >= MIN_WORDS]


def tidy(text: str) -> str:
    """`text` on one line, without outer spaces or claim-neutral trailing punctuation."""
    return " ".join(text.split()).rstrip(_TRAILING).lstrip(" ,;:")
