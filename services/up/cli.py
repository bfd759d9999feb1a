"""`rlmf status`, `rlmf report` and `rlmf down`: look at, and stop, an `rlmf up` from another
terminal."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import typer

from services.common.up_state import StateDir, running

STATE_DIR_OPTION = typer.Option(Path("rlmf-state"), help="The state folder `rlmf up` was given.")


def status(
    state_dir: Path = STATE_DIR_OPTION, as_json: bool = typer.Option(False, "--json")
) -> None:
    """What `rlmf up` has done: bars, decisions and net worth per ticker, the served model, the
    candidate in shadow and every training cycle (while it runs or after it stopped)."""
    from services.up.status import StatusError, collect, render

    try:
        current = collect(StateDir(state_dir))
    except StatusError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(current, indent=2) if as_json else render(current))


def down(
    state_dir: Path = STATE_DIR_OPTION,
    timeout_s: float = typer.Option(120.0, help="How long to wait for it to stop."),
) -> None:
    """Stop a running `rlmf up` (SIGTERM: every service stops cleanly, the trainer checkpoints)."""
    state = StateDir(state_dir)
    info = state.read_run()
    if info is None or not running(info):
        typer.echo(f"no rlmf up is running from {state_dir}")
        return
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while running(state.read_run()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if running(state.read_run()):
        typer.echo(f"error: rlmf up (pid {info.pid}) still runs after {timeout_s:.0f}s", err=True)
        raise typer.Exit(1)
    typer.echo(f"stopped rlmf up (pid {info.pid})")


def report(
    state_dir: Path = STATE_DIR_OPTION,
    out: Path = typer.Option(Path("rlmf-report"), help="report.html and plots/ go here."),
) -> None:
    """report.html of what `rlmf up` did: per ticker the live loop's equity beside Buy & Hold
    and the sentiment rule with their metrics, decisions on the price, the promotion timeline
    with each candidate's shadow stretch, and the sentiment (while it runs or after it stopped)."""
    from services.up.report import ReportError, write_report
    from services.up.status import StatusError

    if not state_dir.is_dir():
        typer.echo(f"error: no state folder {state_dir} (`rlmf up --state-dir` names it)", err=True)
        raise typer.Exit(2)
    try:
        page = write_report(StateDir(state_dir), out)
    except (StatusError, ReportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"report: {page}")


def register(root: typer.Typer) -> None:
    root.command()(status)
    root.command()(down)
    root.command()(report)
