"""The recipe is deterministic by default: the same inputs, seed and settings give the same
student, bit for bit, on one machine; another seed gives another student. A tiny random Llama
with the teacher's shape (state head on the split) runs every phase: the state head's start,
the market-feedback phase on the window's labelled bars, and PPO."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.policy.artifacts import init_artifact, save_artifact, teacher_config
from services.trainer.cycle import plan_cycle, set_current
from services.trainer.gate import GateConfig
from services.trainer.offline_features import BarFeatures
from services.trainer.plan import TrainingClock
from services.trainer.recipe import RunControl, train_student
from services.trainer.settings import TrainerSettings

# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _news(tones: pd.Series) -> BarFeatures:
    """Features with a day's tone and a headline per bar."""
    return BarFeatures(
        numeric=pd.DataFrame(index=tones.index),
        sentiment=tones,
        summaries=pd.Series([f"tone {t:+.2f}" for t in tones], index=tones.index),
    )


def _random_walk(days: int = 60) -> pd.DataFrame:
    """Ups and downs, so the market-feedback labels are not all one action."""
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    index = pd.bdate_range("2024-01-01", periods=days, tz="UTC", name="time")
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=index
    )
    frame.attrs["periods_per_year"] = 252.0
    return frame


def _student_weights(
    tiny_llama_dir: Path, root: Path, seed: int, ppo_steps: int = 20
) -> dict[str, str]:
    """Train one student from a fresh teacher in its own folders; the sha256 of each weights
    file of the student's saved artifact."""
    models = root / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0", teacher_config(seed=0))
    set_current(models, models / "v0")
    settings = TrainerSettings(
        models_dir=models,
        work_dir=root / "work",
        train_days=30,
        eval_days=10,
        embargo_days=0,
        gate=GateConfig(min_holdout_bars=10),
        seed=seed,
        recipe={
            "mf_epochs": 2,
            "ppo": {
                "total_timesteps": ppo_steps,
                "num_steps": 10,
                "minibatch_size": 10,
                "gradient_accumulation_steps": 2,
            },
        },
    )
    plan = plan_cycle(settings, _random_walk())
    training: dict[str, float] = {}
    student, _ = train_student(settings, plan, [], training, RunControl(TrainingClock(None)))
    assert training["mf/fit_steps"] > 0 and training["ppo/iterations"] == ppo_steps // 10
    assert any(root.rglob("ckpt-*.pt")) == (ppo_steps > 0)
    out = root / "student"
    save_artifact(student, out, {"version": plan.version, "base_model": "tiny"})
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.glob("*.safetensors"))
    }


def test_the_same_seed_gives_the_same_student_bit_for_bit(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    first = _student_weights(tiny_llama_dir, tmp_path / "first", seed=0)
    second = _student_weights(tiny_llama_dir, tmp_path / "second", seed=0)
    assert first and first == second


def test_no_ppo_steps_is_the_head_only_student(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A PPO budget of 0 skips the phase (no iteration, no checkpoint): the market-feedback
    phase's student alone, which the same seed's PPO then changes."""
    head_only = _student_weights(tiny_llama_dir, tmp_path / "head", seed=0, ppo_steps=0)
    with_ppo = _student_weights(tiny_llama_dir, tmp_path / "ppo", seed=0, ppo_steps=20)
    assert head_only.keys() == with_ppo.keys() and head_only != with_ppo


def test_another_seed_gives_another_student(tiny_llama_dir: Path, tmp_path: Path) -> None:
    zero = _student_weights(tiny_llama_dir, tmp_path / "zero", seed=0)
    one = _student_weights(tiny_llama_dir, tmp_path / "one", seed=1)
    # the frozen LM is the same; what the recipe trains (the heads) differs
    assert zero.keys() == one.keys() and zero != one


def test_the_student_version_names_the_seed_and_the_recipe(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A work folder reused with another seed, recipe or news must not reload another run's
    student; the same ones must find theirs again (a resumed cycle)."""
    models = tmp_path / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0", teacher_config())
    set_current(models, models / "v0")

    prices = _random_walk()

    def version(news: BarFeatures | None = None, **fields: object) -> str:
        settings = TrainerSettings(
            models_dir=models,
            train_days=30,
            eval_days=10,
            gate=GateConfig(min_holdout_bars=10),
            **fields,  # type: ignore[arg-type]
        )
        return plan_cycle(settings, prices, news).version

    base = version(seed=0)
    assert base == version(seed=0) and "-seed0-" in base
    assert version(seed=1) != base
    assert version(seed=0, recipe={"mf_epochs": 3}) != base
    tones = pd.Series(np.linspace(-0.5, 0.5, len(prices)), index=prices.index)
    with_news = version(_news(tones), seed=0)
    assert with_news not in (base, version(_news(-tones), seed=0))
    assert with_news == version(_news(tones.copy()), seed=0)
    shuffled = tones.sample(frac=1.0, random_state=0).set_axis(prices.index)
    assert version(_news(shuffled), seed=0) != with_news, "a shuffled-news control would reload"


def test_one_wall_clock_cap_for_the_whole_cycle() -> None:
    """RLMF_TRAINER_CYCLE_MINUTES caps a cycle, not each fold: a phase that spent the cap
    leaves the next fold's phases none, and the clock remembers that it cut."""
    clock = TrainingClock(minutes=0.001)  # 60 ms
    first = clock.deadline()
    assert first is not None and first - time.monotonic() <= 0.06
    time.sleep(0.08)
    clock.stop(cut=True)
    assert clock.cut and clock.spent_s >= 0.06
    later = clock.deadline()  # the next fold's phase: the cap is spent
    assert later is not None and later <= time.monotonic()
    clock.stop(cut=False)
    assert clock.cut  # once cut, the cycle's result says so


def test_without_a_cap_nothing_is_cut() -> None:
    clock = TrainingClock(minutes=None)
    assert clock.deadline() is None
    clock.stop(cut=False)
    assert not clock.cut


def test_ppo_is_rewarded_with_the_return_the_gate_scores_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recipe's PPO env pays each step's change in net worth (costs included) and no
    stability penalty or news bonus; asking for one term by env keeps the others aligned."""
    from types import SimpleNamespace

    from services.trainer.recipe import _training_env, ppo_args

    settings = TrainerSettings()
    prices = _random_walk(40)
    plan = SimpleNamespace(
        ticker_plans=(
            SimpleNamespace(prices=prices, ticker="SYN", train_start=0, train_end=39,
                            bar_features=None),
        )
    )  # fmt: skip
    env = _training_env(settings, plan, ppo_args(settings))  # type: ignore[arg-type]
    env.reset(seed=0)
    before = env.cash + env.position * float(prices["close"].iloc[env._t])
    _, reward, _, _, info = env.step(2)  # buy: pays the cost and trades the whole account
    assert reward == pytest.approx(info["net_worth"] / before - 1.0, rel=1e-9, abs=1e-12)
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__REWARD__STABILITY_COEF", "0.1")
    asked = TrainerSettings().recipe.reward
    assert (asked.stability_coef, asked.cost_coef, asked.sentiment_coef) == (0.1, 0.0, 0.0)
