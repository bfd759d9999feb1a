"""Where a model runs: `auto` picks CUDA with bfloat16 when a GPU is there, else the CPU in
float32. The CPU path is the default everywhere and the one every test runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str


def resolve_placement(device: str = "cpu", dtype: str | None = None) -> Placement:
    """`device` is cpu, cuda, cuda:N or auto; `dtype` (float32 or bfloat16) overrides the
    device's default. Asking for CUDA where there is none is an error, not a silent CPU run."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device {device!r} is not cpu, cuda, cuda:N or auto")
    default = "bfloat16" if device.startswith("cuda") else "float32"
    return Placement(device, dtype or default)
