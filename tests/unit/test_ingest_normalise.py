"""Unit tests of ingest normalisation: each bad-input class is rejected with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.ingest.files import read_entries
from services.ingest.normalise import (
    Deduplicator,
    Normaliser,
    RejectedInput,
    TickerResolver,
    decode_json_object,
    parse_raw,
    strip_html,
)
from services.ingest.settings import IngestSettings

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def resolver(tmp_path: Path) -> TickerResolver:
    path = tmp_path / "tickers.csv"
    path.write_text(
        "ticker,name,aliases\nMSFT,Microsoft,Microsoft Corp|MS Corp\nGOOGL,Alphabet,Google\n"
    )
    return TickerResolver.from_file(path)


@pytest.fixture
def normaliser(resolver: TickerResolver) -> Normaliser:
    return Normaliser(IngestSettings(max_body_chars=50), resolver, clock=lambda: NOW)


def item(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "headline": "Microsoft beats estimates",
        "published_at": "2024-03-01T10:00:00Z",
    }
    base.update(fields)
    return base


def reject(normaliser: Normaliser, raw: bytes) -> str:
    with pytest.raises(RejectedInput) as info:
        normaliser.normalise(parse_raw(decode_json_object(raw, 10_000)))
    return str(info.value)


def test_good_item_is_normalised(normaliser: Normaliser) -> None:
    news = normaliser.normalise(
        parse_raw(
            item(
                headline="<b>Microsoft</b> &amp; Google rally",
                published_at="2024-03-01T05:00:00-05:00",
            )
        )
    )
    assert news.headline == "Microsoft & Google rally"
    assert news.tickers == ("MSFT", "GOOGL")
    assert news.published_at == datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def test_naive_time_is_utc_and_epoch_seconds_parse(normaliser: Normaliser) -> None:
    naive = normaliser.normalise(parse_raw(item(published_at="2024-03-01T10:00:00")))
    epoch = normaliser.normalise(parse_raw(item(published_at=1709287200)))
    assert naive.published_at == epoch.published_at == datetime(2024, 3, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b'{"headline": "caf\xe9 MSFT", "published_at": "2024-03-01T10:00:00Z"}', "invalid UTF-8"),
        (b'{"headline": "MSFT\\u0000 up", "published_at": "2024-03-01T10:00:00Z"}', "NUL"),
        (b'["a list"]', "must be a JSON object"),
        (json.dumps(item(published_at=None)).encode(), "missing published_at"),
        (json.dumps({"headline": "MSFT up"}).encode(), "missing published_at"),
        (json.dumps(item(published_at="yesterday-ish")).encode(), "published_at"),
        (json.dumps(item(published_at="2024-03-02T10:00:00Z")).encode(), "in the future"),
        (json.dumps(item(headline="   ", body="\n\t")).encode(), "empty text"),
        (json.dumps(item(headline="<p> </p>")).encode(), "empty text"),
        (json.dumps(item(headline="Microsoft " * 60)).encode(), "over the limit"),
        (json.dumps(item(body="x" * 70_000)).encode(), "over the limit"),
        (json.dumps(item(tickers=["not a ticker"])).encode(), "is not a ticker"),
        (json.dumps(item(tickers=["TOOLONGX"])).encode(), "is not a ticker"),
        (json.dumps(item(tickers=["IBM"])).encode(), "unknown ticker"),
        (json.dumps(item(headline="Markets drift sideways")).encode(), "no ticker"),
    ],
)
def test_bad_inputs_are_rejected_with_their_reason(
    normaliser: Normaliser, raw: bytes, reason: str
) -> None:
    assert reason in reject(normaliser, raw)


def test_oversized_raw_item_is_rejected_before_parsing() -> None:
    with pytest.raises(RejectedInput, match="over the limit of 100"):
        decode_json_object(b"{" + b" " * 200 + b"}", max_bytes=100)


def test_future_skew_is_a_setting(resolver: TickerResolver) -> None:
    lenient = Normaliser(IngestSettings(max_future_skew_s=86_400 * 2), resolver, clock=lambda: NOW)
    news = lenient.normalise(parse_raw(item(published_at="2024-03-02T10:00:00Z")))
    assert news.published_at.day == 2


def test_body_is_bounded_and_html_stripped(normaliser: Normaliser) -> None:
    news = normaliser.normalise(
        parse_raw(item(body="<script>alert(1)</script><p>" + "word " * 40 + "</p>"))
    )
    assert "alert" not in news.body and "<" not in news.body
    assert len(news.body) == 50


def test_tickers_from_cashtags_fields_and_names(resolver: TickerResolver) -> None:
    assert resolver.resolve([], "Google and $msft both up", cap=10) == ("MSFT", "GOOGL")
    assert resolver.resolve(["googl"], "MS Corp", cap=10) == ("GOOGL", "MSFT")
    open_universe = TickerResolver({}, None)
    assert open_universe.resolve([], "$BRK.B rises, $5 is a price", cap=10) == ("BRK.B",)


def test_strip_html_keeps_plain_text() -> None:
    assert strip_html("  plain   text ") == "plain text"
    assert strip_html("a &lt; b <i>c</i>") == "a < b c"


def test_dedup_ignores_case_punctuation_and_time_of_day(normaliser: Normaliser) -> None:
    dedup = Deduplicator(capacity=10)
    first = normaliser.normalise(parse_raw(item(headline="Microsoft beats estimates!")))
    again = normaliser.normalise(
        parse_raw(item(headline="microsoft  BEATS estimates", published_at="2024-03-01T11:00:00Z"))
    )
    next_day = normaliser.normalise(
        parse_raw(item(headline="Microsoft beats estimates", published_at="2024-02-29T11:00:00Z"))
    )
    assert dedup.first_time(dedup.key(first, "MSFT"))
    assert not dedup.first_time(dedup.key(again, "MSFT"))
    assert dedup.first_time(dedup.key(again, "GOOGL"))  # same text, another ticker: new event
    assert dedup.first_time(dedup.key(next_day, "MSFT"))


def test_files_keep_bad_lines_as_raw_bytes(tmp_path: Path) -> None:
    jsonl = tmp_path / "n.jsonl"
    jsonl.write_bytes(b'{"a": 1}\n\n\xff\xfe broken\n{"b": 2}\n')
    entries = list(read_entries(jsonl))
    assert [e.where for e in entries] == ["n.jsonl:1", "n.jsonl:3", "n.jsonl:4"]
    assert entries[1].raw == b"\xff\xfe broken"
    csv_file = tmp_path / "n.csv"
    csv_file.write_bytes(
        b"headline,published_at,tickers\nMSFT up,2024-03-01,MSFT\nbad \xff,2024-03-01,MSFT\n"
    )
    rows = list(read_entries(csv_file))
    assert rows[0].record == {
        "headline": "MSFT up",
        "published_at": "2024-03-01",
        "tickers": "MSFT",
    }
    assert rows[1].record is None and b"\xff" in rows[1].raw
    with pytest.raises(ValueError, match="unknown news file type"):
        list(read_entries(tmp_path / "n.txt"))


def test_date_only_time_is_accepted_as_midnight_utc(normaliser: Normaliser) -> None:
    news = normaliser.normalise(parse_raw(item(published_at="2024-03-01")))
    assert news.published_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert news.published_at - NOW < timedelta(0)
