"""Does the loop learn? The trainer's own cycle (services/trainer/cycle.py: PPO + RLMF's market
feedback loss, the day cache, the walk-forward split and the bootstrap gate) on the real
SmolLM2, with synthetic news of a known informativeness. Prints one JSON line.

    .venv/bin/python bench/learning.py [--minutes 4] [--top-k 1] [--lr 3e-4]
        [--uninformative-cycles 10] [--regime-seeds 0]

(a) informative news (MSFT's last bars, informativeness 0.6): one cycle trains on the bars
    before its cut-off; on the held-out bars after it (purged, embargoed) the policy the loop
    would serve afterwards (the student if the gate promoted it, else the teacher) is compared
    with the sentiment rule and Buy & Hold on the same bars.
(b) uninformative news (informativeness 0.0), one cycle per news seed: how often the gate
    promotes (it should not, beyond its error rate).
(c) regime shift: not built yet. --regime-seeds is only recorded in the output, and
    regime_seeds_realigned_better stays null.
(d) cost: decisions per second on the same states with and without the day cache, same run,
    and the wall time of each cycle.

No look-ahead: the cycle's own split (services/market/walk_forward.py) keeps every training
outcome before the embargo and the held-out block.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
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
from services.market.regime_market import generate_market, load_params
from services.policy.actor_critic import ActorCriticConfig
from services.policy.artifacts import init_artifact, load_artifact
from services.trainer.cycle import run_cycle, set_current
from services.trainer.offline_features import BarFeatures
from services.trainer.settings import TrainerSettings


def say(msg: str) -> None:
    print(f"[bench/learning] {msg}", file=sys.stderr, flush=True)


def news_features(prices: pd.DataFrame, informativeness: float, seed: int) -> BarFeatures:
    """Per bar: the headline's tone as a scorer's mean would give it, and the headline."""
    items = generate_news(prices, "MSFT", informativeness=informativeness, seed=seed)
    sentiment = pd.Series(np.nan, index=prices.index)
    summaries = pd.Series("", index=prices.index, dtype=object)
    for i, item in enumerate(items):
        sentiment.iloc[i] = 0.6 * item.sentiment
        summaries.iloc[i] = item.headline
    return BarFeatures(pd.DataFrame(index=prices.index), sentiment, summaries)


def make_teacher(models: Path, base: Path, args: argparse.Namespace) -> None:
    """v0: the untrained SmolLM2 as the actor-critic, and the `current` pointer at it."""
    config = ActorCriticConfig(
        trainable_top_k=args.top_k,
        state_head=args.state_head,
        train_lm_layers=args.train_lm_layers,
    )
    init_artifact(base, models / "v0", config=config)
    set_current(models, models / "v0")


def cycle(
    prices: pd.DataFrame,
    features: BarFeatures,
    args: argparse.Namespace,
    work: Path,
    seed: int,
) -> dict[str, Any]:
    """One trainer cycle on `prices` (its last bar is the cycle's day), then the sentiment rule
    and Buy & Hold on the same held-out bars."""
    models = work / "models"
    make_teacher(models, args.model, args)
    settings = TrainerSettings(
        models_dir=models,
        work_dir=work / "trainer",
        ticker="MSFT",
        train_days=args.min_train,
        eval_days=args.holdout,
        embargo_days=args.embargo,
        expanding_window=True,
        cycle_minutes=args.minutes,
        promotion="none",
        publish=False,
        seed=seed,
        day_cache_dir=args.day_cache,
        mf_epochs=args.mf_epochs,
        mf_learning_rate=args.mf_lr,
        ppo={
            "total_timesteps": 1_000_000,  # the wall-clock budget decides
            "learning_rate": args.lr,
            "mf_coef": args.mf_coef,
            "seed": seed,
        },
    )
    started = time.monotonic()
    result = run_cycle(settings, prices=prices, bar_features=features)
    seconds = time.monotonic() - started
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
    served = result.student_metrics if result.promoted else result.teacher_metrics
    return {
        "seed": seed,
        "promoted": result.promoted,
        "reason": result.reason,
        "held_out_bars": len(prices) - 1 - eval_start,
        "served_sharpe": round(served["sharpe"], 3),
        "student_sharpe": round(result.student_metrics["sharpe"], 3),
        "teacher_sharpe": round(result.teacher_metrics["sharpe"], 3),
        "sentiment_rule_sharpe": round(float(rule["sharpe"]), 3),
        "buy_and_hold_sharpe": round(result.buy_and_hold_metrics["sharpe"], 3),
        "student_accuracy": round(result.student_metrics["prediction_accuracy"], 3),
        "teacher_accuracy": round(result.teacher_metrics["prediction_accuracy"], 3),
        "student_share_buy": round(result.student_metrics.get("share_buy", float("nan")), 3),
        "sharpe_test": {k: round(v, 4) for k, v in result.sharpe_test.items()},
        "ppo_iterations": result.training.get("ppo/iterations"),
        "mf_examples": result.training.get("mf/feedback_examples"),
        "seconds": round(seconds, 1),
    }


def day_cache_speedup(
    work: Path, prices: pd.DataFrame, features: BarFeatures, n: int
) -> dict[str, float]:
    """Decisions per second on the same n states: the day cache filled (every day seen before,
    as in a cycle's later episodes, epochs and its gate), and without it (the prefix cache
    only: how the policy decided before the day cache)."""
    model = load_artifact(work / "models" / "v0")
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


def regime_window(seed: int, bars: int) -> pd.DataFrame:
    frame, _ = generate_market(load_params("regime-shift"), bars, seed)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    parser.add_argument("--prices", type=Path, default=Path("data/MSFT.csv"))
    parser.add_argument("--bars", type=int, default=260, help="bars up to the cycle's day")
    parser.add_argument("--min-train", type=int, default=60)
    parser.add_argument("--holdout", type=int, default=60)
    parser.add_argument("--embargo", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=4.0, help="each cycle's budget")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5, help="PPO's (FLAG-Trader's default)")
    parser.add_argument("--mf-lr", type=float, default=3e-4, help="the market-feedback phase's")
    parser.add_argument("--mf-coef", type=float, default=1.0)
    parser.add_argument("--mf-epochs", type=int, default=10)
    parser.add_argument(
        "--state-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a linear head on the frozen base's last state (ActorCriticConfig.state_head)",
    )
    parser.add_argument(
        "--train-lm-layers",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also train the top k layers' weights",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--uninformative-cycles", type=int, default=0)
    parser.add_argument("--regime-seeds", type=int, default=0)
    parser.add_argument("--speed-states", type=int, default=20)
    parser.add_argument("--day-cache", type=Path, default=None, help="keep fills across runs")
    args = parser.parse_args()
    # The cycle's own progress lines (services.trainer) on stderr, beside this script's.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("services.trainer").setLevel(logging.INFO)
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is missing: run `rlmf models prepare` first")
    torch.manual_seed(args.seed)
    started = time.monotonic()
    prices = load_prices_csv(args.prices).iloc[-args.bars :]
    informative_news = news_features(prices, 0.6, args.seed)
    with tempfile.TemporaryDirectory(prefix="rlmf-learning-") as tmp:
        work = Path(tmp)
        informative = cycle(prices, informative_news, args, work / "informative", args.seed)
        say(f"informative: {informative}")
        speed = day_cache_speedup(work / "informative", prices, informative_news, args.speed_states)
        say(f"day cache: {speed}")
        uninformative = []
        for k in range(args.uninformative_cycles):
            news = news_features(prices, 0.0, 100 + k)
            uninformative.append(cycle(prices, news, args, work / f"noise-{k}", args.seed))
            say(f"uninformative {k}: {uninformative[-1]}")
    print(
        json.dumps(
            {
                "bench": "learning",
                "model": args.model.name,
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "seed": args.seed,
                "data": f"{args.prices} last {args.bars} bars",
                "settings": {
                    "top_k": args.top_k,
                    "state_head": args.state_head,
                    "train_lm_layers": args.train_lm_layers,
                    "lr": args.lr,
                    "mf_coef": args.mf_coef,
                    "mf_epochs": args.mf_epochs,
                    "mf_lr": args.mf_lr,
                    "cycle_minutes": args.minutes,
                    "min_train": args.min_train,
                    "holdout": args.holdout,
                    "embargo": args.embargo,
                },
                "informative_sharpe": informative["served_sharpe"],
                "sentiment_rule_sharpe": informative["sentiment_rule_sharpe"],
                "buy_and_hold_sharpe": informative["buy_and_hold_sharpe"],
                "informative": informative,
                "uninformative_cycles": len(uninformative),
                "uninformative_promotions": sum(c["promoted"] for c in uninformative),
                "uninformative": uninformative,
                "regime_seeds": args.regime_seeds,
                "regime_seeds_realigned_better": None,
                "day_cache_speedup": speed["speedup"],
                "day_cache": speed,
                "cycle_seconds": informative["seconds"],
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
