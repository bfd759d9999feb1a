"""The trl training arguments the trainer's SFT and reward-model steps share.

Both are short runs on a step budget inside a cycle: a throwaway output folder, no checkpoints,
no reporting or progress bars, seeded model and data order, a loss logged every step. Each
caller passes only what differs (e.g. SFT's completion-only loss).
"""

from __future__ import annotations

from typing import Any, TypeVar

from trl import RewardConfig, SFTConfig

ConfigT = TypeVar("ConfigT", SFTConfig, RewardConfig)


def short_run_config(
    config_class: type[ConfigT],
    output_dir: str,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_length: int,
    **specific: Any,
) -> ConfigT:
    """`config_class` (SFTConfig or RewardConfig) for a cycle's short CPU run, plus `specific`."""
    return config_class(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        max_length=max_length,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # trl turns bf16 on unless told: the weights are float32 and the run is on the CPU
        bf16=False,
        fp16=False,
        **specific,
    )
