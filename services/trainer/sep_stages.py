"""SEP's supervised stages of a cycle, before PPO: SFT on correct answers and a Bradley-Terry
reward model on self-reflection pairs (both off unless their step counts are set)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from services.trainer.datasets import FeedbackRecord, preference_pairs, sft_set
from services.trainer.settings import TrainerSettings


def run_sep_stages(
    settings: TrainerSettings,
    student: Any,
    teacher_dir: Path,
    records: list[FeedbackRecord],
    work: Path,
    training: dict[str, float],
) -> None:
    """SEP's stages: SFT on the answers the market proved right, then the reward model on
    self-reflection pairs; each stage once (a resumed cycle reuses what a stage saved)."""
    from services.policy.artifacts import REWARD_MODEL
    from services.policy.prompt import prompt_prefix
    from services.trainer.approvals import verified_teacher
    from services.trainer.reward_model import train_reward_model
    from services.trainer.sft import run_sft

    if not records:
        return
    recipe = settings.recipe
    done = work / "sft.pt"
    if recipe.sft_steps and done.is_file():
        student.load_state_dict(torch.load(done, map_location="cpu"), strict=False)
    elif recipe.sft_steps:
        rows = sft_set(
            records, student, prompt_prefix(), recipe.max_sft_examples, recipe.explain_tokens
        )
        report = run_sft(
            student,
            rows,
            max_steps=recipe.sft_steps,
            learning_rate=recipe.sft_learning_rate,
            batch_size=4,
            seed=settings.seed,
        )
        training.update({"sft/steps": report.steps, "sft/examples": report.examples})
        if report.steps:  # no correct answers in the window: no steps and no loss to report
            training["sft/loss"] = report.loss
        work.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}
        torch.save(trainable, work / ".sft.tmp")
        os.replace(work / ".sft.tmp", done)
    rm_dir = work / REWARD_MODEL
    if recipe.rm_steps and not rm_dir.is_dir():
        pairs, stats = preference_pairs(
            records,
            student,
            prompt_prefix(),
            recipe.max_pairs,
            recipe.explain_tokens,
            recipe.reflection_tries,
            settings.seed,
        )
        training.update(
            {"rm/wrong": stats.wrong, "rm/pairs": stats.pairs, "rm/unresolved": stats.unresolved}
        )
        # The reward model starts from the teacher's weights: read from a copy checked again
        # here, as the cycle's teacher was, not from the shared folder.
        with verified_teacher(settings, teacher_dir) as (_, teacher_copy):
            report = train_reward_model(
                teacher_copy,
                pairs,
                rm_dir,
                max_steps=recipe.rm_steps,
                learning_rate=recipe.rm_learning_rate,
                batch_size=4,
                seed=settings.seed,
                # the teacher's own depth: the reward model starts from the teacher's folder
                trainable_top_k=student.config.trainable_top_k,
            )
        training["rm/steps"] = report.steps
        if report.steps:  # no resolved pair: no steps, and no NaN loss for the gate to refuse
            training["rm/loss"] = report.loss
