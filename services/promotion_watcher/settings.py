"""Promotion watcher settings from the environment (prefix RLMF_WATCHER_)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import RlmfSettings


class WatcherSettings(RlmfSettings):
    """Env: RLMF_WATCHER_GROUP_ID. The bus and HTTP settings are the shared RLMF_BUS_* and
    RLMF_HTTP_* ones."""

    model_config = SettingsConfigDict(env_prefix="RLMF_WATCHER_", extra="ignore")

    group_id: str = "rlmf-promotion-watcher"
    """Its consumer group on models.promotions.v1 and market.feedback.v1. One replica: its
    counters are the whole topic's, and a second replica would split them."""
