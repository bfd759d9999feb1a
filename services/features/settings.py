"""Settings of the features service and its Feast repo (env prefix RLMF_FEATURES_)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from services.common import topics
from services.common.settings import RlmfSettings

# The checked-in definitions live at the repository root; an image copies them alongside.
_REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "RLMF_FEATURES_"
REDIS_PASSWORD_ENV = f"{ENV_PREFIX}REDIS_PASSWORD"
"""The variable `redis_password` is read from, and the one the rendered Feast config names."""


class FeaturesSettings(RlmfSettings):
    """Where the Feast repo is, where it is applied to, and how features are computed."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # --- the Feast repo --------------------------------------------------------------------
    repo_dir: Path = _REPO_ROOT / "feature_repo"
    """The checked-in definitions (feature_definitions.py and the two store configs)."""
    data_dir: Path = _REPO_ROOT / "feature_repo" / "data"
    """Where the repo is applied: the rendered feature_store.yaml, a copy of the definitions,
    the registry, the SQLite online store and the Parquet offline files. Tests use a tmp dir."""
    store: str = Field(default="local", pattern="^(local|cluster)$")
    """`local`: SQLite online (feature_store.yaml); `cluster`: Redis online
    (feature_store.cluster.yaml). Both keep the offline store in Parquet files."""
    project: str = Field(default="rlmf", pattern=r"^[a-z][a-z0-9_]*$")
    """Feast project; the Redis keys are prefixed by it, so tests use their own."""
    registry_path: Path | None = None
    """Registry file; default data_dir/registry.db."""
    online_path: Path | None = None
    """SQLite online store file (local store); default data_dir/online.db."""
    redis_address: str = "127.0.0.1:6379"
    """Redis connection string for the cluster store, e.g. `redis:6379,db=2`."""
    redis_password: SecretStr | None = None
    """Redis' password (the chart sets it from a Secret). The rendered feature_store.yaml names
    it only as `${RLMF_FEATURES_REDIS_PASSWORD}`, which Feast expands when it loads the file."""
    apply_on_start: bool = True
    """The service applies the repo when it starts (idempotent), so `rlmf up` needs no step."""
    feature_service: str = "policy_v1"
    """The FeatureService readers ask for by default and features.ready names."""

    # --- event time --------------------------------------------------------------------------
    tickers: Annotated[list[str], NoDecode] = ["MSFT", "GOOGL"]
    """Tickers the service accepts; a bar or news item for any other is dead-lettered. Empty
    (RLMF_FEATURES_TICKERS=""): any ticker, what `rlmf up` runs with unless --tickers is given."""
    news_cutoff_before_close_s: float = Field(default=0.0, ge=0.0)
    """Day t's news is what was published up to (close_t - this many seconds); 0 = the close."""
    sentiment_half_life_days: float = Field(default=3.0, gt=0.0)
    """Half-life, in trading days, of the exponentially decayed sentiment."""
    dedup_memory: int = Field(default=256, ge=1)
    """Per ticker: recent bar timestamps and news ids remembered for de-duplication."""

    # --- the stream --------------------------------------------------------------------------
    bars_topic: str = topics.MARKET_BARS
    """Topic the market bars (rlmf.v1.Bar) are read from."""
    news_topic: str = topics.NEWS_ENRICHED
    """Topic the scored news (rlmf.v1.EnrichedNews) is read from."""
    ready_topic: str = topics.FEATURES_READY
    """Topic a features.ready event goes to when a ticker's day is served (created if absent)."""
    push_attempts: int = Field(default=3, ge=1)
    """Attempts for one push to Feast before the batch's messages are dead-lettered."""

    @field_validator("tickers", mode="before")
    @classmethod
    def _split_tickers(cls, value: object) -> object:
        # Accept `MSFT,GOOGL` as well as a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [t.strip() for t in text.split(",") if t.strip()]
        return value

    @property
    def redis_connection_string(self) -> str:
        """Feast's Redis connection string as written to feature_store.yaml: the address, and
        when a password is set a `${RLMF_FEATURES_REDIS_PASSWORD}` placeholder for it. The
        applied repo sits on a volume other pods mount, so the secret itself never goes there;
        Feast's loader (os.path.expandvars in feast.repo_config.load_repo_config) fills it in."""
        if self.redis_password is None:
            return self.redis_address
        return f"{self.redis_address},password=${{{REDIS_PASSWORD_ENV}}}"

    @property
    def registry(self) -> Path:
        return self.registry_path or self.data_dir / "registry.db"

    @property
    def online(self) -> Path:
        return self.online_path or self.data_dir / "online.db"

    @property
    def state_path(self) -> Path:
        """The engine's rolling state, saved after each micro-batch so a restart resumes it."""
        return self.data_dir / "engine_state.json"

    @property
    def offline_dir(self) -> Path:
        return self.data_dir / "offline"
