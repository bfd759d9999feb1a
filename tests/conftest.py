"""Session fixtures: one real embedded broker, the prepared SmolLM2 folder, a tiny Llama."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.broker import EmbeddedBroker, free_port
from services.common.settings import BusSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tansu broker for the whole test session; yields its bootstrap address."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(port=free_port(), log_path=log) as embedded:
        yield embedded.bootstrap


@pytest.fixture
def bus_settings(broker: str, monkeypatch: pytest.MonkeyPatch) -> BusSettings:
    """Bus settings for the session broker, also exported as RLMF_BUS_* for subprocesses."""
    env = {
        "RLMF_BUS_BOOTSTRAP": broker,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_BUS_POLL_TIMEOUT_MS": "100",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return BusSettings()


@pytest.fixture
def unique() -> str:
    """A short unique suffix so tests on the shared broker never see each other's messages."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Models are cached across sessions (RLMF_MODELS_DIR or ./models), as the services do."""
    path = Path(os.environ.get("RLMF_MODELS_DIR", REPO / "models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(models_dir: Path) -> Path:
    """The real SmolLM2-135M-Instruct folder, converted from the wheel's GGUF once."""
    from services.common.model_files import prepare_smollm2

    return prepare_smollm2(models_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (4 layers, hidden 64) with SmolLM2's real tokenizer."""
    from services.common.model_files import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test (tiny models gain nothing from more)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
