"""Retrain a finished `make demo`'s warm-up student under variants of the trainer's settings and
trade the demo's window with each: what a change to the recipe would have made of the live loop,
over training seeds, without another 30-minute demo.

It reads the demo's own inputs from its output folder: the Feast store (the features and scored
news the live states carried), the day cache (the frozen base's pass over every history and
window day, so a retrained student costs minutes) and teacher v0. Each run is one
`rlmf trainer cycle --as-of <the warm-up's day>` with the demo's trainer settings, one held-out
fold of `--eval-days` bars (so the student learns from the bars the warm-up's served student
learnt from), promotion off; then the student trades the window's bars with the simulator's
execution (next-open fills, 10 bp), as the trainer's `evaluate` trades its held-out bars. The
baseline (the demo's settings) runs in the same invocation, so each variant is compared on the
same machine and the same day. The budget is the demo's: the recipe's steps
(RLMF_DEMO_PPO_STEPS), so a seed's student depends on the seed, not on how busy the machine
was; a variant changes a recipe knob by its RLMF_TRAINER_RECIPE__* name.

    .venv/bin/python bench/retrain_demo.py --out demo-out --seeds 4 \
        --variant flat=RLMF_TRAINER_RECIPE__PPO__MF_FLAT_THRESHOLD=0.005

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.demo.config import DemoConfig, select_window  # noqa: E402
from services.demo.services_plan import trainer_env  # noqa: E402
from services.demo.settings import DemoSettings  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`name:KEY=VALUE,KEY=VALUE` -> (name, {KEY: VALUE})."""
    name, _, assignments = text.partition(":")
    env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
    if not name or not env or not all(k.startswith("RLMF_") for k in env):
        raise SystemExit(f"--variant wants name:RLMF_KEY=VALUE[,...], got {text!r}")
    return name, env


def demo_trainer_env(demo_out: Path, work: Path, eval_days: int) -> tuple[dict[str, str], str]:
    """The demo's warm-up settings, with a private models folder (teacher v0 only) and work
    folder, one held-out fold of `eval_days` bars and promotion off; and the warm-up's day."""
    cfg = DemoConfig("real", False, demo_out, DemoSettings())
    window = select_window(cfg)
    models = work / "models"
    models.mkdir(parents=True)
    shutil.copytree(demo_out / "models" / "policy" / "v0", models / "v0")
    (models / "current").write_text("v0\n")
    env = trainer_env(cfg, window, models, "http://127.0.0.1:9", demo_out)
    # Not the warm-up's rule (it would hold out 250 in 5 folds): one block of `eval_days`.
    env |= {
        "RLMF_TRAINER_EVAL_DAYS": str(eval_days),
        "RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS": str(eval_days),
        "RLMF_TRAINER_WALK_FORWARD_FOLDS": "1",
        "RLMF_TRAINER_CYCLE_MINUTES": str(cfg.settings.warm_up_minutes),
        "RLMF_TRAINER_WORK_DIR": str(work / "trainer"),
        "RLMF_TRAINER_PROMOTION": "none",
        "RLMF_TRAINER_SHADOW_BARS": "0",  # nothing serves here: the gate's word is the verdict
        "RLMF_TRAINER_PUBLISH": "false",
    }
    return env, f"{window.history.index[-1]:%Y-%m-%d}"


def retrain(env: dict[str, str], as_of: str) -> dict[str, object]:
    """One warm-up cycle in its own process; its CycleResult line."""
    argv = [sys.executable, "-m", "services.cli", "trainer", "cycle", "--as-of", as_of]
    done = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"train cycle failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def trade_window(env: dict[str, str], student_dir: Path, demo_out: Path) -> dict[str, float]:
    """The student over the demo's window: its Sharpe and Buy & Hold's, fills, action shares."""
    from services.market.backtest import run_backtest
    from services.policy.artifacts import load_artifact
    from services.policy.folder_policy import FolderPolicy
    from services.trainer.cycle import load_prices
    from services.trainer.offline_features import load_bar_features, state_inputs
    from services.trainer.settings import TrainerSettings

    with settings_env(env):  # the Feast store, day cache and ticker the settings name
        settings = TrainerSettings()
        prices = load_prices(settings)
        features = load_bar_features(settings.features_source, prices, settings.ticker)
    window = select_window(DemoConfig("real", False, demo_out, DemoSettings()))
    start = int(prices.index.get_loc(window.frame.index[0]))
    end = int(prices.index.get_loc(window.frame.index[-1]))
    model = load_artifact(student_dir)
    model.attach_day_cache(settings.day_cache_memory_mb << 20, settings.day_cache_dir)
    # The trainer's evaluate() runs this same backtest; called here for the fills it counts.
    result = run_backtest(
        prices,
        FolderPolicy(model, student_dir),
        ticker=settings.ticker,
        seed=settings.seed,
        start=start,
        end=end,
        **state_inputs(features),
    )
    actions = [d.action for d in result.strategy.decisions]
    return {
        "sharpe": float(result.metrics["strategy"]["sharpe"]),
        "buy_and_hold_sharpe": float(result.metrics["buy_and_hold"]["sharpe"]),
        "fills": float(len(result.strategy.trades)),
        "share_buy": actions.count("buy") / len(actions),
        "share_sell": actions.count("sell") / len(actions),
    }


@contextmanager
def settings_env(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ while settings are read, then the environment as it was."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": round(float(a.mean()), 3),
        "sd": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 3),
        "min": round(float(a.min()), 3),
        "max": round(float(a.max()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo-out", help="a finished demo")
    parser.add_argument("--seeds", type=int, default=4, help="training seeds per variant")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--eval-days", type=int, default=50)
    parser.add_argument("--variant", action="append", default=[], help="name:RLMF_KEY=VALUE,...")
    args = parser.parse_args()
    if not (args.out / "feast").is_dir() or not (args.out / "models" / "policy" / "v0").is_dir():
        raise SystemExit(
            f"{args.out} is not a finished demo's output (no feast/ or models/policy/v0)"
        )

    variants = [("demo", {}), *(parse_variant(v) for v in args.variant)]
    out: dict[str, object] = {"bench": "retrain_demo", "demo_out": str(args.out)}
    for name, overrides in variants:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            with tempfile.TemporaryDirectory(prefix="rlmf-retrain-") as tmp:
                env, as_of = demo_trainer_env(args.out, Path(tmp), args.eval_days)
                env |= {**overrides, "RLMF_TRAINER_SEED": str(seed)}
                cycle = retrain(env, as_of)
                traded = trade_window(env, Path(str(cycle["artifact_path"])), args.out)
            traded["held_out_p"] = float(cycle.get("sharpe_test", {}).get("p_value", np.nan))
            runs.append(traded)
            print(f"{name} seed {seed}: {traded}", file=sys.stderr, flush=True)
        out[name] = {
            "overrides": overrides,
            "window_sharpe": spread([r["sharpe"] for r in runs]),
            "fills": spread([r["fills"] for r in runs]),
            "share_sell": spread([r["share_sell"] for r in runs]),
        }
        out["buy_and_hold_sharpe"] = round(runs[0]["buy_and_hold_sharpe"], 3)
    out["as_of"] = as_of
    out["eval_days"] = args.eval_days
    out["seeds"] = list(range(args.first_seed, args.first_seed + args.seeds))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
