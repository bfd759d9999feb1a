"""An artifact can carry the reward model trained beside it: its files are hashed with the rest,
and the policy server ranks explanations with it (best-of-n) without any other setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.policy import metrics
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.approval import Evidence, approve_artifact
from services.policy.artifacts import REWARD_MODEL, ArtifactError, save_artifact, verify_artifact
from services.policy.server import PolicyModel
from services.policy.settings import PolicySettings
from services.trainer.datasets import answer
from services.trainer.reward_model import train_reward_model


@pytest.fixture(scope="module")
def artifact_with_reward_model(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("artifact")
    pairs = [
        {
            "prompt": f"Day {i}. Action:",
            "chosen": answer("buy", "up"),
            "rejected": answer("sell", "up"),
        }
        for i in range(4)
    ]
    report = train_reward_model(
        tiny_llama_dir,
        pairs,
        root / "rm",
        max_steps=1,
        learning_rate=1e-3,
        batch_size=2,
        seed=0,
        trainable_top_k=2,
    )
    assert report.steps == 1
    model = LLMActorCritic.from_pretrained(
        tiny_llama_dir, ActorCriticConfig(trainable_top_k=1), "v1"
    )
    save_artifact(
        model, root / "v1", {"version": "v1", "base_model": "tiny"}, reward_model=root / "rm"
    )
    approve_artifact(root / "v1", sequence=1, evidence=Evidence(stage="gate"))  # served below
    return root / "v1"


def test_the_reward_model_files_are_hashed_with_the_artifact(
    artifact_with_reward_model: Path,
) -> None:
    manifest = verify_artifact(artifact_with_reward_model)
    assert f"{REWARD_MODEL}/config.json" in manifest.files
    assert any(name.startswith(f"{REWARD_MODEL}/") and name.endswith(".safetensors")
               for name in manifest.files)  # fmt: skip


def test_a_tampered_reward_model_is_refused(
    artifact_with_reward_model: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "v1"
    shutil.copytree(artifact_with_reward_model, copy)
    with (copy / REWARD_MODEL / "config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ArtifactError, match=f"{REWARD_MODEL}/config.json"):
        verify_artifact(copy)


def test_the_server_ranks_with_the_artifacts_own_reward_model(
    artifact_with_reward_model: Path,
) -> None:
    settings = PolicySettings(model_dir=artifact_with_reward_model, best_of_n=2)
    assert settings.reward_model_dir is None  # nothing configured: the artifact brings it
    server = PolicyModel(settings)
    server.load()
    assert server.status()["best_of_n_active"] is True
    assert metrics.BEST_OF_N_ACTIVE._value.get() == 1
