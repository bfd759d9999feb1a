"""The features service process: apply the repo, consume bars and news, serve features."""

from __future__ import annotations

import logging

from services.common.bus import ConsumerLoop
from services.common.http_server import HealthApp
from services.common.service import run_consumer_service
from services.features.consumer import SERVICE, build_loop
from services.features.repo import apply_repo
from services.features.settings import FeaturesSettings
from services.features.store import FeatureReader, FeatureWriter

log = logging.getLogger(__name__)


def add_routes(health: HealthApp, reader: FeatureReader) -> None:
    """GET /features/{ticker}: the online features, for humans and HTTP clients."""

    @health.app.get("/features/{ticker}")
    def online_features(ticker: str) -> dict[str, float | str]:
        return reader.online(ticker)


def main() -> int:
    settings = FeaturesSettings()
    health = HealthApp(SERVICE)
    state: dict[str, bool] = {"store": False}

    def build() -> ConsumerLoop:
        if settings.apply_on_start:
            apply_repo(settings)
        writer = FeatureWriter(settings)
        # The HTTP thread gets its own store: Feast's online stores are not shared across threads.
        add_routes(health, FeatureReader(settings))
        state["store"] = True
        loop, _ = build_loop(settings, writer=writer)
        return loop

    return run_consumer_service(
        SERVICE, build, health, extra_ready={"feature_store": lambda: state["store"]}
    )
