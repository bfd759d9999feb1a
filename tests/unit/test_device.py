"""Device placement: the CPU stays the default; `auto` and CUDA follow what torch sees."""

from __future__ import annotations

import pytest
import torch

from services.common.device import resolve_placement


def test_cpu_is_the_default_in_float32() -> None:
    assert resolve_placement() == resolve_placement("cpu")
    assert resolve_placement().dtype == "float32"
    assert resolve_placement("cpu", "bfloat16").dtype == "bfloat16"


def test_auto_picks_cuda_with_bfloat16_only_when_there_is_one() -> None:
    placement = resolve_placement("auto")
    if torch.cuda.is_available():
        assert placement.device == "cuda" and placement.dtype == "bfloat16"
    else:
        assert placement.device == "cpu" and placement.dtype == "float32"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_cuda_without_a_gpu_is_an_error_not_a_silent_cpu_run() -> None:
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_placement("cuda:0")


def test_an_unknown_device_is_named() -> None:
    with pytest.raises(ValueError, match="tpu"):
        resolve_placement("tpu")
