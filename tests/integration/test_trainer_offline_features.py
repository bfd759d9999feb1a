"""The trainer's states carry the features the live simulator's states carry, read point in time
from a real applied Feast repo (SQLite online, Parquet offline): each bar gets the newest row
stamped at or before its close, never a later day's, and a cycle trains and evaluates on them."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from services.features.settings import FeaturesSettings
from services.market.envs import DiscreteTradingEnv
from services.trainer.offline_features import offline_bar_features, state_inputs

# A Feast repo applied and joined point in time per test, and a trainer cycle: slow.
pytestmark = [
    pytest.mark.filterwarnings("ignore:On demand feature view is an experimental"),
    pytest.mark.slow,
]

MARKET = ("close", "ret_1d", "ret_5d", "ret_20d", "realised_vol_20d", "ma_gap_5d", "ma_gap_20d",
          "volume_z_20d", "rsi_14", "bars_seen")  # fmt: skip
DAY0 = datetime(2024, 3, 4, tzinfo=UTC)
CLOSE_AFTER = timedelta(hours=21)  # bars open at midnight and close 21 h later
MISSING_DAY = 3  # the features service never wrote this day


def _prices(days: int) -> pd.DataFrame:
    close = 100.0 + np.arange(days, dtype=float)
    index = pd.DatetimeIndex([DAY0 + timedelta(days=i) for i in range(days)], name="time")
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=index
    )
    frame.attrs.update(bar_seconds=CLOSE_AFTER.total_seconds(), periods_per_year=252.0)
    return frame


@pytest.fixture
def feast_settings(tmp_path: Path) -> Iterator[FeaturesSettings]:
    """An applied repo holding one row per day, stamped at the bar's close, except MISSING_DAY;
    the value of every market feature on day i is i (rsi_14: 10 * i)."""
    from services.features.engine import DayFeatures
    from services.features.repo import apply_repo, open_store
    from services.features.store import FeatureWriter

    settings = FeaturesSettings(
        data_dir=tmp_path / "feast", store="local", project=f"t_{uuid.uuid4().hex[:10]}"
    )
    apply_repo(settings)
    days = []
    for i in range(40):
        if i == MISSING_DAY:
            continue
        market = {name: float(i) for name in MARKET} | {"rsi_14": 10.0 * i}
        news = {
            "news_sentiment_mean": 0.5 if i % 2 == 0 else 0.0,
            "news_count": 1 if i % 2 == 0 else 0,
            "news_sentiment_decayed": 0.0,
            # The engine carries the latest summary over a day without news.
            "news_latest_summary": f"day {i - i % 2} news",
        }
        days.append(DayFeatures("MSFT", DAY0 + timedelta(days=i) + CLOSE_AFTER, market, news))
    FeatureWriter(settings).push(days)
    try:
        yield settings
    finally:
        open_store(settings).teardown()


def test_each_bar_gets_the_row_of_its_own_close_and_never_a_later_one(
    feast_settings: FeaturesSettings,
) -> None:
    from services.features.store import FeatureReader

    prices = _prices(8)
    features = offline_bar_features(FeatureReader(feast_settings), prices, "MSFT")
    rsi = features.numeric["rsi_14"].tolist()
    # Bar i closes at day i + 21 h, when day i's row was stamped: it is known at the cutoff.
    assert rsi[:MISSING_DAY] == [0.0, 10.0, 20.0]
    # No row for MISSING_DAY: its bar gets the day before's, not the next day's (look-ahead).
    assert rsi[MISSING_DAY] == 10.0 * (MISSING_DAY - 1)
    assert rsi[MISSING_DAY + 1 :] == [10.0 * i for i in range(MISSING_DAY + 1, 8)]
    assert features.sentiment.iloc[0] == 0.5 and math.isnan(features.sentiment.iloc[1])
    assert features.summaries.iloc[0] == "day 0 news" and features.summaries.iloc[1] == ""


def test_the_environments_states_carry_the_feast_features(
    feast_settings: FeaturesSettings,
) -> None:
    from services.features.store import FeatureReader

    prices = _prices(8)
    features = offline_bar_features(FeatureReader(feast_settings), prices, "MSFT")
    env = DiscreteTradingEnv(prices, ticker="MSFT", start=2, end=7, **state_inputs(features))
    env.reset(seed=0)
    for _ in range(3):
        state = env.current_state()
        day = (state.as_of - DAY0).days
        assert state.features["rsi_14"] == features.numeric["rsi_14"].iloc[day]
        assert "return_1" in state.features  # the price features stay
        row_day = day - 1 if day == MISSING_DAY else day  # the newest row known at the close
        expected = (0.5, f"day {row_day} news") if row_day % 2 == 0 else (None, "")
        assert (state.sentiment, state.news_summary) == expected, day
        env.step(1)


@pytest.mark.slow  # a whole trainer cycle on Feast features: ~15 s
def test_a_cycle_trains_and_evaluates_on_the_feast_features(
    feast_settings: FeaturesSettings,
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
    from services.policy.approval import Evidence, approve_artifact
    from services.policy.artifacts import save_artifact
    from services.trainer.cycle import run_cycle, set_current
    from services.trainer.gate import GateConfig
    from services.trainer.settings import TrainerSettings

    # The trainer reads the store RLMF_FEATURES_* name, as its Deployment/CronJob does.
    monkeypatch.setenv("RLMF_FEATURES_DATA_DIR", str(feast_settings.data_dir))
    monkeypatch.setenv("RLMF_FEATURES_PROJECT", feast_settings.project)
    monkeypatch.setenv("RLMF_FEATURES_STORE", "local")
    torch.manual_seed(0)
    models = tmp_path / "models"
    teacher = LLMActorCritic.from_pretrained(
        tiny_llama_dir, ActorCriticConfig(trainable_top_k=1), "v0"
    )
    save_artifact(teacher, models / "v0", {"version": "v0", "base_model": "tiny"})
    approve_artifact(models / "v0", sequence=0, evidence=Evidence(stage="init"))  # a teacher
    set_current(models, models / "v0")
    settings = TrainerSettings(
        models_dir=models,
        work_dir=tmp_path / "work",
        train_days=20,
        eval_days=8,
        # 8 held-out bars are too few for the bootstrap: this test is about the states' features
        gate=GateConfig(min_holdout_bars=8),
        recipe={
            "ppo": {
                "total_timesteps": 20,
                "num_steps": 10,
                "minibatch_size": 10,
                "gradient_accumulation_steps": 1,
            }
        },
        promotion="none",
        ticker="MSFT",
        features_source="feast",
    )
    result = run_cycle(settings, prices=_prices(40))
    assert result.training["features/feast_columns"] >= len(MARKET)
    assert all(math.isfinite(v) for v in result.training.values()), result.training
    assert math.isfinite(result.student_metrics["sharpe"]) or result.student_metrics
