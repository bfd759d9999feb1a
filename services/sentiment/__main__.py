"""`python -m services.sentiment`: consume news.raw.v1, publish news.enriched.v1."""

from __future__ import annotations

from services.common.http_server import HealthApp
from services.common.service import exit_with, run_consumer_service
from services.sentiment.service import SERVICE, build_loop
from services.sentiment.settings import SentimentSettings


def main() -> int:
    settings = SentimentSettings()
    health = HealthApp(SERVICE)
    return run_consumer_service(SERVICE, lambda: build_loop(settings), health)


if __name__ == "__main__":
    exit_with(main())
