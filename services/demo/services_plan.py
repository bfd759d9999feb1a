"""How each service runs inside the demo: its command line, environment and readiness URL.

Every service gets its own free HTTP port (the defaults would clash with anything else on the
machine), the broker's address, the demo's out dir for its state, and the seed.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.common.broker import free_port
from services.common.supervisor import ProcessSpec


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


def has_entrypoint(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"services.{name}.__main__") is not None
    except ModuleNotFoundError:
        return False


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


def policy_plan(bootstrap: str, seed: int, model_dir: Path) -> ServicePlan:
    port = free_port()
    grpc = free_port()
    env = common_env(bootstrap, seed, port) | {
        "RLMF_POLICY_MODEL_DIR": str(model_dir),
        "RLMF_POLICY_SEED": str(seed),
        "RLMF_POLICY_TORCH_THREADS": "1",
    }
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
