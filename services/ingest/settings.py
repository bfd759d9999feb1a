"""Settings of the ingest service, from the environment (prefix RLMF_INGEST_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestSettings(BaseSettings):
    """Env: RLMF_INGEST_FILES='["a.jsonl","b.csv"]', RLMF_INGEST_FEEDS='["http://..."]', ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_INGEST_", extra="ignore")

    files: list[Path] = Field(default_factory=list)
    """JSONL or CSV files replayed once at start, in event-time order."""
    feeds: list[str] = Field(default_factory=list)
    """RSS/Atom feed URLs or file paths, polled with ETag/Last-Modified."""
    feed_poll_s: float = Field(default=300.0, gt=0)
    tickers_file: Path | None = None
    """CSV with columns ticker,name[,aliases]: company names that map to tickers (aliases are
    separated by `|`); explicit and cashtag tickers must then be in it too."""
    max_future_skew_s: float = Field(default=300.0, ge=0)
    """Items published further than this in the future are rejected."""
    max_headline_chars: int = Field(default=500, ge=1)
    """Longer headlines are rejected (a headline that long is not a headline)."""
    max_body_chars: int = Field(default=4000, ge=0)
    """Bodies are cut to this many characters after HTML is stripped."""
    max_item_bytes: int = Field(default=65_536, ge=256)
    """A raw item (or file line) bigger than this is rejected."""
    max_batch: int = Field(default=100, ge=1)
    """Most items in one HTTP request."""
    dedup_window: int = Field(default=200_000, ge=1)
    """How many recent (content, ticker, day) keys are remembered for de-duplication."""
