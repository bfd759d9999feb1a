"""Settings of the ingest service, from the environment (prefix RLMF_INGEST_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common.settings import RlmfSettings


class IngestSettings(RlmfSettings):
    """Env: RLMF_INGEST_FILES='["a.jsonl","b.csv"]', RLMF_INGEST_FEEDS='["http://..."]', ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_INGEST_", extra="ignore")

    files: list[Path] = Field(default_factory=list)
    """JSONL or CSV files replayed once at start, in event-time order."""
    feeds: list[str] = Field(default_factory=list)
    """RSS/Atom feed URLs or file paths, polled with ETag/Last-Modified."""
    feed_poll_s: float = Field(default=300.0, gt=0)
    """Seconds between polls of every feed, after the files are replayed."""
    tickers_file: Path | None = None
    """CSV with columns ticker,name[,aliases]: company names that map to tickers (aliases are
    separated by `|`); explicit and cashtag tickers must then be in it too."""
    ticker_universe: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """RLMF_INGEST_TICKER_UNIVERSE="MSFT,GOOGL" (the chart sets it): the only tickers news may
    name. Explicit tickers outside it are rejected, cashtags and names outside it ignored.
    Empty: the tickers file's tickers, or any well-formed ticker without one."""
    max_tickers_per_item: int = Field(default=10, ge=1)
    """An item naming more tickers than this is rejected: each ticker is one news.raw.v1 event,
    so without a cap one item of cashtags fans out into thousands of events."""
    max_future_skew_s: float = Field(default=300.0, ge=0)
    """Items published further than this in the future are rejected."""
    max_age_s: float | None = Field(default=None, gt=0)
    """Items published longer ago than this are rejected (dead-lettered from files and feeds, a
    422 over HTTP), so news cannot be backdated into days already decided. Unset: no lower
    bound, for replays of history (the demo's news files)."""
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
    ack_timeout_s: float = Field(default=10.0, gt=0)
    """How long a POST waits for the broker to acknowledge its events; past it the answer is
    503 with Retry-After and nothing is remembered as seen, so the retry is not a duplicate."""
    retry_after_s: int = Field(default=5, ge=1)
    """The Retry-After of a 503 (broker unavailable or the publisher still busy)."""
    max_queued_requests: int = Field(default=64, ge=1)
    """Requests waiting for the publisher beyond this are answered 503 at once."""
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    """On SIGTERM, how long in-flight publishing may finish before the producer is closed
    (below Kubernetes' default 30 s termination grace period)."""

    @field_validator("ticker_universe", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip().upper() for t in value.split(",") if t.strip()]
        return value
