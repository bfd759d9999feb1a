"""Feedback validation, walk-forward windows (evaluation always after training), SEP pairs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common import envelope
from services.common.bus import Incoming, ValidationFailed
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.topics import MARKET_FEEDBACK
from services.policy.prompt import ACTION_CUE, decision_suffix
from services.trainer.datasets import (
    FeedbackLog,
    FeedbackRecord,
    preference_pairs,
    record_from_incoming,
    sft_set,
)

T0 = datetime(2024, 3, 1, 21, tzinfo=UTC)


def _incoming(**changes: object) -> Incoming:
    msg = pb.MarketFeedback(
        ticker="MSFT",
        state="price 100",
        action="buy",
        reward=1.0,
        realised_return=0.01,
        model_version="v0",
        value=0.2,
    )
    msg.probabilities.update({"sell": 0.2, "hold": 0.3, "buy": 0.5})
    set_time(msg.decision_time, T0)
    set_time(msg.realised_time, T0 + timedelta(days=1))
    for key, value in changes.items():
        if key in ("decision_time", "realised_time"):
            set_time(getattr(msg, key), value)  # type: ignore[arg-type]
        else:
            setattr(msg, key, value)
    env = envelope.decode(
        envelope.encode(envelope.wrap(msg, key="MSFT", event_time=T0, source="t")),
        pb.MarketFeedback,
    )
    return Incoming(MARKET_FEEDBACK, 0, 0, env, b"", [])


def test_valid_feedback_becomes_a_record() -> None:
    record = record_from_incoming(_incoming())
    assert record.action == "buy" and record.label() == "buy" and record.correct()
    assert record.probabilities["buy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action": "short"}, "not one of"),
        ({"realised_time": T0}, "not after decision_time"),
        ({"realised_return": float("nan")}, "realised_return is not finite"),
        ({"state": "  "}, "empty state"),
        ({"ticker": ""}, "no ticker"),
    ],
)
def test_bad_feedback_is_refused_with_a_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        record_from_incoming(_incoming(**changes))


def test_feedback_log_drops_redeliveries_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    log = FeedbackLog(path)
    record = record_from_incoming(_incoming())
    assert log.add(record) and not log.add(record)
    again = FeedbackLog(path)
    assert again.records() == [record]


def test_self_reflection_pairs_prefer_the_answer_the_market_agreed_with(
    tiny_llama_dir: Path,
) -> None:
    import torch

    from services.policy.actor_critic import LLMActorCritic

    torch.set_num_threads(1)
    model = LLMActorCritic.from_pretrained(tiny_llama_dir)
    records = [
        FeedbackRecord(
            "MSFT",
            T0 + timedelta(days=i),
            T0 + timedelta(days=i + 1),
            f"state {i}",
            action,
            0.0,
            move,
            "v0",
        )
        for i, (action, move) in enumerate(
            [("sell", 0.02), ("buy", 0.01), ("buy", -0.03), ("hold", 0.05)]
        )
    ]
    pairs, stats = preference_pairs(
        records, model, "PROMPT ", max_pairs=10, explain_tokens=4, tries=6, seed=0
    )
    assert stats.wrong == 3  # the second record was right: no pair for it
    assert stats.pairs + stats.unresolved == 3 and stats.pairs >= 1
    for row in pairs:
        # The prompt the policy decides on: the state block, then the assistant's action cue.
        assert row["prompt"].startswith("PROMPT state") and row["prompt"].endswith(ACTION_CUE)
        chosen, rejected = row["chosen"].split()[0], row["rejected"].split()[0]
        assert chosen != rejected
        assert "\nReason:" in row["chosen"] and "\nReason:" in row["rejected"]
    labels = {"PROMPT " + decision_suffix(r.state): r.label() for r in records}
    assert all(row["chosen"].split()[0] == labels[row["prompt"]] for row in pairs)


def test_sft_rows_are_correct_answers_on_the_policys_own_prompt(tiny_llama_dir: Path) -> None:
    from services.policy.actor_critic import LLMActorCritic

    model = LLMActorCritic.from_pretrained(tiny_llama_dir)
    records = [
        FeedbackRecord("MSFT", T0, T0 + timedelta(days=1), "state a", "buy", 0.0, 0.02, "v0"),
        FeedbackRecord("MSFT", T0, T0 + timedelta(days=1), "state b", "buy", 0.0, -0.02, "v0"),
    ]
    rows = sft_set(records, model, "PROMPT ", max_examples=10, explain_tokens=3)
    assert len(rows) == 1  # only the answer the market proved right
    assert rows[0]["prompt"] == "PROMPT " + decision_suffix("state a")
    assert rows[0]["prompt"].endswith(ACTION_CUE)
    assert rows[0]["completion"].startswith(" buy\nReason:")
