"""`rlmf sentiment ...`: score a CSV of headlines with the LLM or the lexicon, run the service."""

from __future__ import annotations

from pathlib import Path

import typer

from services.sentiment.settings import SentimentSettings

GROUP_NAME = "sentiment"
app = typer.Typer(no_args_is_help=True, help="Sentiment scores and summaries of news text.")


@app.command()
def score(
    in_path: Path = typer.Option(..., "--in", help="CSV with a `text` column (others kept)."),
    out_path: Path = typer.Option(..., "--out", help="CSV written with sentiment and summary."),
    backend: str = typer.Option(None, help="llm or lexicon (default RLMF_SENTIMENT_BACKEND)."),
    model_dir: Path = typer.Option(None, help="LLM folder (default RLMF_SENTIMENT_MODEL_DIR)."),
    summary: bool = typer.Option(True, help="Add an LLM summary per row (slow on CPU)."),
) -> None:
    """Add `sentiment` (in [-1, 1]), `label` and `summary` columns to a CSV of texts."""
    import pandas as pd

    from services.sentiment.scoring_table import score_table

    updates: dict[str, object] = {"summaries": summary, "fallback_to_lexicon": False}
    if backend:
        updates["backend"] = backend
    if model_dir:
        updates["model_dir"] = model_dir
    try:
        settings = SentimentSettings(**updates)  # type: ignore[arg-type]
        table = pd.read_csv(in_path, dtype=str, keep_default_na=False)
        scored = score_table(table, settings)
    except (ValueError, OSError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    scored.to_csv(out_path, index=False)
    typer.echo(f"wrote {len(scored)} rows to {out_path}")


@app.command()
def run() -> None:
    """Run the sentiment service in the foreground (same as `python -m services.sentiment`)."""
    from services.sentiment.service import main

    raise typer.Exit(main())
