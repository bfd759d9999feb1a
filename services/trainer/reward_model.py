"""SEP's Bradley-Terry reward model over (chosen, rejected) answers, via trl's RewardTrainer.

The saved folder is a one-label sequence-classification model with its tokenizer: what the
policy's best-of-n scorer (services.policy.explain.SequenceClassifierScorer) loads.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from services.trainer.sft import StepReport, plain_float
from services.trainer.trl_config import short_run_config

log = logging.getLogger(__name__)


def load_reward_base(base: Path, trainable_top_k: int, seed: int) -> tuple[Any, Any]:
    """A one-label classifier over `base`'s LM; only the top k layers, final norm and score head
    train (the same frozen-base economy as the policy: fits CPU step budgets)."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    plain_float(model)
    layers = model.model.layers
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_top_k :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    model.score.requires_grad_(True)
    return model, tokenizer


def train_reward_model(
    base: Path,
    pairs: list[dict[str, str]],
    out: Path,
    *,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    trainable_top_k: int,
    max_length: int = 1024,
) -> StepReport:
    """Fit the reward model on prompt/chosen/rejected rows and save it atomically at `out`."""
    if not pairs or max_steps <= 0:
        return StepReport(0, 0.0, float("nan"), len(pairs))
    model, tokenizer = load_reward_base(base, trainable_top_k, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlmf-rm-") as work:
        config = short_run_config(
            RewardConfig,
            work,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            max_length=max_length,
        )
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(pairs),
            processing_class=tokenizer,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
        try:
            trainer.save_model(str(staging))
            tokenizer.save_pretrained(staging)
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)  # the folder appears complete or not at all
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "reward model: %d steps on %d pairs, loss %.4f -> %s",
        result.global_step,
        len(pairs),
        result.training_loss,
        out,
    )
    return StepReport(result.global_step, seconds, float(result.training_loss), len(pairs))
