"""What `make install`, `make demo` and `make test` would run (`make -n -B`: printed, not run):
torch from TORCH_INDEX_URL (the CPU index by default on a machine without an NVIDIA GPU) at
pyproject's pin, and npm only for the tests. The fallback where the index cannot be reached
is a shell branch run by `make install` itself (not here: it needs the network)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO


def _dry_run(target: str, tmp_path: Path, *assignments: str) -> str:
    make = shutil.which("make")
    assert make, "make is missing: apt-get install make"
    done = subprocess.run(
        [make, "-n", "-B", target, f"VENV={tmp_path / 'venv'}", *assignments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _torch_pin() -> str:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    (pin,) = {word.strip('",') for word in pyproject.split() if word.startswith('"torch==')}
    return pin


def test_install_takes_torch_from_the_index_given(tmp_path: Path) -> None:
    out = _dry_run("install", tmp_path, "TORCH_INDEX_URL=https://example.test/whl/cu128")
    assert f"--index-url 'https://example.test/whl/cu128' '{_torch_pin()}'" in out


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_install_defaults_to_the_cpu_index_without_a_gpu(tmp_path: Path) -> None:
    out = _dry_run("install", tmp_path)
    assert "--index-url 'https://download.pytorch.org/whl/cpu'" in out


def test_npm_runs_for_the_tests_only(tmp_path: Path) -> None:
    assert "npm ci" not in _dry_run("demo", tmp_path)
    assert "npm ci" not in _dry_run("install", tmp_path)
    assert "npm ci" in _dry_run("test", tmp_path)
