"""The Bradley-Terry reward model (trl RewardTrainer) learns to rank chosen above rejected."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from services.trainer.datasets import answer
from services.trainer.reward_model import train_reward_model


def _pairs(seed: int, n: int) -> list[dict[str, str]]:
    """The market rose -> buy is chosen; fell -> sell is chosen (the SEP pair shape)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        move = rng.choice([-1, 1]) * rng.uniform(0.5, 3.0)
        trend = "up" if move > 0 else "down"
        prompt = f"Yesterday the stock moved {move:+.1f}% and the trend is {trend}. Action:"
        good, bad = ("buy", "sell") if move > 0 else ("sell", "buy")
        rows.append(
            {
                "prompt": prompt,
                "chosen": answer(good, "follow the trend"),
                "rejected": answer(bad, "follow the trend"),
            }
        )
    return rows


def test_reward_model_ranks_held_out_chosen_above_rejected(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "rm"
    report = train_reward_model(
        tiny_llama_dir,
        _pairs(0, 64),
        out,
        max_steps=60,
        learning_rate=3e-3,
        batch_size=8,
        seed=0,
        trainable_top_k=2,
    )
    assert report.steps == 60
    # loaded the way the policy server's best-of-n scorer loads it
    from services.policy.explain import SequenceClassifierScorer

    scorer = SequenceClassifierScorer(out)
    held_out = _pairs(123, 40)
    chosen = scorer.score([r["prompt"] for r in held_out], [r["chosen"] for r in held_out])
    rejected = scorer.score([r["prompt"] for r in held_out], [r["rejected"] for r in held_out])
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
    assert accuracy >= 0.9, accuracy
