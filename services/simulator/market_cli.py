"""`rlmf market generate` (the regime-switching market as CSV) and `rlmf market publish` (bars to
market.bars.v1, for the live simulator and the features service)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from services.common import topics
from services.common.bus import Producer, ensure_topics
from services.common.settings import BusSettings
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
    speed: float = typer.Option(1.0, min=0.0, help="Bars per second."),
    as_fast_as_possible: bool = typer.Option(
        False, help="Ignore --speed and publish without pauses."
    ),
    bootstrap: str | None = typer.Option(
        None, help="Kafka bootstrap (default RLMF_BUS_BOOTSTRAP)."
    ),
) -> None:
    """Send each bar as a Bar envelope keyed by ticker to market.bars.v1."""
    from services.simulator.service import bar_to_pb, frame_bars

    try:
        frame = load_prices_csv(prices)
    except MarketDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    bus = BusSettings(bootstrap=bootstrap) if bootstrap else BusSettings()
    symbol = ticker or prices.stem.upper()
    ensure_topics(bus, [topics.MARKET_BARS], "market-publish")
    producer = Producer(bus, "market-publish")
    pause = 0.0 if as_fast_as_possible or speed == 0 else 1.0 / speed
    try:
        for bar in frame_bars(frame, symbol):
            producer.publish(
                topics.MARKET_BARS,
                bar_to_pb(bar),
                key=symbol,
                event_time=bar.time,
            )
            if pause:
                producer.flush()
                time.sleep(pause)
    finally:
        producer.close()
    typer.echo(f"published {len(frame)} bars of {symbol} to {topics.MARKET_BARS}")
