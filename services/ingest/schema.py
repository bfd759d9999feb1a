"""The shapes of news crossing the ingest boundary: raw input (pydantic) and normalised items."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RawNews(BaseModel):
    """One news item as sources give it; normalisation checks the content."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    id: str | None = Field(default=None, max_length=200)
    headline: str = ""
    body: str = ""
    url: str = Field(default="", max_length=2000)
    source: str = Field(default="", max_length=200)
    published_at: datetime | None = None
    """ISO 8601 or epoch seconds; a time without zone is read as UTC."""
    tickers: list[str] = Field(default_factory=list, max_length=20)
    synthetic: bool = False

    @field_validator("tickers", mode="before")
    @classmethod
    def split_tickers(cls, value: object) -> object:
        """CSV cells and forms give tickers as one string: "MSFT, GOOGL" or "MSFT;GOOGL".
        Only commas and semicolons separate: "MSFT; DROP TABLE" is MSFT and "DROP TABLE", which
        is then rejected as not a ticker, not three tickers."""
        if isinstance(value, str):
            return [t.strip() for t in re.split(r"[,;]", value) if t.strip()]
        return value


@dataclass(frozen=True)
class NormalisedNews:
    """A clean item: UTC time, HTML-free bounded text, resolved tickers."""

    item_id: str
    tickers: tuple[str, ...]
    headline: str
    body: str
    url: str
    source_name: str
    published_at: datetime
    synthetic: bool
