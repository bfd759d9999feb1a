"""`rlmf features ...`: apply the Feast repo, read features, run the service."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

app = typer.Typer(no_args_is_help=True, help="Market and news features in Feast.")


@app.command()
def apply(
    data_dir: Path = typer.Option(None, help="Apply into this folder (RLMF_FEATURES_DATA_DIR)."),
    store: str = typer.Option(
        None, help="local (SQLite) or cluster (Redis) (RLMF_FEATURES_STORE)."
    ),
) -> None:
    """Register the entity, sources, views and feature services of feature_repo/."""
    from services.features.repo import apply_repo
    from services.features.settings import FeaturesSettings

    overrides = {k: v for k, v in {"data_dir": data_dir, "store": store}.items() if v is not None}
    settings = FeaturesSettings(**overrides)  # type: ignore[arg-type]  # validated here
    path = apply_repo(settings)
    typer.echo(
        f"applied feature_repo ({settings.store} store, project {settings.project}) in {path}"
    )


def _reader():  # type: ignore[no-untyped-def]
    from services.features.repo import RepoNotApplied
    from services.features.store import FeatureReader

    try:
        return FeatureReader()
    except RepoNotApplied as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def online(ticker: str) -> None:
    """Print a ticker's online features as JSON."""
    typer.echo(json.dumps(_reader().online(ticker), indent=2, sort_keys=True))


@app.command()
def historical(
    ticker: str, at: list[str] = typer.Argument(..., help="ISO timestamps, e.g. 2017-11-10T21:00Z")
) -> None:
    """Print the point-in-time features of a ticker at the given times as CSV."""
    entity_df = pd.DataFrame({"ticker": ticker, "event_timestamp": pd.to_datetime(at, utc=True)})
    typer.echo(_reader().historical(entity_df).to_csv(index=False))


@app.command()
def run() -> None:
    """Run the features service in the foreground (same as `python -m services.features`)."""
    from services.features.service import main

    raise typer.Exit(main())
