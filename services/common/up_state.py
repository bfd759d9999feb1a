"""The state folder of `rlmf up` (default rlmf-state/): where each service keeps what must survive
a restart, and up.json, the running session's own record (pid, broker, ticker universe)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel


class RunInfo(BaseModel):
    """What a running `up` writes to up.json, for `rlmf status`, `rlmf down` and
    `rlmf market publish` in another terminal."""

    pid: int
    pgid: int
    bootstrap: str
    embedded_broker: bool
    tickers: list[str]
    """The universe the features service accepts; empty: any ticker."""
    models_root: str
    """The policy's artifact root: its `current` file names the served version."""
    log_dir: str
    bars_needed: int
    """Bars a ticker needs before the trainer's first cycle (one walk-forward split)."""
    started_at: str
    stopped_at: str | None = None


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def trainer(self) -> Path:
        return self.root / "trainer"

    @property
    def day_cache(self) -> Path:
        return self.root / "day-cache"

    @property
    def simulator_state(self) -> Path:
        return self.root / "simulator-state.json"

    @property
    def run_file(self) -> Path:
        return self.root / "up.json"

    def clear(self) -> None:
        """`up --fresh`: forget the accounts, the trainer's history and the Feast store."""
        for folder in (self.feast, self.trainer, self.day_cache):
            if folder.exists():
                shutil.rmtree(folder)
        for file in (self.simulator_state, self.run_file):
            file.unlink(missing_ok=True)

    def write_run(self, info: RunInfo) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".up-", dir=self.root)
        with os.fdopen(fd, "w") as handle:
            handle.write(info.model_dump_json(indent=2))
        os.replace(tmp, self.run_file)  # atomic: a reader sees the old record or the new

    def read_run(self) -> RunInfo | None:
        if not self.run_file.is_file():
            return None
        return RunInfo.model_validate(json.loads(self.run_file.read_text()))

    def mark_stopped(self) -> None:
        info = self.read_run()
        if info is not None and info.pid == os.getpid():
            self.write_run(info.model_copy(update={"stopped_at": now()}))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def running(info: RunInfo | None) -> bool:
    """Whether the `up` that wrote `info` is still alive (its pid exists and it did not record
    a stop; a SIGKILLed `up` leaves no stop, so the pid decides)."""
    if info is None or info.stopped_at is not None:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True
