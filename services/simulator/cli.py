"""`rlmf simulator run`: the simulator service in the foreground."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="The trading simulator service.")


@app.command("run")
def run_service() -> None:
    """Run the simulator service in the foreground (settings from RLMF_SIMULATOR_* env vars)."""
    from services.simulator.service import main

    raise typer.Exit(main())
