"""`rlmf trainer ...`: one RLMF cycle (the CronJob's command), and the embedded service."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from services.trainer.datasets import FeedbackLog
    from services.trainer.settings import TrainerSettings

GROUP_NAME = "trainer"
OLD_GROUP_NAMES = ("train",)
"""Earlier names of the group, still answering (hidden, deprecated) for one release."""

app = typer.Typer(no_args_is_help=True, help="Re-align the policy to market feedback (RLMF).")


@app.command()
def cycle(
    teacher: Path | None = typer.Option(
        None, help="Teacher artifact (default: models_dir/current)."
    ),
    promotion: str | None = typer.Option(
        None, help="embedded | cluster | none (default: settings)."
    ),
    publish: bool | None = typer.Option(
        None, help="Publish models.promotions.v1 (default: settings)."
    ),
    feedback: Path | None = typer.Option(
        None, help="A feedback JSONL log (FeedbackLog) to train SFT/RM on."
    ),
    as_of: datetime | None = typer.Option(
        None,
        "--as-of",
        formats=["%Y-%m-%d"],
        help="Train as on this day: only bars of this day and before (default: all of them).",
    ),
    warm_up: bool = typer.Option(
        False,
        "--warm-up",
        help="The warm-up cycle on the history before live trading: hold out up to "
        "RLMF_TRAINER_WARM_UP__HOLDOUT_BARS in RLMF_TRAINER_WARM_UP__FOLDS folds.",
    ),
) -> None:
    """Run one cycle on the newest window; print the CycleResult as one JSON line."""
    from tqdm import tqdm

    from services.common import json_logging
    from services.common.settings import LogSettings
    from services.trainer import ppo
    from services.trainer.cycle import CycleError, CycleInterrupted, run_cycle
    from services.trainer.settings import TrainerSettings

    log_settings = LogSettings()
    json_logging.configure("trainer", log_settings.level, log_settings.json_format)
    overrides: dict[str, object] = {}
    if teacher is not None:
        overrides["teacher_dir"] = teacher
    if promotion is not None:
        overrides["promotion"] = promotion
    if publish is not None:
        overrides["publish"] = publish
    settings = TrainerSettings(**overrides)  # type: ignore[arg-type]
    try:
        prices, feedback_log = _inputs(settings, feedback)
        if as_of is not None:
            prices = _known_on(prices, as_of.date())
    except ValueError as exc:  # NoMarketData, a bad CSV, cluster promotion without Prometheus
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    producer = None
    if settings.publish:
        from services.common.bus import Producer, ensure_topics
        from services.common.settings import BusSettings
        from services.common.topics import MODELS_PROMOTIONS, dlq

        bus = BusSettings()
        ensure_topics(bus, [MODELS_PROMOTIONS, dlq(MODELS_PROMOTIONS)], "trainer")
        producer = Producer(bus, "trainer")
    if settings.shadow_bars and settings.promotion == "cluster":
        in_shadow = _judge_shadow(settings, producer)
        if in_shadow is not None:
            typer.echo(
                f"candidate {in_shadow['version']} in shadow: {in_shadow['bars']} of "
                f"{in_shadow['needed']} bars; no cycle until its verdict",
                err=True,
            )
            sys.stdout.write(json.dumps({"shadow": in_shadow}) + "\n")
            return
    bar = tqdm(total=100, unit="%", desc="PPO", file=sys.stderr, dynamic_ncols=True)

    def progress(p: ppo.Progress) -> None:
        ppo.log_progress(p)
        bar.n = round(100 * p.fraction_done)
        bar.set_postfix(
            step=p.global_step, ret=f"{p.mean_episode_return:.3g}", eta=f"{p.eta_s:.0f}s"
        )

    # SIGTERM (a Job's pod stopping): PPO checkpoints after its iteration and the next run of
    # this cycle resumes there; the process exits 0, it did what it was asked.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        result = run_cycle(
            settings,
            prices=prices,
            feedback=feedback_log,
            producer=producer,
            progress=progress,
            stop_requested=stop.is_set,
            warm_up=warm_up,
        )
    except CycleInterrupted as exc:
        typer.echo(f"cycle interrupted: {exc}", err=True)
        raise typer.Exit(0) from exc
    except CycleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        bar.close()
        if producer is not None:
            producer.close()
    sys.stdout.write(json.dumps(result.to_dict(), default=float) + "\n")


def _inputs(settings: TrainerSettings, feedback: Path | None) -> tuple[Any, FeedbackLog | None]:
    """The cycle's bars and feedback, checked before any model loads. data_source kafka: first
    read what market.bars.v1 and market.feedback.v1 got since the last run into the store on
    the work volume; a store with no bars is NoMarketData (exit 2), never a synthetic market."""
    from services.trainer import market_source
    from services.trainer.datasets import FeedbackLog
    from services.trainer.kafka_history import History

    if settings.promotion == "cluster" and not settings.canary.prometheus_url:
        raise ValueError(
            "cluster promotion needs RLMF_TRAINER_CANARY__PROMETHEUS_URL to judge the canary"
        )
    given = FeedbackLog(feedback) if feedback else None
    if market_source.resolve(settings) != "kafka":
        return market_source.load_prices(settings), given
    from services.common.settings import BusSettings

    bus = BusSettings()
    # Quiet this long means caught up. Joining a group (cluster) takes up to a session timeout
    # plus the broker's initial rebalance delay before any partition is ours, so wait longer.
    idle_s = 5.0 if bus.group_protocol == "manual" else max(10.0, 2 * bus.session_timeout_ms / 1000)
    history = History(settings.work_dir, settings.ticker)
    counts, loop = history.sync(bus, settings.history_group, idle_timeout_s=idle_s)
    typer.echo(
        f"read {counts.bars} bars and {counts.feedback} feedback records of {settings.ticker} "
        f"({loop.stats.dead_lettered} dead-lettered)",
        err=True,
    )
    return history.prices(), given or history.feedback()


def _judge_shadow(settings: TrainerSettings, producer: Any) -> dict[str, Any] | None:
    """The cluster's shadow step (services/trainer/cluster_shadow.py): the candidate still
    in shadow after reading trading.shadow.v1, or None."""
    from services.common.settings import BusSettings
    from services.trainer.cluster_shadow import shadow_before_cycle
    from services.trainer.cycle import make_promoter

    promoter = make_promoter(settings)
    assert promoter is not None  # cluster promotion always makes one
    return shadow_before_cycle(settings, BusSettings(), promoter, producer)


def _known_on(prices: Any, day: date) -> Any:
    """The bars a cycle run on `day` may know; none is an error naming the first bar."""
    from services.trainer.kafka_history import NoMarketData
    from services.trainer.market_source import known_by

    known = known_by(prices, day)
    if known.empty:
        first = prices.index[0].date() if len(prices) else "none"
        raise NoMarketData(f"--as-of {day}: no bars on or before it (the first bar: {first})")
    return known


@app.command()
def run() -> None:
    """The embedded mode: consume market.feedback.v1 and run a cycle every N simulated days."""
    from services.trainer.service import main

    raise typer.Exit(main())


# The verb before `run`: kept, hidden and deprecated, for one release.
app.command("serve", hidden=True, deprecated=True)(run)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    app()
