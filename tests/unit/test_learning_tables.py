"""bench/learning.py's helpers that need no model: the protocol's run order and the rows file
as markdown tables (what results.md and a closing note quote)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import learning  # noqa: E402  (bench/ is scripts, not a package)


def _arm(promoted: bool, p: float, forward: float | None) -> dict[str, Any]:
    return {
        "promoted": promoted,
        "sharpe_test": {"p_value": p},
        "forward_student_sharpe": forward,
        "forward_served_sharpe": forward if promoted else -0.5,
    }


def _draw(index: int) -> dict[str, Any]:
    arms = {
        arm: _arm(arm == "recipe", 0.01 if arm == "recipe" else 0.5, 1.5) for arm in learning.ARMS
    }
    return {"unit": f"draw {index}", "draw": index, "market": "MSFT 1995", "rule": 2.0,
            "buy_and_hold": -0.5, **arms}  # fmt: skip


def test_every_unit_runs_once_with_the_gate_first_and_markets_alternating() -> None:
    protocol = learning.Protocol()
    order = learning.unit_order(protocol)
    assert order[0] == "gate" and len(order) == len(set(order)) == 1 + 20 + 8
    draws = [u for u in order if u.startswith("draw ")]
    assert draws[:4] == ["draw 0", "draw 10", "draw 5", "draw 11"], "real, scenario, real, ..."
    realign = [order.index(f"realign {j}") for j in range(8)]
    assert realign == sorted(realign) and realign[0] < order.index("draw 11") < realign[-1]


def test_the_rows_become_a_draw_table_and_a_seed_table() -> None:
    seed = {
        "unit": "realign 0",
        "realign_seed": 0,
        "market": "regime-shift",
        "teacher_gate": _arm(False, 0.3, None),
        "student_gate": _arm(True, 0.043, None),
        "forward_student_sharpe": 6.31,
        "forward_frozen_teacher_sharpe": 2.44,
        "rule": 3.15,
        "buy_and_hold": -2.02,
    }
    failed = {"unit": "draw 5", "draw": 5, "error": "RuntimeError: out of memory"}
    text = learning.markdown_tables([{"unit": "gate", "rates": {}}, _draw(0), failed, seed])
    lines = text.splitlines()
    assert lines[2] == (
        "| 0 | MSFT 1995 | **promoted** (p 0.010): 1.50 | refused (p 0.500): 1.50 | "
        "refused (p 0.500): 1.50 | refused (p 0.500): 1.50 | 1.50 | 2.00 | -0.50 |"
    )
    assert lines[3].startswith("| 5 | error: RuntimeError: out of memory |")
    assert lines[3].count("|") == lines[0].count("|"), "an error row keeps the table's columns"
    assert lines[-1] == (
        "| 0 | regime-shift | refused (p 0.300) | **promoted** (p 0.043) | 6.31 | 2.44 | 3.15 "
        "| -2.02 |"
    )
