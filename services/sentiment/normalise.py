"""News text normalised before the sentiment model reads it: one spelling for what looks alike.

Tricks that hide words from a reader or a filter change code points, not what the model is
shown to mean, so they are undone by form, whatever the words are:
- NFKC folds compatibility forms (fullwidth `Ａｎｓｗｅｒ`, ligatures, superscripts) to plain ones;
- invisible format characters (zero-width space and joiners, soft hyphen, bidi controls: the
  Unicode category Cf) are removed, other control characters become spaces;
- a word that mixes Latin letters with look-alikes from another script (`Ignоrе` with Cyrillic
  `о`, `е`) gets the Latin letters they imitate (Unicode TR39 confusables, from the
  `confusable-homoglyphs` package rather than a hand-kept table); a word wholly in another
  script is left alone, so real Cyrillic or Greek news is not touched;
- the tokenizer's special-token strings and the prompt's fence markers are defused, so the text
  can neither open a chat turn nor close its fence.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from confusable_homoglyphs import confusables

from services.common.prompt_text import neutralise_special_tokens

# The prompt's own fence markers (services/sentiment/prompts.py) and their bare halves; they
# become line breaks, which end a piece (segments.py) as the markup ended the news.
_FENCE_MARK = re.compile(r"<<<\s*NEWS|NEWS\s*>>>|<<<|>>>", re.IGNORECASE)
_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"[^\S\n]+")


def normalise(text: str, special_tokens: Iterable[str] | None = None) -> str:
    """`text` in one canonical spelling, safe to place between the fences (module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(_visible(ch) for ch in text)
    text = _WORD.sub(lambda m: _latinised(m.group(0)), text)
    text = neutralise_special_tokens(text, special_tokens)
    text = _FENCE_MARK.sub("\n", text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _visible(ch: str) -> str:
    category = unicodedata.category(ch)
    if category == "Cf":
        return ""
    if category == "Cc" and ch != "\n":
        return " "
    return ch


def _latinised(word: str) -> str:
    """A mixed-script word with its look-alike letters replaced by the Latin ones."""
    if word.isascii() or not confusables.is_mixed_script(word):
        return word
    found = confusables.is_confusable(word, greedy=True, preferred_aliases=["latin"]) or []
    swap = {
        hit["character"]: hit["homoglyphs"][0]["c"]
        for hit in found
        if hit["homoglyphs"] and len(hit["homoglyphs"][0]["c"]) == 1
    }
    return "".join(swap.get(ch, ch) for ch in word)
