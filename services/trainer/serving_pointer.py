"""`current`: the file in models_dir naming the serving teacher's folder, moved on promotion.
Its own module because the cycle, the shadow judge and the cluster's shadow step all move it
(and the cluster's candidate pointer is written the same way)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CURRENT = "current"
"""File in models_dir naming the serving teacher's folder (replaced atomically on promotion)."""


def set_current(models_dir: Path, folder: Path) -> None:
    """Point `current` at `folder`."""
    write_pointer(models_dir / CURRENT, folder)


def write_pointer(pointer: Path, folder: Path) -> None:
    """Write `folder`'s name (a sibling of `pointer`) into `pointer`, atomically (temp file +
    rename): a reader sees the old name or the new, never a torn one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{pointer.name}-", dir=pointer.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(folder.name + "\n")
    os.replace(tmp, pointer)
