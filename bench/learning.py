"""Does the loop learn? The pre-registered evaluation of bench/learning_protocol.md, run as
written there: 20 draws (a market, a news seed, a training seed), four arms on each (the
recipe, head-only, shuffled news, no news), every arm trained and gated by the trainer's own
cycle and then trading a forward stretch neither training nor the gate saw; 8 re-alignment
seeds; the gate's false-promotion rate against no-skill students; a same-seed rerun.

    PYTHONPATH=. .venv/bin/python bench/learning.py [--out DIR]     # the protocol (SmolLM2)
    PYTHONPATH=. .venv/bin/python bench/learning.py --smoke --model TINY_LLAMA_DIR

Prints one JSON line (the protocol's summary keys, its targets met or missed, and `rows`: the
JSONL file of per-draw and per-seed rows). Progress on stderr. --smoke runs the same code on 2
draws, 1 re-alignment seed and tiny budgets with a tiny model: it checks the plumbing and says
nothing about learning. The protocol itself takes the trainer's shipped recipe and refuses to
run with any RLMF_TRAINER_RECIPE__* (or gate) setting in the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from services.ingest.news_generator import generate_news
from services.market.backtest import run_backtest
from services.market.baseline_policies import SentimentRule
from services.market.market_data import load_prices_csv
from services.market.regime_market import ForcedShift, generate_market, load_params
from services.market.walk_forward import minimum_bars
from services.policy.approval import APPROVAL, Evidence, approve_artifact, next_sequence
from services.policy.artifacts import MANIFEST, init_artifact, load_artifact
from services.trainer.cycle import CycleResult, run_cycle
from services.trainer.evaluate import evaluate
from services.trainer.gate import GateConfig, comparable
from services.trainer.offline_features import BarFeatures
from services.trainer.settings import FLAT_NAMES, RecipeSettings, TrainerSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gate_calibration  # noqa: E402  (bench/gate_calibration.py: the no-skill students)

ARMS = ("recipe", "head_only", "shuffled_news", "no_news")


def say(msg: str) -> None:
    print(f"[bench/learning] {msg}", file=sys.stderr, flush=True)


# --- the protocol's constants -----------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """bench/learning_protocol.md in numbers; `smoke()` is the same shape, small."""

    min_train: int = 100
    embargo: int = 2
    holdout: int = 60
    forward: int = 60
    real_series: tuple[str, ...] = ("MSFT", "GOOGL")
    real_windows: int = 5
    """Windows per real series."""
    synthetic_draws: int = 10
    informativeness: float = 0.6
    msft_span: tuple[str, str] = ("1995-01-01", "2013-01-01")
    """MSFT bars allowed: the cents era before, the tuned and demo span after, excluded."""
    realign_seeds: int = 8
    realign_shift: int = 124
    realign_teacher_train: int = 60
    realign_post_train: int = 60
    gate_min_holdout_bars: int | None = None
    """None: the trainer's default gate; --smoke lowers its minimum to hold out fewer bars."""
    gate_draws: int = 400
    """No-skill students per market kind for the gate's false-promotion rate (always at the
    gate's default 60 held-out bars)."""
    gate_seed_set: int = 5
    cycle_minutes: float = 30.0
    news_seed: int = 7000
    train_seed: int = 8000
    market_seed: int = 5000
    realign_market_seed: int = 6000
    realign_news_seed: int = 7100
    realign_train_seed: int = 8100

    @property
    def cycle_bars(self) -> int:
        return minimum_bars(self.holdout, self.embargo, self.min_train)

    @property
    def draw_bars(self) -> int:
        return self.cycle_bars + self.forward

    @property
    def draws(self) -> int:
        return len(self.real_series) * self.real_windows + self.synthetic_draws

    @classmethod
    def smoke(cls) -> Protocol:
        return cls(
            min_train=20,
            holdout=20,
            forward=10,
            real_series=("GOOGL",),
            real_windows=1,
            synthetic_draws=1,
            realign_seeds=1,
            realign_shift=44,
            realign_teacher_train=20,
            realign_post_train=10,
            gate_min_holdout_bars=20,
            gate_draws=10,
            cycle_minutes=5.0,
        )


def smoke_recipe() -> RecipeSettings:
    """Tiny budgets for --smoke: every phase runs, briefly."""
    return RecipeSettings(
        mf_epochs=1,
        ppo={
            "total_timesteps": 4,
            "num_steps": 4,
            "minibatch_size": 4,
            "gradient_accumulation_steps": 2,
        },
    )


def refuse_recipe_overrides() -> None:
    """The protocol evaluates the shipped recipe and gate: no setting of theirs from the env."""
    prefixes = ("RLMF_TRAINER_RECIPE__", "RLMF_TRAINER_PPO__", "RLMF_TRAINER_GATE__")
    flat = {f"RLMF_TRAINER_{name}".upper() for name in FLAT_NAMES}
    given = sorted(k for k in os.environ if k.upper().startswith(prefixes) or k.upper() in flat)
    if given:
        sys.exit(f"the protocol runs the shipped recipe and gate; unset {', '.join(given)}")


# --- draws ------------------------------------------------------------------------------------


@dataclass
class Draw:
    index: int
    market: str
    ticker: str
    prices: pd.DataFrame
    news_seed: int
    train_seed: int


def even_windows(prices: pd.DataFrame, count: int, bars: int) -> list[pd.DataFrame]:
    """`count` windows of `bars` spread evenly from the first bar to the last."""
    room = len(prices) - bars
    if room < 0 or (count > 1 and room < (count - 1) * bars):
        raise ValueError(f"{len(prices)} bars hold no {count} separate windows of {bars}")
    steps = max(count - 1, 1)
    return [prices.iloc[k * room // steps :][:bars] for k in range(count)]


def make_draws(protocol: Protocol, data: Path) -> list[Draw]:
    """Draws 0.. MSFT windows, then GOOGL windows, then default-scenario markets."""
    markets: list[tuple[str, str, pd.DataFrame]] = []
    for ticker in protocol.real_series:
        series = load_prices_csv(data / f"{ticker}.csv")
        if ticker == "MSFT":
            low, high = (pd.Timestamp(t, tz="UTC") for t in protocol.msft_span)
            series = series[(series.index >= low) & (series.index < high)]
        for window in even_windows(series, protocol.real_windows, protocol.draw_bars):
            span = f"{window.index[0]:%Y-%m-%d}..{window.index[-1]:%Y-%m-%d}"
            markets.append((f"{ticker} {span}", ticker, window))
    for k in range(protocol.synthetic_draws):
        seed = protocol.market_seed + k
        frame, _ = generate_market(load_params("default"), protocol.draw_bars, seed)
        markets.append((f"default scenario, seed {seed}", "SYN", frame))
    return [
        Draw(i, name, ticker, prices, protocol.news_seed + i, protocol.train_seed + i)
        for i, (name, ticker, prices) in enumerate(markets)
    ]


# --- news -------------------------------------------------------------------------------------


def news_features(
    prices: pd.DataFrame, informativeness: float, seed: int, ticker: str
) -> BarFeatures:
    """Per bar: the headline's tone as a scorer's mean would give it, and the headline."""
    items = generate_news(prices, ticker, informativeness=informativeness, seed=seed)
    sentiment = pd.Series(np.nan, index=prices.index)
    summaries = pd.Series("", index=prices.index, dtype=object)
    for i, item in enumerate(items):
        sentiment.iloc[i] = 0.6 * item.sentiment
        summaries.iloc[i] = item.headline
    return BarFeatures(pd.DataFrame(index=prices.index), sentiment, summaries)


def shuffled(news: BarFeatures, bars: int, seed: int) -> BarFeatures:
    """The first `bars` days' news (headline and tone together) permuted across those days."""
    order = np.random.default_rng([seed, 1]).permutation(bars)
    sentiment, summaries = news.sentiment.copy(), news.summaries.copy()
    sentiment.iloc[:bars] = news.sentiment.iloc[:bars].to_numpy()[order]
    summaries.iloc[:bars] = news.summaries.iloc[:bars].to_numpy()[order]
    return BarFeatures(news.numeric, sentiment, summaries)


def no_news(prices: pd.DataFrame) -> BarFeatures:
    return BarFeatures(
        pd.DataFrame(index=prices.index),
        pd.Series(np.nan, index=prices.index),
        pd.Series("", index=prices.index, dtype=object),
    )


def first_bars(features: BarFeatures, bars: int) -> BarFeatures:
    return BarFeatures(
        features.numeric.iloc[:bars], features.sentiment.iloc[:bars], features.summaries.iloc[:bars]
    )


# --- one cycle, the forward stretch -----------------------------------------------------------


@dataclass
class Run:
    """What the whole run shares: the protocol, the recipe, the v0 teacher (folder and the
    loaded model), the work folder and the gate."""

    protocol: Protocol
    recipe: RecipeSettings
    teacher_dir: Path
    work: Path
    gate: GateConfig
    budget_cut_cycles: int = 0


def cycle(
    run: Run,
    name: Path,
    prices: pd.DataFrame,
    features: BarFeatures,
    ticker: str,
    seed: int,
    day_cache: Path,
    teacher_dir: Path,
    train_days: int,
    recipe: RecipeSettings,
) -> CycleResult:
    """One trainer cycle on `prices` (its last bar is the cycle's day) from `teacher_dir`,
    the whole cycle seeded by `seed` (PPO's and the market-feedback phase's draws too)."""
    recipe = recipe.model_copy(update={"ppo": dataclasses.replace(recipe.ppo, seed=seed)})
    settings = TrainerSettings(
        models_dir=name / "models",
        teacher_dir=teacher_dir,
        work_dir=name / "trainer",
        ticker=ticker,
        train_days=train_days,
        eval_days=run.protocol.holdout,
        embargo_days=run.protocol.embargo,
        expanding_window=True,
        cycle_minutes=run.protocol.cycle_minutes,
        promotion="none",
        publish=False,
        seed=seed,
        day_cache_dir=day_cache,
        recipe=recipe,
        gate=run.gate,
    )
    result = run_cycle(settings, prices=prices, bar_features=features)
    run.budget_cut_cycles += int(result.budget_cut)
    return result


def forward_sharpe(
    folder: Path,
    prices: pd.DataFrame,
    start: int,
    features: BarFeatures,
    ticker: str,
    seed: int,
    day_cache: Path,
) -> float:
    """The policy in `folder` trades the decisions start..len(prices)-2 (a flat curve: 0)."""
    model = load_artifact(folder)
    model.attach_day_cache(folder=day_cache)
    evaluation = evaluate(
        model, prices, start, len(prices) - 1, ticker=ticker, seed=seed, features=features
    )
    return comparable(evaluation.policy["sharpe"])


def baselines(
    prices: pd.DataFrame, start: int, features: BarFeatures, ticker: str
) -> dict[str, float]:
    """The sentiment rule and Buy & Hold on the same decisions."""
    metrics = run_backtest(
        prices,
        SentimentRule(),
        ticker=ticker,
        sentiment=features.sentiment,
        summaries=features.summaries,
        start=start,
        end=len(prices) - 1,
    ).metrics
    return {
        "rule": comparable(float(metrics["strategy"]["sharpe"])),
        "buy_and_hold": comparable(float(metrics["buy_and_hold"]["sharpe"])),
    }


def weight_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of each weights file, from the artifact's manifest."""
    files = json.loads((folder / MANIFEST).read_text())["files"]
    return {k: v for k, v in files.items() if k.endswith(".safetensors")}


def gate_row(result: CycleResult) -> dict[str, Any]:
    return {
        "promoted": result.promoted,
        "reason": result.reason,
        "sharpe_test": {k: _r(v) for k, v in result.sharpe_test.items()},
        "held_out_student_sharpe": _r(result.student_metrics["sharpe"]),
        "held_out_teacher_sharpe": _r(result.teacher_metrics["sharpe"]),
        "mf_fit_steps": result.training.get("mf/fit_steps"),
        "ppo_iterations": result.training.get("ppo/iterations"),
        "budget_cut": result.budget_cut,
        "student_version": result.student_version,
    }


def _r(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


# --- a draw: four arms ------------------------------------------------------------------------


def arm_recipe(run: Run, arm: str) -> RecipeSettings:
    if arm != "head_only":
        return run.recipe
    ppo = dataclasses.replace(run.recipe.ppo, total_timesteps=0)
    return run.recipe.model_copy(update={"ppo": ppo})


def run_draw(run: Run, draw: Draw, rerun: bool) -> dict[str, Any]:
    """The draw's four arms, its baselines and (draw 0) the same-seed rerun's verdict."""
    p = run.protocol
    folder = run.work / f"draw-{draw.index}"
    cache = folder / "day-cache"
    start = p.cycle_bars - 1
    news = news_features(draw.prices, p.informativeness, draw.news_seed, draw.ticker)
    conditions = {
        "recipe": (news, news),
        "head_only": (news, news),
        "shuffled_news": (shuffled(news, p.cycle_bars, draw.news_seed), news),
        "no_news": (no_news(draw.prices), no_news(draw.prices)),
    }
    teacher: dict[str, float] = {}
    row: dict[str, Any] = {
        "draw": draw.index,
        "market": draw.market,
        "news_seed": draw.news_seed,
        "train_seed": draw.train_seed,
        "forward_decisions": len(draw.prices) - 1 - start,
        **{k: _r(v) for k, v in baselines(draw.prices, start, news, draw.ticker).items()},
    }
    for arm in ARMS:
        trained_on, traded_on = conditions[arm]
        began = time.monotonic()
        result = cycle(
            run,
            folder / arm,
            draw.prices.iloc[: p.cycle_bars],
            first_bars(trained_on, p.cycle_bars),
            draw.ticker,
            draw.train_seed,
            cache,
            run.teacher_dir,
            p.min_train,
            arm_recipe(run, arm),
        )
        key = "news" if traded_on is news else "no_news"
        if key not in teacher:  # v0 on these decisions with this news: the same for every arm
            teacher[key] = forward_sharpe(
                run.teacher_dir, draw.prices, start, traded_on, draw.ticker, draw.train_seed, cache
            )
        student = forward_sharpe(
            Path(result.artifact_path),
            draw.prices,
            start,
            traded_on,
            draw.ticker,
            draw.train_seed,
            cache,
        )
        row[arm] = {
            **gate_row(result),
            "forward_student_sharpe": _r(student),
            "forward_teacher_sharpe": _r(teacher[key]),
            "forward_served_sharpe": _r(student if result.promoted else teacher[key]),
            "seconds": round(time.monotonic() - began, 1),
        }
        if arm == "recipe" and rerun:
            row["same_seed_same_student"] = same_seed(run, draw, result, cache)
        say(f"draw {draw.index} ({draw.market}) {arm}: {row[arm]}")
    shutil.rmtree(folder)  # a SmolLM2 student is a full model copy; the day cache is per draw
    return row


def same_seed(run: Run, draw: Draw, first: CycleResult, cache: Path) -> bool:
    """The recipe arm once more in a fresh folder, same seed and settings: equal weights?"""
    p = run.protocol
    news = news_features(draw.prices, p.informativeness, draw.news_seed, draw.ticker)
    again = cycle(
        run,
        run.work / "same-seed",
        draw.prices.iloc[: p.cycle_bars],
        first_bars(news, p.cycle_bars),
        draw.ticker,
        draw.train_seed,
        cache,
        run.teacher_dir,
        p.min_train,
        run.recipe,
    )
    first_hashes = weight_hashes(Path(first.artifact_path))
    equal = bool(first_hashes) and first_hashes == weight_hashes(Path(again.artifact_path))
    shutil.rmtree(run.work / "same-seed")
    return equal


# --- re-alignment -----------------------------------------------------------------------------


def realign(run: Run, j: int) -> dict[str, Any]:
    """A teacher trained before the shift and frozen; the student re-aligned after it; both,
    the served policy, the rule and Buy & Hold on the forward stretch after the student's
    gate."""
    p = run.protocol
    shift = p.realign_shift
    post_bars = minimum_bars(p.holdout, p.embargo, shift + p.realign_post_train)
    total = post_bars + p.forward
    if minimum_bars(p.holdout, p.embargo, p.realign_teacher_train) != shift:
        raise ValueError("the teacher's cycle must end at the shift")
    market_seed = p.realign_market_seed + j
    params = load_params("regime-shift").model_copy(
        update={"forced_shifts": [ForcedShift(day=shift, regime="volatile_bear")]}
    )
    prices, _ = generate_market(params, total, market_seed)
    news = news_features(prices, p.informativeness, p.realign_news_seed + j, "SYN")
    seed = p.realign_train_seed + j
    folder = run.work / f"realign-{j}"
    cache = folder / "day-cache"
    before = cycle(
        run,
        folder / "teacher",
        prices.iloc[:shift],
        first_bars(news, shift),
        "SYN",
        seed,
        cache,
        run.teacher_dir,
        p.realign_teacher_train,
        run.recipe,
    )
    frozen = Path(before.artifact_path)
    # The pre-shift student is the frozen teacher by the protocol's design, whatever its gate
    # said; the cycle trains only on an approved teacher, so it is approved here, by hand.
    if not (frozen / APPROVAL).is_file():
        approve_artifact(
            frozen, sequence=next_sequence(frozen.parent), evidence=Evidence(stage="manual")
        )
    after = cycle(
        run,
        folder / "student",
        prices.iloc[:post_bars],
        first_bars(news, post_bars),
        "SYN",
        seed,
        cache,
        frozen,
        p.realign_teacher_train,
        run.recipe,
    )
    start = post_bars - 1
    student = forward_sharpe(Path(after.artifact_path), prices, start, news, "SYN", seed, cache)
    teacher = forward_sharpe(frozen, prices, start, news, "SYN", seed, cache)
    row = {
        "realign_seed": j,
        "market": f"regime-shift, shift at bar {shift}, seed {market_seed}",
        "news_seed": p.realign_news_seed + j,
        "train_seed": seed,
        "teacher_gate": gate_row(before),
        "student_gate": gate_row(after),
        "forward_decisions": len(prices) - 1 - start,
        "forward_student_sharpe": _r(student),
        "forward_frozen_teacher_sharpe": _r(teacher),
        "forward_served_sharpe": _r(student if after.promoted else teacher),
        **{k: _r(v) for k, v in baselines(prices, start, news, "SYN").items()},
    }
    shutil.rmtree(folder)
    say(f"realign {j}: {row}")
    return row


# --- the gate against no-skill students -------------------------------------------------------


def gate_false_promotions(protocol: Protocol, config: GateConfig) -> dict[str, dict[str, Any]]:
    """bench/gate_calibration.py's random-timing students at the protocol's held-out length,
    decided by `config`, on a seed set not used to choose it."""
    layout = next(lay for lay in gate_calibration.LAYOUTS if lay.backtest == (60,))
    out = {}
    for kind in gate_calibration.KINDS:
        promoted = 0
        for i in range(protocol.gate_draws):
            seed = gate_calibration.draw_seed(protocol.gate_seed_set, kind, layout, i)
            backtest, shadow = gate_calibration.segments(layout, kind, seed)
            promoted += gate_calibration.gate(backtest, shadow, config).promoted
        out[kind] = gate_calibration.rate(promoted, protocol.gate_draws)
    return out


# --- the summary ------------------------------------------------------------------------------


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.fmean(kept), 4) if kept else None


def ci90(differences: list[float]) -> list[float | None]:
    """The 90% Student-t interval of the mean difference (paired by draw)."""
    if len(differences) < 2:
        return [None, None]
    centre = statistics.fmean(differences)
    half = stats.t.ppf(0.95, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return [round(float(centre - half), 4), round(float(centre + half), 4)]


def summary(
    rows: list[dict[str, Any]], realigned: list[dict[str, Any]], gate_rates: dict[str, Any]
) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]

    def arm(name: str, field: str) -> list[float | None]:
        return [r[name][field] for r in ok]

    served_minus_bh = [
        r["recipe"]["forward_served_sharpe"] - r["buy_and_hold"]
        for r in ok
        if r["recipe"]["forward_served_sharpe"] is not None and r["buy_and_hold"] is not None
    ]
    ppo_minus_head = [
        r["recipe"]["forward_student_sharpe"] - r["head_only"]["forward_student_sharpe"]
        for r in ok
        if None
        not in (r["recipe"]["forward_student_sharpe"], r["head_only"]["forward_student_sharpe"])
    ]
    rates = {kind: cell["rate"] for kind, cell in gate_rates.items()}
    same = [r["same_seed_same_student"] for r in ok if "same_seed_same_student" in r]
    realign_ok = [r for r in realigned if "error" not in r]
    out: dict[str, Any] = {
        "draws": len(rows),
        "draws_failed": len(rows) - len(ok),
        "forward_served_sharpe_mean": mean(arm("recipe", "forward_served_sharpe")),
        "forward_buy_and_hold_sharpe_mean": mean([r["buy_and_hold"] for r in ok]),
        "forward_rule_sharpe_mean": mean([r["rule"] for r in ok]),
        "forward_student_sharpe_mean": mean(arm("recipe", "forward_student_sharpe")),
        "forward_served_minus_bh_ci90": ci90(served_minus_bh),
        "promotions": sum(r["recipe"]["promoted"] for r in ok),
        "shuffled_news_draws": len(ok),
        "shuffled_news_promotions": sum(r["shuffled_news"]["promoted"] for r in ok),
        "head_only_forward_sharpe_mean": mean(arm("head_only", "forward_student_sharpe")),
        "head_ppo_forward_sharpe_mean": mean(arm("recipe", "forward_student_sharpe")),
        "head_ppo_minus_head_only": {
            "mean": mean(list(ppo_minus_head)),
            "ci90": ci90(ppo_minus_head),
            "ppo_better": sum(d > 0 for d in ppo_minus_head),
            "head_only_better": sum(d < 0 for d in ppo_minus_head),
        },
        "realign_seeds": len(realigned),
        "realign_better": sum(
            r["forward_student_sharpe"] > r["forward_frozen_teacher_sharpe"] for r in realign_ok
        ),
        "realign_served_better": sum(
            r["forward_served_sharpe"] > r["forward_frozen_teacher_sharpe"] for r in realign_ok
        ),
        "realign_rule_better": sum(
            r["rule"] > r["forward_frozen_teacher_sharpe"] for r in realign_ok
        ),
        "gate_false_promotion_rate": rates,
        "gate_false_promotion_wilson90": {k: c["wilson90"] for k, c in gate_rates.items()},
        "same_seed_same_student": bool(same) and all(same),
        "arms": {
            name: {
                "forward_served_sharpe_mean": mean(arm(name, "forward_served_sharpe")),
                "forward_student_sharpe_mean": mean(arm(name, "forward_student_sharpe")),
                "forward_teacher_sharpe_mean": mean(arm(name, "forward_teacher_sharpe")),
                "promotions": sum(r[name]["promoted"] for r in ok),
            }
            for name in ARMS
        },
    }
    low = out["forward_served_minus_bh_ci90"][0]
    out["targets"] = {
        "forward_served_minus_bh_ci90_low_above_0": low is not None and low > 0,
        "shuffled_news_promotions_at_most_1_in_20": out["shuffled_news_promotions"] <= 1,
        "gate_false_promotion_rate_at_most_0.05": bool(rates)
        and all(v <= 0.05 for v in rates.values()),
        "same_seed_same_student": out["same_seed_same_student"],
        "realign_better_at_least_6_of_8": out["realign_better"] >= 6,
    }
    return out


# --- the rows as tables -----------------------------------------------------------------------


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gate_cell(arm: dict[str, Any], forward: bool = True) -> str:
    """`promoted (p 0.003): 3.04`: the gate's word, its p-value and the forward Sharpe."""
    word = "**promoted**" if arm["promoted"] else "refused"
    p = (arm.get("sharpe_test") or {}).get("p_value")
    cell = f"{word} (p {_number(p, 3)})"
    return f"{cell}: {_number(arm.get('forward_student_sharpe'))}" if forward else cell


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """The rows file as two markdown tables, draws and re-alignment seeds, for results.md and a
    closing note: each arm's gate, p-value and forward Sharpe beside the rule and Buy & Hold."""
    draws = [r for r in rows if str(r.get("unit", "")).startswith("draw ")]
    seeds = [r for r in rows if str(r.get("unit", "")).startswith("realign ")]
    lines = [
        "| draw | market | " + " | ".join(a.replace("_", " ") for a in ARMS) + " | served | rule "
        "| Buy & Hold |",
        "| --- " * (len(ARMS) + 5) + "|",
    ]
    for r in draws:
        if "error" in r:
            lines.append(f"| {r['draw']} | error: {r['error']} |" + " |" * (len(ARMS) + 3))
            continue
        cells = [_gate_cell(r[arm]) for arm in ARMS]
        served = _number(r["recipe"]["forward_served_sharpe"])
        lines.append(
            f"| {r['draw']} | {r['market']} | " + " | ".join(cells) + f" | {served} | "
            f"{_number(r['rule'])} | {_number(r['buy_and_hold'])} |"
        )
    lines += [
        "",
        "| seed | market | teacher before the shift | re-aligned student | forward: student "
        "| frozen teacher | rule | Buy & Hold |",
        "| --- " * 8 + "|",
    ]
    for r in seeds:
        if "error" in r:
            lines.append(f"| {r['realign_seed']} | error: {r['error']} |" + " |" * 6)
            continue
        teacher, student = r["teacher_gate"], r["student_gate"]
        lines.append(
            f"| {r['realign_seed']} | {r['market']} | "
            f"{_gate_cell(teacher, forward=False)} | "
            f"{_gate_cell(student, forward=False)} | "
            f"{_number(r['forward_student_sharpe'])} | "
            f"{_number(r['forward_frozen_teacher_sharpe'])} | {_number(r['rule'])} | "
            f"{_number(r['buy_and_hold'])} |"
        )
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    parser.add_argument("--data", type=Path, default=Path("data"), help="MSFT.csv, GOOGL.csv")
    parser.add_argument("--out", type=Path, default=Path("bench-out/learning"))
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument(
        "--smoke", action="store_true", help="2 draws, 1 re-alignment seed, tiny budgets"
    )
    parser.add_argument(
        "--rows",
        type=Path,
        default=None,
        help="the rows file to resume: units already in it are not run again (default: a new "
        "file in --out)",
    )
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the --rows file as markdown tables (draws, re-alignment seeds) and stop",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="start no unit after this many minutes; the summary then says what is left",
    )
    return parser.parse_args()


@contextmanager
def work_folder(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="rlmf-learning-") as tmp:
        yield Path(tmp)


def guarded(what: str, fn: Any, *args: Any) -> dict[str, Any]:
    """A draw or seed that fails is reported with its error and counts as missed."""
    try:
        row: dict[str, Any] = fn(*args)
    except Exception as error:  # noqa: BLE001 - recorded in the row, the run goes on
        logging.getLogger("bench.learning").exception("%s failed", what)
        return {"error": f"{type(error).__name__}: {error}", "what": what}
    return row


def unit_order(protocol: Protocol) -> list[str]:
    """The run order of bench/learning_protocol.md's fourth amendment: the gate's simulation,
    then the draws with a real window and a scenario market in turn (MSFT 0, scenario 10,
    GOOGL 0, scenario 11, MSFT 1, ...) and the re-alignment seeds spread evenly among them,
    so a run stopped part-way holds evidence on every claim, not on the first market only."""
    real = [
        series * protocol.real_windows + k
        for k in range(protocol.real_windows)
        for series in range(len(protocol.real_series))
    ]
    first_synthetic = len(protocol.real_series) * protocol.real_windows
    synthetic = list(range(first_synthetic, first_synthetic + protocol.synthetic_draws))
    per_real = max(len(real), 1)
    draws: list[int] = []
    for k in range(max(len(real), 1)):
        draws += real[k : k + 1]
        share = synthetic[k * len(synthetic) // per_real : (k + 1) * len(synthetic) // per_real]
        draws += share
    ranked = [((i + 0.5) / len(draws), f"draw {d}") for i, d in enumerate(draws)]
    seeds = protocol.realign_seeds
    ranked += [((j + 0.5) / seeds + 1e-9, f"realign {j}") for j in range(seeds)]
    return ["gate"] + [unit for _, unit in sorted(ranked)]


def git_commit() -> str | None:
    """The code's commit, so a row says which code made it (None outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def earlier_rows(path: Path, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows an earlier part of this run wrote; refuses rows of another recipe or teacher,
    which would mix two evaluations in one summary."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        theirs = {key: row.get(key) for key in identity}
        if theirs != identity:
            sys.exit(f"{path} holds a row ({row.get('unit')}) made with {theirs}, not {identity}")
    return rows


def main() -> None:
    args = parse_args()
    if args.table:
        if args.rows is None or not args.rows.is_file():
            sys.exit("--table reads the rows file --rows names")
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        print(markdown_tables(rows))
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("services.trainer").setLevel(logging.INFO)
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is missing: run `rlmf models prepare` first")
    if not args.smoke:
        refuse_recipe_overrides()
    protocol = Protocol.smoke() if args.smoke else Protocol()
    recipe = smoke_recipe() if args.smoke else TrainerSettings().recipe
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.rows or args.out / f"learning-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    with work_folder(args.work) as work:
        teacher_dir = work / "v0"
        init_artifact(args.model, teacher_dir, "v0", recipe.student, overwrite=True)
        identity = {
            "smoke": args.smoke,
            "model": args.model.name,
            "recipe_sha256": recipe.sha256(),
            "teacher_sha256": hashlib.sha256(
                json.dumps(weight_hashes(teacher_dir), sort_keys=True).encode()
            ).hexdigest(),
        }
        done = {row["unit"]: row for row in earlier_rows(rows_path, identity)}
        commit = git_commit()  # once: the code this process runs, whatever is committed later
        gate = (
            GateConfig()
            if protocol.gate_min_holdout_bars is None
            else GateConfig(min_holdout_bars=protocol.gate_min_holdout_bars)
        )
        run = Run(protocol, recipe, teacher_dir, work, gate)
        draws = {f"draw {d.index}": d for d in make_draws(protocol, args.data)}
        order = unit_order(protocol)
        with rows_path.open("a") as rows_file:
            for unit in order:
                if unit in done:
                    continue
                minutes = (time.monotonic() - began) / 60
                if args.minutes is not None and minutes >= args.minutes:
                    say(f"{minutes:.0f} minutes gone: {unit} and after are left for a later part")
                    break
                started = time.monotonic()
                say(f"{unit} begins")
                row = run_unit(run, unit, draws)
                row |= {
                    "unit": unit,
                    **identity,
                    "commit": commit,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "unit_seconds": round(time.monotonic() - started, 1),
                    "threads": torch.get_num_threads(),
                }
                rows_file.write(json.dumps(row) + "\n")
                rows_file.flush()
                done[unit] = row
    rows = [done[u] for u in order if u.startswith("draw ") and u in done]
    realigned = [done[u] for u in order if u.startswith("realign ") and u in done]
    gate_rates = done["gate"]["rates"] if "gate" in done else {}
    left = [u for u in order if u not in done]
    result = {
        "bench": "learning",
        "protocol": "bench/learning_protocol.md",
        **identity,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "complete": not left,
        "units_done": len(order) - len(left),
        "units_left": left,
        **summary(rows, realigned, gate_rates),
        "budget_cut_cycles": sum(row.get("budget_cut_cycles", 0) for row in done.values()),
        "rows": str(rows_path),
        "commits": sorted({str(row.get("commit")) for row in done.values()}),
        "unit_seconds": round(sum(row.get("unit_seconds", 0.0) for row in done.values()), 1),
        "seconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps(result))


def run_unit(run: Run, unit: str, draws: dict[str, Draw]) -> dict[str, Any]:
    """One unit of the run: the gate's simulation, a draw or a re-alignment seed."""
    cut_before = run.budget_cut_cycles
    if unit == "gate":
        row: dict[str, Any] = {"rates": gate_false_promotions(run.protocol, run.gate)}
        say(f"gate false promotions: {row['rates']}")
    elif unit.startswith("draw "):
        draw = draws[unit]
        row = {**guarded(unit, run_draw, run, draw, draw.index == 0), "draw": draw.index}
    else:
        j = int(unit.removeprefix("realign "))
        row = {**guarded(unit, realign, run, j), "realign_seed": j}
    return row | {"budget_cut_cycles": run.budget_cut_cycles - cut_before}


if __name__ == "__main__":
    main()
