"""The state head: a linear read of the frozen base's state at the split, added to the policy's
action logits (ActorCriticConfig.state_head)."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


class StateHead(nn.Module):
    """A linear read of the frozen base's last state, on standardised inputs: LM states carry a
    few dimensions hundreds of times larger than the rest, which would swamp a linear read, so
    each dimension is centred and scaled by statistics of the training states
    (`standardise`, fitted once per cycle; buffers, saved with the artifact)."""

    def __init__(self, hidden: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("scale", torch.ones(hidden))

    @torch.no_grad()
    def standardise(self, states: torch.Tensor) -> None:
        """Fit the inputs' per-dimension mean and spread on `states` [N, H] (N >= 2)."""
        self.mean.copy_(states.float().mean(0))
        self.scale.copy_(states.float().std(0).clamp(min=1e-4))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear((state.float() - self.mean) / self.scale))
