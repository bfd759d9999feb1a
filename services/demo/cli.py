"""`rlmf demo`: a top-level command (not a group), added by `register(root_app)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def demo(
    scenario: str = typer.Option(
        "real", help="real (MSFT daily bars) or regime-shift (generator)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Short window and a tiny model: minutes."),
    out: Path = typer.Option(
        Path("demo-out"), help="Folder for report.html, run.json, logs, state."
    ),
    seed: int = typer.Option(None, help="Seed of the whole run (default RLMF_DEMO_SEED or 0)."),
    bars: int = typer.Option(None, help="Bars to replay (default 504, or 80 with --quick)."),
    prices: Path = typer.Option(
        None,
        help="A daily CSV (as `rlmf backtest` takes) to replay instead of MSFT: its last bars.",
    ),
    ticker: str = typer.Option(None, help="The ticker of --prices (default: the file's name)."),
    history_bars: int = typer.Option(
        None,
        help="Bars before the window published first, with a warm-up training cycle on them "
        "(default 300, or 30 with --quick; 0: none; real bars only).",
    ),
    kill_service: str = typer.Option(
        None,
        help="Chaos: SIGKILL this service mid-run (sentiment, features, policy, trainer or "
        "simulator); the run must equal one without the kill (bench/chaos.py).",
    ),
    kill_after_bars: int = typer.Option(10, help="... once this many decisions were published."),
    kill_seed: int = typer.Option(
        None, help="... or at a bar drawn from this seed (bench/chaos.py kills each service so)."
    ),
    bootstrap: str = typer.Option(
        None, help="Use this Kafka (empty topics) instead of the embedded broker."
    ),
) -> None:
    """Run the whole closed loop on this machine and write OUT/report.html."""
    import logging

    from services.demo.config import DemoConfig, DemoError, select_window
    from services.demo.orchestrator import Demo
    from services.demo.settings import DemoSettings
    from services.market.market_data import MarketDataError

    # kafka-python logs "Metadata refresh failed: Cancelled" at ERROR when a short-lived reader
    # closes with a metadata request in flight; the demo opens many such readers, on purpose.
    logging.getLogger("kafka.cluster").setLevel(logging.CRITICAL)

    overrides: dict[str, Any] = {"seed": seed} if seed is not None else {}
    if bars is not None:
        overrides["quick_bars" if quick else "bars"] = bars
        overrides["regime_days"] = bars
    if history_bars is not None:
        overrides["quick_history_bars" if quick else "history_bars"] = history_bars
    if prices is not None:
        if scenario != "real":
            typer.echo("error: --prices replays real bars; it cannot go with --scenario", err=True)
            raise typer.Exit(2)
        overrides["prices_csv"] = str(prices.resolve())
        overrides["ticker"] = (ticker or prices.stem).upper()
    try:
        cfg = DemoConfig(
            scenario,
            quick,
            out,
            DemoSettings(**overrides),
            kill_service,
            kill_after_bars,
            bootstrap,
            kill_seed=kill_seed,
        )
        select_window(cfg)  # a CSV that is missing, unreadable or too short fails here
    except (DemoError, MarketDataError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(Demo(cfg).run())


def register(root: typer.Typer) -> None:
    """Add `rlmf demo` to the root command."""
    root.command("demo")(demo)
