"""How often the promotion gate can pass the demo's warm-up student, by held-out length.

The warm-up cycle (services/demo/history.py) gates its student against the untrained teacher,
which buys every bar, on held-out bars of the history. This bench asks how long that held-out
block must be for the gate to have power at all, with no model in the way: the student here is
an oracle that reads every synthetic headline's tone exactly as the generator wrote it (the best
any student can do with the demo's news) and trades it as the sentiment rule does: buy when
the day's mean tone is positive, sell when negative, else hold. For each news seed it runs
the oracle and Buy & Hold on the held-out block with the demo's execution (next-open fills,
10 bp costs) and applies the gate's own bootstrap (services/trainer/gate.py, the same
default GateConfig, docs/gate.md; its numbers in docs/results.md were taken under the earlier
default: stationary blocks of 5, the teacher alone as the benchmark, lower 90% bound above 0).

It also reports what the same oracle makes over the replayed window from its first bar against
Buy & Hold: the live loop's ceiling when the warm-up promotes.

    .venv/bin/python bench/warm_up_power.py [--seeds 12] [--history 500] [--holdouts 100,250]

Prints one JSON line on stdout. Takes about a minute per held-out length on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.demo.config import DemoConfig, select_window  # noqa: E402
from services.demo.news import generate_news  # noqa: E402
from services.demo.settings import DemoSettings  # noqa: E402
from services.market.backtest import run_policy  # noqa: E402
from services.market.baseline_policies import BuyAndHold, SentimentRule  # noqa: E402
from services.market.envs import DiscreteTradingEnv  # noqa: E402
from services.market.performance import sharpe  # noqa: E402
from services.trainer.gate import GateConfig, HeldOutReturns, sharpe_difference  # noqa: E402


def mean_tone(days: pd.DataFrame, ticker: str, seed: int, settings: DemoSettings) -> pd.Series:
    """The day's mean headline tone (+1, -1, 0 neutral) of the demo's news draw; 0 if none."""
    news = generate_news(days, ticker, settings.news_informativeness, settings.news_per_day, seed)
    tones = pd.Series(0.0, index=days.index)
    counts = pd.Series(0, index=days.index)
    for draft in news:
        bar = int(draft.item_id.split("-")[-2])  # synthetic-<ticker>-<bar>-<j>
        tones.iloc[bar] += draft.tone
        counts.iloc[bar] += 1
    return (tones / counts.where(counts > 0)).fillna(0.0)


def daily_returns(
    days: pd.DataFrame, tone: pd.Series, policy: object, start: int, end: int
) -> np.ndarray:
    env = DiscreteTradingEnv(days, sentiment=tone, start=start, end=end)
    equity = run_policy(env, policy, seed=0).equity  # type: ignore[arg-type]
    return np.diff(equity) / equity[:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--history", type=int, default=500)
    parser.add_argument("--holdouts", default="100,250")
    args = parser.parse_args()

    settings = DemoSettings(history_bars=args.history)
    window = select_window(DemoConfig("real", False, Path("/tmp"), settings))
    days = pd.concat([window.history, window.frame])
    first = len(window.history)  # the first replayed bar
    oracle, gate = SentimentRule(threshold=0.0), GateConfig()
    out: dict[str, object] = {
        "bench": "warm_up_power",
        "history_bars": first,
        "window": f"{window.frame.index[0]:%Y-%m-%d}..{window.frame.index[-1]:%Y-%m-%d}",
        "news_seeds": args.seeds,
        "informativeness": settings.news_informativeness,
    }
    loop, buy_and_hold = (
        [],
        sharpe(
            daily_returns(
                days,
                mean_tone(days, window.ticker, 0, settings),
                BuyAndHold(),
                first,
                len(days) - 1,
            ),
            252.0,
        ),
    )
    held: dict[int, list[float]] = {int(h): [] for h in args.holdouts.split(",")}
    lows: dict[int, list[float]] = {h: [] for h in held}
    for seed in range(args.seeds):
        tone = mean_tone(days, window.ticker, seed, settings)
        for holdout, p_values in held.items():
            # The warm-up's held-out decisions: the history's last `holdout` bars but its last,
            # whose outcome is the first replayed bar's (services/market/walk_forward.py).
            start, end = first - holdout - 1, first - 1
            returns = HeldOutReturns(
                daily_returns(days, tone, oracle, start, end),
                daily_returns(days, tone, BuyAndHold(), start, end),
            )
            test = sharpe_difference(returns, gate)
            p_values.append(test.p_value)
            lows[holdout].append(test.low)
        loop.append(sharpe(daily_returns(days, tone, oracle, first, len(days) - 1), 252.0))
        print(f"seed {seed}: loop {loop[-1]:.2f}", file=sys.stderr, flush=True)
    for holdout, p_values in held.items():
        ps = np.array(p_values)
        out[f"holdout_{holdout}"] = {
            # The gate's rule: the interval's lower bound above 0 (a one-sided test at
            # (1 - confidence) / 2).
            "gate_passes": int((np.array(lows[holdout]) > 0).sum()),
            "median_p": round(float(np.median(ps)), 4),
        }
    out["oracle_loop_sharpe"] = {
        "mean": round(float(np.mean(loop)), 3),
        "min": round(float(np.min(loop)), 3),
        "max": round(float(np.max(loop)), 3),
    }
    out["buy_and_hold_sharpe"] = round(float(buy_and_hold), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
