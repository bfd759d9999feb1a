"""The versioned topic names, their payload types and their dead-letter twins."""

from __future__ import annotations

from google.protobuf.message import Message

from services.common.pb.rlmf.v1 import payloads_pb2 as pb

NEWS_RAW = "news.raw.v1"
NEWS_ENRICHED = "news.enriched.v1"
MARKET_BARS = "market.bars.v1"
FEATURES_READY = "features.ready.v1"
TRADING_DECISIONS = "trading.decisions.v1"
TRADING_FILLS = "trading.fills.v1"
PORTFOLIO_SNAPSHOTS = "portfolio.snapshots.v1"
MARKET_FEEDBACK = "market.feedback.v1"
MODELS_PROMOTIONS = "models.promotions.v1"
TRADING_SHADOW = "trading.shadow.v1"

DLQ_SUFFIX = ".dlq"

PAYLOAD_TYPES: dict[str, type[Message]] = {
    NEWS_RAW: pb.NewsItem,
    NEWS_ENRICHED: pb.EnrichedNews,
    MARKET_BARS: pb.Bar,
    FEATURES_READY: pb.FeaturesReady,
    TRADING_DECISIONS: pb.Decision,
    TRADING_FILLS: pb.Fill,
    PORTFOLIO_SNAPSHOTS: pb.PortfolioSnapshot,
    MARKET_FEEDBACK: pb.MarketFeedback,
    MODELS_PROMOTIONS: pb.ModelPromotion,
    TRADING_SHADOW: pb.ShadowDecision,
}

ALL_TOPICS: tuple[str, ...] = tuple(PAYLOAD_TYPES)


def dlq(topic: str) -> str:
    """The dead-letter twin of `topic`."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


def all_topics_with_dlq() -> list[str]:
    """Every topic the system uses, each followed by its `.dlq` twin."""
    return [name for topic in ALL_TOPICS for name in (topic, dlq(topic))]


def payload_type(topic: str) -> type[Message]:
    """The protobuf payload class carried on `topic`; KeyError names unknown topics."""
    try:
        return PAYLOAD_TYPES[topic]
    except KeyError:
        raise KeyError(f"unknown topic {topic!r}; known: {', '.join(ALL_TOPICS)}") from None
