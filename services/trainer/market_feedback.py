"""D_MF, RLMF's market-feedback set: the window's served decisions (market.feedback.v1) and
every training bar, each with the action the market's next move rewarded, encoded once by the
student's frozen base (the day cache makes that once per day)."""

from __future__ import annotations

from typing import Any

import torch

from services.common.market_state import ACTIONS, MarketState
from services.trainer import ppo
from services.trainer.datasets import FeedbackRecord, market_feedback_set
from services.trainer.offline_features import state_inputs
from services.trainer.settings import TrainerSettings


def feedback_set(
    student: Any,
    records: list[FeedbackRecord],
    args: ppo.PPOArgs,
    history: list[tuple[MarketState, int]] = (),  # type: ignore[assignment]
) -> ppo.FeedbackSet:
    """RLMF addition: D_MF for PPO's L_MF from the window's feedback records and, given
    `history`, the training bars' states with the action their next move rewarded, encoded
    once by the student's frozen base (the day cache makes that once per day). Empty when
    L_MF has no weight or samples no D_MF."""
    if not (args.mf_coef and args.mf_minibatch_size):
        return ppo.encode_feedback(student, [], [])
    examples = market_feedback_set(records, args.mf_flat_threshold)
    inputs = [student.encode_texts(ex.prefix, [ex.suffix]) for ex in examples]
    labels = [ACTIONS.index(ex.label) for ex in examples]
    inputs += [student.encode([state]) for state, _ in history]
    labels += [label for _, label in history]
    return ppo.encode_feedback(student, inputs, labels)


@torch.no_grad()
def shift_state_head_to_prior(student: Any, feedback: ppo.FeedbackSet, batch: int = 16) -> None:
    """Start the student's state head at D_MF's label base rates (StateHead.shift_to_prior),
    from the student's mean action logits over D_MF's states. No-op without a state head."""
    head = getattr(student, "state_head", None)
    if head is None or not len(feedback):
        return
    logits = []
    for start in range(0, len(feedback), batch):
        rows = range(start, min(start + batch, len(feedback)))
        mask = ppo.pad_left([feedback.attention_mask[i] for i in rows])
        out, _ = student.head_forward(ppo.pad_left([feedback.hidden[i] for i in rows]), mask)
        logits.append(out)
    counts = torch.bincount(feedback.labels, minlength=len(ACTIONS))
    head.shift_to_prior(torch.cat(logits).mean(0), counts)


def labelled_history(
    settings: TrainerSettings, plan: Any, args: ppo.PPOArgs
) -> list[tuple[MarketState, int]]:
    """Every training bar's state with the action its next move rewarded (RLMF's market
    feedback, read off the market rather than off served decisions), for each of the plan's
    tickers in turn. The label of bar t is the move t -> t+1, known by the cut-off for every
    bar but the window's last, which is left out. The portfolio line is drawn at random per
    bar, so L_MF sees every tail the policy can be served with."""
    rng = torch.Generator().manual_seed(settings.seed)
    out: list[tuple[MarketState, int]] = []
    for one in getattr(plan, "ticker_plans", (plan,)):
        out += _ticker_history(settings, one, args, rng)
    return out


def _ticker_history(
    settings: TrainerSettings, plan: Any, args: ppo.PPOArgs, rng: torch.Generator
) -> list[tuple[MarketState, int]]:
    from services.market.envs import DiscreteTradingEnv

    env = DiscreteTradingEnv(
        plan.prices,
        ticker=getattr(plan, "ticker", "") or settings.ticker,
        start=plan.train_start,
        end=plan.train_end,
        **state_inputs(plan.bar_features),
    )
    env.reset(seed=settings.seed)
    closes = plan.prices["close"].to_numpy(dtype=float)
    out: list[tuple[MarketState, int]] = []
    for t in range(plan.train_start, plan.train_end - 1):
        state = _with_invested_share(env.current_state(), float(torch.rand(1, generator=rng)))
        label = ppo.move_label(closes[t + 1] / closes[t] - 1.0, args.mf_flat_threshold)
        out.append((state, label))
        env.step(ACTIONS.index("hold"))
    return out


def _with_invested_share(state: MarketState, share: float) -> MarketState:
    worth = state.net_worth if state.net_worth > 0 else 10_000.0
    return state.model_copy(
        update={"position": share * worth / state.price, "cash": (1.0 - share) * worth}
    )
