"""Policy server settings from the environment (prefix RLMF_POLICY_)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import RlmfSettings

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 -- only with signed artifacts (see bind_host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PolicySettings(RlmfSettings):
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
    """Memory bound of the day cache in MiB; past it the least recently used days are dropped
    from memory (their files stay). Used only with day_cache_dir."""
    use_prefix_cache: bool = True
    """Reuse the constant prompt prefix's key/value cache for every decision."""
    max_batch: int = Field(default=8, ge=1)
    """Most states run in one forward pass when requests are micro-batched."""
    max_wait_ms: float = Field(default=5.0, ge=0.0)
    """How long the first request of a batch waits for others to join."""
    max_instances: int = Field(default=64, ge=1)
    """Most states in one request; more is a 400."""
    max_request_bytes: int = Field(default=1_000_000, ge=1)
    """Largest request body, counted while it streams in; larger is a 413 without reading on."""
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
    reload_enabled: bool = True
    """Serve POST /v1/models/<name>:reload (the embedded trainer's promotion); off: 404."""
    reload_root: Path | None = None
    """The reload route only loads folders inside it (403 otherwise). Required with reload on,
    except on a loopback-only server, where it defaults to model_dir's parent folder (where
    `rlmf up` and the demo's trainer write the versions beside the teacher)."""
    reload_token_file: Path | None = None
    """A file holding the bearer token the reload route requires (`Authorization: Bearer ...`).
    Without it, only loopback clients may reload; with it, every caller needs it."""
    candidate_pointer: Path | None = None
    """A file naming the candidate's folder (beside it), as `current` names the teacher's: the
    server stages what it names and retires the candidate when it goes (services/policy/
    candidate_pointer.py). The cluster's way to stage a candidate in shadow: the trainer
    writes it on the models volume. Unset: only the :reload route stages (one machine)."""
    candidate_poll_s: float = Field(default=5.0, gt=0)
    """How often the server reads candidate_pointer."""
    artifact_public_key_file: Path | None = None
    """Ed25519 public key (PEM) every served artifact's manifest must be signed with (the
    trainer signs with RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE). Unset: signatures are not
    checked, and the server then binds loopback only (and says so in its log)."""
    approval_public_key_file: Path | None = None
    """Ed25519 public key (PEM) the served version's approval (approval.json, written on
    promotion) must be signed with; unset: the artifact public key. Without either, the
    approval must still be there and current, but its signature is not checked."""
    http_host: str | None = None
    """Address the HTTP server binds. Unset: 0.0.0.0 with a public key, else 127.0.0.1. A
    non-loopback address without a public key is refused at start."""
    staging_dir: Path | None = None
    """Where a model's verified private copy is made while it loads (the temp dir if unset)."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads for torch; 0 keeps torch's default."""
    seed: int = 0
    """Seeds torch when the model loads and the sampling of best-of-n rationale candidates, so
    runs repeat."""

    @model_validator(mode="after")
    def _signed_off_loopback(self) -> PolicySettings:
        if self.artifact_public_key_file is None and not is_loopback(self.bind_host):
            raise ValueError(
                f"RLMF_POLICY_HTTP_HOST={self.http_host} is reachable beyond this machine, so "
                "artifacts must be signed: set RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE"
            )
        if self.reload_enabled and self.reload_root is None and not self.loopback_only:
            raise ValueError(
                "RLMF_POLICY_RELOAD_ROOT is required while the reload route is on "
                "(RLMF_POLICY_RELOAD_ENABLED=false turns it off)"
            )
        return self

    @property
    def bind_host(self) -> str:
        if self.http_host:
            return self.http_host
        return LOOPBACK if self.artifact_public_key_file is None else ALL_INTERFACES

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.bind_host)

    @property
    def reload_folder_root(self) -> Path:
        """reload_root, or model_dir's parent on a loopback-only server."""
        return (self.reload_root or self.model_dir.parent).resolve()
