"""demo-out/report.html and its PNG plots (matplotlib, Agg): what the closed loop did.

Plots are files beside the page (plots/*.png) so the test can check them and a reader can reuse
them; the page itself is plain HTML with escaped text.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

METRIC_COLUMNS = (
    ("cumulative_return", "CR"),
    ("sharpe", "SR"),
    ("annual_volatility", "AV"),
    ("max_drawdown", "MDD"),
    ("n_trades", "trades"),
    ("final_net_worth", "final net worth"),
)


@dataclass
class Curve:
    label: str
    times: pd.DatetimeIndex
    equity: np.ndarray
    metrics: dict[str, Any]
    note: str = ""


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


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_equity(data: ReportInput, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for c in data.curves:
        ax.plot(c.times, c.equity, label=c.label, lw=1.6 if "live" in c.label else 1.1)
    for p in data.promotions:
        if p["promoted"]:
            ax.axvline(p["time"], color="green", ls=":", lw=1)
    ax.set_ylabel("net worth")
    ax.set_title("Equity: the live loop, each model offline, Buy & Hold, sentiment rule")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _gate_value(metrics: dict[str, float]) -> float:
    # The gate compares Sharpe; a curve that never moved has none, which the gate counts as 0.
    value = metrics.get("sharpe", float("nan"))
    return value if math.isfinite(value) else 0.0


def plot_promotions(data: ReportInput, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for p in data.promotions:
        student, teacher = _gate_value(p["student_metrics"]), _gate_value(p["teacher_metrics"])
        ax.plot([p["time"], p["time"]], [teacher, student], color="lightgrey", zorder=1)
        ax.scatter(
            [p["time"]], [teacher], marker="s", color="grey", s=30, label="teacher", zorder=2
        )
        ax.scatter(
            [p["time"]],
            [student],
            marker="o" if p["promoted"] else "x",
            s=60,
            zorder=3,
            color="green" if p["promoted"] else "red",
            label="student promoted" if p["promoted"] else "student refused",
        )
        verdict = "promoted" if p["promoted"] else "refused"
        ax.annotate(
            f"{p['student']}: {verdict}",
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
    return _save(fig, path)


def write_plots(data: ReportInput, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "equity": plot_equity(data, folder / "equity.png"),
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
    return _save(fig, path)


def _short(value: Any) -> str:
    if isinstance(value, float | int) and math.isfinite(value):
        return f"{value:.3f}"
    return "n/a"


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_section(data: ReportInput) -> str:
    rows = [
        [c.label, *[c.metrics.get(k, float("nan")) for k, _ in METRIC_COLUMNS], c.note]
        for c in data.curves
    ]
    return _table(["strategy", *[h for _, h in METRIC_COLUMNS], "how"], rows)


def _promotions_section(data: ReportInput) -> str:
    if not data.promotions:
        return "<p class='bad'>No promotion decision was recorded.</p>"
    rows = []
    for p in data.promotions:
        gate = "; ".join(
            f"{k}: student {_fmt(v)} / teacher {_fmt(p['teacher_metrics'].get(k, float('nan')))}"
            f" / B&amp;H {_fmt(p['buy_and_hold_metrics'].get(k, float('nan')))}"
            for k, v in sorted(p["student_metrics"].items())
        )
        rows.append(
            [
                f"{p['time']:%Y-%m-%d}",
                p["student"],
                p["teacher"],
                "PROMOTED" if p["promoted"] else "refused",
                p["reason"],
                ", ".join(p["failed_guards"]) or "-",
                gate,
            ]
        )
    header = [
        "simulated day",
        "student",
        "teacher",
        "decision",
        "reason",
        "failed guards",
        "gate numbers",
    ]
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i == 6 else _fmt(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _explained_section(data: ReportInput) -> str:
    parts = []
    for d in data.explained:
        parts.append(
            f"<div class='card'><b>{html.escape(d['when'])}</b> — live decision "
            f"<b>{html.escape(d['action'])}</b> by {html.escape(d['model_version'])} "
            f"(p buy/hold/sell {d['probs']}; value {_fmt(d['value'])})<br>"
            f"<i>state the policy saw:</i><pre>{html.escape(d['state'])}</pre>"
            f"<i>rationale:</i> {html.escape(d['explanation'] or '(none)')}</div>"
        )
    return "".join(parts) or "<p>No decisions.</p>"


def _accounting_section(data: ReportInput) -> str:
    acc = data.accounting
    rows = [
        [
            t["topic"],
            t["records"],
            t["unique"],
            t["duplicates"],
            ", ".join(f"{g}: {n}" for g, n in t["consumed"].items()) or "(no consumer in the demo)",
            t["dead_lettered"],
        ]
        for t in acc["topics"]
    ]
    table = _table(
        [
            "topic",
            "produced (records)",
            "unique ids",
            "re-deliveries",
            "consumed (committed)",
            "dead-lettered",
        ],
        rows,
    )
    checks = _table(
        ["check", "ok", "detail"],
        [[c["name"], "yes" if c["ok"] else "NO", c["detail"]] for c in acc["checks"]],
    )
    verdict = (
        "<p class='ok'>The accounting reconciles.</p>"
        if acc["reconciles"]
        else "<p class='bad'>The accounting does NOT reconcile.</p>"
    )
    return verdict + table + checks


STYLE = """body{font-family:sans-serif;max-width:1150px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f0f0f0}.ok{color:#060;font-weight:bold}.bad{color:#b00;font-weight:bold}
.card{border:1px solid #ddd;padding:6px;margin:6px 0;font-size:13px}
pre{white-space:pre-wrap;font-size:12px;background:#fafafa}
.warn{background:#fff4d6;padding:6px;border:1px solid #e8c66a}"""


def write_html(data: ReportInput, out_dir: Path, plots: dict[str, Path]) -> Path:
    img = {
        k: f"<img src='{p.relative_to(out_dir).as_posix()}' width='100%'>" for k, p in plots.items()
    }
    header = "".join(f"<li>{html.escape(line)}</li>" for line in data.header_lines)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes) or "<li>none</li>"
    services = _table(
        ["service", "exit code (SIGTERM)", "restarts", "notes"],
        [[s["name"], s["exit_code"], s["restarts"], s.get("note", "")] for s in data.services],
    )
    title = html.escape(data.title)
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>
<style>{STYLE}</style></head><body><h1>{html.escape(data.title)}</h1>
<p class='warn'>The news in this run is <b>synthetic</b>: generated by the demo, tied to the
replayed market with a stated, seeded informativeness. It is not real news and says nothing
about the real company.</p>
<ul>{header}</ul>
<h2>Performance on the window</h2>{_metrics_section(data)}{img["equity"]}
<h2>Decisions on the price chart</h2>{img["decisions"]}
<h2>Sentiment over time</h2>{img["sentiment"]}
<h2>Promotion timeline</h2>{img["promotions"]}{_promotions_section(data)}
<h2>A few decisions and their explanations</h2>{_explained_section(data)}
<h2>Message accounting per topic</h2>{_accounting_section(data)}
<h2>Services</h2>{services}
<h2>Notes</h2><ul>{notes}</ul>
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
