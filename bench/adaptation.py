"""Adaptation to a regime shift: Sharpe over the days after the shift for (a) the frozen teacher,
(b) the policy re-aligned every N days by the RLMF cycle (services.trainer.cycle.run_cycle),
(c) Buy & Hold; same seeds, same run, same account and costs. Prints one JSON line.

Uses the tiny random Llama (models/tiny-llama) by default: SmolLM2-135M runs a cycle in minutes
on 2 CPU cores, too slow for several cycles per seed here (pass --model to use it).
The teacher is first trained by PPO+RLMF on the pre-shift (calm bull) bars only. Every cycle at
bar t sees bars <= t only: no look-ahead.

    .venv/bin/python bench/adaptation.py [--seeds 0 1] [--every 20]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from services.market.baseline_policies import BuyAndHold
from services.market.envs import DiscreteTradingEnv
from services.market.performance import period_returns, sharpe
from services.market.regime_market import generate_market, load_params
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.approval import Evidence, approve_artifact
from services.policy.artifacts import load_artifact, save_artifact
from services.policy.folder_policy import FolderPolicy
from services.trainer import ppo
from services.trainer.cycle import current_teacher, run_cycle, set_current
from services.trainer.gate import GateConfig
from services.trainer.settings import TrainerSettings


def progress(msg: str) -> None:
    print(f"[bench/adaptation] {msg}", file=sys.stderr, flush=True)


def pretrain_teacher(model_dir: Path, prices, shift: int, out: Path, seed: int, steps: int) -> None:  # type: ignore[no-untyped-def]
    config = ActorCriticConfig(trainable_top_k=2, seed=seed)
    torch.manual_seed(seed)
    agent = LLMActorCritic.from_pretrained(model_dir, config, "v0")
    reference = LLMActorCritic.from_pretrained(model_dir, config, "ref")
    env = DiscreteTradingEnv(prices, start=0, end=shift, max_episode_steps=65, random_start=True)
    args = ppo.PPOArgs(
        total_timesteps=steps,
        learning_rate=1e-3,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        seed=seed,
        kl_coef=0.0,
    )
    ppo.train(agent, reference, env, lambda s: agent.encode([s]), args)
    agent.mark_weights_changed()
    save_artifact(
        agent,
        out,
        {
            "version": "v0",
            "base_model": model_dir.name,
            "notes": "teacher: PPO+RLMF on the pre-shift bars",
        },
    )
    # The first teacher is approved by hand, as `rlmf policy init` approves its v0: the cycle
    # trains only on an approved teacher.
    approve_artifact(out, sequence=0, evidence=Evidence(stage="init"))


def sharpe_after(equity: list[float], ppy: float) -> float:
    s = sharpe(period_returns(equity), ppy)
    return 0.0 if math.isnan(s) else s  # a flat (all-cash) curve: Sharpe undefined, counted 0


def trade(prices, shift: int, end: int, policy_at) -> list[float]:  # type: ignore[no-untyped-def]
    """One account from the shift to the end; `policy_at(t)` is the policy deciding on bar t."""
    env = DiscreteTradingEnv(prices, start=shift, end=end, record=True)
    env.reset(seed=0)
    done = False
    while not done:
        decision = policy_at(env.t).decide([env.current_state()])[0]
        _, _, terminated, truncated, _ = env.step(decision.action_index)
        done = terminated or truncated
    return list(env.equity)


def one_seed(opts: argparse.Namespace, seed: int, root: Path) -> dict[str, float]:
    params = load_params("regime-shift")
    shift = params.forced_shifts[0].day
    prices, _ = generate_market(params, shift + opts.days_after + 1, seed)
    end = len(prices) - 1
    ppy = float(prices.attrs.get("periods_per_year", 252.0))
    models = root / f"seed{seed}" / "models"
    progress(f"seed {seed}: pretraining the teacher on bars < {shift}")
    pretrain_teacher(opts.model, prices, shift, models / "v0", seed, opts.pretrain_steps)
    set_current(models, models / "v0")
    teacher = load_artifact(models / "v0")

    frozen = trade(prices, shift, end, lambda _t: FolderPolicy(teacher, models / "v0"))
    bench = trade(prices, shift, end, lambda _t: BuyAndHold())

    settings = TrainerSettings(
        models_dir=models,
        work_dir=root / f"seed{seed}" / "work",
        train_days=opts.train_days,
        eval_days=opts.eval_days,
        # The settings refuse fewer held-out bars than the gate's minimum (60), which it would
        # refuse every cycle on: the bench's short blocks lower the minimum to what they hold.
        gate=GateConfig(min_holdout_bars=opts.eval_days),
        recipe={
            "ppo": {
                "total_timesteps": opts.cycle_steps,
                "minibatch_size": 8,
                "gradient_accumulation_steps": 2,
                "learning_rate": opts.cycle_lr,
            }
        },
        seed=seed,
        promotion="none",
        ticker=params.ticker,
    )
    active: dict[str, object] = {"policy": FolderPolicy(teacher, models / "v0"), "next": shift}
    cycles = {"run": 0, "promoted": 0}

    def realigned(t: int) -> FolderPolicy:
        if t >= active["next"]:  # type: ignore[operator]
            known = prices.iloc[: t + 1]  # bars <= t only
            result = run_cycle(settings, prices=known)
            cycles["run"] += 1
            cycles["promoted"] += int(result.promoted)
            progress(f"seed {seed} bar {t}: {result.reason}")
            folder = current_teacher(settings)
            active["policy"] = FolderPolicy(load_artifact(folder), folder)
            active["next"] = t + opts.every
        return active["policy"]  # type: ignore[return-value]

    adapted = trade(prices, shift, end, realigned)
    return {
        "frozen_teacher": sharpe_after(frozen, ppy),
        "realigned": sharpe_after(adapted, ppy),
        "buy_and_hold": sharpe_after(bench, ppy),
        "cycles": cycles["run"],
        "promoted": cycles["promoted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("models/tiny-llama"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--every", type=int, default=20, help="re-align every N days after the shift"
    )
    parser.add_argument("--days-after", type=int, default=60, help="trading days after the shift")
    parser.add_argument("--train-days", type=int, default=20)
    parser.add_argument("--eval-days", type=int, default=10)
    parser.add_argument("--cycle-steps", type=int, default=200, help="PPO steps per cycle")
    parser.add_argument("--cycle-lr", type=float, default=3e-3, help="PPO learning rate per cycle")
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    if not (opts.model / "config.json").is_file():
        sys.exit(f"no model folder at {opts.model}: run `rlmf models prepare --tiny` first")
    torch.set_num_threads(opts.threads)
    started = time.perf_counter()
    per_seed = {}
    with tempfile.TemporaryDirectory(prefix="rlmf-adapt-") as tmp:
        for seed in opts.seeds:
            per_seed[str(seed)] = one_seed(opts, seed, Path(tmp))
    mean = {
        k: float(np.mean([r[k] for r in per_seed.values()]))
        for k in ("frozen_teacher", "realigned", "buy_and_hold")
    }
    print(
        json.dumps(
            {
                "bench": "adaptation",
                "model": opts.model.name,
                "scenario": "regime-shift",
                "seeds": opts.seeds,
                "every_days": opts.every,
                "cycle_ppo_steps": opts.cycle_steps,
                "cycle_lr": opts.cycle_lr,
                "train_days": opts.train_days,
                "eval_days": opts.eval_days,
                "days_after_shift": opts.days_after,
                "metric": "sharpe_after_shift",
                "mean": {k: round(v, 3) for k, v in mean.items()},
                "realigned_minus_frozen": round(mean["realigned"] - mean["frozen_teacher"], 3),
                "per_seed": {
                    s: {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                    for s, r in per_seed.items()
                },
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
