"""Data text made safe to put into a prompt: a tokenizer's special-token strings are defused.

A tokenizer matches its special tokens (`<|im_start|>`, `<|im_end|>`, ...) in raw text before
anything else, so news that carries chat markup would be encoded as real control tokens and
could end the user turn and open an assistant turn of its own. Every place where data text
enters a prompt (the sentiment score and summary prompts, the stored summary, the policy's state
block) passes it through `neutralise_special_tokens` first.

Ordinary text is returned unchanged, character for character: only text that holds a special
token's string changes, so rendered prompts (and the day caches and artifacts keyed by them)
stay valid. A defused token keeps its name between single guillemets (`<|im_end|>` becomes
`‹im_end›`), so a reader still sees that the source carried markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# SmolLM2's special tokens (the default policy and sentiment model), written out because the
# state block is rendered by services that load no tokenizer (the simulator, the trainer's env).
# tests/unit/test_prompt_text.py checks this list against the real tokenizer's.
SMOLLM2_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
)
# Chat-control markup of other model families in the `<|name|>` form (ChatML, Llama 3, Phi):
# never ordinary news, and a special token in whichever of those tokenizers the policy is given.
_PIPE_MARKUP = r"<\|[^<>|\s]{1,40}\|>"
# Passes before falling back to plain removal; two are enough unless a replacement is itself a
# special token of some tokenizer (then removal, which always shortens the text, ends it).
_MAX_PASSES = 4


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Every special token's text in a Hugging Face tokenizer (the added tokens marked special
    as well as the named ones: SmolLM2 marks 17 special, names only 3)."""
    named = set(getattr(tokenizer, "all_special_tokens", []))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    named.update(tok.content for tok in added.values() if getattr(tok, "special", False))
    return tuple(sorted(t for t in named if t))


def _pattern(special_tokens: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so a token that contains another is matched whole.
    literal = sorted({t for t in special_tokens if t}, key=len, reverse=True)
    return re.compile("|".join([_PIPE_MARKUP, *map(re.escape, literal)]))


_DEFAULT = _pattern(SMOLLM2_SPECIAL_TOKENS)


def _defused(match: re.Match[str]) -> str:
    name = match.group(0).strip("<>|[]/ ")
    return f"‹{name}›" if name else " "


def neutralise_special_tokens(text: str, special_tokens: Iterable[str] | None = None) -> str:
    """`text` with every special token's string defused (see the module docstring).

    `special_tokens` are a tokenizer's (`special_token_strings`); by default SmolLM2's. The
    `<|name|>` markup of other chat formats is defused either way. Repeated until no special
    string is left, because defusing one can join its neighbours into another
    (`<|im_<|x|>start|>`)."""
    pattern = _DEFAULT if special_tokens is None else _pattern(special_tokens)
    for _ in range(_MAX_PASSES):
        if not pattern.search(text):
            return text
        text = pattern.sub(_defused, text)
    while pattern.search(text):
        text = pattern.sub("", text)
    return text
