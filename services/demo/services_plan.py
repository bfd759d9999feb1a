"""How each service runs inside the demo: its command line, environment and readiness URL.

Every service gets its own free HTTP port (the defaults would clash with anything else on the
machine), the broker's address, the demo's out dir for its state, and the seed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.common.broker import free_port
from services.common.supervisor import ProcessSpec
from services.demo.config import DemoConfig, Window


@dataclass
class ServicePlan:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    ready_path: str = "/readyz"
    notes: list[str] = field(default_factory=list)

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.ready_path}"

    def spec(self) -> ProcessSpec:
        return ProcessSpec(self.name, self.argv, self.env)


def common_env(bootstrap: str, seed: int, port: int) -> dict[str, str]:
    return {
        "RLMF_BUS_BOOTSTRAP": bootstrap,
        # One consumer per service on the embedded broker: no group rebalance waits.
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_HTTP_PORT": str(port),
        "RLMF_LOG_JSON_FORMAT": "true",
        "PYTHONHASHSEED": str(seed),
        # Two cores shared by every service: one torch thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def module_argv(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


def service_plans(
    cfg: DemoConfig, window: Window, bootstrap: str, teacher_dir: Path, out: Path
) -> dict[str, ServicePlan]:
    """The long-running services, in data-flow order; the simulator runs separately."""
    seed = cfg.settings.seed
    feast_env = {
        "RLMF_FEATURES_DATA_DIR": str(out / "feast"),
        "RLMF_FEATURES_TICKERS": window.ticker,
        "RLMF_FEATURES_APPLY_ON_START": "false",
    }  # the demo applied it (stage feast)
    plans = {
        "sentiment": _plan("sentiment", bootstrap, seed, sentiment_env(cfg)),
        "features": _plan("features", bootstrap, seed, feast_env),
        "policy": policy_plan(bootstrap, seed, teacher_dir, out / "day-cache"),
    }
    policy_url = f"http://127.0.0.1:{plans['policy'].port}"
    trainer = trainer_env(cfg, window, teacher_dir.parent, policy_url, out)
    plans["trainer"] = _plan("trainer", bootstrap, seed, trainer)
    return plans


def _plan(name: str, bootstrap: str, seed: int, extra: dict[str, str]) -> ServicePlan:
    port = free_port()
    return ServicePlan(name, module_argv(name), common_env(bootstrap, seed, port) | extra, port)


def policy_plan(
    bootstrap: str, seed: int, model_dir: Path, day_cache: Path | None = None
) -> ServicePlan:
    """The policy server; with `day_cache`, it keeps each day's frozen-base work there while it
    serves, and the trainer (given the same folder) reuses every day it served."""
    port = free_port()
    grpc = free_port()
    env = common_env(bootstrap, seed, port) | {
        "RLMF_POLICY_MODEL_DIR": str(model_dir),
        "RLMF_POLICY_SEED": str(seed),
        # Two threads: each new day costs the server a day-cache fill (the frozen base over the
        # day part and its five portfolio tails), the replay's longest step; with one thread
        # the full demo's replay took 2-3 s a bar while the machine's load stayed under 1.5.
        "RLMF_POLICY_TORCH_THREADS": "2",
    }
    if day_cache is not None:
        env["RLMF_POLICY_DAY_CACHE_DIR"] = str(day_cache)
    argv = [
        *module_argv("policy"),
        "--model_dir",
        str(model_dir),
        "--http_port",
        str(port),
        "--grpc_port",
        str(grpc),
    ]
    return ServicePlan("policy", argv, env, port, ready_path="/v2/health/ready")


def sentiment_env(cfg: DemoConfig) -> dict[str, str]:
    """--quick scores with VADER; the full demo with SmolLM2 (services/sentiment/settings.py).
    Per-day LLM summaries are off: generating them for two years of days would double the
    demo's time on 2 cores; the policy sees the day's headlines instead."""
    return {
        "RLMF_SENTIMENT_BACKEND": "lexicon" if cfg.quick else "llm",
        "RLMF_SENTIMENT_MODEL_DIR": str(cfg.models_dir / "SmolLM2-135M-Instruct"),
        "RLMF_SENTIMENT_SUMMARIES": "false",
        "RLMF_SENTIMENT_THREADS": "1",
    }


def trainer_env(
    cfg: DemoConfig, window: Window, models: Path, policy_url: str, out: Path
) -> dict[str, str]:
    """The trainer's settings (services/trainer/settings.py) for this window.

    The trainer finds its teacher in `models` through the `current` pointer, which the demo
    writes beside the teacher and the trainer moves on promotion."""
    seed, windows = cfg.settings.seed, cfg.cycle_windows
    env = {
        "RLMF_TRAINER_MODELS_DIR": str(models),
        "RLMF_TRAINER_WORK_DIR": str(out / "trainer"),
        "RLMF_TRAINER_CYCLE_EVERY_DAYS": str(cfg.train_every_days),
        # An expanding window over every bar known by the cycle's day, then a purge, an
        # embargo and the held-out block the gate's bootstrap decides on.
        "RLMF_TRAINER_TRAIN_DAYS": str(windows.min_train),
        "RLMF_TRAINER_EXPANDING_WINDOW": "true",
        "RLMF_TRAINER_EVAL_DAYS": str(windows.holdout),
        "RLMF_TRAINER_EMBARGO_DAYS": str(windows.embargo),
        "RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS": str(windows.holdout),
        # A safety cap only: the recipe's steps and epochs are the budget (DemoSettings).
        "RLMF_TRAINER_CYCLE_MINUTES": str(cfg.cycle_minutes),
        "RLMF_TRAINER_DAY_CACHE_DIR": str(out / "day-cache"),
        # The recipe is the trainer's own (RLMF_TRAINER_RECIPE__*); the demo sets only its
        # step budget, and --quick's smaller rollouts for a tiny model.
        **_recipe_budget(cfg),
        # The replay is paused while a cycle trains, so the trainer may use both cores.
        "RLMF_TRAINER_TORCH_THREADS": "1" if cfg.quick else "2",
        "RLMF_TRAINER_PROMOTION": "embedded",
        # A student the backtest gate passes trades this many bars in shadow first; the pooled
        # gate needs no more than the planned stretch.
        "RLMF_TRAINER_SHADOW_BARS": str(cfg.shadow_bars),
        "RLMF_TRAINER_GATE__MIN_SHADOW_BARS": str(max(1, cfg.shadow_bars)),
        "RLMF_TRAINER_POLICY_URL": policy_url,
        "RLMF_TRAINER_SEED": str(seed),
        "RLMF_TRAINER_TICKER": window.ticker,
        "RLMF_FEATURES_DATA_DIR": str(out / "feast"),
        # The simulator's states carry the features service's features (features_reader);
        # the trainer's training and held-out states read the same ones, point in time.
        "RLMF_TRAINER_FEATURES_SOURCE": "feast",
    }
    if window.data_file is not None:
        env["RLMF_TRAINER_PRICES_CSV"] = str(window.data_file)
    else:
        env |= {
            "RLMF_TRAINER_MARKET_SCENARIO": "regime-shift",
            "RLMF_TRAINER_MARKET_DAYS": str(len(window.frame)),
            "RLMF_TRAINER_MARKET_SEED": str(seed),
        }
    return env


def _recipe_budget(cfg: DemoConfig) -> dict[str, str]:
    """The steps of each fold's student (DemoSettings.ppo_steps says why these), and --quick's
    rollout shape for its tiny model."""
    steps = {"RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS": str(cfg.ppo_steps)}
    if not cfg.quick:
        return steps | {"RLMF_TRAINER_RECIPE__MF_MAX_STEPS": str(cfg.settings.mf_max_steps)}
    return steps | {
        "RLMF_TRAINER_RECIPE__PPO__NUM_STEPS": "20",
        "RLMF_TRAINER_RECIPE__PPO__MINIBATCH_SIZE": "10",
        "RLMF_TRAINER_RECIPE__PPO__GRADIENT_ACCUMULATION_STEPS": "1",
    }


def simulator_env(
    cfg: DemoConfig, window: Window, bootstrap: str, policy_port: int, out: Path
) -> dict[str, str]:
    """The replaying simulator's whole environment (it inherits the demo's own)."""
    s = cfg.settings
    return {
        **os.environ,
        **common_env(bootstrap, s.seed, free_port()),
        **window.simulator_env,
        "RLMF_SIMULATOR_MODE": "replay",
        "RLMF_SIMULATOR_SEED": str(s.seed),
        "RLMF_SIMULATOR_POLICY_URL": f"http://127.0.0.1:{policy_port}",
        "RLMF_SIMULATOR_POLICY_TIMEOUT_S": "60",
        # A policy server that died is restarted by the supervisor: wait for it rather than
        # hold, so a policy crash does not change what the run decides.
        "RLMF_SIMULATOR_POLICY_UNAVAILABLE_WAIT_S": str(s.service_start_timeout_s),
        # A rationale (SEP's explain step) on a few decisions, for the report.
        "RLMF_SIMULATOR_EXPLAIN_EVERY": "10" if cfg.quick else "50",
        "RLMF_SIMULATOR_FEATURES_READER": "services.demo.features_reader:read",
        "RLMF_SIMULATOR_FEATURES_TIMEOUT_S": str(s.features_timeout_s),
        "RLMF_FEATURES_DATA_DIR": str(out / "feast"),
        "RLMF_FEATURES_TICKERS": window.ticker,
    }
