"""Policy server settings from the environment (prefix RLMF_POLICY_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PolicySettings(BaseSettings):
    """Env: RLMF_POLICY_MODEL_DIR, RLMF_POLICY_MAX_BATCH, ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_POLICY_", extra="ignore")

    model_dir: Path = Path("models/policy/v0")
    """The artifact folder served at start (made by `rlmf policy init` or the trainer)."""
    model_name: str = "policy"
    """Name in the URL: /v1/models/<model_name>:predict."""
    dtype: str | None = Field(default=None, pattern="^(float32|bfloat16)$")
    """LM weights dtype; unset: float32 on the CPU, bfloat16 on CUDA."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:N, or auto (CUDA with bfloat16 when a GPU is there)."""
    day_cache_dir: Path | None = None
    """Where the day cache (services/policy/day_cache.py) keeps its files; a trainer on the same
    machine given the same folder reuses every day this server computed. Unset: no day cache."""
    day_cache_memory_mb: int = Field(default=1024, ge=1)
    use_prefix_cache: bool = True
    """Reuse the constant prompt prefix's key/value cache for every decision."""
    max_batch: int = Field(default=8, ge=1)
    """Most states run in one forward pass when requests are micro-batched."""
    max_wait_ms: float = Field(default=5.0, ge=0.0)
    """How long the first request of a batch waits for others to join."""
    max_instances: int = Field(default=64, ge=1)
    """Most states in one request; more is a 400."""
    max_request_bytes: int = Field(default=1_000_000, ge=1)
    """Largest request body; larger is a 400."""
    max_features: int = Field(default=64, ge=0)
    """Most feature values in one state; more is a 400."""
    max_state_tokens: int = Field(default=1024, ge=16)
    """Longest per-decision prompt part in tokens; longer is a 400 (oversized text)."""
    explain_max_tokens: int = Field(default=32, ge=1, le=256)
    """Bound on a rationale's length in tokens (SEP explain step, on request)."""
    best_of_n: int = Field(default=1, ge=1, le=16)
    """Candidates per explained decision, ranked by the reward model (needs reward_model_dir)."""
    reward_model_dir: Path | None = None
    """A trl reward-model folder; without it best-of-n is off and says so."""
    reload_root: Path | None = None
    """When set, the reload route only loads folders inside it (403 otherwise); set it in any
    deployment where the HTTP port is reachable by more than the trainer."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads for torch; 0 keeps torch's default."""
    seed: int = 0
