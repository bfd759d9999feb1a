"""SEP's SFT step (trl SFTTrainer) on a tiny random Llama: it learns the completions it is shown,
reports what it did, and moves only the student's trainable top layers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.trainer.datasets import answer
from services.trainer.sft import run_sft

# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


ROWS = [
    {"prompt": f"Day {i}: the stock rose {i + 1}% on strong orders. Action:", "completion": text}
    for i, text in enumerate(
        [
            answer("buy", "momentum is up"),
            answer("buy", "orders keep rising"),
            answer("buy", "the trend is up"),
            answer("buy", "momentum is up"),
        ]
    )
]


def completion_loss(student: LLMActorCritic, rows: list[dict[str, str]]) -> float:
    """Mean next-token cross-entropy over the completion tokens only (what SFT trains)."""
    tokenizer, total, count = student.tokenizer, 0.0, 0
    for row in rows:
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
        completion = tokenizer.encode(row["completion"], add_special_tokens=False)
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = student.lm(input_ids=ids).logits[0]
        # the logits at position t predict token t + 1
        predicted = logits[len(prompt) - 1 : -1]
        total += float(
            torch.nn.functional.cross_entropy(predicted, ids[0, len(prompt) :], reduction="sum")
        )
        count += len(completion)
    return total / count


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_sft_learns_the_completions_and_moves_only_the_trainable_layers(
    tiny_llama_dir: Path,
) -> None:
    torch.manual_seed(0)
    student = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=2))
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    loss_before = completion_loss(student, ROWS)

    report = run_sft(student, ROWS, max_steps=16, learning_rate=1e-2, batch_size=4, seed=0)

    assert report.steps == 16 and report.examples == len(ROWS)
    assert math.isfinite(report.loss) and report.seconds > 0
    loss_after = completion_loss(student, ROWS)
    # Measured 10.80 -> 9.87: slow, since the tied embedding / LM head stays frozen and only the
    # top two layers of a random model move, but far beyond float noise on the same rows.
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    changed = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "SFT changed no weight"
    assert changed <= trainable, f"frozen weights moved: {sorted(changed - trainable)}"
    # the top layers did train (not just, say, the final norm)
    assert any(".layers.3." in name for name in changed), sorted(changed)
    assert not student.lm.training  # left in eval mode, ready to serve


def test_sft_with_nothing_to_learn_reports_no_steps(tiny_llama_dir: Path) -> None:
    student = LLMActorCritic.from_pretrained(tiny_llama_dir)
    report = run_sft(student, [], max_steps=8, learning_rate=1e-2, batch_size=4, seed=0)
    assert report.steps == 0 and report.examples == 0 and math.isnan(report.loss)
