"""Does the loop learn? The trainer's own cycle (services/trainer/cycle.py: PPO + RLMF's market
feedback loss, the day cache, the walk-forward split and the bootstrap gate) on the real
SmolLM2, with synthetic news of a known informativeness. Prints one JSON line.

    .venv/bin/python bench/learning.py [--ppo-steps 40] [--mf-max-steps 60] [--informative-seeds 3]
        [--uninformative-cycles 10] [--regime-seeds 8]

The recipe is the trainer's own (RecipeSettings: RLMF_TRAINER_RECIPE__* or its defaults); the
options below override a knob only when given.

(a) informative news (MSFT's last bars, informativeness 0.6), one cycle per seed (the news and
    the training seed both change): the cycle trains on the bars before its cut-off; on the
    held-out bars after it (purged, embargoed) the policy the loop serves afterwards (the student
    if the gate promoted it, else the teacher) is compared with the sentiment rule and Buy & Hold
    on the same bars. Reported per seed and as mean, standard deviation and range.
(b) uninformative news (informativeness 0.0): cycles at cut-offs spaced `--window-step` bars
    apart over one news series (so the day cache is filled once for all of them; neighbouring
    held-out blocks overlap, so the cycles are not independent trials) with a training seed
    each: how often the gate promotes noise.
(c) regime shift: per seed, a synthetic market (the "regime-shift" scenario: calm bull, then a
    volatile bear from bar `--shift-bar`) with informative news; one cycle after the shift, and
    then the policy the loop serves and the frozen teacher trade the next `--live-bars` bars,
    which neither the cycle nor its gate saw. "Re-aligned better" counts the seeds on which the
    served policy's Sharpe on those live bars beats the frozen teacher's.
(d) cost: decisions per second on the same states with and without the day cache, same run,
    and the wall time of each cycle.

No look-ahead: the cycle's own split (services/market/walk_forward.py) keeps every training
outcome before the embargo and the held-out block, and (c)'s live bars come after the cycle's
last bar.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from services.common.market_state import MarketState
from services.ingest.news_generator import generate_news
from services.market.backtest import run_backtest
from services.market.baseline_policies import SentimentRule
from services.market.envs import DiscreteTradingEnv
from services.market.market_data import load_prices_csv
from services.market.regime_market import ForcedShift, generate_market, load_params
from services.policy.artifacts import init_artifact, load_artifact
from services.trainer.cycle import CycleResult, run_cycle, set_current
from services.trainer.evaluate import evaluate
from services.trainer.offline_features import BarFeatures
from services.trainer.settings import RecipeSettings, TrainerSettings


def say(msg: str) -> None:
    print(f"[bench/learning] {msg}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """What every cycle of the run shares: the arguments, a work folder and one day-cache
    folder (a day's frozen-base states are filled once, whichever cycle or evaluation needs
    them first)."""

    args: argparse.Namespace
    work: Path

    @property
    def day_cache(self) -> Path:
        return self.args.day_cache or self.work / "day-cache"


def news_features(
    prices: pd.DataFrame, informativeness: float, seed: int, ticker: str = "MSFT"
) -> BarFeatures:
    """Per bar: the headline's tone as a scorer's mean would give it, and the headline."""
    items = generate_news(prices, ticker, informativeness=informativeness, seed=seed)
    sentiment = pd.Series(np.nan, index=prices.index)
    summaries = pd.Series("", index=prices.index, dtype=object)
    for i, item in enumerate(items):
        sentiment.iloc[i] = 0.6 * item.sentiment
        summaries.iloc[i] = item.headline
    return BarFeatures(pd.DataFrame(index=prices.index), sentiment, summaries)


def _given(**fields: Any) -> dict[str, Any]:
    """The options the run was given (None: the recipe's own value)."""
    return {name: value for name, value in fields.items() if value is not None}


def bench_recipe(args: argparse.Namespace, seed: int) -> RecipeSettings:
    """The trainer's recipe (RLMF_TRAINER_RECIPE__* from the environment, else its defaults)
    with the knobs this run's options give, and its step budget; PPO seeded by `seed`."""
    base = TrainerSettings().recipe
    student = dataclasses.replace(
        base.student,
        **_given(
            trainable_top_k=args.top_k,
            state_head=args.state_head,
            train_lm_layers=args.train_lm_layers,
        ),
    )
    ppo = dataclasses.replace(
        base.ppo,
        total_timesteps=args.ppo_steps,
        seed=seed,
        **_given(learning_rate=args.lr, mf_coef=args.mf_coef),
    )
    update = _given(
        mf_epochs=args.mf_epochs, mf_learning_rate=args.mf_lr, mf_max_steps=args.mf_max_steps
    )
    return base.model_copy(update={"student": student, "ppo": ppo, **update})


def make_teacher(models: Path, base: Path, recipe: RecipeSettings) -> None:
    """v0: the untrained SmolLM2 as the actor-critic the recipe's student is, and the
    `current` pointer at it."""
    init_artifact(base, models / "v0", config=recipe.student)
    set_current(models, models / "v0")


def run_one_cycle(
    bench: Bench,
    prices: pd.DataFrame,
    features: BarFeatures,
    name: str,
    seed: int,
    ticker: str = "MSFT",
    holdout: int | None = None,
) -> tuple[CycleResult, float]:
    """One trainer cycle on `prices` (its last bar is the cycle's day), from a fresh teacher."""
    args = bench.args
    models = bench.work / name / "models"
    recipe = bench_recipe(args, seed)
    make_teacher(models, args.model, recipe)
    settings = TrainerSettings(
        models_dir=models,
        work_dir=bench.work / name / "trainer",
        ticker=ticker,
        train_days=args.min_train,
        eval_days=holdout or args.holdout,
        embargo_days=args.embargo,
        expanding_window=True,
        cycle_minutes=args.minutes,  # a safety cap: the recipe's steps are the budget
        promotion="none",
        publish=False,
        seed=seed,
        day_cache_dir=bench.day_cache,
        recipe=recipe,
    )
    started = time.monotonic()
    result = run_cycle(settings, prices=prices, bar_features=features)
    return result, time.monotonic() - started


def cycle_summary(result: CycleResult, seed: int, seconds: float) -> dict[str, Any]:
    served = result.student_metrics if result.promoted else result.teacher_metrics
    return {
        "seed": seed,
        "promoted": result.promoted,
        "reason": result.reason,
        "served_sharpe": round(served["sharpe"], 3),
        "student_sharpe": round(result.student_metrics["sharpe"], 3),
        "teacher_sharpe": round(result.teacher_metrics["sharpe"], 3),
        "buy_and_hold_sharpe": round(result.buy_and_hold_metrics["sharpe"], 3),
        "student_accuracy": round(result.student_metrics["prediction_accuracy"], 3),
        "teacher_accuracy": round(result.teacher_metrics["prediction_accuracy"], 3),
        "student_share_buy": round(result.student_metrics.get("share_buy", float("nan")), 3),
        "sharpe_test": {k: round(v, 4) for k, v in result.sharpe_test.items()},
        "ppo_iterations": result.training.get("ppo/iterations"),
        "mf_examples": result.training.get("mf/feedback_examples"),
        "seconds": round(seconds, 1),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


# --- (a) informative news ---------------------------------------------------------------------


def informative(bench: Bench, prices: pd.DataFrame) -> dict[str, Any]:
    args = bench.args
    runs = []
    for seed in range(args.seed, args.seed + args.informative_seeds):
        features = news_features(prices, 0.6, seed)
        result, seconds = run_one_cycle(bench, prices, features, f"informative-{seed}", seed)
        summary = cycle_summary(result, seed, seconds)
        eval_start = prices.index.get_loc(pd.Timestamp(result.eval_start))
        rule = run_backtest(
            prices,
            SentimentRule(),
            ticker="MSFT",
            sentiment=features.sentiment,
            summaries=features.summaries,
            start=eval_start,
            end=len(prices) - 1,
        ).metrics["strategy"]
        summary["held_out_bars"] = len(prices) - 1 - eval_start
        summary["sentiment_rule_sharpe"] = round(float(rule["sharpe"]), 3)
        summary["meets_target"] = bool(
            summary["served_sharpe"] >= 0.8 * summary["sentiment_rule_sharpe"]
            and summary["served_sharpe"] > summary["buy_and_hold_sharpe"]
        )
        runs.append(summary)
        say(f"informative seed {seed}: {summary}")
    return {
        "runs": runs,
        "served_sharpe": spread([r["served_sharpe"] for r in runs]),
        "sentiment_rule_sharpe": spread([r["sentiment_rule_sharpe"] for r in runs]),
        "buy_and_hold_sharpe": runs[0]["buy_and_hold_sharpe"],  # the same bars every seed
        "promotions": sum(r["promoted"] for r in runs),
        "seeds_meeting_target": sum(r["meets_target"] for r in runs),
    }


# --- (b) uninformative news -------------------------------------------------------------------


def uninformative(bench: Bench, prices: pd.DataFrame) -> list[dict[str, Any]]:
    """Cycles whose last bars step back `window_step` bars at a time over one noise series."""
    args = bench.args
    news = news_features(prices, 0.0, 100 + args.seed)
    runs = []
    for k in range(args.uninformative_cycles):
        end = len(prices) - k * args.window_step
        window = prices.iloc[:end]
        features = BarFeatures(
            news.numeric.iloc[:end], news.sentiment.iloc[:end], news.summaries.iloc[:end]
        )
        seed = args.seed + k
        result, seconds = run_one_cycle(bench, window, features, f"noise-{k}", seed)
        summary = cycle_summary(result, seed, seconds)
        summary["cycle_day"] = str(window.index[-1].date())
        runs.append(summary)
        say(f"uninformative {k}: {summary}")
    return runs


# --- (c) regime shift -------------------------------------------------------------------------


def regime_market(seed: int, bars: int, shift_bar: int) -> pd.DataFrame:
    """The regime-shift scenario with its shift moved to `shift_bar`, `bars` long."""
    params = load_params("regime-shift")
    params = params.model_copy(
        update={"forced_shifts": [ForcedShift(day=shift_bar, regime="volatile_bear")]}
    )
    frame, _ = generate_market(params, bars, seed)
    return frame


def served_folder(result: CycleResult, models: Path) -> Path:
    return Path(result.artifact_path) if result.promoted else models / "v0"


def live_sharpe(
    bench: Bench, folder: Path, prices: pd.DataFrame, start: int, features: BarFeatures, seed: int
) -> float:
    """The policy in `folder` trades bars start..end of `prices`, with the shared day cache."""
    model = load_artifact(folder)
    model.attach_day_cache(folder=bench.day_cache)
    evaluation = evaluate(
        model, prices, start, len(prices) - 1, ticker="SYN", seed=seed, features=features
    )
    return evaluation.policy["sharpe"]


def regime_shift(bench: Bench) -> list[dict[str, Any]]:
    args = bench.args
    runs = []
    for seed in range(args.seed, args.seed + args.regime_seeds):
        prices = regime_market(seed, args.regime_bars, args.shift_bar)
        features = news_features(prices, 0.6, seed, ticker="SYN")
        cut = len(prices) - args.live_bars  # the cycle's day is bar cut - 1
        window = prices.iloc[:cut]
        window_features = BarFeatures(
            features.numeric.iloc[:cut],
            features.sentiment.iloc[:cut],
            features.summaries.iloc[:cut],
        )
        name = f"regime-{seed}"
        result, seconds = run_one_cycle(
            bench, window, window_features, name, seed, ticker="SYN", holdout=args.regime_holdout
        )
        summary = cycle_summary(result, seed, seconds)
        models = bench.work / name / "models"
        served = live_sharpe(bench, served_folder(result, models), prices, cut - 1, features, seed)
        frozen = live_sharpe(bench, models / "v0", prices, cut - 1, features, seed)
        summary["live_bars"] = args.live_bars
        summary["live_served_sharpe"] = round(served, 3)
        summary["live_frozen_teacher_sharpe"] = round(frozen, 3)
        summary["realigned_better"] = bool(served > frozen)
        runs.append(summary)
        say(f"regime seed {seed}: {summary}")
    return runs


# --- (d) cost ---------------------------------------------------------------------------------


def day_cache_speedup(
    teacher: Path, prices: pd.DataFrame, features: BarFeatures, n: int
) -> dict[str, float]:
    """Decisions per second on the same n states: the day cache filled (every day seen before,
    as in a cycle's later episodes, epochs and its gate), and without it (the prefix cache
    only: how the policy decided before the day cache)."""
    model = load_artifact(teacher)
    env = DiscreteTradingEnv(
        prices,
        ticker="MSFT",
        sentiment=features.sentiment,
        summaries=features.summaries,
        start=len(prices) - n - 1,
        end=len(prices) - 1,
    )
    env.reset(seed=0)
    states: list[MarketState] = []
    for _ in range(n):
        states.append(env.current_state())
        env.step(2)
    started = time.perf_counter()
    for s in states:
        model.policy_outputs([s])
    uncached = n / (time.perf_counter() - started)
    model.attach_day_cache()
    for s in states:
        model.policy_outputs([s])  # fills
    started = time.perf_counter()
    for s in states:
        model.policy_outputs([s])
    cached = n / (time.perf_counter() - started)
    return {
        "uncached_per_s": round(uncached, 2),
        "cached_per_s": round(cached, 2),
        "speedup": round(cached / uncached, 1),
    }


# --- the run ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    parser.add_argument("--prices", type=Path, default=Path("data/MSFT.csv"))
    parser.add_argument("--bars", type=int, default=300, help="(a): bars up to the cycle's day")
    parser.add_argument("--min-train", type=int, default=40)
    parser.add_argument("--holdout", type=int, default=100, help="(a) and (b): the gate's bars")
    parser.add_argument("--embargo", type=int, default=2)
    # The half-minute wall-clock budget this bench used to give a cycle, counted in steps:
    # the market-feedback phase's first 60 steps, then one 40-step PPO iteration on 2 cores
    # (services/demo/settings.py, DemoSettings.ppo_steps, has the measurements).
    parser.add_argument("--ppo-steps", type=int, default=40, help="PPO steps per student")
    parser.add_argument(
        "--mf-max-steps", type=int, default=60, help="market-feedback steps per student"
    )
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="each cycle's wall-clock safety cap"
    )
    # Each knob below overrides the trainer's recipe only when given.
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="PPO's learning rate")
    parser.add_argument("--mf-lr", type=float, default=None, help="the market-feedback phase's")
    parser.add_argument("--mf-coef", type=float, default=None)
    parser.add_argument("--mf-epochs", type=int, default=None)
    parser.add_argument(
        "--state-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a linear head on the frozen base's last state (ActorCriticConfig.state_head)",
    )
    parser.add_argument(
        "--train-lm-layers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train the top k layers' weights",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--informative-seeds", type=int, default=3)
    parser.add_argument("--uninformative-cycles", type=int, default=10)
    parser.add_argument("--uninformative-bars", type=int, default=250)
    parser.add_argument("--uninformative-holdout", type=int, default=60)
    parser.add_argument("--window-step", type=int, default=15)
    parser.add_argument("--regime-seeds", type=int, default=8)
    parser.add_argument("--regime-bars", type=int, default=240)
    parser.add_argument("--shift-bar", type=int, default=50)
    parser.add_argument("--regime-holdout", type=int, default=80)
    parser.add_argument("--live-bars", type=int, default=30)
    parser.add_argument("--speed-states", type=int, default=20)
    parser.add_argument("--day-cache", type=Path, default=None, help="keep fills across runs")
    return parser.parse_args()


def settings_record(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options and the recipe they made (seed 0's; other seeds differ in PPO's)."""
    recipe = bench_recipe(args, args.seed)
    keys = [
        "ppo_steps",
        "mf_max_steps",
        "minutes",
        "min_train",
        "holdout",
        "embargo",
        "bars",
        "uninformative_bars",
        "uninformative_holdout",
        "window_step",
        "regime_bars",
        "shift_bar",
        "regime_holdout",
        "live_bars",
    ]
    return {
        **{k: getattr(args, k) for k in keys},
        "recipe": recipe.model_dump(mode="json"),
        "recipe_sha256": recipe.sha256(),
    }


def main() -> None:
    args = parse_args()
    # The cycle's own progress lines (services.trainer) on stderr, beside this script's.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("services.trainer").setLevel(logging.INFO)
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is missing: run `rlmf models prepare` first")
    torch.manual_seed(args.seed)
    started = time.monotonic()
    all_prices = load_prices_csv(args.prices)
    with tempfile.TemporaryDirectory(prefix="rlmf-learning-") as tmp:
        bench = Bench(args, Path(tmp))
        prices = all_prices.iloc[-args.bars :]
        a = informative(bench, prices) if args.informative_seeds else None
        first = bench.work / f"informative-{args.seed}" / "models" / "v0"
        speed = (
            day_cache_speedup(
                first, prices, news_features(prices, 0.6, args.seed), args.speed_states
            )
            if a
            else None
        )
        say(f"day cache: {speed}")
        saved_holdout = args.holdout
        args.holdout = args.uninformative_holdout
        b = uninformative(bench, all_prices.iloc[-args.uninformative_bars :])
        args.holdout = saved_holdout
        c = regime_shift(bench)
    cycle_seconds = [r["seconds"] for r in (a["runs"] if a else []) + b + c]
    print(
        json.dumps(
            {
                "bench": "learning",
                "model": args.model.name,
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "seed": args.seed,
                "data": f"(a) {args.prices} last {args.bars} bars; (b) its last "
                f"{args.uninformative_bars}; (c) regime-shift scenario, {args.regime_bars} bars",
                "settings": settings_record(args),
                "informative_sharpe": a["served_sharpe"]["mean"] if a else None,
                "sentiment_rule_sharpe": a["sentiment_rule_sharpe"]["mean"] if a else None,
                "buy_and_hold_sharpe": a["buy_and_hold_sharpe"] if a else None,
                "informative": a,
                "uninformative_cycles": len(b),
                "uninformative_promotions": sum(r["promoted"] for r in b),
                "uninformative": b,
                "regime_seeds": len(c),
                "regime_seeds_realigned_better": sum(r["realigned_better"] for r in c),
                "regime_seeds_promoted": sum(r["promoted"] for r in c),
                "regime": c,
                "day_cache_speedup": speed["speedup"] if speed else None,
                "day_cache": speed,
                "cycle_seconds": spread(cycle_seconds) if cycle_seconds else None,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
