"""RSS/Atom sources read with feedparser, from a URL (conditional GET with ETag and
Last-Modified, so an unchanged feed costs a 304) or from a file (re-read when its mtime moves)."""

from __future__ import annotations

import calendar
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import feedparser

from services.ingest.pipeline import Entry

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    entries: list[Entry] = field(default_factory=list)
    not_modified: bool = False
    error: str | None = None
    """The whole feed failed (unreachable, unparsable); the service reports it and goes on."""


class FeedPoller:
    """Polls one feed, remembering its validators between polls."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.etag: str | None = None
        self.modified: str | None = None
        self._mtime: float | None = None
        self.polls = 0

    def forget(self) -> None:
        """Drop the validators, so the next poll reads the whole feed again."""
        self.etag = self.modified = None
        self._mtime = None

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def poll(self) -> PollResult:
        self.polls += 1
        if not self.is_url:
            path = Path(self.source)
            try:
                mtime = path.stat().st_mtime
            except OSError as exc:
                return PollResult(error=f"feed file {path}: {exc.strerror}")
            if mtime == self._mtime:
                return PollResult(not_modified=True)
            self._mtime = mtime
            parsed = feedparser.parse(path.read_bytes())
        else:
            parsed = feedparser.parse(self.source, etag=self.etag, modified=self.modified)
            if getattr(parsed, "status", None) == 304:
                return PollResult(not_modified=True)
            self.etag = parsed.get("etag") or self.etag
            self.modified = parsed.get("modified") or self.modified
        return self._entries(parsed)

    def _entries(self, parsed: Any) -> PollResult:
        status = getattr(parsed, "status", 200)
        if status >= 400:
            return PollResult(error=f"feed {self.source} answered HTTP {status}")
        if parsed.bozo and not parsed.entries:
            return PollResult(error=f"feed {self.source} did not parse: {parsed.bozo_exception}")
        feed_title = parsed.feed.get("title", "")
        entries = [
            _entry(e, self.source, feed_title, i) for i, e in enumerate(parsed.entries, start=1)
        ]
        return PollResult(entries=entries)


def _entry(entry: Any, source: str, feed_title: str, number: int) -> Entry:
    """A feed entry as a raw news record; a missing or unparsable time stays missing so the
    normaliser rejects it with that reason."""
    # Only keys really present: FeedParserDict's `in` and get() go through its deprecated
    # published/updated fallback, which warns; its plain key list does not.
    present = set(entry.keys())  # noqa: SIM118 - see the line above
    parsed_time = next(
        (entry[k] for k in ("published_parsed", "updated_parsed") if k in present), None
    )
    published = (
        datetime.fromtimestamp(calendar.timegm(parsed_time), UTC).isoformat()
        if parsed_time
        else entry.get("published") or entry.get("updated")
    )
    tags = [t.get("term", "") for t in entry.get("tags", []) or []]
    record: dict[str, object] = {
        "id": entry.get("id") or None,
        "headline": entry.get("title", ""),
        "body": entry.get("summary", ""),
        "url": entry.get("link", ""),
        "source": feed_title or source,
        "published_at": published,
        # Feeds tag items with categories; cashtag-like tags name tickers explicitly.
        "tickers": [t.lstrip("$") for t in tags if t.startswith("$")],
    }
    raw = json.dumps(record, ensure_ascii=False, default=str).encode("utf-8", "replace")
    return Entry(raw=raw, record=record, where=f"{source}#{number}")
