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

    @torch.no_grad()
    def shift_to_prior(self, mean_logits: torch.Tensor, label_counts: torch.Tensor) -> None:
        """Shift the bias so that the policy's mean action logits (`mean_logits` [A], the LM's
        plus this head's, over the training states) become the training labels' log base
        rates (add-one smoothed): a classifier's usual start at the log prior.

        Why: the untrained LM prefers "buy" by about one logit on every state. From there, the
        few dozen small optimiser steps a cycle affords leave most of that preference in
        place, and the student buys on days its own read of the news says sell
        (docs/results.md, "The state head's start")."""
        counts = label_counts.float()
        prior = torch.log((counts + 1.0) / (counts.sum() + len(counts)))
        self.linear.bias.add_(prior - mean_logits.float())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.linear((state.float() - self.mean) / self.scale))
