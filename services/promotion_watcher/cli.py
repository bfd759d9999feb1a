"""`rlmf promotion-watcher run`: the promotion watcher service in the foreground."""

from __future__ import annotations

import typer

GROUP_NAME = "promotion-watcher"
app = typer.Typer(
    no_args_is_help=True,
    help="Exports promotions and live feedback as metrics for the alerts and the canary.",
)


@app.command()
def run() -> None:
    """Run the promotion watcher in the foreground (`python -m services.promotion_watcher`)."""
    from services.promotion_watcher.service import main

    raise typer.Exit(main())
