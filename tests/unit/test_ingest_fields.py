"""Issue 16, ingest items 3 and 5: how many tickers an item may fan out to and from which text,
the ticker universe setting, and the fields that were too loose (ticker splitting, backdating,
control characters in ids, entity-encoded markup, script links)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.ingest.normalise import Normaliser, RejectedInput, TickerResolver, parse_raw
from services.ingest.settings import IngestSettings

NOW = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def normaliser(**settings: object) -> Normaliser:
    """Any well-formed ticker is accepted (no tickers file, no universe)."""
    chosen = IngestSettings(**settings)  # type: ignore[arg-type]
    return Normaliser(chosen, TickerResolver({}, None), clock=lambda: NOW)


def item(**fields: object) -> dict[str, object]:
    return {"headline": "$MSFT beats estimates", "published_at": "2024-03-05T10:00:00Z", **fields}


def rejected(norm: Normaliser, record: dict[str, object]) -> str:
    with pytest.raises(RejectedInput) as info:
        norm.normalise(parse_raw(record))
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Item 3: fan-out
# ---------------------------------------------------------------------------------------------


def test_an_item_full_of_cashtags_is_rejected_not_fanned_out() -> None:
    # The reported case: 13,107 distinct cashtags in one body became 13,107 events.
    tags = [f"${a}{b}{c}" for a in "ABCDEFGHIJ" for b in "ABCDEFGHIJ" for c in "ABCDEFGHIJ"]
    body = " ".join(tags)[:60_000]
    reason = rejected(normaliser(max_body_chars=60_000), item(body=body))
    assert "more than 10 tickers" in reason
    capped = normaliser(max_tickers_per_item=3)
    assert capped.normalise(parse_raw(item(body="$AA $BB and $AA again"))).tickers == (
        "MSFT",
        "AA",
        "BB",
    )
    assert "more than 3 tickers" in rejected(capped, item(body="$AA $BB $CC"))


def test_tickers_come_only_from_the_text_that_is_kept() -> None:
    norm = normaliser(max_body_chars=40)
    news = norm.normalise(parse_raw(item(body="Quiet day. " * 10 + "$GOOGL soars")))
    assert len(news.body) == 40 and "$GOOGL" not in news.body
    assert news.tickers == ("MSFT",)


def test_the_ticker_universe_comes_from_its_env_var_as_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLMF_INGEST_TICKER_UNIVERSE", "msft, googl,,BRK.B ")
    settings = IngestSettings()
    assert settings.ticker_universe == ["MSFT", "GOOGL", "BRK.B"]
    norm = Normaliser(settings, TickerResolver.from_settings(settings), clock=lambda: NOW)
    news = norm.normalise(parse_raw(item(body="$AAPL and $GOOGL")))
    assert news.tickers == ("MSFT", "GOOGL")  # $AAPL is outside the universe: not an event
    assert "unknown ticker 'AAPL'" in rejected(norm, item(tickers=["AAPL"]))
    monkeypatch.setenv("RLMF_INGEST_TICKER_UNIVERSE", "MSFT,not a ticker")
    with pytest.raises(ValueError, match="not tickers"):
        TickerResolver.from_settings(IngestSettings())


# ---------------------------------------------------------------------------------------------
# Item 5: loose fields
# ---------------------------------------------------------------------------------------------


def test_a_ticker_string_splits_only_on_commas_and_semicolons() -> None:
    norm = normaliser()
    assert "'DROP TABLE' is not a ticker" in rejected(norm, item(tickers="MSFT; DROP TABLE"))
    assert "is not a ticker" in rejected(norm, item(tickers=["MSFT; DROP TABLE"]))
    news = norm.normalise(parse_raw(item(headline="Deal", tickers="msft; googl")))
    assert news.tickers == ("MSFT", "GOOGL")


def test_items_older_than_the_max_age_are_rejected_with_the_reason() -> None:
    norm = normaliser(max_age_s=86_400)
    reason = rejected(norm, item(published_at="2024-03-01T10:00:00Z"))
    assert "too old" in reason and "RLMF_INGEST_MAX_AGE_S" in reason
    assert norm.normalise(parse_raw(item(published_at="2024-03-04T13:00:00Z")))
    # Unset (the default): history can be replayed.
    assert normaliser().normalise(parse_raw(item(published_at="2001-01-01T00:00:00Z")))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("id", "n-1\x00", "id contains a NUL byte"),
        ("id", "n-\x1b[2J", "id contains control character U+001B"),
        ("id", "n-\ud800", "id: Input should be a valid string"),  # pydantic, first
        ("headline", "MSFT \udfff up", "headline holds a lone surrogate"),
        ("source", "wire\x07", "source contains control character U+0007"),
    ],
)
def test_control_characters_and_lone_surrogates_are_rejected(
    field: str, value: str, reason: str
) -> None:
    assert reason in rejected(normaliser(), item(**{field: value}))


def test_entity_encoded_markup_never_comes_out_as_a_live_tag() -> None:
    norm = normaliser()
    once = norm.normalise(
        parse_raw(item(headline="$MSFT &lt;script&gt;alert(1)&lt;/script&gt; up 3%"))
    )
    assert "<" not in once.headline and "alert" not in once.headline
    assert once.headline == "$MSFT up 3%"
    twice = norm.normalise(
        parse_raw(item(body="&amp;lt;img src=x onerror=alert(1)&amp;gt; Results"))
    )
    assert "<" not in twice.body and "onerror" not in twice.body
    plain = norm.normalise(parse_raw(item(body="P/E &lt; 10 &amp; rising")))
    assert plain.body == "P/E < 10 & rising"  # a literal "<" is text, not a tag
    nested = "&" + "amp;" * 6 + "lt;b" + "&" + "amp;" * 6 + "gt;x"  # encoded seven times
    assert "still holds HTML" in rejected(norm, item(body=nested))


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", " JavaScript:alert(1)", "java\tscript:x", "data:text/html,x", "/x"],
)
def test_only_http_and_https_links_are_kept(url: str) -> None:
    assert "only http and https links" in rejected(normaliser(), item(url=url))


def test_http_links_pass() -> None:
    news = normaliser().normalise(parse_raw(item(url=" https://example.com/a?b=1 ")))
    assert news.url == "https://example.com/a?b=1"
