"""Settings of the sentiment service, from the environment (prefix RLMF_SENTIMENT_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.model_files import smollm2_dir
from services.common.settings import RlmfSettings


class SentimentSettings(RlmfSettings):
    """Env: RLMF_SENTIMENT_BACKEND, RLMF_SENTIMENT_MODEL_DIR, ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_SENTIMENT_", extra="ignore")

    backend: str = Field(default="llm", pattern="^(llm|lexicon)$")
    """`llm`: a local causal LM folder; `lexicon`: VADER."""
    model_dir: Path = Field(default_factory=lambda: smollm2_dir())
    """Any local Hugging Face causal-LM folder (default: models/SmolLM2-135M-Instruct)."""
    fallback_to_lexicon: bool = True
    """If the LLM can not be loaded, serve with the lexicon (outputs then name `vader`)."""
    max_batch: int = Field(default=32, ge=1, le=1024)
    """Most news items in one micro-batch (the consumer's max_records)."""
    max_wait_ms: int = Field(default=200, ge=1)
    """Longest wait for a micro-batch to fill (the consumer's poll timeout)."""
    llm_batch_size: int = Field(default=32, ge=1)
    """Rows per forward pass of the LLM."""
    few_shot: bool = True
    """Put the worked examples of prompts.FEW_SHOT before the text in the LLM's prompt."""
    calibrate: bool = False
    """Divide label probabilities by those of content-free inputs (contextual calibration).
    Off by default: on the labelled headlines it lowered SmolLM2's accuracy (docs/news.md)."""
    threads: int = 0
    """torch threads; 0 keeps torch's default."""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """`auto`: cuda when present, else cpu."""
    max_text_chars: int = Field(default=1000, ge=16)
    """Characters of an item's text (headline, then body) that are scored; the rest is cut."""
    summaries: bool = True
    """Write an LLM summary per ticker and day (SEP's summarize step)."""
    summary_max_new_tokens: int = Field(default=32, ge=1, le=256)
    """Most tokens one summary generates (greedy decoding)."""
    summary_max_headlines: int = Field(default=8, ge=1)
    """The latest headlines of the ticker's day that go into one summary."""
    summary_cache_size: int = Field(default=4096, ge=1)
    """Summaries kept in the LRU cache, keyed by a hash of ticker and headlines, so the same
    day's news is summarised once."""
