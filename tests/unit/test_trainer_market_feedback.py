"""D_MF, the market-feedback set: its prompts are the policy's own, only outcomes known by the
window's end enter it, and in PPO's L_MF it moves the student towards the realised moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from services.common.market_state import ACTIONS, MarketState
from services.common.state_block import state_block
from services.market.accounting import RewardConfig
from services.market.envs import DiscreteTradingEnv
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.prompt import build_prompt
from services.trainer import ppo
from services.trainer.datasets import FeedbackRecord, feedback_in_window, market_feedback_set
from services.trainer.market_feedback import feedback_set

T0 = datetime(2024, 3, 1, 21, tzinfo=UTC)
BUY = ACTIONS.index("buy")


# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _state(i: int) -> MarketState:
    closes = [50.0 + 3 * i + k for k in range(6)]
    return MarketState(
        ticker="FEED",
        as_of=T0 + timedelta(days=i),
        recent_closes=closes,
        cash=1000.0,
        news_summary=f"Feedback day {i}: orders rose.",
        sentiment=0.5,
    )


def _record(i: int, move: float = 0.02, realised_days: int = 1) -> FeedbackRecord:
    """A market.feedback.v1 record as the simulator writes it (state = the state block)."""
    return FeedbackRecord(
        ticker="FEED",
        decision_time=T0 + timedelta(days=i),
        realised_time=T0 + timedelta(days=i + realised_days),
        state=state_block(_state(i)),
        action="hold",
        reward=0.0,
        realised_return=move,
        model_version="v0",
    )


def _student(folder: Path) -> LLMActorCritic:
    torch.manual_seed(0)
    return LLMActorCritic.from_pretrained(folder, ActorCriticConfig(trainable_top_k=2, seed=0))


def test_feedback_prompts_are_the_prompts_the_policy_decided_on() -> None:
    records = [_record(0, 0.02), _record(1, -0.01), _record(2, 0.0)]
    examples = market_feedback_set(records)
    assert [ex.prompt for ex in examples] == [build_prompt(_state(i)).text for i in range(3)]
    assert [ex.label for ex in examples] == ["buy", "sell", "hold"]
    assert market_feedback_set([_record(0, 0.001)], flat=0.005)[0].label == "hold"


def test_only_outcomes_known_by_the_window_end_enter_the_training_set() -> None:
    start, end = T0 + timedelta(days=1), T0 + timedelta(days=5)
    records = [_record(i) for i in range(8)]  # decided on day i, outcome known on day i + 1
    late = _record(2, move=-0.05, realised_days=4)  # decided inside, outcome known after the end
    kept = feedback_in_window([*records, late], start, end)
    # day 0 was decided before the window; day 4's outcome arrives on the last day, day 5's after
    assert [r.day for r in kept] == [(T0 + timedelta(days=i)).date() for i in (1, 2, 3, 4)]
    assert late not in kept
    assert all(start <= r.decision_time and r.realised_time <= end for r in kept)
    assert feedback_in_window([*records, late], pd.Timestamp(start), pd.Timestamp(end)) == kept


def test_feedback_set_caches_the_frozen_base_on_the_policy_prompt(tiny_llama_dir: Path) -> None:
    student = _student(tiny_llama_dir)
    args = ppo.PPOArgs(mf_coef=1.0)
    mf = feedback_set(student, [_record(0, 0.02), _record(1, -0.01)], args)
    assert len(mf) == 2 and mf.labels.tolist() == [BUY, ACTIONS.index("sell")]
    ids, mask = student.encode([_state(1)])  # what the policy ran when it decided on day 1
    assert torch.equal(mf.attention_mask[1], mask[0])
    assert torch.allclose(mf.hidden[1], student.base_hidden(ids, mask)[0])
    # no weight on L_MF, or no D_MF samples per minibatch: nothing to encode
    for off in (ppo.PPOArgs(mf_coef=0.0), ppo.PPOArgs(mf_minibatch_size=0)):
        assert len(feedback_set(student, [_record(0)], off)) == 0


def _falling(days: int = 80) -> pd.DataFrame:
    """A steady 1% daily fall: the env's own moves and rewards all say `sell`."""
    close = 100 * 0.99 ** np.arange(days)
    index = pd.bdate_range("2024-01-01", periods=days, tz="UTC", name="time")
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=index
    )
    frame.attrs["periods_per_year"] = 252.0
    return frame


def _buy_probability(student: LLMActorCritic, states: list[MarketState]) -> float:
    probs, _ = student.policy_outputs(states, use_prefix_cache=False)
    return float(probs[:, BUY].mean())


def _train(folder: Path, feedback_records: list[FeedbackRecord]) -> float:
    """A short PPO+RLMF run in a falling market; P(buy) on the feedback states afterwards."""
    student, teacher = _student(folder), _student(folder)
    args = ppo.PPOArgs(
        total_timesteps=80,
        num_steps=40,
        learning_rate=3e-3,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        update_epochs=4,
        kl_coef=0.0,
        mf_coef=1.0,
        mf_minibatch_size=8,
        seed=0,
    )
    env = DiscreteTradingEnv(
        _falling(),
        start=0,
        end=70,
        max_episode_steps=20,
        random_start=True,
        reward_config=RewardConfig(stability_coef=0.0, cost_coef=0.0),
    )
    mf = feedback_set(student, feedback_records, args)
    ppo.train(student, teacher, env, lambda s: student.encode([s]), args, feedback=mf)
    student.mark_weights_changed()
    return _buy_probability(student, [_state(i) for i in range(8)])


@pytest.mark.slow  # a training loop: ~12 s
def test_market_feedback_records_teach_the_student_their_realised_moves(
    tiny_llama_dir: Path,
) -> None:
    states = [_state(i) for i in range(8)]
    before = _buy_probability(_student(tiny_llama_dir), states)
    records = [_record(i, move=0.02) for i in range(8)]  # every one of them rose next day
    without_feedback = _train(tiny_llama_dir, [])
    with_feedback = _train(tiny_llama_dir, records)
    # The env (falling prices) pushes towards sell; only D_MF says buy on these states.
    # Measured: before 0.32, without D_MF 0.16, with D_MF 0.70.
    assert with_feedback > before + 0.2, (before, without_feedback, with_feedback)
    assert with_feedback > without_feedback + 0.2, (before, without_feedback, with_feedback)


def test_the_window_starts_at_the_first_bar_whose_state_carries_features() -> None:
    from services.trainer.offline_features import BarFeatures, first_bar_with_features

    index = pd.date_range("2024-01-01", periods=6, tz="UTC")
    numeric = pd.DataFrame({"rsi_14": [None, None, None, 50.0, 51.0, 52.0]}, index=index)
    sentiment = pd.Series([None, None, 0.3, None, 0.1, None], index=index, dtype=float)
    news = BarFeatures(numeric, sentiment, pd.Series("", index=index))
    assert first_bar_with_features(news) == 2  # the news came before the features
    empty = BarFeatures(
        pd.DataFrame(index=index), pd.Series(float("nan"), index=index), news.summaries
    )
    assert first_bar_with_features(empty) == 0 and first_bar_with_features(None) == 0


def test_the_state_head_starts_at_the_labels_base_rates_not_the_lms_lean(
    tiny_llama_dir: Path,
) -> None:
    """After shift_state_head_to_prior the student's mean policy over D_MF's states gives the
    labels' (add-one smoothed) base rates, whatever the LM preferred, and the head's weights
    are untouched: only where the policy starts moves."""
    from services.trainer.market_feedback import shift_state_head_to_prior

    torch.manual_seed(0)
    student = LLMActorCritic.from_pretrained(
        tiny_llama_dir, ActorCriticConfig(trainable_top_k=1, state_head=True, train_lm_layers=False)
    )
    assert student.state_head is not None
    labels = [BUY] * 6 + [ACTIONS.index("sell")] * 3  # no "hold": smoothing keeps it possible
    feedback = ppo.encode_feedback(student, [student.encode([_state(i)]) for i in range(9)], labels)
    student.state_head.standardise(torch.stack([h[-1] for h in feedback.hidden]))
    weights = student.state_head.linear.weight.clone()

    shift_state_head_to_prior(student, feedback)

    with torch.no_grad():
        logits, _ = student.head_forward(
            ppo.pad_left(feedback.hidden), ppo.pad_left(feedback.attention_mask)
        )
    base_rates = torch.tensor([3 + 1, 0 + 1, 6 + 1]) / (9 + 3)  # ACTIONS order: sell, hold, buy
    torch.testing.assert_close(torch.softmax(logits.mean(0), -1), base_rates, atol=1e-4, rtol=0)
    torch.testing.assert_close(student.state_head.linear.weight, weights)
