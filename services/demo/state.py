"""What the demo's stages leave behind for the report: plain data, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.demo.config import Window
from services.demo.history import WarmUpCycle
from services.demo.news import NewsDraft
from services.demo.services_plan import ServicePlan


@dataclass
class RunState:
    """Filled in stage by stage; `finish` reads it once the services have stopped."""

    window: Window | None = None
    bootstrap: str = ""
    plans: dict[str, ServicePlan] = field(default_factory=dict)
    base_model: Path | None = None
    teacher_dir: Path | None = None
    news: list[NewsDraft] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    killed: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    simulator_exit: int | None = None
    history_bars_published: int = 0
    warm_up: WarmUpCycle | None = None
    """The trainer's cycle on the history before the replay; None when there was none."""
