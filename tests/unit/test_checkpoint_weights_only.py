"""Training checkpoints load with torch's restricted unpickler: tensors and plain data only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer import checkpoint


class _RunsCodeWhenUnpickled:
    """What a writer of the work volume could plant: an object whose unpickling touches a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_optimizer_and_rng_state_round_trip(tmp_path: Path) -> None:
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "iteration": 3,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "episode_state": {"episode_returns": [0.5, -1.0], "episodes": 2},
    }
    checkpoint.save(tmp_path, 3, state)
    loaded = checkpoint.load_latest(tmp_path)
    assert loaded is not None and loaded["iteration"] == 3
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    assert loaded["episode_state"] == state["episode_state"]
    fresh = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])


def test_a_planted_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"iteration": 1, "payload": _RunsCodeWhenUnpickled(marker)},
               tmp_path / "ckpt-000001.pt")  # fmt: skip
    with pytest.raises(checkpoint.CheckpointError, match="ckpt-000001.pt holds more than"):
        checkpoint.load_latest(tmp_path)
    assert not marker.exists(), "loading the checkpoint ran code from it"
