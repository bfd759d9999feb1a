"""The backtest report: PNG plots (matplotlib, Agg) and one self-contained HTML page.

`write_report` takes plain curves and trades (not a backtest object) so the end-to-end demo can
build its report from whatever it recorded.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from services.market.performance import drawdown_series, rolling_sharpe  # noqa: E402


@dataclass
class ReportTrade:
    time: pd.Timestamp
    price: float
    quantity: float


@dataclass
class ReportData:
    """Everything the report draws; curves share `times`."""

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
    extra_sections: list[tuple[str, str]] = field(default_factory=list)
    """(heading, pre-escaped HTML) pairs appended to the page (e.g. the demo's promotions)."""


PLOTS = ("equity.png", "drawdown.png", "trades.png", "rolling_sharpe.png")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_equity(data: ReportData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(data.times, data.equity, label="strategy")
    ax.plot(data.times, data.buy_and_hold, label="Buy & Hold", alpha=0.8)
    both = np.concatenate([np.asarray(data.equity, float), np.asarray(data.buy_and_hold, float)])
    if both.max() / both.min() > 20:  # decades of growth: a log axis keeps both curves readable
        ax.set_yscale("log")
    ax.set_title("Net worth")
    ax.legend()
    return _save(fig, path)


def plot_drawdown(data: ReportData, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.fill_between(data.times, -drawdown_series(data.equity), 0, alpha=0.5, label="strategy")
    ax.plot(data.times, -drawdown_series(data.buy_and_hold), color="gray", label="Buy & Hold")
    ax.set_title("Drawdown (fraction below the running peak)")
    ax.legend()
    return _save(fig, path)


def plot_trades(data: ReportData, path: Path) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True, height_ratios=(3, 1))
    top.plot(data.times, data.closes, color="black", linewidth=0.8, label="close")
    buys = [t for t in data.trades if t.quantity > 0]
    sells = [t for t in data.trades if t.quantity < 0]
    top.scatter(
        [t.time for t in buys],
        [t.price for t in buys],
        marker="^",
        color="green",
        label="buy",
        zorder=3,
    )
    top.scatter(
        [t.time for t in sells],
        [t.price for t in sells],
        marker="v",
        color="red",
        label="sell",
        zorder=3,
    )
    top.set_title("Trades on the price")
    top.legend()
    bottom.step(data.times, data.positions, where="post")
    bottom.set_ylabel("position")
    return _save(fig, path)


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
    return _save(fig, path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    return html.escape(str(value))


def _metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    columns = [c for c in ("strategy", "buy_and_hold") if c in metrics]
    names = list(metrics[columns[0]]) if columns else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td>"
        + "".join(f"<td>{_fmt(metrics[c].get(n))}</td>" for c in columns)
        + "</tr>"
        for n in names
    )
    return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"


def write_report(data: ReportData, out_dir: str | Path) -> Path:
    """Write the four PNGs and report.html into `out_dir`; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_equity(data, out / PLOTS[0])
    plot_drawdown(data, out / PLOTS[1])
    plot_trades(data, out / PLOTS[2])
    plot_rolling_sharpe(data, out / PLOTS[3])
    run = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
        for k, v in data.run_info.items()
    )
    images = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in PLOTS)
    extra = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in data.extra_sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 10px;"
        "text-align:right}table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style>"
        f"</head><body><h1>{html.escape(data.title)}</h1>"
        f"<h2>Metrics (fractions, beside Buy &amp; Hold)</h2>{_metrics_table(data.metrics)}"
        f"<h2>Plots</h2>{images}{extra}<h2>Run</h2><table>{run}</table></body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
