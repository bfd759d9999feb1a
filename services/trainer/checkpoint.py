"""Resumable training checkpoints: each written to a temp file and renamed into place.

A rename within one folder is atomic on POSIX, so a trainer killed mid-write leaves either the
previous checkpoint or the new one, never a torn file that a resume would trip over.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PREFIX = "ckpt-"
KEEP = 2


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read as plain training state."""


def _path(folder: Path, iteration: int) -> Path:
    return folder / f"{PREFIX}{iteration:06d}.pt"


def save(folder: Path, iteration: int, state: dict[str, Any]) -> Path:
    """Write `state` as checkpoint `iteration` atomically; keep only the newest KEEP."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        target = _path(folder, iteration)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in sorted(folder.glob(f"{PREFIX}*.pt"))[:-KEEP]:
        old.unlink()
    return target


def latest_path(folder: Path) -> Path | None:
    found = sorted(folder.glob(f"{PREFIX}*.pt")) if folder.is_dir() else []
    return found[-1] if found else None


def load_latest(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint in `folder`, or None when there is none."""
    path = latest_path(folder)
    if path is None:
        return None
    log.info("loading checkpoint %s", path)
    # weights_only=True: the work folder is a volume others can write, and a full unpickle would
    # run whatever a writer planted. Optimizer and RNG state are tensors, dicts and numbers,
    # which the restricted unpickler reads.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds more than tensors and plain data, so it is refused unread; "
            f"delete it to start the run afresh ({str(exc).splitlines()[0]})"
        ) from exc


def clear(folder: Path) -> None:
    """Remove the checkpoints once their run has produced its artifact."""
    for path in folder.glob(f"{PREFIX}*.pt") if folder.is_dir() else []:
        path.unlink()
