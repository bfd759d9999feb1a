"""Wiring the sentiment service: the scorer and summarizer from settings, the consumer loop."""

from __future__ import annotations

import logging

from services.common.bus import ConsumerLoop
from services.common.http_server import HealthApp
from services.common.service import run_consumer_service
from services.common.settings import BusSettings
from services.common.topics import NEWS_ENRICHED, NEWS_RAW
from services.sentiment.enrich import EnrichHandler
from services.sentiment.scorer import LexiconScorer, LLMOptions, LLMScorer, SentimentScorer
from services.sentiment.settings import SentimentSettings
from services.sentiment.summarizer import Summarizer

log = logging.getLogger(__name__)

SERVICE = "sentiment"


def build_scorer(settings: SentimentSettings) -> SentimentScorer:
    """The configured backend; the lexicon when the LLM can not load and fallback is on."""
    if settings.backend == "lexicon":
        return LexiconScorer()
    options = LLMOptions(
        batch_size=settings.llm_batch_size,
        few_shot=settings.few_shot,
        calibrate=settings.calibrate,
        max_text_chars=settings.max_text_chars,
        threads=settings.threads,
        device=settings.device,
    )
    try:
        return LLMScorer(settings.model_dir, options)
    except (OSError, ValueError) as exc:
        if not settings.fallback_to_lexicon:
            raise
        log.error(
            "LLM at %s failed to load (%s); falling back to the lexicon", settings.model_dir, exc
        )
        return LexiconScorer()


def build_handler(settings: SentimentSettings) -> EnrichHandler:
    scorer = build_scorer(settings)
    summarizer = None
    if settings.summaries and isinstance(scorer, LLMScorer):
        summarizer = Summarizer(
            scorer.model,
            scorer.tokenizer,
            max_new_tokens=settings.summary_max_new_tokens,
            cache_size=settings.summary_cache_size,
        )
    return EnrichHandler(
        scorer,
        summarizer,
        max_text_chars=settings.max_text_chars,
        summary_max_headlines=settings.summary_max_headlines,
    )


def micro_batch_bus(settings: SentimentSettings, bus: BusSettings | None = None) -> BusSettings:
    """Bus settings whose poll size and wait are the sentiment micro-batch's size and wait."""
    bus = bus or BusSettings()
    return bus.model_copy(
        update={"max_records": settings.max_batch, "poll_timeout_ms": settings.max_wait_ms}
    )


def build_loop(
    settings: SentimentSettings,
    bus: BusSettings | None = None,
    handler: EnrichHandler | None = None,
    topic: str = NEWS_RAW,
    group_id: str | None = None,
) -> ConsumerLoop:
    """The service's consumer loop (`group_id` defaults to the bus's rlmf-sentiment)."""
    handler = handler or build_handler(settings)
    return ConsumerLoop(
        service=SERVICE,
        topics=[topic],
        group_id=group_id,
        settings=micro_batch_bus(settings, bus),
        handle_batch=handler,
        create_topics=[NEWS_ENRICHED],
    )


def main() -> int:
    """The sentiment process: `python -m services.sentiment`; returns the exit code."""
    settings = SentimentSettings()
    health = HealthApp(SERVICE)
    return run_consumer_service(SERVICE, lambda: build_loop(settings), health)
