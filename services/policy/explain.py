"""SEP's explain step: a short generated rationale for a decision, and best-of-n sampling of
(action, rationale) candidates scored by a reward model when one is configured.

Without a reward model best-of-n cannot rank candidates, so it is off: the explainer says so in
`status`, logs it once, and sets the rlmf_policy_best_of_n_active gauge to 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from services.common.market_state import ACTIONS, MarketState

log = logging.getLogger(__name__)

REASON_CUE = "\nReason:"


class ExplainableModel(Protocol):
    """What the explainer needs from a policy model: its prompt, its LM and tokenizer. The
    server calls the explainer after the model decided; the model knows nothing of it."""

    tokenizer: Any
    lm: Any

    @property
    def device(self) -> torch.device: ...

    def full_prompt(self, state: MarketState) -> str: ...


class ExplainedDecision(Protocol):
    action: Any
    probabilities: dict[str, float]
    explanation: str | None

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


DecisionT = TypeVar("DecisionT", bound=ExplainedDecision)


@runtime_checkable
class RewardScorer(Protocol):
    """What best-of-n needs from a reward model: higher is better, one score per pair."""

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


class SequenceClassifierScorer:
    """A Bradley-Terry reward model as trl's RewardTrainer saves it: a sequence-classification
    model with one output label, loaded from a local folder."""

    def __init__(self, folder: str | Path, max_length: int = 1024) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward model at {folder} has {self.model.config.num_labels} labels, want 1"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        return self.model(**batch).logits[:, 0].float().tolist()


@dataclass
class ExplainConfig:
    max_new_tokens: int = 32
    """Bound on the rationale's length in tokens."""
    best_of_n: int = 1
    """Candidates sampled per decision when a reward model is present (1: greedy rationale)."""
    temperature: float = 0.8
    seed: int = 0


class Explainer:
    """Generates rationales; with a scorer and best_of_n > 1, keeps the best-scored candidate."""

    def __init__(self, config: ExplainConfig, scorer: RewardScorer | None = None) -> None:
        self.config = config
        self.scorer = scorer
        self.generator = torch.Generator().manual_seed(config.seed)

    @property
    def best_of_n_active(self) -> bool:
        return self.scorer is not None and self.config.best_of_n > 1

    @property
    def status(self) -> str:
        if self.best_of_n_active:
            return f"best-of-{self.config.best_of_n} with a reward model"
        if self.config.best_of_n > 1:
            return "best-of-n is off: no reward model configured (greedy rationale instead)"
        return "greedy rationale (best_of_n=1)"

    def explain_decisions(
        self, model: ExplainableModel, states: list[MarketState], decisions: list[DecisionT]
    ) -> list[DecisionT]:
        """The model's decisions with a rationale each; best-of-n may change an action."""
        if not decisions:
            return decisions
        probs = torch.tensor([[d.probabilities[a] for a in ACTIONS] for d in decisions])
        actions, texts = self.explain(model, states, [str(d.action) for d in decisions], probs)
        return [
            d.model_copy(update={"action": action, "explanation": text})
            for d, action, text in zip(decisions, actions, texts, strict=True)
        ]

    def explain(
        self,
        model: ExplainableModel,
        states: list[MarketState],
        actions: list[str],
        probs: torch.Tensor,
    ) -> tuple[list[str], list[str | None]]:
        """Returns (actions, rationales); best-of-n may change an action to a better-scored one."""
        out_actions: list[str] = []
        texts: list[str | None] = []
        for state, action, row in zip(states, actions, probs, strict=True):
            if self.best_of_n_active:
                action, text = self._best_of_n(model, state, row)
            else:
                text = self._rationale(model, state, action, sample=False)
            out_actions.append(action)
            texts.append(text)
        return out_actions, texts

    def _best_of_n(
        self, model: ExplainableModel, state: MarketState, row: torch.Tensor
    ) -> tuple[str, str]:
        assert self.scorer is not None
        n = self.config.best_of_n
        picks = torch.multinomial(row.float().cpu(), n, replacement=True, generator=self.generator)
        candidates = [ACTIONS[int(i)] for i in picks]
        texts = [self._rationale(model, state, a, sample=True) for a in candidates]
        prompt = model.full_prompt(state)
        responses = [f" {a}{REASON_CUE} {t}" for a, t in zip(candidates, texts, strict=True)]
        scores = self.scorer.score([prompt] * n, responses)
        best = max(range(n), key=lambda i: scores[i])
        return candidates[best], texts[best]

    @torch.no_grad()
    def _rationale(
        self, model: ExplainableModel, state: MarketState, action: str, sample: bool
    ) -> str:
        # Opening the rationale for the model keeps a small LM on topic (left to itself,
        # SmolLM2-135M tends to start re-listing the state instead of giving a reason).
        lead = f"I choose {action} because"
        text = f"{model.full_prompt(state)} {action}{REASON_CUE} {lead}"
        ids = torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])
        kwargs: dict[str, object] = {"do_sample": False}
        if sample:
            # generate() draws from the global RNG; seed it from our generator so runs repeat.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            kwargs = {"do_sample": True, "temperature": self.config.temperature, "top_k": 50}
        out = model.lm.generate(
            ids.to(model.device),
            attention_mask=torch.ones_like(ids).to(model.device),
            max_new_tokens=self.config.max_new_tokens,
            pad_token_id=model.tokenizer.pad_token_id,
            eos_token_id=_stop_ids(model),
            **kwargs,
        )
        new = str(model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        first_line = new.strip().split("\n")[0].strip()
        return f"{lead} {first_line}".strip()


def _stop_ids(model: ExplainableModel) -> list[int]:
    ids = {model.tokenizer.eos_token_id}
    end = model.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end, int) and end != model.tokenizer.unk_token_id:
        ids.add(end)
    return sorted(i for i in ids if i is not None)
