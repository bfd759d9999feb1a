"""Training data with no human labels: market feedback, SEP reflection pairs, walk-forward windows.

- D_MF: (state, realised next move) pairs straight from market.feedback.v1;
- SFT set: decisions the market proved right, with the model's own explanation;
- preference pairs (SEP): for decisions the market proved wrong the model reflects, knowing the
  outcome, and answers again; a reflected answer that agrees with the market is `chosen`, the
  original `rejected`.
Windows are walk-forward: every evaluation day comes after every training day.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from services.common.bus import Incoming, ValidationFailed
from services.common.envelope import to_datetime
from services.common.market_state import ACTIONS
from services.policy.prompt import decision_suffix, prompt_prefix
from services.trainer.ppo import move_label

if TYPE_CHECKING:
    from services.policy.actor_critic import LLMActorCritic

REASON_CUE = "\nReason:"  # the policy's explain.REASON_CUE: the RM scores answers in that shape


@dataclass(frozen=True)
class FeedbackRecord:
    """One market.feedback.v1 message: what the policy saw and did at t, and what t+1 brought."""

    ticker: str
    decision_time: datetime
    realised_time: datetime
    state: str
    action: str
    reward: float
    realised_return: float
    model_version: str
    probabilities: dict[str, float] = field(default_factory=dict)
    value: float = 0.0

    @property
    def day(self) -> date:
        return self.decision_time.date()

    def label(self, flat_threshold: float = 0.0) -> str:
        """The action the realised move rewarded."""
        return ACTIONS[move_label(self.realised_return, flat_threshold)]

    def correct(self, flat_threshold: float = 0.0) -> bool:
        return self.action == self.label(flat_threshold)


def record_from_incoming(incoming: Incoming) -> FeedbackRecord:
    """Validate one market.feedback.v1 message; ValidationFailed (-> .dlq) says what is wrong."""
    p = incoming.payload
    if not p.ticker:
        raise ValidationFailed("market feedback has no ticker")
    if p.action not in ACTIONS:
        raise ValidationFailed(f"market feedback action {p.action!r} is not one of {ACTIONS}")
    if not p.HasField("decision_time") or not p.HasField("realised_time"):
        raise ValidationFailed("market feedback needs decision_time and realised_time")
    decided, realised = to_datetime(p.decision_time), to_datetime(p.realised_time)
    if realised <= decided:
        raise ValidationFailed(f"realised_time {realised} is not after decision_time {decided}")
    for name in ("reward", "realised_return", "value"):
        if not math.isfinite(getattr(p, name)):
            raise ValidationFailed(f"market feedback {name} is not finite")
    if not p.state.strip():
        raise ValidationFailed("market feedback has an empty state text")
    return FeedbackRecord(
        ticker=p.ticker,
        decision_time=decided,
        realised_time=realised,
        state=p.state,
        action=p.action,
        reward=p.reward,
        realised_return=p.realised_return,
        model_version=p.model_version,
        probabilities=dict(p.probabilities),
        value=p.value,
    )


class FeedbackLog:
    """Feedback kept in decision-time order, one per (ticker, decision time), optionally as JSONL
    on disk so a restarted trainer keeps what it had consumed."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._records: dict[tuple[str, datetime], FeedbackRecord] = {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                self._add(_record_from_json(json.loads(line)))

    def _add(self, record: FeedbackRecord) -> bool:
        key = (record.ticker, record.decision_time)
        if key in self._records:
            return False
        self._records[key] = record
        return True

    def add(self, record: FeedbackRecord) -> bool:
        """Keep `record` (a re-delivered one is dropped); True when it was new."""
        new = self._add(record)
        if new and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(asdict(record), default=str) + "\n")
        return new

    def records(self) -> list[FeedbackRecord]:
        return sorted(self._records.values(), key=lambda r: (r.decision_time, r.ticker))

    def days(self) -> list[date]:
        return sorted({r.day for r in self._records.values()})

    def between(self, first: date, last: date) -> list[FeedbackRecord]:
        return [r for r in self.records() if first <= r.day <= last]

    def __len__(self) -> int:
        return len(self._records)


def _record_from_json(data: dict[str, Any]) -> FeedbackRecord:
    data = dict(data)
    for key in ("decision_time", "realised_time"):
        data[key] = datetime.fromisoformat(data[key])
    return FeedbackRecord(**data)


# ---------------------------------------------------------------------------------------------
# D_MF, SFT and preference sets
# ---------------------------------------------------------------------------------------------


def feedback_in_window(
    records: Iterable[FeedbackRecord], start: datetime, end: datetime
) -> list[FeedbackRecord]:
    """Records a window ending at `end` may train on: decided at or after `start`, and with the
    outcome (the move to t+1) known by `end`. No look-ahead: a decision on the window's last
    bar is left out, its move is what the first held-out day is scored on."""
    first, last = pd.Timestamp(start), pd.Timestamp(end)
    return [
        r
        for r in records
        if first <= pd.Timestamp(r.decision_time) and pd.Timestamp(r.realised_time) <= last
    ]


@dataclass(frozen=True)
class MFExample:
    """D_MF: the prompt the policy decided on, split as the policy splits it (constant prefix,
    per-decision suffix ending at the action cue), and the move the market made next."""

    prefix: str
    suffix: str
    realised_return: float
    label: str

    @property
    def prompt(self) -> str:
        return self.prefix + self.suffix


def market_feedback_set(records: Iterable[FeedbackRecord], flat: float = 0.0) -> list[MFExample]:
    """D_MF: each record's decision prompt, exactly as the policy saw it, and its realised move."""
    prefix = prompt_prefix()
    return [
        MFExample(prefix, decision_suffix(r.state), r.realised_return, r.label(flat))
        for r in records
    ]


def answer(action: str, reason: str) -> str:
    """An answer in the shape the policy's best-of-n scorer ranks: ' <action>\\nReason: <why>'."""
    return f" {action}{REASON_CUE} {reason}".rstrip()


@dataclass
class ReflectionStats:
    wrong: int = 0
    pairs: int = 0
    unresolved: int = 0


def sft_set(
    records: Iterable[FeedbackRecord],
    model: LLMActorCritic,
    prefix: str,
    max_examples: int,
    explain_tokens: int,
    flat: float = 0.0,
) -> list[dict[str, str]]:
    """Correct answers with the model's own explanation, as trl prompt/completion rows."""
    rows: list[dict[str, str]] = []
    for r in records:
        if len(rows) >= max_examples:
            break
        if r.correct(flat):
            prompt = prefix + decision_suffix(r.state)
            reason = generate(
                model, prompt + f" {r.action}{REASON_CUE}", explain_tokens, sample=False
            )
            rows.append({"prompt": prompt, "completion": answer(r.action, reason)})
    return rows


def preference_pairs(
    records: Iterable[FeedbackRecord],
    model: LLMActorCritic,
    prefix: str,
    max_pairs: int,
    explain_tokens: int,
    tries: int,
    seed: int,
    flat: float = 0.0,
) -> tuple[list[dict[str, str]], ReflectionStats]:
    """SEP self-reflection over wrong predictions -> prompt/chosen/rejected rows (RewardTrainer)."""
    import torch

    torch.manual_seed(seed)
    stats = ReflectionStats()
    rows: list[dict[str, str]] = []
    for r in records:
        if len(rows) >= max_pairs:
            break
        if r.correct(flat):
            continue
        stats.wrong += 1
        prompt = prefix + decision_suffix(r.state)
        original = generate(
            model, prompt + f" {r.action}{REASON_CUE}", explain_tokens, sample=False
        )
        reflected = reflect(model, prompt, r, explain_tokens, tries, flat)
        if reflected is None:
            stats.unresolved += 1
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": answer(reflected[0], reflected[1]),
                "rejected": answer(r.action, original),
            }
        )
        stats.pairs += 1
    return rows, stats


def reflection_prompt(prompt: str, record: FeedbackRecord) -> str:
    """The answer, the market's verdict, and a request to reflect before answering again."""
    return (
        f"{prompt} {record.action}{REASON_CUE} (earlier answer)\n"
        f"Outcome: the price moved {100 * record.realised_return:+.2f}% the next day, so "
        f"'{record.action}' was wrong. Reflect on what the state showed that was missed.\n"
        "Reflection:"
    )


def reflect(
    model: LLMActorCritic,
    prompt: str,
    record: FeedbackRecord,
    explain_tokens: int,
    tries: int,
    flat: float = 0.0,
) -> tuple[str, str] | None:
    """Up to `tries` sampled reflections; the first whose re-answer agrees with the market wins:
    (action, reflection). None when no reflection led to the right answer (no pair, as in SEP)."""
    target = record.label(flat)
    for _ in range(tries):
        base = reflection_prompt(prompt, record)
        reflection = generate(model, base, explain_tokens, sample=True)
        retry = f"{base} {reflection}\n{_action_cue()}"
        if reanswer(model, retry) == target:
            return target, reflection
    return None


def _action_cue() -> str:
    from services.policy.prompt import ACTION_CUE

    return ACTION_CUE


def reanswer(model: LLMActorCritic, text: str) -> str:
    """The policy's action for free text ending at the action cue (its restricted logits)."""
    import torch

    ids = torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = model.lm(input_ids=ids).logits[0, -1, model.action_ids]
    return ACTIONS[int(logits.argmax())]


def generate(model: LLMActorCritic, text: str, max_new_tokens: int, sample: bool) -> str:
    """A short continuation of `text` (one line), greedy or sampled from the global seeded RNG."""
    import torch

    ids = torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])
    kwargs: dict[str, Any] = (
        {"do_sample": True, "temperature": 0.8, "top_k": 50} if sample else {"do_sample": False}
    )
    with torch.no_grad():
        out = model.lm.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
            **kwargs,
        )
    new = str(model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    line = new.strip().split("\n")[0].strip()
    return line or "(no text)"
