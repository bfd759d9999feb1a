"""Turning raw news into clean items: checks with clear reasons, HTML stripping, UTC times,
ticker resolution and de-duplication on normalised content + ticker + day."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning
from pydantic import ValidationError

from services.ingest.schema import NormalisedNews, RawNews
from services.ingest.settings import IngestSettings

TICKER_RE = re.compile(r"^[A-Z]{1,5}(?:\.[A-Z]{1,2})?$")
CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Za-z]{1,5}(?:\.[A-Za-z]{1,2})?)\b")
_ITEM_NAMESPACE = uuid.UUID("0f4c3a52-6f55-4a1e-9d0b-3c8e1f7a2b61")


class RejectedInput(ValueError):
    """Input that can not become a news item; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------
# Raw bytes -> dict
# ---------------------------------------------------------------------------------------------


def decode_json_object(raw: bytes, max_bytes: int) -> Any:
    """Parse one JSON value from bytes, naming the problem: size, UTF-8, NUL, JSON syntax."""
    if len(raw) > max_bytes:
        raise RejectedInput(f"item is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedInput(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from exc
    if "\x00" in text:
        raise RejectedInput("text contains NUL bytes")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RejectedInput(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def parse_raw(record: Any) -> RawNews:
    """Validate the shape of one record with pydantic; errors name each bad field."""
    if not isinstance(record, dict):
        raise RejectedInput(f"a news item must be a JSON object, got {type(record).__name__}")
    try:
        return RawNews.model_validate(record)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors()
        )
        raise RejectedInput(f"invalid news item: {problems}") from exc


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


_MAX_HTML_PASSES = 4
"""Entity-encoded markup (`&lt;script&gt;`) decodes into markup, so text is stripped again until
it stops changing; text still changing after this many passes is rejected."""


def strip_html(text: str) -> str:
    """Visible text of an HTML fragment, one-spaced. BeautifulSoup decodes entities, and markup
    that decoding revealed (`&lt;script&gt;` -> `<script>`) is stripped too: the text that
    leaves ingest holds no live tag, however many times it was entity-encoded."""
    for _ in range(_MAX_HTML_PASSES):
        stripped = _strip_once(text)
        if stripped == text:
            return stripped
        text = stripped
    raise RejectedInput(
        f"text still holds HTML after {_MAX_HTML_PASSES} rounds of decoding entities and "
        "stripping tags (nested entity-encoded markup)"
    )


def _strip_once(text: str) -> str:
    if "<" not in text and "&" not in text:
        return " ".join(text.split())
    with warnings.catch_warnings():
        # Plain text that looks like a file name or URL is fine here; bs4 warns about it.
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style"]):
        tag.decompose()
    return " ".join(soup.get_text(" ").split())


def check_text(name: str, value: str) -> None:
    """Reject text that cannot travel: NUL and other control characters (tab and newlines
    aside), and lone surrogates, which JSON can carry (`\\ud800`) but UTF-8 and protobuf
    cannot."""
    for index, char in enumerate(value):
        if char in "\t\n\r":
            continue
        category = unicodedata.category(char)
        if category == "Cs":
            raise RejectedInput(
                f"{name} holds a lone surrogate (U+{ord(char):04X}) at character {index}: "
                "not valid Unicode text"
            )
        if category == "Cc":
            what = "a NUL byte" if char == "\x00" else f"control character U+{ord(char):04X}"
            raise RejectedInput(f"{name} contains {what} at character {index}")


_URL_SCHEMES = ("http", "https")


def check_url(url: str) -> str:
    """An item's link: empty, or an absolute http(s) URL. Other schemes (`javascript:`,
    `data:`) would be live in any page that shows the link."""
    url = url.strip()
    if not url:
        return url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    # WHATWG URL parsing drops tabs and newlines inside a scheme ("java\tscript:").
    scheme = "".join(scheme.split())
    if scheme not in _URL_SCHEMES:
        raise RejectedInput(
            f"url {url[:80]!r} has scheme {scheme or 'none'!r}; only http and https links are kept"
        )
    return url


def content_key(text: str) -> str:
    """Normalised content for de-duplication: case, punctuation and spacing do not count."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Tickers
# ---------------------------------------------------------------------------------------------


@dataclass
class TickerResolver:
    """Tickers from explicit fields, cashtags and company names (from a tickers file)."""

    names: dict[str, str]
    """lower-case company name or alias -> ticker"""
    universe: frozenset[str] | None = None
    """Known tickers; None accepts any well-formed ticker."""

    @classmethod
    def from_file(cls, path: Path | None) -> TickerResolver:
        if path is None:
            return cls({}, None)
        names: dict[str, str] = {}
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                ticker = (row.get("ticker") or "").strip().upper()
                if not TICKER_RE.match(ticker):
                    raise ValueError(f"{path}: {ticker!r} is not a ticker")
                aliases = [row.get("name") or "", *(row.get("aliases") or "").split("|")]
                for alias in aliases:
                    if alias.strip():
                        names[alias.strip().lower()] = ticker
        return cls(names, frozenset(names.values()))

    @classmethod
    def from_settings(cls, settings: IngestSettings) -> TickerResolver:
        """The tickers file's names, limited to RLMF_INGEST_TICKER_UNIVERSE when that is set."""
        resolver = cls.from_file(settings.tickers_file)
        if not settings.ticker_universe:
            return resolver
        bad = [t for t in settings.ticker_universe if not TICKER_RE.match(t)]
        if bad:
            raise ValueError(f"RLMF_INGEST_TICKER_UNIVERSE: {bad} are not tickers")
        universe = frozenset(settings.ticker_universe)
        names = {name: t for name, t in resolver.names.items() if t in universe}
        return cls(names, universe)

    def __post_init__(self) -> None:
        # Longest names first so "Alphabet Inc" wins over "Alphabet".
        ordered = sorted(self.names, key=len, reverse=True)
        self._name_re = (
            re.compile(r"\b(" + "|".join(map(re.escape, ordered)) + r")\b", re.IGNORECASE)
            if ordered
            else None
        )

    def check(self, ticker: str) -> str:
        symbol = ticker.strip().upper().lstrip("$")
        if not TICKER_RE.match(symbol):
            raise RejectedInput(f"{ticker!r} is not a ticker (1-5 letters, optional .class)")
        if self.universe is not None and symbol not in self.universe:
            raise RejectedInput(f"unknown ticker {symbol!r}: not in the ticker universe")
        return symbol

    def resolve(self, explicit: list[str], text: str, cap: int) -> tuple[str, ...]:
        """Explicit tickers, then cashtags, then company names in `text`; more than `cap`
        distinct tickers is an error (each is one event), found without scanning past it."""
        found: dict[str, None] = {}

        def add(symbol: str) -> None:
            found[symbol] = None
            if len(found) > cap:
                raise RejectedInput(
                    f"names more than {cap} tickers (the per-item limit); "
                    "split it or give `tickers` explicitly"
                )

        for ticker in explicit:
            add(self.check(ticker))
        for match in CASHTAG_RE.finditer(text):
            symbol = match.group(1).upper()
            if self.universe is None or symbol in self.universe:
                add(symbol)
        if self._name_re is not None:
            for match in self._name_re.finditer(text):
                add(self.names[match.group(1).lower()])
        if not found:
            raise RejectedInput("no ticker: give `tickers`, a $CASHTAG or a known company name")
        return tuple(found)


# ---------------------------------------------------------------------------------------------
# Normalising one item
# ---------------------------------------------------------------------------------------------


class Normaliser:
    """Checks and cleans RawNews; every failure is a RejectedInput naming the problem."""

    def __init__(
        self,
        settings: IngestSettings,
        resolver: TickerResolver,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.clock = clock or (lambda: datetime.now(UTC))

    def normalise(self, raw: RawNews) -> NormalisedNews:
        s = self.settings
        fields = {"headline": raw.headline, "body": raw.body, "url": raw.url, "source": raw.source}
        for name, value in {**fields, "id": raw.id or ""}.items():
            check_text(name, value)
        if len(raw.headline) > s.max_headline_chars * 4:  # before stripping: bound the work
            raise RejectedInput(f"headline is {len(raw.headline)} characters, over the limit")
        if len(raw.body) > s.max_item_bytes:
            raise RejectedInput(
                f"body is {len(raw.body)} characters, over the limit of {s.max_item_bytes}"
            )
        headline = strip_html(raw.headline)
        body = strip_html(raw.body)[: s.max_body_chars]
        if not headline and not body:
            raise RejectedInput("empty text: headline and body are empty or whitespace")
        if len(headline) > s.max_headline_chars:
            raise RejectedInput(
                f"headline is {len(headline)} characters, over the limit of {s.max_headline_chars}"
            )
        url = check_url(raw.url)
        published = self._time(raw.published_at)
        # Resolved from the text that is kept (the body already cut), so text that no event
        # carries names no ticker.
        tickers = self.resolver.resolve(raw.tickers, f"{headline} {body}", s.max_tickers_per_item)
        return NormalisedNews(
            item_id=raw.id or _derived_item_id(raw, headline, published),
            tickers=tickers,
            headline=headline,
            body=body,
            url=url,
            source_name=raw.source.strip(),
            published_at=published,
            synthetic=raw.synthetic,
        )

    def _time(self, when: datetime | None) -> datetime:
        if when is None:
            raise RejectedInput("missing published_at")
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        now = self.clock()
        limit = now + timedelta(seconds=self.settings.max_future_skew_s)
        if when > limit:
            raise RejectedInput(
                f"published_at {when.isoformat()} is in the future (more than "
                f"{self.settings.max_future_skew_s:g}s ahead of now)"
            )
        max_age = self.settings.max_age_s
        if max_age is not None and when < now - timedelta(seconds=max_age):
            raise RejectedInput(
                f"published_at {when.isoformat()} is too old: more than {max_age:g}s before "
                f"now ({now.isoformat()}), the max age (RLMF_INGEST_MAX_AGE_S)"
            )
        return when


def _derived_item_id(raw: RawNews, headline: str, published: datetime) -> str:
    name = "|".join([raw.source, raw.url, headline, published.isoformat()])
    return uuid.uuid5(_ITEM_NAMESPACE, name).hex


# ---------------------------------------------------------------------------------------------
# De-duplication
# ---------------------------------------------------------------------------------------------


class Deduplicator:
    """Remembers (normalised content, ticker, UTC day) keys, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def key(item: NormalisedNews, ticker: str) -> str:
        content = content_key(f"{item.headline} {item.body}")
        joined = f"{content}|{ticker}|{item.published_at.date().isoformat()}"
        return hashlib.sha256(joined.encode()).hexdigest()

    def first_time(self, key: str) -> bool:
        """True the first time `key` is seen (and remembers it)."""
        if self.seen(key):
            return False
        self.remember([key])
        return True

    def seen(self, key: str) -> bool:
        """Whether `key` is remembered (a hit counts as recent use); remembers nothing."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        return False

    def remember(self, keys: Iterable[str]) -> None:
        """Remember `keys`; the publisher calls this only once their events are acknowledged."""
        for key in keys:
            self._keys[key] = None
            self._keys.move_to_end(key)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
