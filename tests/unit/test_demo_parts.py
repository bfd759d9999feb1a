"""The demo's parts without a run: synthetic news, the training pacer, the cycle rule, the
report written from plain data, and the escaping of what reaches the HTML pages."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.common import envelope as envelopes
from services.common.cycle_schedule import cycle_due
from services.common.pb.rlmf.v1 import payloads_pb2 as pb

SCRIPT = "<script>alert(1)</script>"


def _frame(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    idx = pd.bdate_range("2021-01-04", periods=n, tz="UTC")
    frame = pd.DataFrame({"close": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))}, index=idx)
    frame.attrs["bar_seconds"] = 86_400.0
    return frame


@pytest.mark.parametrize(("informativeness", "low", "high"), [(1.0, 1.0, 1.0), (0.0, 0.4, 0.6)])
def test_synthetic_news_informativeness_is_what_it_says(
    informativeness: float, low: float, high: float
) -> None:
    from services.demo.news import generate_news

    frame = _frame()
    news = generate_news(frame, "ACME", informativeness, per_day=3.0, seed=7)
    assert news == generate_news(frame, "ACME", informativeness, per_day=3.0, seed=7)  # seeded
    closes = frame["close"]
    position = {t: k for k, t in enumerate(frame.index)}
    hits = []
    for item in news:
        k = position[item.published_at.replace(hour=0, minute=0, second=0, microsecond=0)]
        # Published inside its bar, before the close: no item from the future.
        assert frame.index[k] < item.published_at < frame.index[k] + pd.Timedelta(days=1)
        if item.tone:
            hits.append(item.tone == (1 if closes.iloc[k + 1] >= closes.iloc[k] else -1))
    assert low <= sum(hits) / len(hits) <= high


def test_cycle_due_counts_calendar_days_from_the_last_cycle() -> None:
    days = [date(2024, 1, 1), date(2024, 1, 5), date(2024, 1, 10), date(2024, 1, 11)]
    assert cycle_due([], None, 5) is None
    assert cycle_due(days[:2], None, 5) is None  # 4 days after the first feedback day
    assert cycle_due(days[:3], None, 5) == date(2024, 1, 10)  # 9 days: due
    assert cycle_due(days, date(2024, 1, 10), 5) is None  # 1 day after the last cycle
    assert cycle_due(days, date(2024, 1, 6), 5) == date(2024, 1, 11)  # exactly 5 days
    # a backlog read at once (a restart): the first day the period is over, not the newest
    assert cycle_due(days, None, 5) == date(2024, 1, 10)


def _feedback_record(t: Any, nxt: Any) -> Any:
    """One market.feedback.v1 record for the decision at `t`, realised at `nxt`, as the pacer
    reads it off the bus."""
    from services.common.bus_reader import TopicRecord

    msg = pb.MarketFeedback(ticker="ACME", action="hold")
    envelopes.set_time(msg.decision_time, t.to_pydatetime())
    envelopes.set_time(msg.realised_time, nxt.to_pydatetime())
    raw = envelopes.encode(envelopes.wrap(msg, key="ACME", event_time=nxt, source="t"))
    return TopicRecord(0, 0, "x", raw, {})


def test_training_pacer_agrees_with_the_trainer_schedule(tmp_path: Path) -> None:
    """The demo pauses the market when it predicts a cycle; the prediction must be the
    trainer's own (services.trainer.service.Scheduler.due) on the same feedback."""
    from services.demo.pacing import TrainingPacer
    from services.trainer.datasets import FeedbackLog, FeedbackRecord
    from services.trainer.service import Scheduler
    from services.trainer.settings import TrainerSettings

    frame = _frame(120)
    settings = TrainerSettings(cycle_every_days=20, work_dir=tmp_path)
    log = FeedbackLog(tmp_path / "feedback.jsonl")
    started: list[Any] = []
    scheduler = Scheduler(settings, log, frame, None, run=lambda *a, **k: started.append(1))
    pacer = TrainingPacer(20)
    trainer_days, pacer_days = [], []
    for t, nxt in zip(frame.index[:-1], frame.index[1:], strict=False):
        record = FeedbackRecord(
            "ACME", t.to_pydatetime(), nxt.to_pydatetime(), "s", "hold", 0.0, 0.0, "v0"
        )
        log.add(record)
        if scheduler.due() is not None:
            trainer_days.append(t.date())
            scheduler.maybe_start()
            scheduler.join()
        if pacer.due([_feedback_record(t, nxt)]):
            pacer_days.append(pacer.last_cycle_day)
    assert len(started) == len(trainer_days) >= 4
    assert pacer_days == trainer_days


def test_pacer_and_trainer_skip_the_same_cycles_while_a_candidate_is_in_shadow(
    tmp_path: Path,
) -> None:
    """A cycle due while a candidate trades in shadow is skipped by the trainer
    (ShadowFiles.in_shadow_on) and the demo's pacer alike, whichever of the feedback and the
    verdict each saw first: the verdict's last shadow bar decides, an event time."""
    import json

    from services.common.bus_reader import TopicRecord
    from services.demo.pacing import TrainingPacer
    from services.trainer.datasets import FeedbackLog, FeedbackRecord
    from services.trainer.service import Scheduler
    from services.trainer.settings import TrainerSettings
    from services.trainer.shadow import Candidate, ShadowFiles

    frame = _frame(120)
    settings = TrainerSettings(cycle_every_days=20, work_dir=tmp_path)
    log = FeedbackLog(tmp_path / "feedback.jsonl")
    scheduler = Scheduler(settings, log, frame, None, run=lambda *a, **k: None)
    pacer, files = TrainingPacer(20, shadow_bars=5), ShadowFiles(tmp_path)
    trainer_days, pacer_days = [], []

    def promotion(t: Any, **fields: Any) -> TopicRecord:
        msg = pb.ModelPromotion(student_version="s1", teacher_version="v0", **fields)
        envelopes.set_time(msg.window_end, t.to_pydatetime())
        raw = envelopes.encode(envelopes.wrap(msg, key="s1", event_time=t, source="t"))
        return TopicRecord(0, 0, "p", raw, {})

    for i, (t, nxt) in enumerate(zip(frame.index[:-1], frame.index[1:], strict=False)):
        if i == 30:  # a cycle's student passed the backtest gate
            files.write_candidate(Candidate(
                version="s1", folder="f", teacher_version="v0", needed=5, staged_at="",
                backtest_student=[], backtest_teacher=[], periods_per_year=252.0,
            ))  # fmt: skip
            pacer.note_promotions([promotion(t, outcome="candidate")])
        if i == 60:  # its verdict: the stretch ended on this bar
            files.verdict("s1").parent.mkdir(parents=True, exist_ok=True)
            files.verdict("s1").write_text(json.dumps({"last_bar": t.isoformat()}))
            files.candidate.unlink()
            pacer.note_promotions([promotion(t, outcome="retired", stage="shadow")])
        log.add(FeedbackRecord(
            "ACME", t.to_pydatetime(), nxt.to_pydatetime(), "s", "hold", 0.0, 0.0, "v0"
        ))  # fmt: skip
        if (day := scheduler.due()) is not None:
            trainer_days.append(day)
            scheduler.last_cycle_day = day
        if pacer.due([_feedback_record(t, nxt)]):
            pacer_days.append(pacer.last_cycle_day)
    assert pacer_days == trainer_days
    staged, judged = frame.index[30].date(), frame.index[60].date()
    assert not [d for d in trainer_days if staged <= d <= judged], "a cycle ran in shadow"
    assert len(trainer_days) >= 3


# ---------------------------------------------------------------------------------------------
# The report from plain data
# ---------------------------------------------------------------------------------------------


def _synthetic_run(tmp_path: Path) -> tuple[Any, Any, Any, Any]:
    """A 30-bar regime-shift run as the bus would have recorded it: two model versions, one
    promotion, a headline and a decision state carrying markup (the first 30 bars of the
    shortest window a quick demo accepts)."""
    from services.demo.accounting import Accounting, Check, TopicCount
    from services.demo.collect import RunTables
    from services.demo.config import DemoConfig, select_window
    from services.demo.settings import DemoSettings
    from services.demo.state import RunState

    cfg = DemoConfig("regime-shift", True, tmp_path, DemoSettings(quick_bars=60))
    full = select_window(cfg)
    window = dataclasses.replace(full, frame=full.frame.iloc[:30])
    times = window.frame.index
    closes = window.frame["close"].to_numpy(dtype=float)
    versions = ["v0"] * 15 + ["student-1"] * 15
    actions = (["buy", "hold", "sell"] * 10)[:30]
    decisions = pd.DataFrame(
        {
            "action": actions,
            "model_version": versions,
            "value": 0.1,
            "p_buy": 0.4,
            "p_hold": 0.3,
            "p_sell": 0.3,
            "explanation": [f"rationale {SCRIPT}" if k == 3 else "" for k in range(30)],
        },
        index=times,
    )
    snapshots = pd.DataFrame(
        {
            "net_worth": 10_000 * closes / closes[0] * 0.99,
            "buy_and_hold": 10_000 * closes / closes[0],
            "model_version": versions,
        },
        index=times,
    )
    news = pd.DataFrame(
        {
            "time": times[:5] + pd.Timedelta(hours=3),
            "sentiment": [0.5, -0.4, 0.2, 0.0, 0.9],
            "headline": [f"SYN {SCRIPT} beats expectations"] * 5,
            "summary": "",
            "synthetic": True,
            "model": "lexicon",
        }
    )
    feedback = pd.DataFrame(
        {
            "decision_time": times[:-1],
            "state": [f"state with headline SYN {SCRIPT}"] * 29,
            "realised_return": 0.01,
            "reward": 0.002,
        }
    )
    promotion = {
        "time": times[15],
        "student": "student-1",
        "teacher": "v0",
        "promoted": True,
        "reason": "beat the teacher",
        "student_metrics": {"sharpe": 1.2},
        "teacher_metrics": {"sharpe": 0.4},
        "buy_and_hold_metrics": {"sharpe": 0.8},
        "failed_guards": [],
        "artifact_path": "",
        "sharpe_diff": 0.8,
        "sharpe_diff_low": 0.1,
        "sharpe_diff_high": 1.6,
        "p_value": 0.03,
        "holdout_bars": 100,
        "inputs_sha256": "ab" * 32,
        "torch_threads": 2,
    }
    tables = RunTables(
        pd.DataFrame({"close": closes}, index=times),
        decisions,
        snapshots,
        news,
        [promotion],
        feedback,
    )
    accounting = Accounting(
        [TopicCount("market.bars.v1", 30, 30, 0, {"rlmf-features": 30})],
        [Check("every bar of the window published", True, "30 unique bars")],
    )
    state = RunState(
        window=window,
        bootstrap="unused:0",
        teacher_dir=tmp_path / "models" / "policy" / "v0",
        exit_codes={"features": 0},
    )
    return state, cfg, accounting, tables


def test_the_report_is_written_from_plain_data(tmp_path: Path) -> None:
    from services.demo.finish import verdict, write_run_report

    state, cfg, accounting, tables = _synthetic_run(tmp_path)
    report = write_run_report(state, cfg, tmp_path, accounting, tables, n_fills=12)
    html = report.read_text()
    for name in ("equity", "decisions", "sentiment", "promotions"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"plots/{name}.png" in html
    assert "The accounting reconciles." in html and "PROMOTED" in html
    assert "sharpe: student 1.2000 / teacher 0.4000 / B&amp;H 0.8000" in html
    assert "90% interval [0.1000, 1.6000], p = 0.0300 over 100 held-out bars" in html
    run = json.loads((tmp_path / "run.json").read_text())
    (decision,) = run["promotions"]
    assert decision["p_value"] == 0.03 and decision["inputs_sha256"] == "ab" * 32
    assert run["window"]["bars"] == 30 and run["accounting"]["reconciles"]
    live = run["metrics"]["live loop (teacher, then promoted students)"]
    assert live["cumulative_return"] == pytest.approx(
        tables.snapshots["net_worth"].iloc[-1] / tables.snapshots["net_worth"].iloc[0] - 1
    )
    assert verdict(state, accounting.reconciles, tables) == 0
    assert verdict(state, False, tables) == 1


def test_the_demo_report_escapes_what_it_shows(tmp_path: Path) -> None:
    from services.demo.finish import write_run_report

    state, cfg, accounting, tables = _synthetic_run(tmp_path)
    state.notes.append(f"note {SCRIPT}")
    html = write_run_report(state, cfg, tmp_path, accounting, tables, n_fills=0).read_text()
    assert "<script>" not in html
    assert "state with headline SYN &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "note &lt;script&gt;" in html


def test_the_backtest_report_escapes_its_title_and_run_info(tmp_path: Path) -> None:
    from services.market.report import PLOTS, ReportData, ReportTrade, write_report

    times = pd.date_range("2024-01-01", periods=40, freq="D", tz="UTC")
    equity = np.linspace(100.0, 110.0, 40)
    data = ReportData(
        times=times,
        equity=equity,
        buy_and_hold=equity[::-1],
        closes=equity,
        positions=np.ones(40),
        trades=[ReportTrade(times[2], 100.5, 1.0), ReportTrade(times[20], 105.0, -1.0)],
        metrics={"strategy": {"sharpe": 1.5}, "buy_and_hold": {"sharpe": float("nan")}},
        periods_per_year=252.0,
        title=f"Backtest: random on {SCRIPT}",
        run_info={"ticker": SCRIPT, "seed": 3},
    )
    html = write_report(data, tmp_path).read_text()
    assert "<script>" not in html
    assert "<title>Backtest: random on &lt;script&gt;" in html
    assert "<td>ticker</td><td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in html
    assert "<td>sharpe</td><td>1.5000</td><td>n/a</td>" in html
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and f'src="{name}"' in html


@pytest.mark.slow  # a subprocess importing the whole CLI
def test_demo_with_a_csv_too_short_for_two_cycles_names_the_minimum(tmp_path: Path) -> None:
    short = tmp_path / "ACME.csv"
    _frame(120).rename_axis("date").to_csv(short)
    argv = ["demo", "--prices", str(short), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "gives 120 bars" in result.stderr and "at least 432" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything started


def test_a_cycles_decision_is_matched_by_its_day_not_by_arrival() -> None:
    from services.common.bus_reader import TopicRecord
    from services.demo.pacing import _is_decision_of

    def decision(day: date, version: str) -> TopicRecord:
        env = envelopes.wrap(
            pb.ModelPromotion(student_version=version),
            key=version,
            event_time=pd.Timestamp(day, tz="UTC").to_pydatetime(),
            source="test",
        )
        return TopicRecord(0, 0, env.id, envelopes.encode(env), {})

    late = decision(date(2016, 5, 2), "v0-s20160502")
    mine = decision(date(2016, 11, 1), "v0-s20161101")
    assert not _is_decision_of(late, date(2016, 11, 1))
    assert _is_decision_of(mine, date(2016, 11, 1))


# ---------------------------------------------------------------------------------------------
# The history before the window
# ---------------------------------------------------------------------------------------------


def test_the_real_window_comes_after_its_history_and_the_warm_up_knows_only_the_history(
    tmp_path: Path,
) -> None:
    from services.demo.config import DemoConfig, select_window
    from services.demo.settings import DemoSettings
    from services.market.market_data import load_prices_csv

    full = load_prices_csv(Path(__file__).resolve().parents[2] / "data" / "MSFT.csv")
    settings = DemoSettings(history_bars=300, warm_up_holdout_bars=100)
    window = select_window(DemoConfig("real", False, tmp_path, settings))
    first = full.index.get_loc(window.frame.index[0])
    assert window.history.index.equals(full.index[first - 300 : first])  # right before it
    assert window.warm_up and window.warm_up_day == f"{full.index[first - 1]:%Y-%m-%d}"
    # Holding out no more than a replay cycle does, the warm-up is cut as a replay cycle is:
    # one fold (services/trainer/warm_up.py); folds cut only a longer block.
    assert window.warm_up_holdout == 100 and window.warm_up_folds == 1
    assert window.warm_up_day < f"{window.frame.index[0]:%Y-%m-%d}"
    assert window.history.attrs["bar_seconds"] == 86_400.0  # the feed publishes it as bars
    assert "300 bars of history" in window.description

    # Too short for a cycle's windows (100 held out after 40 training bars): published for
    # the features and later cycles, but no warm-up cycle.
    short = select_window(DemoConfig("real", False, tmp_path, DemoSettings(history_bars=140)))
    assert len(short.history) == 140 and not short.warm_up and short.warm_up_holdout == 0
    none = select_window(DemoConfig("real", False, tmp_path, DemoSettings(history_bars=0)))
    assert none.history.empty and not none.warm_up
    # The regime generator's series starts at the window: it has no history.
    regime = select_window(DemoConfig("regime-shift", True, tmp_path))
    assert regime.history.empty and not regime.warm_up


def test_a_cycle_as_of_a_day_knows_that_day_and_nothing_after() -> None:
    from services.trainer.market_source import known_by

    prices = _frame(10)
    day = prices.index[4].date()
    known = known_by(prices, day)
    assert list(known.index) == list(prices.index[:5])
    assert known_by(prices, prices.index[0].date() - pd.Timedelta(days=1)).empty


def test_the_history_bars_are_the_bars_the_simulator_would_publish() -> None:
    """The demo publishes its history with the shared helper; the simulator publishes the window
    with its own conversion: the same rows must give the same messages."""
    from services.common.bar_messages import frame_bar_messages
    from services.simulator.service import bar_to_pb, frame_bars

    frame = _frame(5).assign(open=1.0, high=2.0, low=0.5, volume=[1.0, np.nan, 3.0, 4.0, 5.0])
    assert frame_bar_messages(frame, "ACME") == [bar_to_pb(b) for b in frame_bars(frame, "ACME")]


def test_the_warm_up_holds_out_what_it_is_told_and_tells_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.demo.config import CycleWindows, DemoConfig
    from services.demo.history import warm_up_env
    from services.demo.settings import DemoSettings
    from services.trainer.settings import TrainerSettings
    from services.trainer.warm_up import warm_up_settings

    # By default 250 of the 350 bars held out, in 5 walk-forward folds of 50.
    default = DemoConfig("real", False, tmp_path).warm_up_windows(350)
    assert default == CycleWindows(min_train=40, embargo=2, holdout=250, folds=5)
    cfg = DemoConfig(
        "real", False, tmp_path, DemoSettings(warm_up_holdout_bars=252, warm_up_folds=1)
    )
    # A trading year held out, the rest trained on.
    assert cfg.warm_up_windows(350) == CycleWindows(min_train=40, embargo=2, holdout=252)
    # Less history: all but twice the training minimum held out (2 * 40 + embargo 2 + 2
    # outcome bars), never fewer than a replay cycle's 100.
    assert cfg.warm_up_windows(200).holdout == 116
    assert cfg.warm_up_windows(150).holdout == 100
    quick = DemoConfig("real", True, tmp_path, DemoSettings(warm_up_holdout_bars=252))
    assert quick.warm_up_windows(30) == CycleWindows(min_train=10, embargo=0, holdout=8)
    trainer = {
        "RLMF_TRAINER_EVAL_DAYS": "100",
        "RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS": "100",
        "RLMF_TRAINER_TRAIN_DAYS": "40",
        "RLMF_TRAINER_SEED": "0",
    }
    env = warm_up_env(trainer, 250, 5, 0.5)
    assert "RLMF_TRAINER_WARM_UP__MINUTES" not in warm_up_env(trainer, 250, 5)
    assert env["RLMF_TRAINER_SEED"] == "0" and trainer["RLMF_TRAINER_EVAL_DAYS"] == "100"
    # The trainer process applies the same rule to the bars it finds (`cycle --warm-up`).
    for name in [n for n in os.environ if n.startswith("RLMF_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = TrainerSettings()
    warm = warm_up_settings(settings, 350)
    assert (warm.eval_days, warm.gate.min_holdout_bars, warm.walk_forward_folds) == (250, 250, 5)
    assert warm.cycle_minutes == 0.5 and settings.eval_days == 100
    assert CycleWindows(40, 2, warm.eval_days, warm.walk_forward_folds) == default


@pytest.mark.parametrize("quick", [False, True])
def test_the_demo_trains_the_trainers_recipe_for_its_step_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: bool
) -> None:
    """The demo's trainer (and its warm-up) reads the recipe from the trainer's one place: the
    demo sets only its step budget (and --quick's rollout shape), under new names, and its
    wall-clock minutes are a cap the recipe's steps are meant never to reach."""
    import os

    from services.demo.config import DemoConfig, select_window
    from services.demo.history import warm_up_env
    from services.demo.services_plan import trainer_env
    from services.demo.settings import DemoSettings
    from services.trainer.settings import (
        FLAT_NAMES,
        GROUP_ALIASES,
        RecipeSettings,
        TrainerSettings,
    )

    cfg = DemoConfig("real", quick, tmp_path, DemoSettings())
    env = trainer_env(cfg, select_window(cfg), tmp_path / "models", "http://127.0.0.1:9", tmp_path)
    old = [f"RLMF_TRAINER_{name}".upper() for name in FLAT_NAMES]
    old += [f"RLMF_TRAINER_{group}__".upper() for group in GROUP_ALIASES]
    assert not [k for k in env if any(k.startswith(o) for o in old)]
    for name in [n for n in os.environ if n.startswith("RLMF_")]:
        monkeypatch.delenv(name)
    for name, value in warm_up_env(env, 250, 5, cfg.settings.warm_up_minutes).items():
        monkeypatch.setenv(name, value)
    settings, default = TrainerSettings(), RecipeSettings()
    recipe = settings.recipe
    assert recipe.ppo.total_timesteps == 40
    assert recipe.student == default.student and recipe.mf_epochs == default.mf_epochs
    if quick:
        assert (recipe.ppo.num_steps, recipe.mf_max_steps) == (20, None)
    else:  # the trainer's own rollout shape, its first 60 market-feedback steps
        assert dataclasses.replace(recipe.ppo, seed=0) == dataclasses.replace(
            default.ppo, total_timesteps=40, seed=0
        )
        assert recipe.mf_max_steps == 60 and settings.warm_up.minutes == 20.0
