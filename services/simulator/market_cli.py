"""`rlmf market generate` (the regime-switching market as CSV) and `rlmf market publish` (bars to
market.bars.v1, for the live simulator and the features service)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from services.common import topics
from services.common.bar_messages import publish_bars
from services.common.bus import ensure_topics
from services.common.settings import DEFAULT_PORTS, BusSettings
from services.common.up_state import RunInfo, StateDir, running
from services.market.market_data import MarketDataError, load_prices_csv
from services.market.regime_market import generate_market, load_params

GROUP_NAME = "market"
app = typer.Typer(no_args_is_help=True, help="Synthetic markets and publishing bars.")


@app.command()
def generate(
    out: Path = typer.Option(
        ..., help="CSV file to write (time,open,high,low,close,volume,regime)."
    ),
    days: int = typer.Option(500, min=3, help="Number of business-day bars."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same market."),
    params: str = typer.Option(
        "default", help="Shipped scenario (default, regime-shift) or a YAML file."
    ),
    start: str = typer.Option("2020-01-01", help="Date of the first bar."),
) -> None:
    """Write a regime-switching market; its shift schedule goes to OUT with suffix .shifts.csv."""
    try:
        market_params = load_params(params)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: params {params}: {exc}", err=True)
        raise typer.Exit(2) from exc
    frame, shifts = generate_market(market_params, days, seed, start=start)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index_label="time")
    shifts_path = out.with_suffix(".shifts.csv")
    lines = ["time,from,to", *(f"{t.isoformat()},{a},{b}" for t, a, b in shifts)]
    shifts_path.write_text("\n".join(lines) + "\n")
    typer.echo(
        f"wrote {days} bars of {market_params.ticker} to {out}; "
        f"{len(shifts)} regime shift(s) in {shifts_path}"
    )


@app.command()
def publish(
    prices: Path = typer.Option(..., exists=True, dir_okay=False, help="OHLCV CSV to publish."),
    ticker: str | None = typer.Option(None, help="Ticker key (default: the file name)."),
    history: int = typer.Option(
        0,
        min=0,
        help="The first N bars are history: learnt from (a warm-up cycle), not traded. All of "
        "the file: history alone (publish every ticker's history before any live bar).",
    ),
    news: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="News for these bars (JSONL or CSV: published_at, ticker, headline, optional "
        "body), sent through ingest before the bars.",
    ),
    speed: float = typer.Option(1.0, min=0.0, help="Bars per second."),
    as_fast_as_possible: bool = typer.Option(
        False, help="Ignore --speed and publish without pauses."
    ),
    bootstrap: str | None = typer.Option(
        None, help="Kafka bootstrap (default: the running rlmf up's, else RLMF_BUS_BOOTSTRAP)."
    ),
    state_dir: Path = typer.Option(
        Path("rlmf-state"), help="The state folder of a running rlmf up (its broker, universe)."
    ),
    ingest_url: str = typer.Option(
        f"http://127.0.0.1:{DEFAULT_PORTS['ingest']}", help="Where --news items are POSTed."
    ),
) -> None:
    """Send each bar as a Bar envelope keyed by ticker to market.bars.v1 (and, with --news, the
    news items through ingest first, waiting until the features service has them)."""
    try:
        frame = load_prices_csv(prices)
    except MarketDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    symbol = ticker or prices.stem.upper()
    run = StateDir(state_dir).read_run()
    run = run if running(run) else None
    _check_universe(symbol, run)
    # --history equal to the file's length publishes history alone: several tickers' histories
    # go out first, so the warm-up cycle (on a ticker's first live bar) learns from all of them.
    if history > len(frame):
        typer.echo(f"error: --history {history} is more than the {len(frame)} bars", err=True)
        raise typer.Exit(2)
    bus = _bus(bootstrap, run)
    if news is not None:
        _publish_news(news, symbol, ingest_url, bus)
    ensure_topics(bus, [topics.MARKET_BARS], "market-publish")
    pause = 0.0 if as_fast_as_possible or speed == 0 else 1.0 / speed
    counts = publish_bars(bus, frame, symbol, history, pause)
    typer.echo(
        f"published {counts[0]} history and {counts[1]} live bars of {symbol} "
        f"to {topics.MARKET_BARS}"
    )


def _check_universe(symbol: str, run: RunInfo | None) -> None:
    """Refuse at once a ticker the running `up` (or RLMF_FEATURES_TICKERS) does not accept:
    the features service would dead-letter every one of its bars."""
    if run is not None:
        universe, where = run.tickers, "the running rlmf up's --tickers"
    else:
        universe = [t for t in os.environ.get("RLMF_FEATURES_TICKERS", "").split(",") if t]
        where = "RLMF_FEATURES_TICKERS"
    if universe and symbol not in universe:
        typer.echo(
            f"error: {symbol} is not in the ticker universe {universe} ({where}); restart "
            f"`rlmf up` with --tickers {','.join([*universe, symbol])}, or without --tickers "
            "to accept any ticker",
            err=True,
        )
        raise typer.Exit(2)


def _bus(bootstrap: str | None, run: RunInfo | None) -> BusSettings:
    if bootstrap:
        return BusSettings(bootstrap=bootstrap)
    if run is not None and "RLMF_BUS_BOOTSTRAP" not in os.environ:
        return BusSettings(bootstrap=run.bootstrap)
    return BusSettings()


def _publish_news(path: Path, ticker: str, ingest_url: str, bus: BusSettings) -> None:
    from services.common.bus_reader import wait_drained
    from services.simulator.news_file import NewsFileError, post_news, read_news

    try:
        items = read_news(path, ticker)
        accepted = post_news(items, ingest_url)
    except NewsFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"sent {accepted} news items of {ticker} through ingest; waiting for features")
    pairs = [(topics.NEWS_RAW, "rlmf-sentiment"), (topics.NEWS_ENRICHED, "rlmf-features")]
    try:
        wait_drained(bus.bootstrap, pairs, timeout_s=600)
    except TimeoutError as exc:
        typer.echo(f"error: the news did not reach the features service: {exc}", err=True)
        raise typer.Exit(1) from exc
