"""`rlmf train ...`: one RLMF cycle (the CronJob's command), and the embedded feedback consumer."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

GROUP_NAME = "train"

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
) -> None:
    """Run one cycle on the newest window; print the CycleResult as one JSON line."""
    from services.common import json_logging
    from services.common.settings import LogSettings
    from services.trainer.cycle import CycleError, run_cycle
    from services.trainer.datasets import FeedbackLog
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
    producer = None
    if settings.publish:
        from services.common.bus import Producer, ensure_topics
        from services.common.settings import BusSettings
        from services.common.topics import MODELS_PROMOTIONS, dlq

        bus = BusSettings()
        ensure_topics(bus, [MODELS_PROMOTIONS, dlq(MODELS_PROMOTIONS)], "trainer")
        producer = Producer(bus, "trainer")
    try:
        result = run_cycle(
            settings, feedback=FeedbackLog(feedback) if feedback else None, producer=producer
        )
    except CycleError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        if producer is not None:
            producer.close()
    sys.stdout.write(json.dumps(result.to_dict(), default=float) + "\n")


@app.command()
def serve() -> None:
    """The embedded mode: consume market.feedback.v1 and run a cycle every N simulated days."""
    from services.trainer.service import main

    raise typer.Exit(main())


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    app()
