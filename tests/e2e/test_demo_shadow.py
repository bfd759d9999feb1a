"""End to end: the demo's shadow stage, `rlmf demo --quick` with a gate that passes any student.

The demo's own gate is calibrated to promote a no-skill student at most 5% of the time, so a
quick demo (8 held-out bars) rarely has a candidate, and the full demo has had none so far.
This run sets the trainer's gate through the environment, as a user may: no bootstrap test,
no margin, no guards. Every student then passes the backtest gate. The test checks the
stage that follows:
- the student becomes the candidate and does not serve yet;
- the simulator asks it beside the teacher on the next live bars and books its decisions on
  trading.shadow.v1, while the teacher keeps the live account;
- after the demo's quick shadow stretch (5 bars) the trainer decides, on models.promotions.v1;
- the report draws the stretch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common import topics
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus_reader import decode_unique, read_all
from services.common.envelope import to_datetime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PASS_ANY_STUDENT = {
    "RLMF_TRAINER_GATE__BOOTSTRAP": "false",
    "RLMF_TRAINER_GATE__MARGIN": "-1000",
    "RLMF_TRAINER_GATE__ENTROPY_FLOOR": "0",
    "RLMF_TRAINER_GATE__MAX_DRAWDOWN_WORSENING": "100",
}
QUICK_SHADOW_BARS = 5
"""DemoSettings.quick_shadow_bars."""


@pytest.fixture(scope="module")
def shadow_run() -> Iterator[dict[str, Any]]:
    # Outside pytest's basetemp, as test_demo.py says why.
    workdir = Path(tempfile.mkdtemp(prefix="rlmf-e2e-demo-shadow-"))
    out = workdir / "demo-out"
    argv = [sys.executable, "-m", "services.cli", "demo", "--quick", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLMF_")}
    try:
        with EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log") as broker:
            proc = subprocess.run(
                [*argv, "--bootstrap", broker.bootstrap],
                cwd=REPO,
                env={**env, **PASS_ANY_STUDENT},
                capture_output=True,
                text=True,
                timeout=840,
            )
            shadow, verdicts = (
                [
                    e.payload
                    for e in decode_unique(read_all(broker.bootstrap, t), topics.payload_type(t))
                ]
                for t in (topics.TRADING_SHADOW, topics.MODELS_PROMOTIONS)
            )
        yield {"proc": proc, "out": out, "shadow": shadow, "promotions": verdicts}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_passed_student_trades_in_shadow_before_its_verdict(shadow_run: dict[str, Any]) -> None:
    proc = shadow_run["proc"]
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    run = json.loads((shadow_run["out"] / "run.json").read_text())
    promotions = run["promotions"]
    candidates = [p for p in promotions if p["outcome"] == "candidate"]
    assert candidates, f"no student passed the open gate: {promotions}"
    first = candidates[0]["student"]
    verdicts = [p for p in promotions if p.get("stage") == "shadow" and p["student"] == first]
    assert len(verdicts) == 1, f"the first candidate has no shadow verdict: {promotions}"
    verdict = verdicts[0]
    assert verdict["outcome"] in ("promoted", "retired")
    assert verdict["shadow_bars"] >= QUICK_SHADOW_BARS

    # The candidate's decisions went to trading.shadow.v1, one per shadow bar, while the
    # teacher (v0) kept the live account.
    shadow = [s for s in shadow_run["shadow"] if s.decision.model_version == first]
    bars = sorted({s.shadow_bar for s in shadow})
    assert bars[:QUICK_SHADOW_BARS] == list(range(1, QUICK_SHADOW_BARS + 1)), bars
    assert {s.teacher_version for s in shadow} == {"v0"}

    # The verdict names the stretch the report shades: the candidate's shadow bars.
    published = [
        p for p in shadow_run["promotions"] if p.stage == "shadow" and p.student_version == first
    ]
    assert len(published) == 1 and published[0].HasField("window_start")
    start, end = (to_datetime(t) for t in (published[0].window_start, published[0].window_end))
    shadow_times = sorted(to_datetime(s.decision.decision_time) for s in shadow)
    # (a bar is named by its decision time or by its end, a day later: either lies in it)
    day = timedelta(days=1)
    assert shadow_times[0] - day <= start <= end <= shadow_times[-1] + day
    assert (shadow_run["out"] / "plots" / "promotions.png").stat().st_size > 5_000
