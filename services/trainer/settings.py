"""Trainer settings from the environment (prefix RLMF_TRAINER_; the recipe and the gate
nested)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.settings import RlmfSettings
from services.market.accounting import RewardConfig
from services.policy.actor_critic import ActorCriticConfig
from services.policy.artifacts import teacher_config
from services.trainer.canary import CanaryConfig
from services.trainer.gate import GateConfig
from services.trainer.ppo import PPOArgs

log = logging.getLogger(__name__)

RECIPE_PPO: dict[str, Any] = {"seed": 0, "total_timesteps": 400}
"""Where the recipe's PPO differs from PPOArgs' defaults (FLAG-Trader's full run, 13860 steps):
a cycle's student gets 400 environment steps, seeded like the rest of the cycle."""


def _recipe_ppo() -> PPOArgs:
    return PPOArgs(**RECIPE_PPO)


ALIGNED_REWARD = RewardConfig(stability_coef=0.0, cost_coef=0.0, sentiment_coef=0.0)
"""PPO's reward in the recipe: the step's change in net worth (costs paid included), alone."""


class RecipeSettings(BaseModel):
    """The student's training recipe, every knob of it in one place (services/trainer/recipe.py
    runs it): SEP's supervised stages, the state head's start, the market-feedback phase and
    PPO + RLMF, with budgets counted in steps and epochs so that the same inputs, seed and
    recipe give the same student. Env RLMF_TRAINER_RECIPE__<FIELD>,
    RLMF_TRAINER_RECIPE__PPO__<FIELD>, RLMF_TRAINER_RECIPE__STUDENT__<FIELD>."""

    model_config = ConfigDict(extra="forbid")

    ppo: PPOArgs = Field(default_factory=_recipe_ppo)
    """PPO + RLMF hyperparameters (services/trainer/ppo.py); ppo.total_timesteps is the step
    budget of each walk-forward fold's student (FLAG-Trader's full run is 13860); 0 skips the
    PPO phase (the student is the market-feedback phase's alone)."""
    student: ActorCriticConfig = Field(default_factory=teacher_config)
    """How a new teacher, and so every student copied from it, wraps the LM (`rlmf policy init`,
    the demo and the benches build v0 with it; services/policy/artifacts.py: teacher_config).
    A cycle's student keeps its teacher's shape: a teacher built otherwise is logged."""
    reward: RewardConfig = Field(default_factory=lambda: ALIGNED_REWARD)
    """PPO's reward per step. The recipe's: the change in net worth after costs and nothing
    else, the return whose Sharpe the gate scores. The env's own defaults (RewardConfig: a
    stability penalty of 0.1 x traded notional, about 100 times the 10 bp cost, and a bonus for
    trading with the news) pay for something the gate does not score; set
    RLMF_TRAINER_RECIPE__REWARD__<FIELD> to ask for them."""
    mf_epochs: int = Field(default=10, ge=0)
    """RLMF's L_MF on D_MF alone (with the KL to the teacher) for this many epochs before PPO
    (ppo.fit_market_feedback); 0: L_MF only inside PPO."""
    mf_max_steps: int | None = Field(default=None, ge=0)
    """At most this many optimizer steps in the market-feedback phase (the last epoch then
    partial): a budget that stays the same as D_MF grows with the history, where an epoch's
    cost grows with it. None: mf_epochs alone decide."""
    mf_learning_rate: float = Field(default=1e-4, gt=0)
    """The market-feedback phase's learning rate (PPO keeps ppo.learning_rate). With the state
    head started at the labels' base rates, 10 epochs at 1e-4 (docs/results.md, "The state
    head's start"); from a zero start 3e-4 did best, and more steps overfit in both."""
    mf_history: bool = True
    """RLMF's L_MF also learns from every training bar labelled by the move the market made
    next (known by the cut-off), not only from the decisions the loop served."""
    state_head_prior_start: bool = True
    """Before the market-feedback phase, shift the state head's bias so the student's mean
    policy over the training states gives the labels' base rates, not the LM's own lean to
    "buy" (StateHead.shift_to_prior; docs/results.md, "The state head's start")."""
    sft_steps: int = Field(default=0, ge=0)
    """SFT steps on correct answers per fold (0: skip)."""
    rm_steps: int = Field(default=0, ge=0)
    """Reward-model steps on reflection pairs per fold (0: skip)."""
    sft_learning_rate: float = 1e-5
    """The SFT stage's learning rate (with sft_steps)."""
    rm_learning_rate: float = 1e-4
    """The reward-model stage's learning rate (with rm_steps)."""
    max_sft_examples: int = 32
    """At most this many correct answers, each with the student's own explanation, make the SFT
    set."""
    max_pairs: int = 32
    """At most this many chosen/rejected pairs from self-reflection on wrong answers make the
    reward model's set."""
    reflection_tries: int = 2
    """Sampled reflections per wrong answer until one leads to the market's answer; none that
    does: no pair for that answer."""
    explain_tokens: int = 16
    """Most tokens of each explanation and reflection generated for the SFT set and the
    preference pairs."""

    @field_validator("ppo", mode="before")
    @classmethod
    def _recipe_defaults(cls, value: Any) -> Any:
        """Fields the environment leaves unset take the recipe's values, not a full run's."""
        return {**RECIPE_PPO, **value} if isinstance(value, dict) else value

    @field_validator("reward", mode="before")
    @classmethod
    def _aligned_reward_defaults(cls, value: Any) -> Any:
        """Fields the environment leaves unset take the aligned reward's, not the env's."""
        aligned = dataclasses.asdict(ALIGNED_REWARD)
        return {**aligned, **value} if isinstance(value, dict) else value

    @field_validator("student", mode="before")
    @classmethod
    def _teacher_config_defaults(cls, value: Any) -> Any:
        """Fields the environment leaves unset take teacher_config's, not the bare wrapper's."""
        return {**_init_fields(teacher_config()), **value} if isinstance(value, dict) else value

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
        dataclasses.replace(args).derive()  # its own checks, now rather than mid-cycle
        return args

    def sha256(self) -> str:
        """The recipe as one hash (student versions carry it): every field, PPO's given ones."""
        fields = {name: _init_fields(getattr(self, name)) for name in ("ppo", "student")}
        rest = self.model_dump(mode="json", exclude={"ppo", "student"})
        text = json.dumps({**rest, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


_RECIPE_FIELDS = (
    "mf_epochs",
    "mf_learning_rate",
    "mf_history",
    "state_head_prior_start",
    "sft_steps",
    "rm_steps",
    "sft_learning_rate",
    "rm_learning_rate",
    "max_sft_examples",
    "max_pairs",
    "reflection_tries",
    "explain_tokens",
)

GROUP_ALIASES: dict[str, tuple[str, ...]] = {"ppo": ("recipe", "ppo")}
"""Old nested groups and where they now live: RLMF_TRAINER_PPO__<FIELD>, ppo={...}."""

FLAT_NAMES: dict[str, tuple[str, ...]] = {
    "ppo_steps": ("recipe", "ppo", "total_timesteps"),
    "ppo_num_steps": ("recipe", "ppo", "num_steps"),
    "ppo_learning_rate": ("recipe", "ppo", "learning_rate"),
    "ppo_minibatch_size": ("recipe", "ppo", "minibatch_size"),
    "ppo_gradient_accumulation_steps": ("recipe", "ppo", "gradient_accumulation_steps"),
    "ppo_update_epochs": ("recipe", "ppo", "update_epochs"),
    "ppo_mf_minibatch_size": ("recipe", "ppo", "mf_minibatch_size"),
    "mf_coef": ("recipe", "ppo", "mf_coef"),
    "kl_coef": ("recipe", "ppo", "kl_coef"),
    "ent_coef": ("recipe", "ppo", "ent_coef"),
    "trainable_top_k": ("recipe", "student", "trainable_top_k"),
    **{name: ("recipe", name) for name in _RECIPE_FIELDS},
    "gate_metric": ("gate", "metric"),
    "gate_margin": ("gate", "margin"),
    "gate_max_drawdown_worsening": ("gate", "max_drawdown_worsening"),
    "gate_entropy_floor": ("gate", "entropy_floor"),
}
"""Deprecated names of settings that now live in a group, and where each lives. The demo,
deployments and callers set some of them (RLMF_TRAINER_PPO_STEPS, RLMF_TRAINER_MF_EPOCHS,
mf_epochs=...), so they keep working, with a warning; a group's own name
(RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS) wins over an old one for the same field."""

DEPRECATED_ON: dict[str, str] = {
    **dict.fromkeys((*GROUP_ALIASES, *FLAT_NAMES), "2026-12-07"),
    **dict.fromkeys(
        (name for name, path in FLAT_NAMES.items() if path[0] == "gate" or path[1] == "ppo"),
        "2026-11-30",
    ),
}
"""When each old name was deprecated (the PPO and gate names when they were nested, the rest
when the recipe became one group). Each goes in the first release after its date."""

SHARED_NAMES: dict[str, tuple[str, ...]] = {"seed": ("recipe", "ppo", "seed")}
"""Top-level settings a nested model also takes (unless it is given its own value)."""


class WarmUpSettings(BaseModel):
    """The warm-up cycle: the one cycle on the history before live trading starts
    (`rlmf market publish --history N` under `rlmf up`, the demo's history), which holds out
    more bars than a regular cycle when the history has them (services/trainer/warm_up.py)."""

    model_config = ConfigDict(extra="forbid")

    holdout_bars: int = Field(default=250, ge=1)
    """History bars the warm-up's gate holds out at most (never fewer than eval_days; the
    warm-up always trains on at least twice train_days). On 60 held-out bars the bootstrap
    often cannot tell an edge of the news' size from luck against a teacher that buys every
    bar (bench/warm_up_power.py); a trading year of history held out can."""
    folds: int = Field(default=5, ge=1)
    """Walk-forward folds of those held-out bars when they are more than eval_days: each
    fold's student learns from the history before it, so the gate judges every held-out bar
    out of sample and the served student still learns from all but the last fold."""
    minutes: float | None = Field(default=None, gt=0)
    """The warm-up's wall-clock safety cap over all its folds; unset: cycle_minutes."""


class OldEnvNames(PydanticBaseSettingsSource):
    """The deprecated names from the environment (RLMF_TRAINER_<FLAT NAME> and
    RLMF_TRAINER_PPO__<FIELD>) as old keys for the model to move into their groups: the
    environment source reads only the names of declared fields."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the old names; no field is one

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", "")).upper()
        environ = {name.upper(): value for name, value in os.environ.items()}
        found: dict[str, Any] = {
            flat: environ[f"{prefix}{flat}".upper()]
            for flat in FLAT_NAMES
            if f"{prefix}{flat}".upper() in environ
        }
        for group in GROUP_ALIASES:
            start = f"{prefix}{group}__".upper()
            nested = {k[len(start) :].lower(): v for k, v in environ.items() if k.startswith(start)}
            if nested:
                found[group] = nested
        # Moved into their groups here, not only by the model: the sources are merged by rank
        # first, and these rank above the configuration file's values for the same fields.
        return _move_old_names(found)


class OldNamesMoved(PydanticBaseSettingsSource):
    """Another source's values with its deprecated names (ppo_steps=..., ppo={...}) moved into
    their groups."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the wrapped source

    def __call__(self) -> dict[str, Any]:
        return _move_old_names(dict(self.source()))


def _init_fields(value: Any) -> dict[str, Any]:
    """A nested model's given values as a dict: a dataclass instance's init fields, a pydantic
    model's explicitly set ones (the rest keep their defaults, shared ones included)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, BaseModel):
        return {name: getattr(value, name) for name in value.model_fields_set}
    return dict(value)


def _set_default(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """data[path] = value unless the path already holds one (a newer name given it)."""
    head, *rest = path
    if not rest:
        data.setdefault(head, value)
        return
    nested = _init_fields(data.get(head, {}))
    _set_default(nested, tuple(rest), value)
    data[head] = nested


def _new_env_name(old: str) -> str:
    if old in GROUP_ALIASES:
        return "RLMF_TRAINER_" + "__".join(GROUP_ALIASES[old]).upper() + "__<FIELD>"
    return "RLMF_TRAINER_" + "__".join(FLAT_NAMES[old]).upper()


def _move_old_names(data: dict[str, Any]) -> dict[str, Any]:
    """Each deprecated name's value into its group (old groups before flat names, so an old
    nested name still wins over its flat one), with a warning naming the new one."""
    old = [name for name in (*GROUP_ALIASES, *FLAT_NAMES) if name in data]
    for name in old:
        value = data.pop(name)
        if name in GROUP_ALIASES:
            for field, item in _init_fields(value).items():
                _set_default(data, (*GROUP_ALIASES[name], field), item)
        else:
            _set_default(data, FLAT_NAMES[name], value)
    if old:
        log.warning(
            "deprecated trainer settings %s: use %s",
            ", ".join(f"RLMF_TRAINER_{name.upper()}" for name in old),
            ", ".join(_new_env_name(name) for name in old),
        )
    return data


class TrainerSettings(RlmfSettings):
    """Env: RLMF_TRAINER_MODELS_DIR, RLMF_TRAINER_RECIPE__PPO__LEARNING_RATE,
    RLMF_TRAINER_GATE__MARGIN, ...; the deprecated names of FLAT_NAMES and GROUP_ALIASES
    (RLMF_TRAINER_PPO_STEPS, RLMF_TRAINER_PPO__NUM_STEPS, ...) still work."""

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
    artifact_public_key_file: Path | None = None
    """Ed25519 public key (PEM) the teacher's manifest must be signed with before a cycle trains
    on it; unset: the public half of artifact_signing_key_file. Without either, the teacher's
    hashes and approval are checked but no signature."""
    approval_signing_key_file: Path | None = None
    """Ed25519 private key (PEM) that signs the approval a promotion writes (approval.json) and
    checks the teacher's; unset: artifact_signing_key_file."""
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
    """data_source synthetic: the generator's parameters, a shipped scenario (default,
    regime-shift) or a YAML path."""
    market_days: int = 400
    """data_source synthetic: bars the generator produces."""
    market_seed: int = 0
    """data_source synthetic: the generator's seed."""
    ticker: str = "SYN"
    """The ticker a cycle trains on. Streaming (data_source kafka), when not set: the ticker
    with the most bars."""
    pool_tickers: bool = True
    """Streaming: the one student also learns from every other streamed ticker with enough
    bars over the cycle's stretch of time, and the gate judges it on all of them as an
    equal-weight book (services/trainer/peers.py). Off: the cycle's ticker alone."""
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
    """Held-out bars after the training cut-off (and the embargo) the gate evaluates on, over
    all walk-forward folds. With the gate's bootstrap on, at least gate.min_holdout_bars (60):
    fewer would validate here and then be refused by the gate every cycle, so they are refused
    here."""
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
    """A wall-clock safety cap on a cycle's training (RLMF_TRAINER_CYCLE_MINUTES), over all
    its walk-forward folds together: the recipe's budget is its steps and epochs, and this
    only stops a cycle that runs far longer than they should take (a slow or busy machine).
    When it cuts the market-feedback phase or PPO (PPO after the iteration it ran out in), the
    log says so and the cycle's result says budget_cut: that student is not the one the seed
    alone makes. It counts the training itself, not the frozen base's first pass over new
    days. Unset: no cap."""
    # -- where the frozen base runs
    device: str = "cpu"
    """cpu, cuda, cuda:N, or auto (CUDA with bfloat16 when a GPU is there)."""
    day_cache_dir: Path | None = None
    """The day cache's folder (services/policy/day_cache.py): give the policy server the same
    one and every day it served is reused here. Unset: an in-memory cache for the cycle."""
    day_cache_memory_mb: int = Field(default=2048, ge=1)
    """Memory bound of the day cache in MiB; past it the least recently used days are dropped
    from memory (with day_cache_dir their files stay)."""
    cycle_every_days: int = Field(default=30, ge=1)
    """Embedded mode: run a cycle every N simulated days of feedback."""

    # -- the recipe
    seed: int = 0
    """Seeds the whole cycle: torch, SFT, the reward model, evaluation and (unless
    RLMF_TRAINER_RECIPE__PPO__SEED says otherwise) PPO; student versions carry it."""
    recipe: RecipeSettings = Field(default_factory=RecipeSettings)
    """How a student is trained (services/trainer/recipe.py), env RLMF_TRAINER_RECIPE__<FIELD>."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads for torch; 0 keeps torch's default."""

    warm_up: WarmUpSettings = Field(default_factory=WarmUpSettings)
    """The warm-up cycle on the history before live trading, env RLMF_TRAINER_WARM_UP__<FIELD>."""

    # -- gate
    gate: GateConfig = GateConfig()
    """The promotion gate (services/trainer/gate.py), env RLMF_TRAINER_GATE__<FIELD>."""

    # -- promotion
    promotion: str = Field(default="embedded", pattern="^(embedded|cluster|none)$")
    """What serves a student the gate passes. embedded: the policy server at policy_url reloads
    it; cluster: a Helm upgrade of the policy release (services/trainer/promotion.py); none:
    no server is told (the `current` pointer in models_dir still moves to it)."""
    policy_url: str = "http://127.0.0.1:8080"
    """Embedded: the policy server told to reload the promoted folder."""
    helm_release: str = "rlmf"
    """Cluster: the Helm release upgraded to serve the student (its InferenceService is
    <release>-rlmf-policy, or <release>-policy when the name holds `rlmf`)."""
    helm_chart: Path = Path("charts/rlmf-policy")
    """Cluster: the chart the release is upgraded with (`helm upgrade --reuse-values`)."""
    namespace: str = "default"
    """Cluster: the Kubernetes namespace of the release, its InferenceService and the canary's
    metrics."""
    models_claim: str = "rlmf-models"
    """Cluster: the PVC holding models_dir; storageUri = pvc://<claim>/<folder name>."""
    ready_timeout_s: float = 600.0
    """Cluster: seconds to wait for the InferenceService to become Ready after each upgrade
    step before it is rolled back."""
    canary: CanaryConfig = CanaryConfig()
    """Cluster: the canary stage (services/trainer/canary.py), env RLMF_TRAINER_CANARY__<FIELD>."""
    shadow_bars: int = Field(default=0, ge=0)
    """A student the backtest gate passes becomes the candidate and trades in shadow on this
    many live bar times before the trainer decides, on the backtest pooled with the shadow
    bars (services/trainer/shadow.py); 0 promotes on the backtest alone. `rlmf up` sets 20.
    Embedded or cluster promotion (services/trainer/cluster_shadow.py: the pointer file and
    the CronJob's judge). At least gate.min_shadow_bars when set."""
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
        # The deprecated names rank with the source that gives them (init, then the
        # environment: above the file and the defaults), so each source's are moved into their
        # groups before the sources are merged by rank.
        init, env, *rest = super().settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return OldNamesMoved(settings_cls, init), env, OldEnvNames(settings_cls), *rest

    @model_validator(mode="before")
    @classmethod
    def _nest_old_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _move_old_names(dict(data))
        for shared, path in SHARED_NAMES.items():
            if shared in data:
                _set_default(data, path, data[shared])
        return data

    @model_validator(mode="after")
    def _holdout_the_gate_accepts(self) -> TrainerSettings:
        """One held-out length: the gate's minimum is the floor of eval_days, said here."""
        if self.gate.bootstrap and self.eval_days < self.gate.min_holdout_bars:
            raise ValueError(
                f"eval_days {self.eval_days} (RLMF_TRAINER_EVAL_DAYS, all walk-forward folds "
                f"together) is below the gate's min_holdout_bars {self.gate.min_holdout_bars} "
                "(RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS): the gate would refuse every cycle. "
                "Hold out more bars, or lower the gate's minimum"
            )
        return self

    @model_validator(mode="after")
    def _shadow_long_enough(self) -> TrainerSettings:
        if self.shadow_bars and self.promotion not in ("embedded", "cluster"):
            raise ValueError(
                f"shadow_bars {self.shadow_bars} needs RLMF_TRAINER_PROMOTION embedded or "
                f"cluster: with {self.promotion!r} promotion nothing stages a candidate"
            )
        if 0 < self.shadow_bars < self.gate.min_shadow_bars:
            raise ValueError(
                f"shadow_bars {self.shadow_bars} is below gate.min_shadow_bars "
                f"{self.gate.min_shadow_bars}: the pooled gate would refuse every candidate "
                "(raise RLMF_TRAINER_SHADOW_BARS or lower RLMF_TRAINER_GATE__MIN_SHADOW_BARS)"
            )
        return self
