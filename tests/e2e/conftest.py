"""The end-to-end tests' shared folder: a fresh folder as a new user has it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir(smollm2_dir: Path) -> Iterator[Path]:
    """A folder as a fresh clone's user has it after `rlmf models prepare`: only SmolLM2."""
    # Outside pytest's basetemp: concurrent pytest runs prune each other's basetemps.
    path = Path(tempfile.mkdtemp(prefix="rlmf-e2e-up-"))
    (path / "models").mkdir()
    (path / "models" / smollm2_dir.name).symlink_to(smollm2_dir)
    yield path
    shutil.rmtree(path, ignore_errors=True)
