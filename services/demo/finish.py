"""After the loop: read the run back from the bus, reconcile it, write report.html and run.json.

The exit code is 0 only when the accounting reconciles, every service stopped with 0 on SIGTERM
and at least one promotion decision was recorded (when a trainer ran).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from services.common import topics
from services.demo.accounting import Accounting, build_accounting
from services.demo.collect import RunTables, daily_sentiment, tables
from services.demo.config import DemoConfig, status
from services.demo.report import ReportInput, write_html, write_plots, write_summary
from services.demo.state import RunState
from services.market.report import Curve

EXPLAINED = 6


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _metrics(equity: np.ndarray, ppy: float, n_trades: int = 0) -> dict[str, Any]:
    from services.market.performance import compute_metrics

    out = compute_metrics(equity, ppy).to_dict()
    out["n_trades"] = n_trades
    return out


def live_curves(t: RunTables, ppy: float, n_fills: int) -> list[Curve]:
    snaps = t.snapshots
    times = pd.DatetimeIndex(snaps.index)
    versions = " -> ".join(dict.fromkeys(snaps["model_version"].astype(str)))
    live = snaps["net_worth"].to_numpy(dtype=float)
    bh = snaps["buy_and_hold"].to_numpy(dtype=float)
    return [
        Curve(
            "live loop (teacher, then promoted students)",
            times,
            live,
            _metrics(live, ppy, n_fills),
            f"the services' run over the bus; versions {versions}",
        ),
        Curve(
            "Buy & Hold",
            times,
            bh,
            _metrics(bh, ppy, 1),
            "the simulator's benchmark account, same costs",
        ),
    ]


def segment_curves(t: RunTables, ppy: float) -> list[Curve]:
    """Each model's own stretch of the live run: the bars on which it made the decisions.

    The curve starts at the close before the model's first decision, so its first return is
    the one its first decision earned."""
    snaps = t.snapshots
    if snaps.empty:
        return []
    versions = snaps["model_version"].astype(str).to_numpy()
    curves, start = [], 0
    for k in range(1, len(versions) + 1):
        if k == len(versions) or versions[k] != versions[start]:
            seg = snaps.iloc[max(0, start - 1) : k]
            if len(seg) >= 2:
                eq = seg["net_worth"].to_numpy(dtype=float)
                times = pd.DatetimeIndex(seg.index)
                curves.append(
                    Curve(
                        f"{versions[start]} (live, {times[0]:%Y-%m-%d}..{times[-1]:%Y-%m-%d})",
                        times,
                        eq,
                        _metrics(eq, ppy),
                        "its own decisions in the live loop",
                    )
                )
            start = k
    return curves


def offline_curves(
    state: RunState, cfg: DemoConfig, t: RunTables, sentiment: pd.Series, summaries: pd.Series
) -> list[Curve]:
    """Sentiment-rule baseline and each model (teacher, promoted students) through the same env."""
    from services.market.backtest import run_backtest
    from services.market.baseline_policies import SentimentRule
    from services.policy.folder_policy import load_folder_policy

    w = state.window
    assert w is not None and state.teacher_dir is not None
    frame = w.frame
    ppy = float(frame.attrs.get("periods_per_year", 252.0))
    news_sent = sentiment.reindex(frame.index)
    news_text = summaries.reindex(frame.index).fillna("")
    policies: list[tuple[str, Any, str]] = [
        ("sentiment rule (baseline)", SentimentRule(), "buy above +0.2, sell below -0.2")
    ]
    # Every model over the whole window costs a full LLM backtest each: the full demo does it,
    # --quick shows each model's live segment only.
    models = (
        []
        if not cfg.settings.offline_model_backtests or cfg.quick
        else [("teacher v0", state.teacher_dir)]
    )
    if models:
        models += [
            (f"student {p['student']} (promoted), offline", Path(p["artifact_path"]))
            for p in t.promotions
            if p["promoted"] and p["artifact_path"] and Path(p["artifact_path"]).is_dir()
        ]
    curves = []
    for label, folder in models:
        policies.append(
            (
                label,
                load_folder_policy(folder),
                f"offline backtest of {folder.name} on the whole window",
            )
        )
    for label, policy, note in policies:
        status(f"report: backtesting {label}")
        result = run_backtest(
            frame,
            policy,
            ticker=w.ticker,
            sentiment=news_sent,
            summaries=news_text,
            seed=cfg.settings.seed,
            progress=True,
        )
        run = result.strategy
        curves.append(
            Curve(
                label,
                pd.DatetimeIndex(run.times),
                run.equity,
                _metrics(run.equity, ppy, len(run.trades)),
                note,
            )
        )
    return curves


def explained(t: RunTables) -> list[dict[str, Any]]:
    """A few live decisions (trades first) with the exact state text the policy saw."""
    if t.feedback.empty or t.decisions.empty:
        return []
    fb = t.feedback.set_index("decision_time")
    # Decisions the policy explained (the simulator asks on every Nth one) come first; the
    # rest of the picks are spread over the trades.
    explained = t.decisions[t.decisions["explanation"].astype(bool)]
    trades = t.decisions[t.decisions["action"] != "hold"]
    spread = list(trades.index[:: max(1, len(trades) // EXPLAINED)]) or list(t.decisions.index)
    picks = list(explained.index[:: max(1, len(explained) // EXPLAINED)][:EXPLAINED])
    picks += [when for when in spread if when not in picks][: EXPLAINED - len(picks)]
    out = []
    for when in picks:
        d = t.decisions.loc[when]
        state = fb.loc[when, "state"] if when in fb.index else "(last bar: no feedback yet)"
        outcome = (
            f" | next day's return {fb.loc[when, 'realised_return']:+.4f},"
            f" reward {fb.loc[when, 'reward']:+.4f}"
            if when in fb.index
            else ""
        )
        out.append(
            {
                "when": f"{pd.Timestamp(when):%Y-%m-%d}",
                "action": d["action"],
                "model_version": str(d["model_version"]),
                "probs": f"{d['p_buy']:.2f}/{d['p_hold']:.2f}/{d['p_sell']:.2f}",
                "value": float(d["value"]),
                "state": str(state),
                "explanation": (
                    d["explanation"]
                    or "(not asked for this decision: the live loop asks for a rationale on"
                    " every RLMF_SIMULATOR_EXPLAIN_EVERY-th decision)"
                )
                + outcome,
            }
        )
    return out


def services_table(state: RunState) -> list[dict[str, Any]]:
    rows = []
    for name in state.plans:
        killed = [k for k in state.killed if k["service"] == name]
        note = (
            f"SIGKILLed (pid {killed[0]['pid']}) after {killed[0]['after_bars']} bars,"
            " restarted by the supervisor"
            if killed
            else ""
        )
        rows.append(
            {
                "name": name,
                "exit_code": state.exit_codes.get(name),
                "restarts": state.restarts.get(name, 0),
                "note": note,
            }
        )
    rows.append(
        {
            "name": "simulator (replay)",
            "exit_code": state.simulator_exit,
            "restarts": 0,
            "note": "ends by itself after the last bar",
        }
    )
    return rows


# What run.json keeps of each promotion decision: who, the verdict, the gate's statistics, and
# what made the student (its inputs' hash and thread count), so two runs of one seed compare.
PROMOTION_KEYS = (
    "student",
    "teacher",
    "promoted",
    "reason",
    "artifact_path",
    "sharpe_diff",
    "sharpe_diff_low",
    "sharpe_diff_high",
    "p_value",
    "holdout_bars",
    "inputs_sha256",
    "torch_threads",
    "ppo_iterations",
    "outcome",
    "stage",
    "shadow_bars",
    "shadow_sharpe_diff",
    "shadow_p_value",
    "budget_cut",
)


def run_info(state: RunState, cfg: DemoConfig, t: RunTables) -> dict[str, Any]:
    from services.market.backtest import sha256_of

    w = state.window
    assert w is not None
    return {
        "scenario": cfg.scenario,
        "quick": cfg.quick,
        "seed": cfg.settings.seed,
        "data_file": str(w.data_file) if w.data_file else None,
        "data_sha256": sha256_of(w.data_file) if w.data_file else None,
        "window": {
            "first_bar": f"{w.frame.index[0]:%Y-%m-%d}",
            "last_bar": f"{w.frame.index[-1]:%Y-%m-%d}",
            "bars": len(w.frame),
            "description": w.description,
            "simulator_env": w.simulator_env,
        },
        "history": _history_info(state),
        "news": {
            "synthetic": True,
            "items": len(state.news),
            "informativeness": cfg.settings.news_informativeness,
            "per_day": cfg.settings.news_per_day,
        },
        "base_model": str(state.base_model),
        "model_versions": list(dict.fromkeys(t.decisions["model_version"].astype(str)))
        if not t.decisions.empty
        else [],
        "promotions": [{k: v for k, v in p.items() if k in PROMOTION_KEYS} for p in t.promotions],
        "train_every_bars": cfg.train_every,
        "train_every_calendar_days": cfg.train_every_days,
        "settings": cfg.settings.model_dump(),
        "services": {
            n: {k: v for k, v in p.env.items() if k.startswith("RLMF_")}
            for n, p in state.plans.items()
        },
        "killed": state.killed,
        "restarts": state.restarts,
        "exit_codes": state.exit_codes,
        "stage_seconds": state.stage_seconds,
        "python": platform.python_version(),
    }


def _history_info(state: RunState) -> dict[str, Any]:
    """The bars published before the window and the trainer's warm-up cycle on them."""
    w = state.window
    assert w is not None
    if w.history.empty:
        return {"bars": 0}
    warm_up = state.warm_up
    return {
        "bars": len(w.history),
        "first_bar": f"{w.history.index[0]:%Y-%m-%d}",
        "last_bar": f"{w.history.index[-1]:%Y-%m-%d}",
        "published": state.history_bars_published,
        "warm_up_cycle": None
        if warm_up is None
        else {
            "as_of": warm_up.as_of,
            "exit_code": warm_up.exit_code,
            "seconds": warm_up.seconds,
            "holdout_bars": w.warm_up_holdout,
            "walk_forward_folds": w.warm_up_folds,
            "promoted": warm_up.promoted,
            "student_version": (warm_up.result or {}).get("student_version"),
            "reason": (warm_up.result or {}).get("reason"),
        },
    }


def _history_line(state: RunState) -> str:
    w = state.window
    assert w is not None
    if w.history.empty:
        return "History: none; the teacher starts on the window's first bar untrained"
    line = (
        f"History: {len(w.history)} bars before the window ({w.history.index[0]:%Y-%m-%d} to "
        f"{w.history.index[-1]:%Y-%m-%d}) with their synthetic news, published before the "
        "replay; every cycle trains on them too"
    )
    if state.warm_up is not None:
        line += f". The trainer's {state.warm_up.summary()}"
    return line


def finish(state: RunState, cfg: DemoConfig, out: Path) -> int:
    """Read the run back from the bus (the services have stopped), report on it, and return
    the demo's exit code."""
    started = time.monotonic()
    w = state.window
    assert w is not None
    accounting, events = build_accounting(
        state.bootstrap, set(state.plans), len(w.frame), len(state.news), len(w.history)
    )
    t = tables(events, since=w.frame.index[0])
    report = write_run_report(state, cfg, out, accounting, t, len(events[topics.TRADING_FILLS]))
    status(f"report: {report} and {out / 'run.json'} ({time.monotonic() - started:.0f}s)")
    return verdict(state, accounting.reconciles, t)


def write_run_report(
    state: RunState, cfg: DemoConfig, out: Path, accounting: Accounting, t: RunTables, n_fills: int
) -> Path:
    """Write report.html (returned), plots/, summary.png and run.json into `out`."""
    w = state.window
    assert w is not None
    bar_seconds = float(w.frame.attrs.get("bar_seconds", 86_400.0))
    sentiment, summaries = daily_sentiment(t.news, pd.DatetimeIndex(w.frame.index), bar_seconds)
    ppy = float(w.frame.attrs.get("periods_per_year", 252.0))
    curves = live_curves(t, ppy, n_fills) + segment_curves(t, ppy)
    curves += offline_curves(state, cfg, t, sentiment, summaries)
    info = run_info(state, cfg, t)
    data = ReportInput(
        title=f"RLMF demo — {cfg.scenario}{' (quick)' if cfg.quick else ''}",
        header_lines=[
            f"Window: {w.description}",
            f"Seed {cfg.settings.seed}; base model {state.base_model}",
            f"News: {len(state.news)} synthetic items, informativeness "
            f"{cfg.settings.news_informativeness} "
            "(P(tone matches the next day's move) = 0.5 + informativeness/2)",
            _history_line(state),
            f"Trainer cycle every {cfg.train_every} bars "
            f"({cfg.train_every_days} calendar days); "
            "the market pauses while a cycle trains",
            f"Stage timings (s): {state.stage_seconds}",
        ],
        curves=curves,
        closes=t.bars["close"],
        decisions=t.decisions,
        sentiment=sentiment,
        news=t.news,
        promotions=t.promotions,
        explained=explained(t),
        accounting=accounting.to_dict(),
        services=services_table(state),
        notes=state.notes,
        run_info=info,
    )
    plots = write_plots(data, out / "plots")
    report = write_html(data, out, plots)
    write_summary(data, plots, out / "summary.png")
    info["metrics"] = {
        c.label: {
            k: c.metrics.get(k)
            for k in ("cumulative_return", "sharpe", "annual_volatility", "max_drawdown")
        }
        for c in curves
    }
    info["accounting"] = accounting.to_dict()
    # JSON has no NaN: an undefined metric (the Sharpe of a flat curve) is written as null.
    (out / "run.json").write_text(json.dumps(_finite(info), indent=2, default=str, allow_nan=False))
    return report


def verdict(state: RunState, reconciles: bool, t: RunTables) -> int:
    problems = []
    if not reconciles:
        problems.append("the message accounting does not reconcile (see the report)")
    bad_exit = {n: c for n, c in state.exit_codes.items() if c != 0}
    if bad_exit:
        problems.append(f"services did not exit 0 on SIGTERM: {bad_exit}")
    if not t.promotions:
        problems.append("no promotion decision was recorded")
    for p in problems:
        status(f"FAILED: {p}")
    if not problems:
        status("OK: accounting reconciles, every service stopped cleanly, promotions recorded")
    return 1 if problems else 0
