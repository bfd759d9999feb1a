"""Trainer settings from the environment (prefix RLMF_TRAINER_; PPO and the gate nested)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.trainer.canary import CanaryConfig
from services.trainer.gate import GateConfig
from services.trainer.ppo import PPOArgs

CYCLE_PPO_DEFAULTS: dict[str, Any] = {"seed": 0, "total_timesteps": 400}
"""Where a cycle's PPO differs from PPOArgs' defaults (FLAG-Trader's full run): a cycle is a
400-step budget, seeded like the rest of the cycle."""

FLAT_NAMES: dict[str, tuple[str, str]] = {
    "ppo_steps": ("ppo", "total_timesteps"),
    "ppo_num_steps": ("ppo", "num_steps"),
    "ppo_learning_rate": ("ppo", "learning_rate"),
    "ppo_minibatch_size": ("ppo", "minibatch_size"),
    "ppo_gradient_accumulation_steps": ("ppo", "gradient_accumulation_steps"),
    "ppo_update_epochs": ("ppo", "update_epochs"),
    "ppo_mf_minibatch_size": ("ppo", "mf_minibatch_size"),
    "mf_coef": ("ppo", "mf_coef"),
    "kl_coef": ("ppo", "kl_coef"),
    "ent_coef": ("ppo", "ent_coef"),
    "gate_metric": ("gate", "metric"),
    "gate_margin": ("gate", "margin"),
    "gate_max_drawdown_worsening": ("gate", "max_drawdown_worsening"),
    "gate_entropy_floor": ("gate", "entropy_floor"),
}
"""The names these settings had before PPO and the gate were nested, and where each now lives.
The demo, deployments and callers set them (RLMF_TRAINER_PPO_STEPS, ppo_steps=...), so they
keep working; when a flat and a nested name give the same field, the nested one wins."""

SHARED_NAMES: dict[str, tuple[str, str]] = {"seed": ("ppo", "seed")}
"""Top-level settings a nested model also takes (unless it is given its own value)."""


class FlatEnvNames(PydanticBaseSettingsSource):
    """RLMF_TRAINER_<FLAT NAME> from the environment, as flat keys for the model to nest: the
    environment source reads only the names of declared fields."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads FLAT_NAMES; no declared field is one

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        environ = {name.upper(): value for name, value in os.environ.items()}
        return {
            flat: environ[f"{prefix}{flat}".upper()]
            for flat in FLAT_NAMES
            if f"{prefix}{flat}".upper() in environ
        }


def _init_fields(value: Any) -> dict[str, Any]:
    """A nested model's given values as a dict (a dataclass instance's init fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    return dict(value)


class TrainerSettings(BaseSettings):
    """Env: RLMF_TRAINER_MODELS_DIR, RLMF_TRAINER_PPO__LEARNING_RATE, RLMF_TRAINER_GATE__MARGIN,
    ...; the flat names of FLAT_NAMES (RLMF_TRAINER_PPO_STEPS, ...) still work."""

    model_config = SettingsConfigDict(
        env_prefix="RLMF_TRAINER_", env_nested_delimiter="__", extra="ignore"
    )

    # -- where things are
    models_dir: Path = Path("models/policy")
    """Artifact root: <models_dir>/<version>/ per model; `teacher` names the serving one."""
    teacher_dir: Path | None = None
    """The teacher artifact; default: the folder the `current` pointer file in models_dir names."""
    work_dir: Path = Path("rlmf-trainer")
    """Checkpoints of the running cycle and the consumed feedback log."""
    artifact_signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs each student's manifest; a policy server given the
    public key (RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE) serves only artifacts signed with it."""
    prices_csv: Path | None = None
    """Bars to train and evaluate on (data_source csv)."""
    data_source: str = Field(default="auto", pattern="^(auto|csv|kafka|synthetic)$")
    """csv: prices_csv; kafka: market.bars.v1 and market.feedback.v1 read under
    history_group into work_dir/history (the cluster's CronJob); synthetic: the regime
    generator (market_scenario, market_days, market_seed); auto: csv when prices_csv is set,
    synthetic when a market_* setting is given, else the cycle refuses to run
    (services/trainer/market_source.py)."""
    history_group: str = "rlmf-trainer-history"
    """data_source kafka: the trainer's own consumer group on the two topics."""
    market_scenario: str = "regime-shift"
    market_days: int = 400
    market_seed: int = 0
    ticker: str = "SYN"
    features_source: str = Field(default="none", pattern="^(none|feast)$")
    """feast: the training and evaluation states carry the features service's features, read
    point in time from Feast's offline store at each bar's cutoff (RLMF_FEATURES_* say where),
    as the simulator's states do when it reads Feast; none: price-derived features only."""

    # -- windows (walk-forward: train | purge | embargo | held out; market/walk_forward.py)
    train_days: int = Field(default=120, ge=10)
    """Bars in a training window: the most with a rolling window, the least with an expanding
    one."""
    expanding_window: bool = True
    """Train on every bar from the first up to the cut-off (an expanding window), not only the
    last `train_days`."""
    eval_days: int = Field(default=60, ge=5)
    """Held-out bars after the training cut-off (and the embargo) the gate evaluates on; the
    gate refuses fewer than gate.min_holdout_bars (60)."""
    embargo_days: int = Field(default=2, ge=0)
    """Bars skipped between the training cut-off and the held-out block."""
    walk_forward_folds: int = Field(default=1, ge=1)
    """The held-out block cut into this many consecutive folds (RLMF_TRAINER_WALK_FORWARD_FOLDS).
    Each fold's student trains on the bars before it (purged, embargoed) with the cycle's
    recipe and budget and trades the fold; the gate decides on all folds' returns together and
    the last fold's student is the one saved and promoted. More folds hold out more bars
    (power for the gate) while the served student still trains on all but the last fold: at
    the cost of a training per fold. 1: one held-out block after one training cut-off."""
    cycle_minutes: float | None = Field(default=None, gt=0)
    """Wall-clock budget of a cycle's training (RLMF_TRAINER_CYCLE_MINUTES): the market-feedback
    phase and PPO stop once it is spent (PPO after the iteration it ran out in), then the
    held-out evaluation and the gate run. It starts once D_MF is encoded: days new to the day
    cache cost the frozen base once, before. Unset: ppo.total_timesteps alone decides."""
    mf_epochs: int = Field(default=10, ge=0)
    """RLMF's L_MF on D_MF alone (with the KL to the teacher) for this many epochs before PPO
    (ppo.fit_market_feedback), within the cycle's budget; 0: L_MF only inside PPO."""
    mf_learning_rate: float = Field(default=1e-4, gt=0)
    """The market-feedback phase's learning rate (PPO keeps ppo.learning_rate). With the state
    head started at the labels' base rates, 10 epochs at 1e-4 (docs/trainer.md, "The state
    head's start"); from a zero start 3e-4 did best, and more steps overfit in both."""
    mf_history: bool = True
    """RLMF's L_MF also learns from every training bar labelled by the move the market made
    next (known by the cut-off), not only from the decisions the loop served."""
    state_head_prior_start: bool = True
    """Before the market-feedback phase, shift the state head's bias so the student's mean
    policy over the training states gives the labels' base rates, not the LM's own lean to
    "buy" (StateHead.shift_to_prior; docs/trainer.md, "The state head's start")."""
    # -- where the frozen base runs
    device: str = "cpu"
    """cpu, cuda, cuda:N, or auto (CUDA with bfloat16 when a GPU is there)."""
    day_cache_dir: Path | None = None
    """The day cache's folder (services/policy/day_cache.py): give the policy server the same
    one and every day it served is reused here. Unset: an in-memory cache for the cycle."""
    day_cache_memory_mb: int = Field(default=2048, ge=1)
    cycle_every_days: int = Field(default=30, ge=1)
    """Embedded mode: run a cycle every N simulated days of feedback."""

    # -- budgets and hyperparameters
    seed: int = 0
    """Seeds the whole cycle: torch, SFT, the reward model, evaluation and (unless
    RLMF_TRAINER_PPO__SEED says otherwise) PPO."""
    ppo: PPOArgs = Field(default_factory=lambda: PPOArgs(**CYCLE_PPO_DEFAULTS))
    """PPO + RLMF hyperparameters (services/trainer/ppo.py), env RLMF_TRAINER_PPO__<FIELD>;
    ppo.total_timesteps is the cycle's step budget (FLAG-Trader's full run is 13860)."""
    sft_steps: int = Field(default=0, ge=0)
    """SFT steps on correct answers per cycle (0: skip)."""
    rm_steps: int = Field(default=0, ge=0)
    """Reward-model steps on reflection pairs per cycle (0: skip)."""
    sft_learning_rate: float = 1e-5
    rm_learning_rate: float = 1e-4
    max_sft_examples: int = 32
    max_pairs: int = 32
    reflection_tries: int = 2
    explain_tokens: int = 16
    trainable_top_k: int = Field(default=2, ge=1)
    """Top layers the student trains (the teacher's own setting wins when it has one)."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads for torch; 0 keeps torch's default."""

    # -- gate
    gate: GateConfig = GateConfig()
    """The promotion gate (services/trainer/gate.py), env RLMF_TRAINER_GATE__<FIELD>."""

    # -- promotion
    promotion: str = Field(default="embedded", pattern="^(embedded|cluster|none)$")
    policy_url: str = "http://127.0.0.1:8080"
    """Embedded: the policy server told to reload the promoted folder."""
    helm_release: str = "rlmf"
    helm_chart: Path = Path("charts/rlmf")
    namespace: str = "default"
    models_claim: str = "rlmf-models"
    """Cluster: the PVC holding models_dir; storageUri = pvc://<claim>/<folder name>."""
    ready_timeout_s: float = 600.0
    canary: CanaryConfig = CanaryConfig()
    """Cluster: the canary stage (services/trainer/canary.py), env RLMF_TRAINER_CANARY__<FIELD>."""
    shadow_bars: int = Field(default=0, ge=0)
    """Embedded promotion: a student the backtest gate passes becomes the candidate and trades
    in shadow on this many live bar times before the trainer decides, on the backtest pooled
    with the shadow bars (services/trainer/shadow.py); 0 promotes on the backtest alone. `rlmf
    up` sets 20. At least gate.min_shadow_bars when set."""
    publish: bool = True
    """Publish models.promotions.v1 (needs the bus)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        flat_env = FlatEnvNames(settings_cls)
        return init_settings, env_settings, flat_env, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for flat, (group, name) in FLAT_NAMES.items():
            if flat in data:
                nested = _init_fields(data.get(group, {}))
                nested.setdefault(name, data.pop(flat))
                data[group] = nested
        for shared, (group, name) in SHARED_NAMES.items():
            if shared in data and not dataclasses.is_dataclass(data.get(group)):
                data[group] = {name: data[shared], **_init_fields(data.get(group, {}))}
        return data

    @field_validator("ppo", mode="before")
    @classmethod
    def _cycle_defaults(cls, value: Any) -> Any:
        """Fields the environment leaves unset take a cycle's defaults, not a full run's."""
        return {**CYCLE_PPO_DEFAULTS, **value} if isinstance(value, dict) else value

    @field_validator("ppo")
    @classmethod
    def _budgets_not_negative(cls, args: PPOArgs) -> PPOArgs:
        negative = [
            name
            for name in ("total_timesteps", "mf_coef", "mf_minibatch_size")
            if getattr(args, name) < 0
        ]
        if negative:
            raise ValueError(f"must be >= 0: {', '.join(negative)}")
        return args

    @model_validator(mode="after")
    def _shadow_long_enough(self) -> TrainerSettings:
        if 0 < self.shadow_bars < self.gate.min_shadow_bars:
            raise ValueError(
                f"shadow_bars {self.shadow_bars} is below gate.min_shadow_bars "
                f"{self.gate.min_shadow_bars}: the pooled gate would refuse every candidate "
                "(raise RLMF_TRAINER_SHADOW_BARS or lower RLMF_TRAINER_GATE__MIN_SHADOW_BARS)"
            )
        return self
