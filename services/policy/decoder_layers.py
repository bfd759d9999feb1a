"""Pieces of a Llama decoder the actor-critic runs layer by layer: the frozen base, the
trainable top and the day cache each run a slice of the layers, and the last layer runs for
the last position only. transformers runs the decoder whole; these run parts of it, with the
layers' own modules and in their order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the conventional name
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb


def apply_layers(
    layers: list[nn.Module],
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    positions: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    cache: DynamicCache | None = None,
) -> torch.Tensor:
    """`layers` in order over `hidden`; with `cache`, each layer appends its keys/values."""
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=positions,
            position_embeddings=rotary,
            cache=cache,
            use_cache=cache is not None,
        )
    return hidden


def last_position_layer(
    layer: Any,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """A Llama decoder layer's output [B, H] at the last position only, for left-padded rows.

    Keys and values come from every position, but the query, attention output and MLP are
    computed for the last one: layer(hidden)[:, -1] (tests/unit/test_policy_actor_critic.py
    compares the two) at a fraction of the cost, which is the larger part of a PPO update once
    the frozen base's hidden states are reused. transformers has no "queries for these
    positions only" call, so the layer's own modules are applied here in its order.
    """
    attn = layer.self_attn
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    normed = layer.input_layernorm(hidden)
    query = attn.q_proj(normed[:, -1:]).view(batch, 1, -1, head_dim).transpose(1, 2)
    key = attn.k_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    value = attn.v_proj(normed).view(batch, length, -1, head_dim).transpose(1, 2)
    cos, sin = rotary
    query, _ = apply_rotary_pos_emb(query, query, cos[:, -1:], sin[:, -1:])
    key, _ = apply_rotary_pos_emb(key, key, cos, sin)
    visible = attention_mask[:, None, None, :].bool()  # left padding: pads are never attended
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, scale=attn.scaling, enable_gqa=True
    )
    hidden_last = hidden[:, -1:] + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
    hidden_last = hidden_last + layer.mlp(layer.post_attention_layernorm(hidden_last))
    return hidden_last[:, 0]


def positions_of(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids that skip left padding, so a padded row sees the same positions as alone."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0) + offset
