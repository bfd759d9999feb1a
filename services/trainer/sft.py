"""SEP's supervised step: tune the student's trainable layers on its correct answers (trl SFT)."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from services.trainer.trl_config import short_run_config

if TYPE_CHECKING:
    from services.policy.actor_critic import LLMActorCritic

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    steps: int
    seconds: float
    loss: float
    examples: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds else 0.0


def plain_float(model: Any) -> None:
    """Drop the GGUF quantization note the prepared SmolLM2 carries: its weights are dequantized
    floats, but the note makes HF's Trainer refuse to fine-tune it as "purely quantized"."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def run_sft(
    student: LLMActorCritic,
    rows: list[dict[str, str]],
    *,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    max_length: int = 1024,
) -> StepReport:
    """Train `student.lm` in place on prompt/completion rows (loss on the completion only).

    Only the student's trainable parameters move: HF's Trainer builds its optimizer from the
    parameters with requires_grad, and the actor-critic froze the lower layers.
    """
    if not rows or max_steps <= 0:
        return StepReport(0, 0.0, float("nan"), len(rows))
    plain_float(student.lm)
    with tempfile.TemporaryDirectory(prefix="rlmf-sft-") as out:
        config = short_run_config(
            SFTConfig,
            out,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            max_length=max_length,
            completion_only_loss=True,  # the prompt is context, the answer is what is learnt
        )
        trainer = SFTTrainer(
            model=student.lm,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=student.tokenizer,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    student.mark_weights_changed()
    student.lm.eval()
    log.info(
        "SFT: %d steps on %d examples, loss %.4f",
        result.global_step,
        len(rows),
        result.training_loss,
    )
    return StepReport(result.global_step, seconds, float(result.training_loss), len(rows))
