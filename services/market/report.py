"""Reports: PNG plots (matplotlib, Agg) and HTML pages rendered by Jinja2 with autoescape on.

The building blocks (`Curve`, `save_figure`, `plot_equity`, `render_page` and the templates
`report_base.html`, `report_macros.html` beside this module) serve both reports: the backtest's,
written here by `write_report` for `rlmf backtest`, and the demo's (services/demo/report.py),
which adds its own sections in a template of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from services.market.performance import drawdown_series, rolling_sharpe  # noqa: E402

TEMPLATES = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


@dataclass
class Curve:
    """One equity curve, with its metrics and a note on how it was made."""

    label: str
    times: Sequence[pd.Timestamp] | pd.DatetimeIndex
    equity: Sequence[float] | np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    style: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for matplotlib's `plot` (line width, alpha)."""


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_equity(
    curves: Sequence[Curve],
    path: Path,
    *,
    title: str,
    figsize: tuple[float, float] = (10, 4),
    ylabel: str = "",
    marks: Sequence[pd.Timestamp] = (),
    legend: dict[str, Any] | None = None,
    spans: Sequence[tuple[pd.Timestamp, pd.Timestamp]] = (),
    span_label: str = "",
) -> Path:
    """Net worth curves on one axis; `marks` are dates drawn as dotted green lines, `spans`
    (first, last) stretches shaded (a candidate's shadow trading, say), labelled once."""
    fig, ax = plt.subplots(figsize=figsize)
    for c in curves:
        ax.plot(c.times, c.equity, label=c.label, **c.style)
    for when in marks:
        ax.axvline(when, color="green", ls=":", lw=1)
    for number_, (first, last) in enumerate(spans):
        ax.axvspan(
            first, last, color="orange", alpha=0.18, label=span_label if not number_ else None
        )
    values = np.concatenate([np.asarray(c.equity, float) for c in curves])
    if values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")  # decades of growth: a log axis keeps every curve readable
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(**(legend or {}))
    return save_figure(fig, path)


def number(value: Any) -> str:
    """A float with four decimals ("n/a" when undefined); anything else as text."""
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


@lru_cache(maxsize=8)
def _environment(search: tuple[Path, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*search, TEMPLATES]),
        # Headlines, tickers, rationales and file names all reach the page: escape everything.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = number
    env.globals["nan"] = float("nan")
    return env


def render_page(template: str, path: Path, search: Sequence[Path] = (), **context: Any) -> Path:
    """Render `template` (looked up in `search`, then beside this module) into `path`."""
    page = _environment(tuple(search)).get_template(template).render(**context)
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The backtest report
# ---------------------------------------------------------------------------------------------


@dataclass
class ReportTrade:
    time: pd.Timestamp
    price: float
    quantity: float


@dataclass
class ReportData:
    """Everything the backtest report draws; curves share `times`."""

    times: Sequence[pd.Timestamp] | pd.DatetimeIndex
    equity: Sequence[float] | np.ndarray
    buy_and_hold: Sequence[float] | np.ndarray
    closes: Sequence[float] | np.ndarray
    positions: Sequence[float] | np.ndarray
    trades: list[ReportTrade]
    metrics: dict[str, dict[str, Any]]
    periods_per_year: float
    title: str = "RLMF backtest"
    run_info: dict[str, Any] = field(default_factory=dict)


PLOTS = ("equity.png", "drawdown.png", "trades.png", "rolling_sharpe.png")


def plot_net_worth(data: ReportData, path: Path) -> Path:
    curves = [
        Curve("strategy", data.times, data.equity),
        Curve("Buy & Hold", data.times, data.buy_and_hold, style={"alpha": 0.8}),
    ]
    return plot_equity(curves, path, title="Net worth")


def plot_drawdown(data: ReportData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.fill_between(data.times, -drawdown_series(data.equity), 0, alpha=0.5, label="strategy")
    ax.plot(data.times, -drawdown_series(data.buy_and_hold), color="gray", label="Buy & Hold")
    ax.set_title("Drawdown (fraction below the running peak)")
    ax.legend()
    return save_figure(fig, path)


def plot_trades(data: ReportData, path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=(3, 1))
    top.plot(data.times, data.closes, color="black", linewidth=0.8, label="close")
    for label, marker, color, trades in (
        ("buy", "^", "green", [t for t in data.trades if t.quantity > 0]),
        ("sell", "v", "red", [t for t in data.trades if t.quantity < 0]),
    ):
        top.scatter(
            [t.time for t in trades],
            [t.price for t in trades],
            marker=marker,
            color=color,
            label=label,
            zorder=3,
        )
    top.set_title("Trades on the price")
    top.legend()
    bottom.step(data.times, data.positions, where="post")
    bottom.set_ylabel("position")
    return save_figure(fig, path)


def plot_rolling_sharpe(data: ReportData, path: Path, window: int | None = None) -> Path:
    window = window or max(5, min(63, len(data.equity) // 4))
    fig, ax = plt.subplots(figsize=(10, 3))
    times = list(data.times)[1:]
    ax.plot(times, rolling_sharpe(data.equity, data.periods_per_year, window), label="strategy")
    ax.plot(
        times,
        rolling_sharpe(data.buy_and_hold, data.periods_per_year, window),
        label="Buy & Hold",
        alpha=0.8,
    )
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.set_title(f"Rolling Sharpe ({window} periods)")
    ax.legend()
    return save_figure(fig, path)


def write_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write the four PNGs and report.html into `out_dir`; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_net_worth(data, out / PLOTS[0])
    plot_drawdown(data, out / PLOTS[1])
    plot_trades(data, out / PLOTS[2])
    plot_rolling_sharpe(data, out / PLOTS[3])
    columns = [c for c in ("strategy", "buy_and_hold") if c in data.metrics]
    return render_page(
        "backtest_report.html",
        out / "report.html",
        title=data.title,
        metrics=data.metrics,
        columns=columns,
        names=list(data.metrics[columns[0]]) if columns else [],
        plots=PLOTS,
        run_info=data.run_info,
    )
