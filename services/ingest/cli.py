"""`rlmf ingest ...`: generate synthetic news, publish a news file or feed once, run the service."""

from __future__ import annotations

import json
from pathlib import Path

import typer

GROUP_NAME = "ingest"
app = typer.Typer(no_args_is_help=True, help="News into news.raw.v1: files, feeds, generator.")


@app.command()
def generate(
    prices: Path = typer.Option(..., help="CSV with a date/time column and `close`."),
    ticker: str = typer.Option(..., help="Ticker the news is about."),
    informativeness: float = typer.Option(0.6, min=0.0, max=1.0, help="0 noise .. 1 always right."),
    seed: int = typer.Option(1, help="Random seed."),
    items_per_day: int = typer.Option(1, min=1),
    out: Path = typer.Option(..., help="JSONL file to write (synthetic items, marked so)."),
) -> None:
    """Write synthetic headlines whose sentiment agrees with the next move (synthetic=True)."""
    import pandas as pd

    from services.ingest.news_generator import generate_news

    table = pd.read_csv(prices)
    time_col = next((c for c in table.columns if c.lower() in ("date", "time", "timestamp")), None)
    close_col = next((c for c in table.columns if c.lower() in ("close", "adj close")), None)
    if time_col is None or close_col is None:
        typer.echo(
            f"error: {prices} needs a date and a close column; has {list(table.columns)}", err=True
        )
        raise typer.Exit(2)
    frame = pd.DataFrame(
        {"close": table[close_col].astype(float).to_numpy()},
        index=pd.to_datetime(table[time_col], utc=True),
    ).sort_index()
    items = generate_news(frame, ticker.upper(), informativeness, seed, items_per_day)
    with out.open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.to_record()) + "\n")
    typer.echo(f"wrote {len(items)} synthetic items to {out}")


@app.command()
def publish(
    file: list[Path] = typer.Option([], help="JSONL/CSV news file(s), replayed in time order."),
    feed: list[str] = typer.Option([], help="RSS/Atom URL(s) or file(s), read once."),
) -> None:
    """Publish news files/feeds to news.raw.v1 once (bad items go to news.raw.v1.dlq)."""
    from services.ingest.feeds import FeedPoller
    from services.ingest.service import build_pipeline, poll_feed, replay_file
    from services.ingest.settings import IngestSettings

    pipeline = build_pipeline(IngestSettings())
    try:
        for path in file:
            if not path.is_file():
                typer.echo(f"error: no such file {path}", err=True)
                raise typer.Exit(2)
            replay_file(pipeline, path)
        for source in feed:
            poll_feed(pipeline, FeedPoller(source))
    finally:
        pipeline.close()
    typer.echo(json.dumps(pipeline.snapshot().__dict__))


@app.command()
def run() -> None:
    """Run the ingest service in the foreground (same as `python -m services.ingest`)."""
    from services.ingest.service import main

    raise typer.Exit(main())
