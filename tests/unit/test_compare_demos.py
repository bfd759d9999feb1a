"""bench/compare_demos.py, the demo's determinism check, on two small demo-out folders: equal
runs agree; a run whose student's weights, a metric or one event differ does not, and the
difference is named."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import compare_demos  # noqa: E402  (bench/ is scripts, not a package)


def _demo_out(
    root: Path, weights: str = "aa", sharpe: float = 1.41, action: str = "buy", event_id: str = "d1"
) -> Path:
    out = root / "demo-out"
    student = out / "models" / "policy" / "s1"
    student.mkdir(parents=True)
    files = {"model.safetensors": "00", "state_head.safetensors": weights, "config.json": "cc"}
    (student / "manifest.json").write_text(json.dumps({"files": files}))
    promotion = {"student": "s1", "promoted": False, "p_value": 0.057,
                 "artifact_path": str(student)}  # fmt: skip
    run: dict[str, Any] = {
        "promotions": [promotion],
        "metrics": {"live loop": {"sharpe": sharpe}, "Buy & Hold": {"sharpe": 1.41}},
        "accounting": {"market.bars.v1": {"published": 3, "consumed": 3}},
        "stage_seconds": {"replay": 100.0 * len(str(root))},
    }
    (out / "run.json").write_text(json.dumps(run))
    events = {"trading.decisions.v1": [{"id": event_id, "action": action}]}
    (out / "fingerprint.json").write_text(json.dumps({"events": events, "net_worth": []}))
    return out


def test_two_equal_runs_agree_whatever_their_folders_and_times(tmp_path: Path) -> None:
    result = compare_demos.compare(_demo_out(tmp_path / "a"), _demo_out(tmp_path / "bb"))
    assert result["agree"] and result["differences"] == {} and result["students_compared"] == 1
    assert result["same_events_apart_from_ids"]


def test_other_weights_a_metric_or_an_event_are_named(tmp_path: Path) -> None:
    base = _demo_out(tmp_path / "a")
    weights = compare_demos.compare(base, _demo_out(tmp_path / "b", weights="ab"))
    assert not weights["agree"] and not weights["same_student_weights"]
    assert weights["same_promotions"] and weights["same_metrics"]
    assert weights["differences"]["student_weights"] == [".s1.state_head.safetensors: 'aa' != 'ab'"]
    metric = compare_demos.compare(base, _demo_out(tmp_path / "c", sharpe=1.42))
    assert metric["differences"] == {"metrics": [".live loop.sharpe: 1.41 != 1.42"]}
    event = compare_demos.compare(base, _demo_out(tmp_path / "d", action="hold"))
    assert list(event["differences"]) == ["events"] and not event["same_events"]
    assert not event["same_events_apart_from_ids"]


def test_events_that_differ_in_their_ids_alone_disagree_and_say_so(tmp_path: Path) -> None:
    """Ids derive from the prices file's content, so two clones give the same ones: other ids
    mean another run id, which consumers would not deduplicate against."""
    result = compare_demos.compare(
        _demo_out(tmp_path / "a"), _demo_out(tmp_path / "b", event_id="d2")
    )
    assert not result["agree"] and result["differences"] == {
        "events": [".events.trading.decisions.v1[0].id: 'd1' != 'd2'"]
    }
    assert result["same_events_apart_from_ids"]
