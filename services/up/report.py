"""`rlmf report`: report.html and its plots for a running or stopped `rlmf up`, from its state
folder alone: the simulator's per-bar ledger (services/simulator/ledger.py), the trainer's
cycle record and shadow verdicts, and `rlmf status`'s figures. The live page (page.py) serves
the same page while `up` runs.

Per ticker: equity of the live loop beside Buy & Hold and the sentiment rule (replayed on the
ledger's bars and sentiment through the market library's env, as the demo's report does), their
metrics, decisions on the price, the promotion timeline with each candidate's shadow stretch
shaded, and the sentiment the policy saw.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from services.common.up_state import StateDir
from services.demo.report import ReportInput, plot_decisions
from services.market.accounting import ExecutionConfig
from services.market.market_data import infer_periods_per_year
from services.market.performance import compute_metrics
from services.market.report import Curve, plot_equity, render_page, save_figure
from services.simulator.ledger import read_ledger
from services.simulator.settings import SimulatorSettings
from services.trainer.shadow import ShadowFiles
from services.up.files import ledger_dir
from services.up.status import collect

TEMPLATES = Path(__file__).resolve().parent
MIN_BARS = 3
"""Bars a ticker needs before its curves mean anything (the bar spacing needs 3 to infer)."""
METRICS = (
    ("cumulative_return", "CR"),
    ("sharpe", "Sharpe"),
    ("annual_volatility", "AV"),
    ("max_drawdown", "MDD"),
    ("final_net_worth", "final net worth"),
)
PRICE_COLUMNS = ["open", "high", "low", "close", "volume"]


@dataclass(frozen=True)
class Stretch:
    """The bars a candidate traded in shadow, and what became of it."""

    version: str
    start: pd.Timestamp
    end: pd.Timestamp
    outcome: str
    """promoted, retired, failed, or "in shadow" for the candidate still trading."""


@dataclass
class TickerReport:
    ticker: str
    frame: pd.DataFrame
    """The ledger, indexed by bar time."""
    curves: list[Curve] = field(default_factory=list)
    stretches: list[Stretch] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)
    """Plot name -> path relative to the page."""


# ---------------------------------------------------------------------------------------------
# Reading the state folder
# ---------------------------------------------------------------------------------------------


def ledger_frame(path: Path) -> pd.DataFrame:
    """A ticker's ledger as a frame indexed by bar time; the shadow account's columns are
    `shadow_version`, `shadow_action`, `shadow_net_worth` (NaN where no candidate traded)."""
    rows = read_ledger(path)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time"), utc=True), name="time")
    shadow = [r["shadow"] or {} for r in rows]
    for key in ("version", "action", "net_worth"):
        frame[f"shadow_{key}"] = [s.get(key) for s in shadow]
    frame["sentiment"] = pd.to_numeric(frame["sentiment"], errors="coerce")
    return frame.drop(columns="shadow")


def verdicts(trainer_dir: Path) -> list[dict[str, Any]]:
    """Every candidate's shadow verdict the trainer wrote, oldest stretch first."""
    folder = ShadowFiles(trainer_dir).root / "shadow"
    found = [json.loads(path.read_text()) for path in folder.glob("*.verdict.json")]
    return sorted(found, key=lambda v: str(v["first_bar"]))


def stretches(frame: pd.DataFrame, trainer_dir: Path) -> list[Stretch]:
    """Each candidate's shadow stretch on this ticker: the ledger's bars its shadow account
    traded (a verdict's first_bar..last_bar covers every ticker; bars it has in no ledger, a
    kill before the ledger was on, fall back to the verdict's range within this ticker's), then
    the candidate still in shadow, from its first shadow bar to the ledger's last (staged..now)."""
    out = []
    for v in verdicts(trainer_dir):
        span = _traded(frame, v["version"]) or _within(frame, v["first_bar"], v["last_bar"])
        if span is not None:
            out.append(Stretch(v["version"], *span, str(v["outcome"])))
    candidate = ShadowFiles(trainer_dir).read_candidate()
    if candidate is not None:
        span = _traded(frame, candidate.version)
        if span is not None:
            out.append(Stretch(candidate.version, span[0], frame.index[-1], "in shadow"))
    return out


def _traded(frame: pd.DataFrame, version: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    traded = frame.index[frame["shadow_version"] == version]
    return (traded[0], traded[-1]) if len(traded) else None


def _within(frame: pd.DataFrame, first: str, last: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    inside = frame.index[(frame.index >= _utc(first)) & (frame.index <= _utc(last))]
    return (inside[0], inside[-1]) if len(inside) else None


def _utc(text: str) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------


def sentiment_rule_equity(frame: pd.DataFrame, execution: ExecutionConfig) -> np.ndarray:
    """The sentiment rule replayed on the ledger's bars and the sentiment the live policy saw,
    through the env and accounting the demo's baseline uses (services/demo/finish.py): the
    same fill rule, costs and starting cash as the simulator's account."""
    from services.market.backtest import run_backtest
    from services.market.baseline_policies import SentimentRule

    prices = frame[PRICE_COLUMNS].astype(float)
    result = run_backtest(
        prices,
        SentimentRule(),
        ticker=str(frame["ticker"].iloc[0]),
        sentiment=frame["sentiment"],
        execution=execution,
    )
    return np.asarray(result.strategy.equity, dtype=float)


def metrics(equity: np.ndarray, ppy: float) -> dict[str, Any]:
    return compute_metrics(equity, ppy).to_dict()


def ticker_curves(frame: pd.DataFrame, execution: ExecutionConfig) -> list[Curve]:
    """The live loop, Buy & Hold (the simulator's benchmark account) and the sentiment rule."""
    ppy, _ = infer_periods_per_year(pd.DatetimeIndex(frame.index))
    times = pd.DatetimeIndex(frame.index)
    versions = " -> ".join(dict.fromkeys(frame["model_version"].astype(str)))
    live = frame["net_worth"].to_numpy(dtype=float)
    held = frame["buy_and_hold_net_worth"].to_numpy(dtype=float)
    rule = sentiment_rule_equity(frame, execution)
    return [
        Curve("live loop", times, live, metrics(live, ppy), f"served versions {versions}"),
        Curve("Buy & Hold", times, held, metrics(held, ppy), "the simulator's benchmark account"),
        Curve(
            "sentiment rule",
            times,
            rule,
            metrics(rule, ppy),
            "buy above +0.2, sell below -0.2, replayed on the same bars and sentiment",
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def version_changes(frame: pd.DataFrame) -> list[pd.Timestamp]:
    """The bars where a newly served version made its first live decision."""
    versions = frame["model_version"].astype(str)
    changed = versions.ne(versions.shift()) & versions.shift().notna()
    return list(frame.index[changed])


def plot_timeline(t: TickerReport, path: Path) -> Path:
    """The live account's net worth with each candidate's shadow account over its stretch
    (shaded, labelled with the outcome); dotted lines where a new version started serving."""
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.plot(t.frame.index, t.frame["net_worth"].to_numpy(float), color="black", lw=1, label="live")
    for k, s in enumerate(t.stretches):
        color = {"promoted": "tab:green", "in shadow": "tab:blue"}.get(s.outcome, "tab:red")
        ax.axvspan(s.start, s.end, color=color, alpha=0.12)
        ax.text(s.start, 1.0, f" {s.version}: {s.outcome}", transform=ax.get_xaxis_transform(),
                va="top", fontsize=7, color=color)  # fmt: skip
        mine = t.frame[t.frame["shadow_version"] == s.version]
        if len(mine):
            shadow = mine["shadow_net_worth"].to_numpy(float)
            ax.plot(mine.index, shadow, color=color, lw=1.2, label=f"shadow {s.version}"[:40])
        if k > 6:
            break  # a readable plot; the table lists every candidate
    for when in version_changes(t.frame):
        ax.axvline(when, color="green", ls=":", lw=1)
    ax.set_ylabel("net worth")
    ax.set_title("Promotion timeline: shadow stretches (shaded) and new served versions (dotted)")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_sentiment(frame: pd.DataFrame, path: Path) -> Path:
    """The sentiment in each decision's state; a dot where the bar had a news summary."""
    fig, ax = plt.subplots(figsize=(11, 3))
    s = frame["sentiment"].fillna(0.0)
    ax.bar(s.index, s.to_numpy(), width=0.8 * _spacing(frame),
           color=np.where(s.to_numpy() >= 0, "tab:green", "tab:red"))  # fmt: skip
    news = frame.index[frame["news_summary"].astype(bool)]
    ax.scatter(news, np.full(len(news), -1.0), marker="|", color="black", label="news summary")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("Sentiment the policy saw per bar (features service, from your news)")
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)


def _spacing(frame: pd.DataFrame) -> pd.Timedelta:
    gaps = pd.Series(frame.index).diff().dropna()
    return gaps.median() if len(gaps) else pd.Timedelta(days=1)


def write_plots(t: TickerReport, out: Path) -> dict[str, str]:
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    name = t.ticker.replace("/", "_")
    marks = version_changes(t.frame)
    # The demo's decisions plot reads only the closes and the decisions of its input.
    decisions = ReportInput(
        title=t.ticker,
        header_lines=[],
        curves=[],
        closes=t.frame["close"],
        decisions=t.frame[["action", "model_version"]],
        sentiment=pd.Series(dtype=float),
        news=pd.DataFrame(),
        promotions=[],
        explained=[],
        accounting={},
        services=[],
    )
    paths = {
        "equity": plot_equity(
            t.curves,
            folder / f"{name}-equity.png",
            figsize=(11, 4),
            title=f"{t.ticker}: the live loop, Buy & Hold, sentiment rule",
            ylabel="net worth",
            marks=marks,
        ),
        "decisions": plot_decisions(decisions, folder / f"{name}-decisions.png"),
        "timeline": plot_timeline(t, folder / f"{name}-timeline.png"),
        "sentiment": plot_sentiment(t.frame, folder / f"{name}-sentiment.png"),
    }
    return {k: p.relative_to(out).as_posix() for k, p in paths.items()}


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def ticker_reports(state: StateDir, out: Path, execution: ExecutionConfig) -> list[TickerReport]:
    """One section per ledger file with enough bars; fewer bars: a section without plots."""
    reports = []
    for path in sorted(ledger_dir(state).glob("*.jsonl")):
        try:
            reports.append(ticker_report(path, state, out, execution))
        except (KeyError, ValueError) as exc:  # a file another version wrote, a bad verdict
            raise ReportError(f"cannot report on {path}: {type(exc).__name__}: {exc}") from exc
    return reports


def ticker_report(
    path: Path, state: StateDir, out: Path, execution: ExecutionConfig
) -> TickerReport:
    t = TickerReport(path.stem, ledger_frame(path))
    if len(t.frame) >= MIN_BARS:
        t.curves = ticker_curves(t.frame, execution)
        t.stretches = stretches(t.frame, state.trainer)
        t.plots = write_plots(t, out)
    return t


class ReportError(RuntimeError):
    pass


def metric_rows(t: TickerReport) -> list[list[Any]]:
    return [[c.label, *[c.metrics.get(k, math.nan) for k, _ in METRICS], c.note] for c in t.curves]


def write_report(state: StateDir, out: Path, *, live: bool = False, refresh_s: int = 10) -> Path:
    """report.html (returned) and plots/ in `out`. `live`: the page reloads itself every
    `refresh_s` seconds (the live page `up` serves)."""
    out.mkdir(parents=True, exist_ok=True)
    status = collect(state)
    tickers = ticker_reports(state, out, SimulatorSettings().execution())
    return render_page(
        "up_report.html",
        out / "report.html",
        search=[TEMPLATES],
        title="RLMF: what rlmf up is doing",
        status=status,
        tickers=tickers,
        min_bars=MIN_BARS,
        metric_header=["strategy", *[h for _, h in METRICS], "how"],
        metric_rows={t.ticker: metric_rows(t) for t in tickers},
        live=live,
        refresh_s=refresh_s,
    )
