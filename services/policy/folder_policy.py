"""A saved policy folder as a market-library `Policy`: the backtest, the trainer's gate and the
demo's report decide with the LLM actor-critic in-process through this adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.market_state import Decision, MarketState


class FolderPolicy:
    """Adapter over services.policy's LLM actor-critic loaded from a saved folder."""

    def __init__(self, model: Any, folder: Path) -> None:
        self.model = model
        self.name = str(folder)

    def decide(self, states: list[MarketState]) -> list[Decision]:
        return [Decision.model_validate(d.model_dump()) for d in self.model.decide(states)]


def load_folder_policy(folder: str | Path) -> FolderPolicy:
    """Load a saved LLM policy folder through services.policy.

    A versioned artifact (with manifest.json) loads through services.policy.artifacts, which
    verifies every file's hash; a plain model folder loads as a fresh actor-critic (its value
    head newly initialised). Imported lazily: torch is only needed when a folder policy is used.
    """
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        from services.policy.artifacts import load_artifact

        return FolderPolicy(load_artifact(folder), folder)
    from services.policy.actor_critic import LLMActorCritic

    return FolderPolicy(LLMActorCritic.from_pretrained(folder, model_version=folder.name), folder)
