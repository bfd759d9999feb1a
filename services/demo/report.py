"""demo-out/report.html and its PNG plots: what the closed loop did.

The demo's own sections (decisions per model version, sentiment, promotions, message accounting,
services) on the market library's report blocks (services/market/report.py). Plots are files
beside the page (plots/*.png) so the test can check them and a reader can reuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from services.demo.collect import shadow_stretches
from services.market.report import Curve, plot_equity, render_page, save_figure

TEMPLATES = Path(__file__).resolve().parent

METRIC_COLUMNS = (
    ("cumulative_return", "CR"),
    ("sharpe", "SR"),
    ("annual_volatility", "AV"),
    ("max_drawdown", "MDD"),
    ("n_trades", "trades"),
    ("final_net_worth", "final net worth"),
)


@dataclass
class ReportInput:
    title: str
    header_lines: list[str]
    curves: list[Curve]
    closes: pd.Series
    decisions: pd.DataFrame
    sentiment: pd.Series
    news: pd.DataFrame
    promotions: list[dict[str, Any]]
    explained: list[dict[str, Any]]
    accounting: dict[str, Any]
    services: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    run_info: dict[str, Any] = field(default_factory=dict)


def plot_curves(data: ReportInput, path: Path) -> Path:
    # The live loop's curves drawn bolder than the offline ones beside them.
    curves = [replace(c, style={"lw": 1.6 if "live" in c.label else 1.1}) for c in data.curves]
    return plot_equity(
        curves,
        path,
        title="Equity: the live loop, each model offline, Buy & Hold, sentiment rule",
        figsize=(11, 4.5),
        ylabel="net worth",
        marks=[p["time"] for p in data.promotions if p["promoted"]],
        legend={"fontsize": 8, "loc": "upper left"},
        spans=shadow_stretches(data.promotions),
        span_label="a candidate in shadow",
    )


def plot_decisions(data: ReportInput, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(data.closes.index, data.closes.to_numpy(), color="black", lw=1, label="close")
    d = data.decisions.join(data.closes.rename("close"), how="inner")
    for action, marker, color in (("buy", "^", "green"), ("sell", "v", "red")):
        sel = d[d["action"] == action]
        ax.scatter(
            sel.index, sel["close"], marker=marker, color=color, s=28, label=action, zorder=3
        )
    versions = d["model_version"].astype(str)
    for version, rows in d.groupby(versions, sort=False):
        ax.axvspan(rows.index.min(), rows.index.max(), alpha=0.06, color=f"C{hash(version) % 10}")
        ax.text(rows.index.min(), ax.get_ylim()[1], f" {version}", va="top", fontsize=7)
    ax.set_title("Decisions on the price (shaded: the model version that decided)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_sentiment(data: ReportInput, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 3.2))
    s = data.sentiment.fillna(0.0)
    ax.bar(
        s.index, s.to_numpy(), width=1.0, color=np.where(s.to_numpy() >= 0, "tab:green", "tab:red")
    )
    ax.plot(
        s.index,
        s.ewm(halflife=3).mean().to_numpy(),
        color="black",
        lw=1,
        label="decayed (half-life 3 bars)",
    )
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("Sentiment of the SYNTHETIC news per bar (mean of the day's items)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _gate_value(metrics: dict[str, float]) -> float:
    # The gate compares Sharpe; a curve that never moved has none, which the gate counts as 0.
    value = metrics.get("sharpe", float("nan"))
    return value if math.isfinite(value) else 0.0


def plot_promotions(data: ReportInput, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for p in data.promotions:
        if p.get("stage") == "shadow":
            _plot_verdict(ax, p)
            continue
        student, teacher = _gate_value(p["student_metrics"]), _gate_value(p["teacher_metrics"])
        outcome = p.get("outcome") or ("promoted" if p["promoted"] else "rejected")
        ax.plot([p["time"], p["time"]], [teacher, student], color="lightgrey", zorder=1)
        ax.scatter(
            [p["time"]], [teacher], marker="s", color="grey", s=30, label="teacher", zorder=2
        )
        ax.scatter(
            [p["time"]],
            [student],
            marker="x" if outcome == "rejected" else "o",
            s=60,
            zorder=3,
            color=_COLOURS.get(outcome, "red"),
            label=_LABELS.get(outcome, "student refused"),
        )
        ax.annotate(
            f"{p['student']}: {outcome}",
            (p["time"], student),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    if uniq:
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    if data.promotions:
        ax.set_xlim(data.closes.index.min(), data.closes.index.max())
    else:
        ax.text(0.5, 0.5, "no promotion decision", transform=ax.transAxes, ha="center")
    ax.set_ylabel("Sharpe on the held-out window")
    ax.set_title("Promotion timeline: each trainer cycle's gate (student vs teacher)")
    return save_figure(fig, path)


_COLOURS = {"candidate": "orange", "rejected": "red", "promoted": "green"}
_LABELS = {
    "candidate": "student to shadow (passed the backtest gate)",
    "rejected": "student refused",
    "promoted": "student promoted",
}


def _plot_verdict(ax: Any, p: dict[str, Any]) -> None:
    """A shadow verdict: the candidate's stretch and its outcome, on the Sharpe axis at the
    shadow bars' own difference (0 when the test could not run)."""
    promoted = p.get("outcome") == "promoted"
    y = p.get("shadow_sharpe_diff") or 0.0
    if p.get("window_start") is not None:
        ax.plot([p["window_start"], p["time"]], [y, y], color="orange", lw=3, alpha=0.5)
    ax.scatter(
        [p["time"]], [y], marker="*", s=90, zorder=3, color="green" if promoted else "red",
        label="promoted after shadow" if promoted else "retired after shadow",
    )  # fmt: skip


def write_plots(data: ReportInput, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "equity": plot_curves(data, folder / "equity.png"),
        "decisions": plot_decisions(data, folder / "decisions.png"),
        "sentiment": plot_sentiment(data, folder / "sentiment.png"),
        "promotions": plot_promotions(data, folder / "promotions.png"),
    }


def write_summary(data: ReportInput, plots: dict[str, Path], path: Path) -> Path:
    """One PNG of the report (metrics table and the four plots), for a README."""
    fig = plt.figure(figsize=(14, 15))
    grid = fig.add_gridspec(4, 2, height_ratios=[0.9, 1.6, 1.1, 1.1])
    table_ax = fig.add_subplot(grid[0, :])
    table_ax.axis("off")
    cells = [
        [
            c.label[:60],
            *[
                _short(c.metrics.get(k))
                for k in ("cumulative_return", "sharpe", "annual_volatility", "max_drawdown")
            ],
        ]
        for c in data.curves
    ]
    table = table_ax.table(
        cellText=cells,
        colLabels=["strategy", "CR", "SR", "AV", "MDD"],
        loc="center",
        colWidths=[0.5, 0.1, 0.1, 0.1, 0.1],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table_ax.set_title(data.title + " (news is synthetic)", fontsize=13)
    for (row, col), key in (
        ((1, slice(None)), "equity"),
        ((2, 0), "decisions"),
        ((2, 1), "sentiment"),
        ((3, slice(None)), "promotions"),
    ):
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(plt.imread(plots[key]))
        ax.axis("off")
    return save_figure(fig, path)


def _short(value: Any) -> str:
    if isinstance(value, float | int) and math.isfinite(value):
        return f"{value:.3f}"
    return "n/a"


def write_html(data: ReportInput, out_dir: Path, plots: dict[str, Path]) -> Path:
    """report.html from demo_report.html; every value is escaped by the template engine."""
    metric_rows = [
        [c.label, *[c.metrics.get(k, float("nan")) for k, _ in METRIC_COLUMNS], c.note]
        for c in data.curves
    ]
    return render_page(
        "demo_report.html",
        out_dir / "report.html",
        search=[TEMPLATES],
        title=data.title,
        header_lines=data.header_lines,
        images={k: p.relative_to(out_dir).as_posix() for k, p in plots.items()},
        metric_header=["strategy", *[h for _, h in METRIC_COLUMNS], "how"],
        metric_rows=metric_rows,
        promotions=data.promotions,
        explained=data.explained,
        accounting=data.accounting,
        topic_rows=[_topic_row(t) for t in data.accounting["topics"]],
        check_rows=[
            [c["name"], "yes" if c["ok"] else "NO", c["detail"]] for c in data.accounting["checks"]
        ],
        service_rows=[
            [s["name"], s["exit_code"], s["restarts"], s.get("note", "")] for s in data.services
        ],
        notes=data.notes,
    )


def _topic_row(t: dict[str, Any]) -> list[Any]:
    consumed = ", ".join(f"{g}: {n}" for g, n in t["consumed"].items())
    return [
        t["topic"],
        t["records"],
        t["unique"],
        t["duplicates"],
        consumed or "(no consumer in the demo)",
        t["dead_lettered"],
    ]
