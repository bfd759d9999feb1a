"""Trainer throughput on this CPU: PPO update tokens/s with and without frozen-base hidden-state
reuse (same rollout, same run), and SFT / reward-model steps/s. Prints one JSON line.

    .venv/bin/python bench/train.py [--model models/SmolLM2-135M-Instruct] [--samples 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from services.market.envs import DiscreteTradingEnv
from services.market.regime_market import generate_market, load_params
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.prompt import prompt_prefix
from services.trainer import ppo
from services.trainer.datasets import answer
from services.trainer.reward_model import train_reward_model
from services.trainer.sft import run_sft


def progress(msg: str) -> None:
    print(f"[bench/train] {msg}", file=sys.stderr, flush=True)


def time_update(
    agent: LLMActorCritic, buf: ppo.Rollout, args: ppo.PPOArgs, reuse: bool
) -> tuple[float, int]:
    args.reuse_hidden = reuse
    optimizer = torch.optim.AdamW(
        agent.trainable_parameters(), lr=0.0
    )  # lr 0: same weights both runs
    adv, ret = (
        torch.randn(args.batch_size, generator=torch.Generator().manual_seed(0)),
        torch.zeros(args.batch_size),
    )
    started = time.perf_counter()
    _, tokens = ppo.update(agent, optimizer, buf, adv, ret, args, torch.Generator().manual_seed(0))
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    parser.add_argument("--top-k", type=int, default=4, help="trainable top layers")
    parser.add_argument("--samples", type=int, default=16, help="rollout samples per PPO update")
    parser.add_argument(
        "--epochs", type=int, default=2, help="PPO update epochs (reuse pays per epoch)"
    )
    parser.add_argument("--sft-steps", type=int, default=1, help="SFT steps timed (slow on CPU)")
    parser.add_argument("--rm-steps", type=int, default=2, help="reward-model steps timed")
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)

    config = ActorCriticConfig(trainable_top_k=opts.top_k)
    agent = LLMActorCritic.from_pretrained(opts.model, config, "bench")
    teacher = agent  # the KL reference's frozen head; identity is fine for timing
    prices, _ = generate_market(load_params("default"), 200, seed=0)
    env = DiscreteTradingEnv(prices, start=0, end=199, max_episode_steps=65)
    env.reset(seed=0)
    args = ppo.PPOArgs(
        num_steps=opts.samples,
        minibatch_size=8,
        gradient_accumulation_steps=4,
        update_epochs=opts.epochs,
        total_timesteps=opts.samples,
    ).derive()
    t0 = time.perf_counter()
    progress(f"rollout of {opts.samples} samples")
    state = {"next_done": 0.0, "episode_return": 0.0, "episodes": 0, "episode_returns": []}
    started = time.perf_counter()
    buf = ppo.collect_rollout(
        agent,
        teacher,
        env,
        lambda s: agent.encode([s]),
        args,
        state,
        torch.Generator().manual_seed(0),
    )
    rollout_s = time.perf_counter() - started

    progress("PPO update with hidden-state reuse")
    reuse_s, tokens = time_update(agent, buf, args, reuse=True)
    progress(f"PPO update without reuse (reuse took {reuse_s:.1f} s)")
    plain_s, tokens_plain = time_update(agent, buf, args, reuse=False)
    assert tokens == tokens_plain

    states = []
    env.reset(seed=1)
    for _ in range(8):
        states.append(env.current_state())
        env.step(1)
    from services.policy.prompt import prompt_suffix

    rows = [
        {
            "prompt": prompt_prefix() + prompt_suffix(s),
            "completion": answer("buy", "prices are rising"),
        }
        for s in states
    ]
    progress(f"SFT steps (no reuse took {plain_s:.1f} s; {time.perf_counter() - t0:.0f} s so far)")
    sft = run_sft(agent, rows, max_steps=opts.sft_steps, learning_rate=1e-5, batch_size=2, seed=0)
    pairs = [
        {
            "prompt": r["prompt"],
            "chosen": answer("buy", "rising"),
            "rejected": answer("sell", "rising"),
        }
        for r in rows
    ]
    progress("reward-model steps")
    with tempfile.TemporaryDirectory() as tmp:
        rm = train_reward_model(
            opts.model,
            pairs,
            Path(tmp) / "rm",
            max_steps=opts.rm_steps,
            learning_rate=1e-4,
            batch_size=2,
            seed=0,
            trainable_top_k=opts.top_k,
        )
    result = {
        "bench": "train",
        "model": opts.model.name,
        "device": "cpu",
        "threads": opts.threads,
        "dtype": "float32",
        "trainable_top_k": opts.top_k,
        "layers": agent.lm.config.num_hidden_layers,
        "samples": opts.samples,
        "update_epochs": opts.epochs,
        "tokens_per_update": tokens,
        "mean_prompt_tokens": tokens / (opts.samples * opts.epochs),
        "ppo_update_tokens_per_s_reuse": round(tokens / reuse_s, 1),
        "ppo_update_tokens_per_s_no_reuse": round(tokens / plain_s, 1),
        "reuse_speedup": round(plain_s / reuse_s, 2),
        "rollout_tokens_per_s": round(tokens / opts.epochs / rollout_s, 1),
        "sft_steps_per_s": round(sft.steps_per_s, 3),
        "sft_batch": 2,
        "rm_steps_per_s": round(rm.steps_per_s, 3),
        "rm_batch": 2,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
