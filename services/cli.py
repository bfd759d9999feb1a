"""The `rlmf` command: one sub-command group per service, plus the broker and `up`."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import threading
from pathlib import Path

import typer

from services.common import json_logging
from services.common.broker import BrokerError, EmbeddedBroker
from services.common.supervisor import Supervisor, available_services, service_spec

app = typer.Typer(
    no_args_is_help=True, help="RLMF: trade with an LLM policy, re-align it to the market."
)

# Each service may ship a `cli.py` (and the simulator a `market_cli.py`) holding a Typer `app`,
# mounted under the module's GROUP_NAME (default: the service's name), and/or a
# `register(root)` function that adds top-level commands such as `rlmf backtest`. The CLI grows
# as services land, without a central list of commands.
GROUP_MODULES = (
    "services.ingest.cli",
    "services.sentiment.cli",
    "services.features.cli",
    "services.policy.cli",
    "services.simulator.cli",
    "services.backtest_cli",
    "services.simulator.market_cli",
    "services.trainer.cli",
    "services.common.models_cli",
    "services.demo.cli",
)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is not there yet
        return False


def _mount_groups() -> None:
    for module_name in GROUP_MODULES:
        if not _module_exists(module_name):
            continue
        module = importlib.import_module(module_name)
        group = getattr(module, "app", None)
        if isinstance(group, typer.Typer):
            default_name = module_name.split(".")[1]
            app.add_typer(group, name=getattr(module, "GROUP_NAME", default_name))
        register = getattr(module, "register", None)
        if callable(register):
            register(app)


@app.command()
def broker(port: int = typer.Option(9092, help="Port for the embedded broker.")) -> None:
    """Run the embedded Kafka-protocol broker (tansu, in-memory) until Ctrl-C."""
    json_logging.configure("broker", json_format=False)
    # Handlers first: a SIGTERM that arrives while the broker starts must still stop it cleanly.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        embedded = EmbeddedBroker(port=port).start()
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"broker ready on {embedded.bootstrap} (in-memory; data is gone when it stops)")
    try:
        while not stop.wait(0.5):
            if embedded.process is not None and embedded.process.poll() is not None:
                typer.echo(f"error: broker exited with {embedded.process.returncode}", err=True)
                raise typer.Exit(1)
    finally:
        embedded.stop()


@app.command()
def up(
    port: int = typer.Option(9092, help="Port for the embedded broker."),
    no_broker: bool = typer.Option(False, help="Use the broker at RLMF_BUS_BOOTSTRAP instead."),
    log_dir: Path = typer.Option(Path("rlmf-logs"), help="One log file per service goes here."),
) -> None:
    """Start the broker and every service that exists; restart one that dies; Ctrl-C stops all."""
    json_logging.configure("up", json_format=False)
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    embedded = None
    env: dict[str, str] = {}
    if not no_broker:
        try:
            embedded = EmbeddedBroker(port=port, log_path=log_dir / "broker.log").start()
        except BrokerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        env = {"RLMF_BUS_BOOTSTRAP": embedded.bootstrap, "RLMF_BUS_GROUP_PROTOCOL": "manual"}
    names = available_services()
    typer.echo(f"starting: {', '.join(names) or 'no services yet'} (logs in {log_dir}/)")
    supervisor = Supervisor(
        [service_spec(name, env) for name in names], log_dir=log_dir, stop_event=stop
    )
    if not stop.is_set():
        supervisor.start_all()
    try:
        supervisor.watch()
    except KeyboardInterrupt:
        pass
    finally:
        codes = supervisor.stop()
        typer.echo(f"stopped: {codes}")
        if embedded:
            embedded.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    _mount_groups()
    app()


if __name__ == "__main__":
    main()
