"""`rlmf backtest`: the market library's backtest with any policy, a saved policy folder included.

It lives beside services/cli.py, at the composition root, because it joins two parts that must
not import each other: the market library (which never imports a service) and the policy's
folder loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from services.market.accounting import ExecutionConfig
from services.market.backtest import BacktestResult, run_backtest, sha256_of, write_metrics_json
from services.market.baseline_policies import Policy, make_policy
from services.market.market_data import MarketDataError, load_prices_csv
from services.market.news_series import bucket_news, load_news_file
from services.market.report import ReportData, ReportTrade, write_report


def _load_folder_policy(folder: str) -> Policy:
    # Lazy: torch and transformers load only when a folder policy is asked for.
    from services.policy.folder_policy import load_folder_policy

    return load_folder_policy(folder)


def _ticker_from(path: Path) -> str:
    name = re.sub(r"[^A-Z0-9.\-]", "", path.stem.upper())[:10]
    return name if name and name[0].isalpha() else "ASSET"


def report_data(
    result: BacktestResult, ppy: float, title: str, run_info: dict[str, object]
) -> ReportData:
    """A backtest's curves and trades in the report's shape."""
    s = result.strategy
    trades = [ReportTrade(t.filled_at, t.fill.price, t.fill.quantity) for t in s.trades]
    return ReportData(
        times=s.times,
        equity=s.equity,
        buy_and_hold=result.buy_and_hold.equity,
        closes=result.closes,
        positions=s.positions,
        trades=trades,
        metrics=result.metrics,
        periods_per_year=ppy,
        title=title,
        run_info=run_info,
    )


def backtest(
    prices: Path = typer.Option(..., exists=True, dir_okay=False, help="OHLCV CSV file."),
    policy: str = typer.Option(
        "buy-and-hold",
        help="buy-and-hold | sentiment-rule | random | http(s)://server | policy folder",
    ),
    news: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="News CSV/JSONL: time, sentiment[, summary, ticker].",
    ),
    cost_bps: float = typer.Option(10.0, help="Proportional cost in basis points."),
    fixed_fee: float = typer.Option(0.0, help="Fixed fee per trade."),
    fill_at: str = typer.Option("next_open", help="next_open (default) or close."),
    initial_cash: float = typer.Option(10_000.0),
    price_column: str | None = typer.Option(
        None, help="Column used as the close, e.g. 'adj close'."
    ),
    ticker: str | None = typer.Option(None, help="Ticker (default: from the file name)."),
    out: Path = typer.Option(Path("backtest-out"), help="Output folder."),
    seed: int = typer.Option(0, help="Seeds the random policy and env resets."),
    timeout_s: float = typer.Option(5.0, help="Policy server timeout; a timeout holds."),
) -> None:
    """Run a policy over a price series; write OUT/metrics.json and OUT/report.html."""
    try:
        frame = load_prices_csv(prices, price_column)
        symbol = ticker or _ticker_from(prices)
        sentiment = summaries = None
        if news is not None:
            sentiment, summaries = bucket_news(
                load_news_file(news, symbol), frame.index, frame.attrs["bar_seconds"]
            )
        execution = ExecutionConfig(
            initial_cash=initial_cash,
            cost_bps=cost_bps,
            fixed_fee=fixed_fee,
            fill_at=fill_at,  # type: ignore[arg-type]  # checked by ExecutionConfig itself
        )
        chosen = make_policy(
            policy, seed=seed, timeout_s=timeout_s, folder_loader=_load_folder_policy
        )
    except (MarketDataError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    result = run_backtest(
        frame,
        chosen,
        ticker=symbol,
        sentiment=sentiment,
        summaries=summaries,
        execution=execution,
        seed=seed,
        progress=True,
    )
    ppy = float(frame.attrs["periods_per_year"])
    run_info: dict[str, object] = {
        "data_file": str(prices),
        "data_sha256": sha256_of(prices),
        "ticker": symbol,
        "news_file": str(news) if news else None,
        "news_sha256": sha256_of(news) if news else None,
        "policy": policy,
        "seed": seed,
        "periods_per_year": ppy,
        "frequency": frame.attrs["frequency"],
        "window": [str(result.strategy.times[0]), str(result.strategy.times[-1])],
        "settings": {
            "cost_bps": cost_bps,
            "fixed_fee": fixed_fee,
            "fill_at": fill_at,
            "initial_cash": initial_cash,
            "price_column": frame.attrs["price_column"],
        },
    }
    metrics_path = write_metrics_json(result, run_info, out)
    report = write_report(
        report_data(result, ppy, f"Backtest: {policy} on {symbol}", run_info), out
    )
    s, b = result.metrics["strategy"], result.metrics["buy_and_hold"]
    typer.echo(
        f"strategy CR {s['cumulative_return']:+.4f} Sharpe {s['sharpe']:.3f} "
        f"MDD {s['max_drawdown']:.4f} | "
        f"B&H CR {b['cumulative_return']:+.4f} Sharpe {b['sharpe']:.3f} MDD {b['max_drawdown']:.4f}"
    )
    typer.echo(f"wrote {metrics_path} and {report}")


def register(root: typer.Typer) -> None:
    """Add `rlmf backtest` as a top-level command."""
    root.command("backtest")(backtest)
