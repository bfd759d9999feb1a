"""The actor-critic on a tiny random Llama: policy over the legal actions, frozen/trainable split,
split API, and the prefix cache."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from services.common.market_state import ACTIONS, MarketState
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic, action_token_ids


def _states(n: int) -> list[MarketState]:
    return [
        MarketState(
            ticker="MSFT",
            as_of=datetime(2024, 1, 2 + i, 21, tzinfo=UTC),
            recent_closes=[100.0 + j for j in range(1 + 3 * i)],  # different lengths -> padding
            cash=1000.0 * (i + 1),
            position=float(i),
            features={"rsi_14": 40.0 + i},
            news_summary="Quarterly results. " * i,
            sentiment=0.1 * i,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> LLMActorCritic:
    torch.manual_seed(0)
    return LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=2))


def test_action_words_tokenise_distinctly(model: LLMActorCritic) -> None:
    ids = action_token_ids(model.tokenizer)
    assert len(set(ids)) == 3
    for word, token in zip(ACTIONS, ids, strict=True):
        assert model.tokenizer.decode([token]).strip() == word


def test_probabilities_over_the_three_actions_sum_to_one(model: LLMActorCritic) -> None:
    decisions = model.decide(_states(3))
    for d in decisions:
        assert set(d.probabilities) == set(ACTIONS)
        assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert d.action == max(d.probabilities, key=d.probabilities.__getitem__)
        assert d.model_version == model.model_version


def test_frozen_parameters_get_no_grad_and_trainable_do(model: LLMActorCritic) -> None:
    model.zero_grad(set_to_none=True)
    ids, mask = model.encode(_states(2))
    logits, values = model(ids, mask)
    (logits.logsumexp(-1).sum() + values.sum()).backward()
    layers = model.lm.get_decoder().layers
    assert model.n_frozen == len(layers) - 2
    for i, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            if i < model.n_frozen:
                assert not p.requires_grad and p.grad is None, f"layer {i} {name} got a grad"
            else:
                assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.lm.get_input_embeddings().weight.grad is None
    assert all(p.grad is not None for p in model.value_head.parameters())
    model.zero_grad(set_to_none=True)


def test_prefix_cached_logits_equal_uncached_in_a_padded_batch(model: LLMActorCritic) -> None:
    states = _states(4)
    with torch.no_grad():
        full_logits, full_values = model(*model.encode(states))
    cached_logits, cached_values = model.cached_forward(*model.encode_suffixes(states))
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached_values, full_values, atol=1e-5, rtol=1e-4)
    # Each row as if alone: left padding changes nothing.
    for i, state in enumerate(states):
        alone, _ = model.cached_forward(*model.encode_suffixes([state]))
        torch.testing.assert_close(alone[0], full_logits[i], atol=1e-5, rtol=1e-4)


def test_the_shared_prefix_cache_is_never_mutated(model: LLMActorCritic) -> None:
    before = model.prefix_cache().cache.get_seq_length()
    first, _ = model.cached_forward(*model.encode_suffixes(_states(2)))
    model.cached_forward(*model.encode_suffixes(_states(3)))
    again, _ = model.cached_forward(*model.encode_suffixes(_states(2)))
    assert model.prefix_cache().cache.get_seq_length() == before
    torch.testing.assert_close(first, again)


def test_split_api_matches_forward_and_only_the_head_needs_grad(model: LLMActorCritic) -> None:
    ids, mask = model.encode(_states(3))
    hidden = model.base_hidden(ids, mask)
    assert not hidden.requires_grad
    logits, values = model.head_forward(hidden, mask)
    with torch.no_grad():
        ref_logits, ref_values = model(ids, mask)
    torch.testing.assert_close(logits.detach(), ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values.detach(), ref_values, atol=1e-5, rtol=1e-4)
    actions = torch.tensor([0, 1, 2])
    ev = model.evaluate_actions(ids, mask, actions, hidden=hidden)
    expected = torch.log_softmax(ref_logits, -1)[torch.arange(3), actions]
    torch.testing.assert_close(ev.log_probs.detach(), expected, atol=1e-5, rtol=1e-4)
    assert ev.entropy.shape == (3,) and bool((ev.entropy > 0).all())
    ev.log_probs.sum().backward()
    assert model.lm.get_decoder().layers[-1].self_attn.q_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_prefix_cache_is_recomputed_after_the_weights_change(tiny_llama_dir: Path) -> None:
    m = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=4))
    suffix = m.encode_suffixes(_states(1))
    m.cached_forward(*suffix)
    with torch.no_grad():  # what an optimizer step does: an in-place write to a trainable weight
        m.lm.get_decoder().layers[0].self_attn.v_proj.weight.mul_(3.0)
    with torch.no_grad():
        uncached, _ = m(*m.encode(_states(1)))
    torch.testing.assert_close(m.cached_forward(*suffix)[0], uncached, atol=1e-5, rtol=1e-4)


def test_lora_trains_only_adapters_on_the_top_layers(tiny_llama_dir: Path) -> None:
    m = LLMActorCritic.from_pretrained(
        tiny_llama_dir, ActorCriticConfig(trainable_top_k=1, use_lora=True, lora_r=4)
    )
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    lm_names = [n for n in names if not n.startswith("value_head")]
    assert lm_names and all("lora_" in n and "layers.3." in n for n in lm_names)
    ids, mask = m.encode(_states(2))
    logits, values = m(ids, mask)
    (logits.sum() + values.sum()).backward()
    assert all(p.grad is not None for p in m.trainable_parameters())
    merged = m.merged_lm()
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_restricted_head_equals_the_lm_logits_at_the_action_tokens(model: LLMActorCritic) -> None:
    """The policy is the LM's own next-token logits (logits_to_keep=1) at the three action ids."""
    ids, mask = model.encode(_states(3))
    with torch.no_grad():
        policy_logits, _ = model(ids, mask)
        lm_logits = model.lm(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=1,
        ).logits[:, -1]
    torch.testing.assert_close(policy_logits, lm_logits[:, model.action_ids], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("top_k", "lora"), [(0, False), (1, False), (4, False), (2, True)])
def test_head_forward_equals_the_full_forward_for_any_trainable_top(
    tiny_llama_dir: Path, top_k: int, lora: bool
) -> None:
    """head_forward computes the last layer for the last position only; with padded rows of
    different lengths, any split and LoRA adapters, it must still equal the full model."""
    torch.manual_seed(1)
    config = ActorCriticConfig(trainable_top_k=top_k, use_lora=lora, lora_r=4)
    m = LLMActorCritic.from_pretrained(tiny_llama_dir, config)
    if lora:  # fresh LoRA adapters are zero; make them count
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    ids, mask = m.encode(_states(4))
    with torch.no_grad():
        logits, values = m.head_forward(m.base_hidden(ids, mask), mask)
        ref_logits, ref_values = m(ids, mask)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values, ref_values, atol=1e-5, rtol=1e-4)
