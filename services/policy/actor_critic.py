"""FLAG-Trader's actor-critic: an instruction LLM whose next-token logits over the action words are
the policy, plus a value head on the last hidden state. Lower layers frozen, top k trainable
(or LoRA adapters via peft on those layers instead).

The split API (`base_hidden` / `head_forward`) lets a trainer run the frozen layers once per batch
under no_grad and only the trainable top with grad; `decide` serves decisions with a prefix
key/value cache computed once for the constant part of the prompt.

With a day cache attached (`attach_day_cache`, services/policy/day_cache.py), `base_hidden`
computes the frozen layers once per market day instead of once per decision: the prefix once,
each day part once, and each of the few portfolio tails once per day; then only the trainable
top layers run per decision, in serving, rollouts, PPO updates and the gate alike.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the conventional name
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase
from transformers.masking_utils import create_causal_mask

from services.common.market_state import ACTIONS, MarketState
from services.policy.day_cache import DEFAULT_MEMORY_CAP_BYTES, DayCache, DayEntry
from services.policy.decoder_layers import apply_layers, last_position_layer, positions_of
from services.policy.prompt import (
    build_prompt,
    decision_tails,
    prompt_prefix,
    prompt_suffix,
    split_suffix,
)
from services.policy.state_head import StateHead

Action = Literal["sell", "hold", "buy"]


class ActorCriticError(RuntimeError):
    pass


class PolicyDecision(BaseModel):
    """One decision as the server returns it and the simulator records it."""

    action: Action
    probabilities: dict[str, float] = Field(description="Over ACTIONS; sums to 1")
    value: float = Field(description="Critic's estimate of the state's value")
    explanation: str | None = None
    model_version: str


@dataclass
class ActorCriticConfig:
    """How the LM is wrapped; saved in every artifact's manifest."""

    trainable_top_k: int = 2
    """Top decoder layers trained (with the final norm); the rest stay frozen."""
    use_lora: bool = False
    """Train LoRA adapters on the top k layers instead of their full weights."""
    lora_r: int = 8
    """LoRA adapter rank (with use_lora), on the attention projections of the top layers."""
    lora_alpha: int = 16
    """LoRA scaling numerator: the adapters' update is scaled by lora_alpha / lora_r (with
    use_lora)."""
    value_hidden: int = 128
    """Width of the value MLP's hidden layer."""
    state_head: bool = False
    """A linear head on the frozen base's state at the last position (the split, where the
    trainable layers start), added to the action logits; zero at first, so an untrained
    policy is the LM's own. A linear read of that state generalises from a few hundred market
    days where retraining a transformer layer memorises them (docs/results.md, "choosing the
    recipe")."""
    train_lm_layers: bool = True
    """Train the top k layers' weights (False: they run, frozen, and only the heads train)."""
    dtype: str = "float32"
    """LM weights dtype: float32 or bfloat16 (CPU); value head stays float32."""
    seed: int = 0
    """Seeds the value head's initialisation."""


@dataclass
class ActionEval:
    """What PPO needs for given actions: log pi(a|s), the policy entropy, V(s), the raw logits."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor
    logits: torch.Tensor


@dataclass
class _PrefixCache:
    ids: torch.Tensor
    cache: DynamicCache
    weights_version: int = field(default=0)


def action_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """First token of " sell", " hold", " buy" (ACTIONS order); they must be distinct."""
    ids = [tokenizer.encode(" " + word, add_special_tokens=False)[0] for word in ACTIONS]
    if len(set(ids)) != len(ids):
        raise ActorCriticError(
            f"action words share a first token {dict(zip(ACTIONS, ids, strict=True))}"
        )
    return ids


class LLMActorCritic(nn.Module):
    """Actor-critic around a Hugging Face causal LM (Llama-family decoder layout)."""

    def __init__(
        self,
        lm: Any,
        tokenizer: PreTrainedTokenizerBase,
        config: ActorCriticConfig | None = None,
        model_version: str = "unversioned",
    ) -> None:
        super().__init__()
        self.config = config or ActorCriticConfig()
        # Typed Any: transformers' model classes are too dynamic for mypy (attribute access
        # on nn.Module resolves to Tensor | Module).
        self.lm: Any = lm
        self.manifest: Any = None  # the artifacts.Manifest when loaded from an artifact
        self.tokenizer = tokenizer
        self.model_version = model_version
        n_layers = len(self._decoder.layers)
        if not 0 <= self.config.trainable_top_k <= n_layers:
            raise ActorCriticError(f"trainable_top_k must be in [0, {n_layers}]")
        self.n_frozen = n_layers - self.config.trainable_top_k
        self.register_buffer(
            "action_ids", torch.tensor(action_token_ids(tokenizer)), persistent=False
        )
        hidden = lm.config.hidden_size
        generator = torch.Generator().manual_seed(self.config.seed)
        self.value_head = nn.Sequential(
            nn.Linear(hidden, self.config.value_hidden),
            nn.Tanh(),
            nn.Linear(self.config.value_hidden, 1),
        )
        with torch.no_grad():  # seeded init, independent of the global RNG
            for p in self.value_head.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        self.state_head: StateHead | None = None
        if self.config.state_head:
            if self.config.trainable_top_k < 1:
                raise ActorCriticError("state_head reads the split: trainable_top_k must be >= 1")
            self.state_head = StateHead(hidden, len(ACTIONS))
        self._peft: list[Any] = []  # a list, so the wrapper is not a second submodule
        self._freeze()
        self._prefix: _PrefixCache | None = None
        self._weights_version = 0
        self.day_cache: DayCache | None = None
        self._base_sha: str | None = None
        self._frozen_prefix: tuple[torch.Tensor, DynamicCache] | None = None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        config: ActorCriticConfig | None = None,
        model_version: str = "unversioned",
    ) -> LLMActorCritic:
        """Load the LM and tokenizer from a local folder (no hub access)."""
        config = config or ActorCriticConfig()
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        lm.config.use_cache = True
        model = cls(lm, tokenizer, config, model_version)
        model.eval()
        return model

    def _freeze(self) -> None:
        for p in self.lm.parameters():
            p.requires_grad_(False)
        top = list(range(self.n_frozen, len(self._decoder.layers)))
        if not self.config.train_lm_layers:
            return  # the top layers still run above the split; only the heads learn
        if self.config.use_lora and top:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.config.lora_r,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                layers_to_transform=top,
            )
            # peft injects adapters into self.lm in place and freezes all non-adapter weights.
            self._peft.append(get_peft_model(self.lm, lora))
        elif top:
            for i in top:
                self._decoder.layers[i].requires_grad_(True)
            self._decoder.norm.requires_grad_(True)

    @property
    def _decoder(self) -> Any:
        return self.lm.get_decoder()

    def merged_lm(self) -> Any:
        """The LM with LoRA merged in (a copy), or the LM itself: what an artifact saves."""
        if not self._peft:
            return self.lm
        return copy.deepcopy(self._peft[0]).merge_and_unload()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def mark_weights_changed(self) -> None:
        """Force a prefix-cache rebuild (in-place changes to trainable weights are seen anyway)."""
        self._weights_version += 1

    def _weights_fingerprint(self) -> int:
        """Changes whenever an LM weight that can train is modified in place (optimizer step,
        load_state_dict): torch bumps a tensor's version counter on every in-place write."""
        versions = sum(p._version for p in self.lm.parameters() if p.requires_grad)
        return self._weights_version + versions

    # --- tokenisation -------------------------------------------------------------------------

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _suffix_tokens(self, suffix: str) -> list[int]:
        # Day part and tail are tokenised apart, so a day's tokens are the same whatever the
        # portfolio (the day cache's key) and every tail is one of `decision_tails()`.
        day, tail = split_suffix(suffix)
        return (self._tokens(day) if day else []) + self._tokens(tail)

    def encode(self, states: list[MarketState]) -> tuple[torch.Tensor, torch.Tensor]:
        """Full prompts (prefix + suffix, each tokenised on its own), left padded."""
        return self.encode_texts(prompt_prefix(), [prompt_suffix(s) for s in states])

    def encode_texts(self, prefix: str, suffixes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """As `encode`, for prompts already rendered as text (e.g. rebuilt from feedback)."""
        head = self._tokens(prefix)
        return self._pad_left([head + self._suffix_tokens(suffix) for suffix in suffixes])

    def encode_suffixes(self, states: list[MarketState]) -> tuple[torch.Tensor, torch.Tensor]:
        """Only the per-decision suffixes, left padded: the input after the cached prefix."""
        return self._pad_left([self._suffix_tokens(prompt_suffix(s)) for s in states])

    def suffix_token_counts(self, states: list[MarketState]) -> list[int]:
        return [len(self._suffix_tokens(prompt_suffix(s))) for s in states]

    @property
    def device(self) -> torch.device:
        return cast(torch.device, self.action_ids.device)

    # --- forward passes -----------------------------------------------------------------------

    def _heads(
        self, last_hidden: torch.Tensor, split_last: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Restricted LM head and value head on the (normed) last-position hidden state [B, H],
        plus the state head on the split's last-position state `split_last` when there is one.

        Only the three action rows of the LM head are computed: identical to the full
        logits_to_keep=1 logits at those ids, without a 49k-wide matmul.
        """
        head = self.lm.get_output_embeddings()
        bias = head.bias[self.action_ids] if getattr(head, "bias", None) is not None else None
        logits = F.linear(last_hidden, head.weight[self.action_ids], bias).float()
        if self.state_head is not None:
            assert split_last is not None, "the state head needs the split's last state"
            logits = logits + self.state_head(split_last)
        values = self.value_head(last_hidden.float()).squeeze(-1)
        return logits, values

    def _split_last(self, hidden_states: tuple[torch.Tensor, ...] | None) -> torch.Tensor | None:
        """The state entering layer n_frozen at the last position, from a whole-decoder run's
        hidden states (index i is the input to layer i), when the state head needs it."""
        if self.state_head is None or hidden_states is None:
            return None
        return hidden_states[self.n_frozen][:, -1]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded full prompts -> (action_logits [B,3] in ACTIONS order, values [B])."""
        out = self._decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_of(attention_mask),
            use_cache=False,
            output_hidden_states=self.state_head is not None,
        )
        return self._heads(out.last_hidden_state[:, -1], self._split_last(out.hidden_states))

    def _layer_inputs(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        positions = positions_of(attention_mask)
        mask = create_causal_mask(
            config=self.lm.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            cache=None,
            position_ids=positions,
        )
        rotary = self._decoder.rotary_emb(hidden, position_ids=positions)
        return mask, positions, rotary

    def _run_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: list[nn.Module]
    ) -> torch.Tensor:
        mask, positions, rotary = self._layer_inputs(hidden, attention_mask)
        return apply_layers(layers, hidden, mask, positions, rotary)

    @torch.no_grad()
    def base_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + the frozen lower layers, no grad: the hidden states [B,T,H] entering the
        trainable top layers. Reuse them across PPO epochs; only `head_forward` needs grad.
        With a day cache attached, rows laid out as prefix + day + tail come from it."""
        if self.day_cache is None or self.n_frozen == 0:
            return self._uncached_base_hidden(input_ids, attention_mask)
        out = torch.zeros(
            (*input_ids.shape, self.lm.config.hidden_size), dtype=self._dtype, device=self.device
        )
        missed = []
        for row in range(input_ids.shape[0]):
            tokens = input_ids[row][attention_mask[row].bool()].tolist()
            cached = self._cached_row(tokens)
            if cached is None:
                missed.append(row)
            else:
                out[row, input_ids.shape[1] - len(tokens) :] = cached
        if missed:
            out[missed] = self._uncached_base_hidden(input_ids[missed], attention_mask[missed])
        return out

    def _uncached_base_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        hidden = self._decoder.embed_tokens(input_ids)
        return self._run_layers(hidden, attention_mask, list(self._decoder.layers[: self.n_frozen]))

    # --- day cache ----------------------------------------------------------------------------

    @property
    def _dtype(self) -> torch.dtype:
        return cast(torch.dtype, self._decoder.embed_tokens.weight.dtype)

    @property
    def base_sha(self) -> str:
        """sha256 of what the frozen base's output depends on: the split, the frozen weights
        (embeddings and lower layers) and the tokenizer's ids for the prefix and the tails."""
        if self._base_sha is None:
            digest = hashlib.sha256(f"n_frozen={self.n_frozen}".encode())
            digest.update(str([self._tokens(prompt_prefix()), self._tail_ids()]).encode())
            frozen = [self._decoder.embed_tokens, *self._decoder.layers[: self.n_frozen]]
            for module in frozen:
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
            self._base_sha = digest.hexdigest()
        return self._base_sha

    def attach_day_cache(
        self,
        memory_cap_bytes: int = DEFAULT_MEMORY_CAP_BYTES,
        folder: str | Path | None = None,
        cache: DayCache | None = None,
    ) -> DayCache:
        """Use a day cache from now on (a shared one, e.g. the teacher's, when it is given: a
        cache from another base is refused)."""
        if cache is not None and cache.base_sha != self.base_sha:
            raise ActorCriticError(
                f"day cache of base {cache.base_sha[:16]} offered to base {self.base_sha[:16]}"
            )
        # `is None`, not `or`: an empty cache has len 0 and is falsy, yet it is the one to share
        self.day_cache = (
            cache if cache is not None else DayCache(self.base_sha, memory_cap_bytes, folder)
        )
        return self.day_cache

    def _tail_ids(self) -> list[tuple[int, ...]]:
        return [tuple(self._tokens(tail)) for tail in decision_tails()]

    def _cached_row(self, tokens: list[int]) -> torch.Tensor | None:
        """The frozen layers' output for one unpadded row, from the day cache, or None when
        the row is not laid out as prefix + day part + one of the tails."""
        assert self.day_cache is not None
        prefix_hidden, _ = self._prefix_state()
        n_prefix = prefix_hidden.shape[0]
        tail = next((t for t in self._tail_ids() if tuple(tokens[-len(t) :]) == t), None)
        if tail is None or len(tokens) <= n_prefix + len(tail):
            return None
        day = tokens[n_prefix : len(tokens) - len(tail)]
        key = self.day_cache.key(day)
        entry = self.day_cache.get(key)
        if entry is None:
            entry = self._fill_day(day)
            self.day_cache.put(key, entry)
        day_hidden, tail_hidden = entry.day_hidden, entry.tail_hidden.get(tail)
        if tail_hidden is None:
            return None
        return torch.cat([prefix_hidden, day_hidden.to(self.device), tail_hidden.to(self.device)])

    def _frozen_pass(self, ids: torch.Tensor, cache: DynamicCache, past: int) -> torch.Tensor:
        """Frozen layers over `ids` [B, n] after `past` cached positions, extending `cache`."""
        hidden = self._decoder.embed_tokens(ids)
        batch, length = ids.shape
        positions = torch.arange(past, past + length, device=self.device).expand(batch, -1)
        mask = create_causal_mask(
            config=self.lm.config,
            inputs_embeds=hidden,
            attention_mask=torch.ones((batch, past + length), dtype=torch.long, device=self.device),
            cache=cache,
            position_ids=positions,
        )
        rotary = self._decoder.rotary_emb(hidden, position_ids=positions)
        frozen = list(self._decoder.layers[: self.n_frozen])
        return apply_layers(frozen, hidden, mask, positions, rotary, cache)

    @torch.no_grad()
    def _prefix_state(self) -> tuple[torch.Tensor, DynamicCache]:
        """The prefix's frozen-layer output and keys/values, computed once per model."""
        if self._frozen_prefix is None:
            ids = torch.tensor([self._tokens(prompt_prefix())], device=self.device)
            cache = DynamicCache(config=self.lm.config)
            hidden = self._frozen_pass(ids, cache, 0)[0]
            self._frozen_prefix = (hidden, cache)
        return self._frozen_prefix

    @torch.no_grad()
    def _fill_day(self, day: list[int]) -> DayEntry:
        """One day's entry: its day part after the prefix, then every tail after both. Tails
        are right-padded in one batch: causal attention keeps pads out of the real tokens."""
        prefix_hidden, prefix_cache = self._prefix_state()
        cache = copy.deepcopy(prefix_cache)
        n_prefix = prefix_hidden.shape[0]
        day_hidden = self._frozen_pass(torch.tensor([day], device=self.device), cache, n_prefix)
        tails = self._tail_ids()
        width = max(len(t) for t in tails)
        ids = torch.zeros((len(tails), width), dtype=torch.long, device=self.device)
        for i, tail in enumerate(tails):
            ids[i, : len(tail)] = torch.tensor(tail)
        cache.batch_repeat_interleave(len(tails))
        tail_hidden = self._frozen_pass(ids, cache, n_prefix + len(day))
        return DayEntry(
            day_hidden[0].cpu(),
            {t: tail_hidden[i, : len(t)].cpu() for i, t in enumerate(tails)},
        )

    def head_forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainable top layers + final norm + restricted LM head + value head, with grad.

        The heads read only the last position, so the last layer runs for that position alone
        (`last_position_layer`); the layers below it still run for every position because
        attention reads their keys and values."""
        top = list(self._decoder.layers[self.n_frozen :])
        split_last = hidden[:, -1]
        if not top:
            return self._heads(self._decoder.norm(hidden[:, -1]))
        mask, positions, rotary = self._layer_inputs(hidden, attention_mask)
        hidden = apply_layers(top[:-1], hidden, mask, positions, rotary)
        last = last_position_layer(top[-1], hidden, attention_mask, rotary)
        return self._heads(self._decoder.norm(last), split_last)

    def evaluate_actions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        actions: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> ActionEval:
        """log pi(actions|s), entropy, V(s). Pass `hidden` from `base_hidden` to skip the frozen
        layers; `actions` are indices into ACTIONS."""
        if hidden is None:
            logits, values = self(input_ids, attention_mask)
        else:
            logits, values = self.head_forward(hidden, attention_mask)
        dist = torch.distributions.Categorical(logits=logits)
        return ActionEval(dist.log_prob(actions), dist.entropy(), values, logits)

    # --- prefix cache -------------------------------------------------------------------------

    @torch.no_grad()
    def prefix_cache(self) -> _PrefixCache:
        """The constant prefix's key/value cache, computed once (again after weights change)."""
        fingerprint = self._weights_fingerprint()
        if self._prefix is None or self._prefix.weights_version != fingerprint:
            ids = torch.tensor([self._tokens(prompt_prefix())], device=self.device)
            cache = DynamicCache(config=self.lm.config)
            self._decoder(input_ids=ids, cache=cache, use_cache=True)
            self._prefix = _PrefixCache(ids, cache, fingerprint)
        return self._prefix

    @torch.no_grad()
    def cached_forward(
        self, suffix_ids: torch.Tensor, suffix_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like `forward` on prefix+suffix, but only the suffix runs; the prefix comes from cache.

        The shared cache is deep-copied and repeated for the batch, because every forward
        appends the suffix's keys/values to the cache it is given: requests never share one.
        """
        prefix = self.prefix_cache()
        batch, n_prefix = suffix_ids.shape[0], prefix.ids.shape[1]
        cache = copy.deepcopy(prefix.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        mask = torch.cat(
            [
                torch.ones((batch, n_prefix), dtype=suffix_mask.dtype, device=self.device),
                suffix_mask,
            ],
            dim=1,
        )
        out = self._decoder(
            input_ids=suffix_ids,
            attention_mask=mask,
            position_ids=positions_of(suffix_mask, offset=n_prefix),
            cache=cache,
            use_cache=True,
            output_hidden_states=self.state_head is not None,
        )
        return self._heads(out.last_hidden_state[:, -1], self._split_last(out.hidden_states))

    # --- decisions ----------------------------------------------------------------------------

    @torch.no_grad()
    def policy_outputs(
        self, states: list[MarketState], use_prefix_cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(action probabilities [B,3], values [B]) for states, in eval mode."""
        if self.day_cache is not None:
            ids, mask = self.encode(states)
            logits, values = self.head_forward(self.base_hidden(ids, mask), mask)
        elif use_prefix_cache:
            logits, values = self.cached_forward(*self.encode_suffixes(states))
        else:
            logits, values = self(*self.encode(states))
        return torch.softmax(logits, dim=-1), values

    def decide(
        self, states: list[MarketState], use_prefix_cache: bool = True
    ) -> list[PolicyDecision]:
        """Greedy decisions (argmax over the legal actions). A rationale is the explainer's
        job (services/policy/explain.py), which the server calls after this."""
        if not states:
            return []
        probs, values = self.policy_outputs(states, use_prefix_cache)
        return [
            PolicyDecision(
                action=cast(Action, ACTIONS[int(row.argmax())]),
                probabilities={a: float(p) for a, p in zip(ACTIONS, row.tolist(), strict=True)},
                value=float(value),
                model_version=self.model_version,
            )
            for row, value in zip(probs, values, strict=True)
        ]

    def full_prompt(self, state: MarketState) -> str:
        return build_prompt(state).text

    def config_dict(self) -> dict[str, object]:
        return asdict(self.config)
