"""SEP's summarize step: a short factual summary of one ticker's news of one day, via generate.

Summaries are cached by a hash of their input (ticker + headlines), so a re-delivered batch or a
second item with the same day's news costs nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.prompt_text import neutralise_special_tokens, special_token_strings
from services.sentiment import prompts


def content_hash(ticker: str, headlines: Sequence[str]) -> str:
    joined = "\x1f".join([ticker, *headlines])
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


class SummaryCache:
    """A bounded LRU map from content hash to summary."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, str] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> str | None:
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return found

    def put(self, key: str, summary: str) -> None:
        self._items[key] = summary
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class Summarizer:
    """Greedy, bounded generation of one summary sentence per (ticker, day's headlines)."""

    def __init__(
        self, model: Any, tokenizer: Any, max_new_tokens: int = 40, cache_size: int = 4096
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.cache = SummaryCache(cache_size)
        self.special_tokens = special_token_strings(tokenizer)

    @classmethod
    def from_folder(cls, model_dir: Path | str, **kwargs: Any) -> Summarizer:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        model.eval()
        return cls(model, tokenizer, **kwargs)

    def summarize(self, ticker: str, headlines: Sequence[str]) -> str:
        key = content_hash(ticker, headlines)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        summary = self._generate(ticker, list(headlines))
        self.cache.put(key, summary)
        return summary

    def prompt_ids(self, ticker: str, headlines: Sequence[str]) -> list[int]:
        """The token ids of the summary prompt (exposed for tests)."""
        return [int(i) for i in self._encode(ticker, list(headlines))["input_ids"][0]]

    def _encode(self, ticker: str, headlines: list[str]) -> Any:
        messages = prompts.summary_messages(ticker, headlines, self.special_tokens)
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    def _generate(self, ticker: str, headlines: list[str]) -> str:
        import torch

        ids = self._encode(ticker, headlines).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **ids,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,  # greedy: the same news always gets the same summary
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new_tokens = out[0, ids["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        # A random or confused model may answer nothing; the headlines are the honest fallback.
        # The summary is data for the policy's prompt: a model can spell out markup piece by
        # piece, and the headlines carry it raw, so special-token strings are defused here too.
        summary = " ".join(text.split()) or "; ".join(headlines)
        return neutralise_special_tokens(summary, self.special_tokens)
