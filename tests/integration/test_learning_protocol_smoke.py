"""bench/learning.py --smoke: the pre-registered protocol's code on 2 draws, 1 re-alignment seed
and tiny budgets with the tiny random Llama, as a real process. It checks the plumbing (every
summary key the protocol names, with sane types, and a row per draw and seed without an
error), not learning."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # 30-90 s on 2 shared cores

SHARPE_MEANS = (
    "forward_served_sharpe_mean",
    "forward_buy_and_hold_sharpe_mean",
    "forward_rule_sharpe_mean",
    "forward_student_sharpe_mean",
    "head_only_forward_sharpe_mean",
    "head_ppo_forward_sharpe_mean",
)
COUNTS = ("draws", "promotions", "shuffled_news_draws", "shuffled_news_promotions")
ARM_FIELDS = (
    "promoted",
    "forward_student_sharpe",
    "forward_teacher_sharpe",
    "forward_served_sharpe",
    "ppo_iterations",
    "student_version",
)


def _smoke(tiny_llama_dir: Path, tmp_path: Path, *more: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "bench/learning.py",
            "--smoke",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            *more,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_smoke_prints_every_key_of_the_protocol(tiny_llama_dir: Path, tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.jsonl"
    # A part that may start nothing: the run is left whole for the next part.
    nothing = _smoke(tiny_llama_dir, tmp_path, "--rows", str(rows_file), "--minutes", "0")
    assert nothing["complete"] is False and nothing["units_done"] == 0
    assert nothing["units_left"] == ["gate", "draw 0", "realign 0", "draw 1"]
    out = _smoke(tiny_llama_dir, tmp_path, "--rows", str(rows_file))
    assert out["complete"] is True and out["units_left"] == [] and out["units_done"] == 4
    assert out["smoke"] is True and out["draws"] == 2 and out["draws_failed"] == 0
    for key in SHARPE_MEANS:
        assert isinstance(out[key], float) and math.isfinite(out[key]), key
    for key in COUNTS:
        assert isinstance(out[key], int) and 0 <= out[key] <= 2, key
    low, high = out["forward_served_minus_bh_ci90"]
    assert isinstance(low, float) and isinstance(high, float) and low <= high
    assert out["realign_seeds"] == 1 and out["realign_better"] in (0, 1)
    rates = out["gate_false_promotion_rate"]
    assert set(rates) == {"bull", "flat", "bear"}
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in rates.values())
    # The same seed and settings give the same student, bit for bit, on one machine.
    assert out["same_seed_same_student"] is True
    assert isinstance(out["seconds"], float) and out["seconds"] > 0
    assert set(out["targets"]) == {
        "forward_served_minus_bh_ci90_low_above_0",
        "shuffled_news_promotions_at_most_1_in_20",
        "gate_false_promotion_rate_at_most_0.05",
        "same_seed_same_student",
        "realign_better_at_least_6_of_8",
    }
    assert all(isinstance(v, bool) for v in out["targets"].values())
    assert len(out["recipe_sha256"]) == 64

    rows = [json.loads(line) for line in Path(out["rows"]).read_text().splitlines()]
    draws = [r for r in rows if "draw" in r]
    seeds = [r for r in rows if "realign_seed" in r]
    assert len(draws) == 2 and len(seeds) == 1
    assert not [r for r in rows if "error" in r]
    for row in draws:
        assert row["forward_decisions"] == 10
        for arm in ("recipe", "head_only", "shuffled_news", "no_news"):
            assert all(field in row[arm] for field in ARM_FIELDS), arm
        # Head-only is the recipe with its PPO phase off: no PPO iteration.
        assert row["head_only"]["ppo_iterations"] == 0 and row["recipe"]["ppo_iterations"] >= 1
    assert draws[0]["same_seed_same_student"] is True
    assert seeds[0]["forward_decisions"] == 10
    assert isinstance(seeds[0]["forward_frozen_teacher_sharpe"], float)

    # Resuming a complete run runs nothing and summarises the same rows the same way.
    rows_before = rows_file.read_text()
    again = _smoke(tiny_llama_dir, tmp_path, "--rows", str(rows_file))
    assert rows_file.read_text() == rows_before
    moving = {"seconds"}
    assert {k: v for k, v in again.items() if k not in moving} == {
        k: v for k, v in out.items() if k not in moving
    }
