"""The sentiment service over the real broker with a tiny random Llama: micro-batches, the
enriched output (model version, probabilities, summary, latency), bad items dead-lettered."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from services.common import envelope as envelopes
from services.common.bus import Incoming
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import NEWS_ENRICHED, NEWS_RAW, dlq
from services.sentiment.enrich import EnrichHandler
from services.sentiment.service import build_handler, build_loop
from services.sentiment.settings import SentimentSettings
from tests.helpers import group_at_end, news_item, publish, read_all


class RecordingHandler:
    """Wraps the real handler to record the micro-batch sizes the loop hands it."""

    def __init__(self, inner: EnrichHandler) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def __call__(self, batch: Sequence[Incoming]) -> Any:
        self.sizes.append(len(batch))
        return self.inner(batch)


@pytest.mark.slow  # a model generating summaries: ~15 s
def test_enriches_in_micro_batches_and_dead_letters_bad_items(
    bus_settings: BusSettings, tiny_llama_dir: Path, unique: str
) -> None:
    settings = SentimentSettings(
        model_dir=tiny_llama_dir, max_batch=4, max_wait_ms=100, summary_max_new_tokens=8
    )
    good = [news_item(unique, n, f"Acme headline number {n}", hours=n) for n in range(9)]
    other = news_item(unique, 9, "Google news of the day", ticker="GOOGL")
    empty = news_item(unique, 10, "   ")
    no_ticker = news_item(unique, 11, "Headline without a ticker", ticker="")
    group = group_at_end(bus_settings, unique)
    publish(bus_settings, [*good, other, empty, no_ticker])

    handler = RecordingHandler(build_handler(settings))
    loop = build_loop(settings, bus_settings, handler, group_id=group)  # type: ignore[arg-type]
    loop.run(idle_timeout_s=3)

    ours = lambda r: f"s-{unique}-".encode() in r.value  # noqa: E731
    enriched = [
        envelopes.decode(r.value, pb.EnrichedNews)
        for r in read_all(bus_settings, NEWS_ENRICHED, wanted=10, match=ours)
    ]
    by_id = {e.payload.item.item_id: e for e in enriched}
    assert sorted(by_id) == sorted(i.item_id for i in [*good, other])
    scorer = handler.inner.scorer
    for env in enriched:
        out = env.payload
        assert out.model_name == tiny_llama_dir.name and out.model_version == scorer.version
        assert set(out.label_probabilities) == {"positive", "negative", "neutral"}
        assert out.sentiment == pytest.approx(
            out.label_probabilities["positive"] - out.label_probabilities["negative"]
        )
        assert out.latency_ms > 0 and out.summary
        assert env.key == out.item.ticker
        assert env.event_time == envelopes.to_datetime(out.item.published_at)
    # Summaries cover the ticker's day so far and never a later item: the first item's summary
    # input is itself only, so two different first-of-day items get different cache keys.
    assert handler.inner.summarizer is not None
    assert len(handler.inner.summarizer.cache._items) >= 2

    dead = read_all(bus_settings, dlq(NEWS_RAW), wanted=2, match=ours)
    reasons = sorted(dict(r.headers)["rlmf-error"].decode() for r in dead)
    assert len(reasons) == 2
    assert "no headline and no body" in reasons[1] or "no headline and no body" in reasons[0]
    assert any("has no ticker" in r for r in reasons)

    assert max(handler.sizes) <= 4, handler.sizes
    assert any(size > 1 for size in handler.sizes), handler.sizes
    assert (
        loop.stats.consumed == loop.stats.handled + loop.stats.duplicates + loop.stats.dead_lettered
    )


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_lexicon_backend_needs_no_model(bus_settings: BusSettings, unique: str) -> None:
    settings = SentimentSettings(backend="lexicon", max_wait_ms=100)
    group = group_at_end(bus_settings, unique)
    publish(
        bus_settings,
        [
            news_item(unique, 0, "Acme posts wonderful record profit"),
            news_item(unique, 1, "Acme hit by terrible fraud scandal"),
        ],
    )
    loop = build_loop(settings, bus_settings, group_id=group)
    loop.run(idle_timeout_s=3)
    ours = lambda r: f"s-{unique}-".encode() in r.value  # noqa: E731
    outs = {
        e.payload.item.item_id: e.payload
        for e in (
            envelopes.decode(r.value, pb.EnrichedNews)
            for r in read_all(bus_settings, NEWS_ENRICHED, wanted=2, match=ours)
        )
    }
    assert outs[f"s-{unique}-0"].sentiment > 0.3 > -0.3 > outs[f"s-{unique}-1"].sentiment
    assert outs[f"s-{unique}-0"].model_name == "vader"
    # Without an LLM the summary is extractive: the day's headlines so far, in time order.
    assert outs[f"s-{unique}-0"].summary == "Acme posts wonderful record profit"
