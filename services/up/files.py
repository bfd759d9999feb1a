"""Where `rlmf up`'s report inputs live in its state folder (kept apart from services/common's
StateDir so the simulator's ledger stays a report matter)."""

from __future__ import annotations

import shutil
from pathlib import Path

from services.common.up_state import StateDir


def ledger_dir(state: StateDir) -> Path:
    """The simulator's per-bar ledger (services/simulator/ledger.py), one file per ticker."""
    return state.root / "ledger"


def clear_ledger(state: StateDir) -> None:
    """`up --fresh`: the accounts start over, so must their ledger (an old file's last bar
    would otherwise hide the same bars traded again)."""
    folder = ledger_dir(state)
    if folder.exists():
        shutil.rmtree(folder)
