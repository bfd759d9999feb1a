"""Sentiment scorers: `SentimentScorer.score(texts) -> list[Score]`, importable on its own.

- `LLMScorer`: any local Hugging Face causal-LM folder (default SmolLM2-135M-Instruct). The score
  is P(positive) - P(negative), read from the next-token logits over the label words after an
  instruction prompt; nothing is generated or parsed. A text with several pieces is also scored
  piece by piece, and agreement.py picks the reading that stands (the injection defence:
  prompts.py).
- `LexiconScorer`: VADER (vaderSentiment), the baseline and the fallback.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.prompt_text import special_token_strings
from services.sentiment import prompts
from services.sentiment.agreement import choose
from services.sentiment.normalise import normalise
from services.sentiment.segments import pieces, tidy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """The sentiment of one text."""

    sentiment: float
    """P(positive) - P(negative), in [-1, 1]."""
    probabilities: dict[str, float] = field(default_factory=dict)
    """Per label word: positive, negative, neutral."""
    contested: bool = False
    """The text's pieces disagreed in sign; the least extreme piece's reading stands."""

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


class SentimentScorer(ABC):
    """Scores texts; `name` and `version` identify the model in every output."""

    name: str
    version: str

    @abstractmethod
    def score(self, texts: Sequence[str]) -> list[Score]:
        """One Score per text, in order."""


class LexiconScorer(SentimentScorer):
    """VADER: compound score as the sentiment, its pos/neg/neu shares as the probabilities."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()
        self.name = "vader"
        from importlib.metadata import version

        self.version = f"vaderSentiment-{version('vaderSentiment')}"

    def score(self, texts: Sequence[str]) -> list[Score]:
        out = []
        for text in texts:
            s = self._vader.polarity_scores(text)
            probs = {"positive": s["pos"], "negative": s["neg"], "neutral": s["neu"]}
            out.append(Score(float(s["compound"]), probs))
        return out


@dataclass
class LLMOptions:
    """How the LLM scorer prompts and batches."""

    batch_size: int = 16
    few_shot: bool = True
    """Put the worked examples of prompts.FEW_SHOT before the text."""
    calibrate: bool = False
    """Divide label probabilities by those of content-free inputs (contextual calibration).
    Off by default: on the labelled headlines it lowered SmolLM2's accuracy (docs/news.md)."""
    max_text_chars: int = 1000
    threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    prefix_cache: bool = True
    """Run the shared prompt prefix once and reuse its keys/values; off runs every full prompt
    (the baseline bench/sentiment.py compares against; scores are the same either way)."""
    device: str = "auto"
    """`auto` (cuda when present, else cpu), `cpu`, `cuda` or `cuda:N`."""
    by_pieces: bool = True
    """Also score a text's pieces and let agreement.py pick the reading (the injection
    defence); off scores the whole text only (the baseline bench/sentiment.py compares)."""


# Content-free inputs for calibration (Zhao et al. 2021, "Calibrate before use").
_CONTENT_FREE = ("N/A", "", "Company news.")


class LLMScorer(SentimentScorer):
    """Label-word next-token probabilities from a causal LM after the fenced prompt."""

    def __init__(self, model_dir: Path | str, options: LLMOptions | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.options = options or LLMOptions()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no model folder at {self.model_dir} (config.json missing); "
                "run `rlmf models prepare` or set RLMF_SENTIMENT_MODEL_DIR"
            )
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        self.model.to(self.device).eval()  # type: ignore[arg-type]  # transformers stub wraps .to
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.special_tokens = special_token_strings(self.tokenizer)
        self.name = self.model_dir.name
        self.version = model_version(self.model_dir)
        self.label_ids = [self._label_token(label) for label in prompts.LABELS]
        self._build_prefix_cache()
        self._prior: Any = None
        if self.options.calibrate:
            self._prior = self._label_probs(list(_CONTENT_FREE)).mean(dim=0)
        log.info("loaded %s (%s) in %.1fs", self.name, self.version, time.perf_counter() - started)

    def _label_token(self, label: str) -> int:
        # The answer starts right after "assistant\n", so the label's first token has no space.
        ids = self.tokenizer.encode(label, add_special_tokens=False)
        return int(ids[0])

    def prompt(self, text: str) -> str:
        """The full prompt string for `text` as a whole (exposed for tests and docs)."""
        return self._prefix + self._suffix(self.data_parts(text)[0])

    def data_parts(self, text: str) -> list[str]:
        """What of `text` enters prompts: the normalised whole, then its pieces (segments.py),
        each scored alone."""
        whole = normalise(text[: self.options.max_text_chars], self.special_tokens)
        return [tidy(whole), *(pieces(whole) if self.options.by_pieces else [])]

    def _split_prompt(self) -> tuple[str, str]:
        """The prompt around the text: the part before it is the same for every text."""
        marker = "TEXTSLOT"
        messages = prompts.score_messages(marker, few_shot=self.options.few_shot)
        rendered = str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
        at = rendered.rindex(marker)
        return rendered[:at], rendered[at + len(marker) :]

    @property
    def prefix_tokens(self) -> int:
        """Tokens in the shared prefix (system prompt and examples) every text reuses."""
        return self._prefix_len

    def suffix_tokens(self, text: str) -> int:
        """Tokens `text` adds after the shared prefix: its fenced parts (the whole and any
        pieces) and the answer cue of each."""
        return sum(
            len(self.tokenizer.encode(self._suffix(part), add_special_tokens=False))
            for part in self.data_parts(text)
        )

    def _suffix(self, data: str) -> str:
        """The prompt after the shared prefix for one normalised data part."""
        return data + self._tail

    def _build_prefix_cache(self) -> None:
        """Run the shared prefix (system prompt, examples) once; every batch reuses its cache.
        With the few-shot prefix this cuts the tokens per item by about 5x."""
        import torch

        self._prefix, self._tail = self._split_prompt()
        ids = self.tokenizer(self._prefix, return_tensors="pt", add_special_tokens=False)
        ids = ids.to(self.device)
        with torch.inference_mode():
            out = self.model(**ids, use_cache=True)
        self._prefix_len = int(ids["input_ids"].shape[1])
        self._prefix_kv = [(layer.keys, layer.values) for layer in out.cache.layers]

    def _prefix_cache(self, n: int) -> Any:
        """A fresh cache holding the prefix for `n` rows (expanded views; updates concatenate
        into new tensors, so the stored prefix is never modified)."""
        from transformers import DynamicCache

        rows = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self._prefix_kv]
        return DynamicCache(ddp_cache_data=rows, config=self.model.config)

    def _label_probs(self, texts: list[str]) -> Any:
        """Softmax over the label words' next-token logits, shape (len(texts), len(LABELS));
        `texts` are normalised data parts (`data_parts`)."""
        if not self.options.prefix_cache:
            return self._label_probs_uncached(texts)
        import torch

        n = len(texts)
        # Left padding puts every row's last real token at the end, so only one position's
        # logits are computed (logits_to_keep=1); pads sit between prefix and text, masked out.
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(
            [self._suffix(t) for t in texts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(self.device)
        mask = torch.cat(
            [
                torch.ones(
                    n, self._prefix_len, dtype=enc["attention_mask"].dtype, device=self.device
                ),
                enc["attention_mask"],
            ],
            dim=1,
        )
        positions = self._prefix_len + enc["attention_mask"].cumsum(dim=1) - 1
        cache = self._prefix_cache(n)
        with torch.inference_mode():
            logits = self.model(
                input_ids=enc["input_ids"],
                attention_mask=mask,
                position_ids=positions.clamp(min=0),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
        rows = logits[:, -1, self.label_ids]
        return torch.softmax(rows.float(), dim=-1).cpu()

    def _label_probs_uncached(self, texts: list[str]) -> Any:
        """As `_label_probs`, running every full prompt from its first token."""
        import torch

        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(
            [self._prefix + self._suffix(t) for t in texts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(self.device)
        positions = (enc["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(**enc, position_ids=positions, logits_to_keep=1).logits
        return torch.softmax(logits[:, -1, self.label_ids].float(), dim=-1).cpu()

    def score(self, texts: Sequence[str]) -> list[Score]:
        parts = [self.data_parts(text) for text in texts]
        rows = self._score_rows([part for group in parts for part in group])
        out: list[Score] = []
        at = 0
        for group in parts:
            whole, alone = rows[at], rows[at + 1 : at + len(group)]
            at += len(group)
            reading = choose(whole.sentiment, [p.sentiment for p in alone])
            chosen = whole if reading.piece is None else alone[reading.piece]
            out.append(Score(chosen.sentiment, chosen.probabilities, reading.contested))
        return out

    def _score_rows(self, rows: list[str]) -> list[Score]:
        """One Score per normalised data part, in batches of `batch_size` rows."""
        out: list[Score] = []
        size = max(1, self.options.batch_size)
        for start in range(0, len(rows), size):
            probs = self._label_probs(rows[start : start + size])
            if self._prior is not None:
                probs = probs / self._prior
                probs = probs / probs.sum(dim=-1, keepdim=True)
            for row in probs.tolist():
                named = dict(zip(prompts.LABELS, row, strict=True))
                out.append(Score(named["positive"] - named["negative"], named))
        return out


def model_version(model_dir: Path) -> str:
    """A short content hash of the weights, so outputs name exactly which model made them."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def make_scorer(
    backend: str, model_dir: Path | str | None = None, options: LLMOptions | None = None
) -> SentimentScorer:
    """`llm` (needs `model_dir`) or `lexicon`."""
    if backend == "lexicon":
        return LexiconScorer()
    if backend == "llm":
        if model_dir is None:
            raise ValueError("the llm backend needs a model folder")
        return LLMScorer(model_dir, options)
    raise ValueError(f"unknown sentiment backend {backend!r}; use 'llm' or 'lexicon'")
