"""Trainer settings from the environment (prefix RLMF_TRAINER_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainerSettings(BaseSettings):
    """Env: RLMF_TRAINER_MODELS_DIR, RLMF_TRAINER_PPO_STEPS, RLMF_TRAINER_PROMOTION, ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_TRAINER_", extra="ignore")

    # -- where things are
    models_dir: Path = Path("models/policy")
    """Artifact root: <models_dir>/<version>/ per model; `teacher` names the serving one."""
    teacher_dir: Path | None = None
    """The teacher artifact; default: the folder the `current` pointer file in models_dir names."""
    work_dir: Path = Path("rlmf-trainer")
    """Checkpoints of the running cycle and the consumed feedback log."""
    prices_csv: Path | None = None
    """Bars to train and evaluate on (else the regime generator: market_scenario/market_days)."""
    market_scenario: str = "regime-shift"
    market_days: int = 400
    market_seed: int = 0
    ticker: str = "SYN"
    features_source: str = Field(default="none", pattern="^(none|feast)$")
    """feast: the training and evaluation states carry the features service's features, read
    point in time from Feast's offline store at each bar's cutoff (RLMF_FEATURES_* say where),
    as the simulator's states do when it reads Feast; none: price-derived features only."""

    # -- windows (walk-forward)
    train_days: int = Field(default=120, ge=10)
    """Bars in a training window."""
    eval_days: int = Field(default=30, ge=5)
    """Held-out bars after the window the gate evaluates on."""
    cycle_every_days: int = Field(default=30, ge=1)
    """Embedded mode: run a cycle every N simulated days of feedback."""

    # -- budgets and hyperparameters
    seed: int = 0
    ppo_steps: int = Field(default=400, ge=0)
    """PPO environment steps per cycle (the step budget; FLAG-Trader's full run is 13860)."""
    ppo_num_steps: int = 40
    ppo_learning_rate: float = 5e-5
    ppo_minibatch_size: int = 32
    ppo_gradient_accumulation_steps: int = 8
    ppo_update_epochs: int = 1
    mf_coef: float = Field(default=1.0, ge=0.0)
    """RLMF gamma: weight of the market-feedback prediction loss."""
    ppo_mf_minibatch_size: int = Field(default=32, ge=0)
    """RLMF addition: market.feedback.v1 examples (D_MF) sampled into each PPO minibatch's
    market-feedback loss (0: that loss uses the rollout's own moves only)."""
    kl_coef: float = 0.05
    ent_coef: float = 0.05
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
    gate_metric: str = "sharpe"
    gate_margin: float = 0.0
    gate_max_drawdown_worsening: float = 0.05
    gate_entropy_floor: float = 0.05

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
    publish: bool = True
    """Publish models.promotions.v1 (needs the bus)."""
