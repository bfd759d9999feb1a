"""The `rlmf` command: one sub-command group per service (each with `run`), plus the broker,
`up`, the demo and the configuration reference, grouped in `rlmf --help` by the job they serve.

docs/cli.md is generated from this app (`make docs`), so it is built when the module loads."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from services.common import json_logging
from services.common.broker import BrokerError, EmbeddedBroker
from services.common.model_files import ModelFilesError, default_models_dir
from services.common.settings import CONFIG_FILE_ENV, DEFAULT_PORTS, BusSettings
from services.common.supervisor import Supervisor, available_services, service_spec
from services.common.up_state import RunInfo, StateDir, now, running
from services.up.files import clear_ledger, ledger_dir

if TYPE_CHECKING:
    from services.up.page import LivePage

# `rlmf --help` lists the commands by the job they serve; a command in none goes last.
DEMO, STREAM, SERVICES, MODELS, CONFIG = (
    "Run the demo",
    "Stream your own market",
    "Services: `rlmf SERVICE run` runs one in the foreground",
    "Models and evaluation",
    "Configuration",
)
HELP_PANELS = {
    "demo": DEMO,
    "up": STREAM,
    "status": STREAM,
    "report": STREAM,
    "down": STREAM,
    "market": STREAM,
    "broker": STREAM,
    "ingest": SERVICES,
    "sentiment": SERVICES,
    "features": SERVICES,
    "policy": SERVICES,
    "simulator": SERVICES,
    "trainer": SERVICES,
    "promotion-watcher": SERVICES,
    "models": MODELS,
    "backtest": MODELS,
    "config": CONFIG,
}
PANEL_ORDER = (DEMO, STREAM, SERVICES, MODELS, CONFIG)


class JobGroup(TyperGroup):
    """Lists the commands panel by panel in PANEL_ORDER (help shows the panels in the order
    their first command comes), each panel's in the order HELP_PANELS names them."""

    # Any: typer's Context type lives in its private copy of click.
    def list_commands(self, ctx: Any) -> list[str]:
        names = list(HELP_PANELS)
        rank = {panel: i for i, panel in enumerate(PANEL_ORDER)}

        def key(name: str) -> tuple[int, int]:
            panel = HELP_PANELS.get(name)
            if panel is None:
                return len(PANEL_ORDER), 0
            return rank[panel], names.index(name)

        return sorted(super().list_commands(ctx), key=key)


app = typer.Typer(
    cls=JobGroup,
    no_args_is_help=True,
    help="RLMF: trade with an LLM policy, re-align it to the market.",
)


@app.callback()
def root(
    config: Path | None = typer.Option(
        None,
        "--config",
        exists=True,
        dir_okay=False,
        help=f"Configuration file (TOML; `rlmf config` lists its keys). Sets {CONFIG_FILE_ENV} "
        "for this command and every process it starts. Default: ./rlmf.toml if present.",
    ),
) -> None:
    """RLMF: trade with an LLM policy, re-align it to the market."""
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config.resolve())


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
    "services.promotion_watcher.cli",
    "services.config_cli",
    "services.common.models_cli",
    "services.demo.cli",
    "services.up.cli",
)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package is not there yet
        return False


def _mount_groups() -> None:
    """Mount every service's commands once (the module does on load; main() again is a no-op)."""
    if app.registered_groups:
        return
    for module_name in GROUP_MODULES:
        if not _module_exists(module_name):
            continue
        module = importlib.import_module(module_name)
        group = getattr(module, "app", None)
        if isinstance(group, typer.Typer):
            default_name = module_name.split(".")[1]
            app.add_typer(group, name=getattr(module, "GROUP_NAME", default_name))
            for old in getattr(module, "OLD_GROUP_NAMES", ()):
                app.add_typer(group, name=old, hidden=True, deprecated=True)
        register = getattr(module, "register", None)
        if callable(register):
            register(app)
    _set_help_panels()


def _set_help_panels() -> None:
    for group in app.registered_groups:
        group.rich_help_panel = HELP_PANELS.get(group.name or "", group.rich_help_panel)
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        command.rich_help_panel = HELP_PANELS.get(name, command.rich_help_panel)


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


# What `up` runs: the simulator trades what arrives on market.bars.v1 (live mode) with the
# policy server's decisions, and reads each bar's features from the Feast store the features
# service writes, once that bar's watermark is there.
POLICY_URL = f"http://127.0.0.1:{DEFAULT_PORTS['policy']}"
READY_PATHS = {"policy": "/v2/health/ready"}
"""Readiness URL path per service where it is not /readyz (KServe's own probe)."""


def _prepare_teacher(models_dir: Path, tiny: bool, fresh: bool = False) -> Path:
    """The policy artifact to serve: the one `current` names (unless `fresh`), else a v0.

    The base model folders are prepared first when missing (what `rlmf models prepare` does);
    `tiny` builds the teacher from the tiny random Llama instead of SmolLM2, in its own folder
    so that a later `up` without --tiny does not serve it."""
    from services.common.model_files import is_prepared, prepare_smollm2, save_tiny_llama

    base = prepare_smollm2(models_dir)
    if tiny:
        tiny_base = models_dir / "tiny-llama"
        base = tiny_base if is_prepared(tiny_base) else save_tiny_llama(tiny_base, base)
    root = models_dir / ("policy-tiny" if tiny else "policy")
    # The trainer reads this pointer (services/trainer/cycle.py, CURRENT) and moves it when it
    # promotes a student, so a restarted `up` serves the promoted model.
    pointer = root / "current"
    if pointer.is_file() and not fresh:
        return _approved_locally(root / pointer.read_text().strip())
    teacher = root / "v0"
    if not teacher.exists():
        from services.policy.artifacts import init_artifact, teacher_config

        typer.echo(f"creating the version-0 teacher {teacher} from {base}")
        init_artifact(base, teacher, "v0", teacher_config())
    pointer.write_text(f"{teacher.name}\n")
    return _approved_locally(teacher)


def _approved_locally(folder: Path) -> Path:
    """`folder`, approved to serve. The policy server serves only approved versions; a folder
    an earlier rlmf made and served on this machine (before approvals existed) has none, and
    `up` approves it as it found it (stage init, unsigned: on one machine nothing is signed),
    saying so, rather than refuse the user's own state."""
    from services.policy.approval import APPROVAL, Evidence, approve_artifact, next_sequence

    if folder.is_dir() and not (folder / APPROVAL).is_file():
        typer.echo(f"approving {folder} to serve: it was served before approvals existed")
        approve_artifact(
            folder, sequence=next_sequence(folder.parent), evidence=Evidence(stage="init")
        )
    return folder


def _service_env(teacher: Path, state: StateDir, tiny: bool) -> dict[str, dict[str, str]]:
    """Per service, the settings `up` gives it where the environment does not set them."""
    feast = {"RLMF_FEATURES_DATA_DIR": str(state.feast.resolve())}
    defaults = {
        # `up` applied the repo before any reader of it started (_apply_feast).
        "features": feast | {"RLMF_FEATURES_APPLY_ON_START": "false"},
        # --tiny is for quick runs: VADER scores news at once where SmolLM2 takes seconds.
        "sentiment": {"RLMF_SENTIMENT_BACKEND": "lexicon"} if tiny else {},
        # The day cache on disk, shared by the policy server (teacher and candidate) and the
        # trainer: a day the frozen base encoded once is not encoded again by any of them.
        "policy": {
            "RLMF_POLICY_MODEL_DIR": str(teacher.resolve()),
            "RLMF_POLICY_DAY_CACHE_DIR": str(state.day_cache.resolve()),
        },
        "simulator": feast
        | {
            "RLMF_SIMULATOR_MODE": "live",
            "RLMF_SIMULATOR_POLICY_URL": POLICY_URL,
            # SmolLM2 on a busy CPU: the first decision may take many seconds.
            "RLMF_SIMULATOR_POLICY_TIMEOUT_S": "60",
            # Point in time: the store may already hold a later bar's row in live mode.
            "RLMF_SIMULATOR_FEATURES_SOURCE": "feast",
            # The accounts survive a restart; the in-memory broker's topics do not, so the user
            # publishes the same file again and the bars already traded are skipped.
            "RLMF_SIMULATOR_STATE_FILE": str(state.simulator_state.resolve()),
            "RLMF_SIMULATOR_REPUBLISHED_BARS": "skip",
            # One line per traded bar, kept across restarts: `rlmf report` and the live page
            # draw from it, the broker's topics being gone after a restart.
            "RLMF_SIMULATOR_LEDGER_DIR": str(ledger_dir(state).resolve()),
        },
        "trainer": feast
        | {
            "RLMF_TRAINER_MODELS_DIR": str(teacher.resolve().parent),
            "RLMF_TRAINER_WORK_DIR": str(state.trainer.resolve()),
            "RLMF_TRAINER_POLICY_URL": POLICY_URL,
            # The bars the user streams, kept as the cluster's CronJob keeps them, with the
            # features service's features and news read point in time from the same store.
            "RLMF_TRAINER_DAY_CACHE_DIR": str(state.day_cache.resolve()),
            "RLMF_TRAINER_DATA_SOURCE": "kafka",
            "RLMF_TRAINER_FEATURES_SOURCE": "feast",
            # A student the backtest gate passes trades this many live bars in shadow before
            # the trainer decides on the backtest and the shadow bars together.
            "RLMF_TRAINER_SHADOW_BARS": "20",
        },
    }
    return {
        name: {k: v for k, v in env.items() if k not in os.environ}
        for name, env in defaults.items()
    }


def _apply_feast(features_env: dict[str, str], log_dir: Path) -> None:
    """`rlmf features apply` with the features service's settings, before any service starts:
    the simulator opens the store at start and cannot while the features service applies it."""
    argv = [sys.executable, "-m", "services.cli", "features", "apply"]
    typer.echo(f"applying the Feast repo (log in {log_dir}/feast-apply.log)")
    with (log_dir / "feast-apply.log").open("ab") as out:
        done = subprocess.run(
            argv, env={**os.environ, **features_env}, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise FeastApplyError(
            f"`rlmf features apply` exited with {done.returncode}; see {log_dir}/feast-apply.log"
        )


class FeastApplyError(RuntimeError):
    pass


def _run_info(
    bootstrap: str, embedded: bool, tickers: str, teacher: Path, log_dir: Path
) -> RunInfo:
    from services.market.walk_forward import minimum_bars
    from services.trainer.settings import TrainerSettings

    trainer = TrainerSettings()  # its windows come from the environment, as the trainer's do
    return RunInfo(
        pid=os.getpid(),
        pgid=os.getpgid(0),
        bootstrap=bootstrap,
        embedded_broker=embedded,
        tickers=[t.strip() for t in tickers.split(",") if t.strip()],
        models_root=str(teacher.resolve().parent),
        log_dir=str(log_dir.resolve()),
        bars_needed=minimum_bars(trainer.eval_days, trainer.embargo_days, trainer.train_days),
        started_at=now(),
    )


def _announce_ready(names: list[str], stop: threading.Event) -> None:
    """Print one line once every service's readiness probe answers 200."""
    import httpx

    waiting = list(names)
    while waiting and not stop.wait(1.0):
        for name in list(waiting):
            port = DEFAULT_PORTS[name.replace("_", "-")]  # promotion_watcher's port is its name's
            url = f"http://127.0.0.1:{port}{READY_PATHS.get(name, '/readyz')}"
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    waiting.remove(name)
            except httpx.HTTPError:
                continue  # not listening yet
    if not waiting:
        typer.echo("ready: every service answers its readiness probe")


@app.command()
def up(
    port: int = typer.Option(9092, help="Port for the embedded broker."),
    no_broker: bool = typer.Option(False, help="Use the broker at RLMF_BUS_BOOTSTRAP instead."),
    log_dir: Path = typer.Option(Path("rlmf-logs"), help="One log file per service goes here."),
    state_dir: Path = typer.Option(
        Path("rlmf-state"),
        help="The accounts, the trainer's history and cycles, the Feast store and up.json.",
    ),
    fresh: bool = typer.Option(
        False, help="Start over: forget the accounts, the history and the served student."
    ),
    tiny: bool = typer.Option(
        False,
        help="Serve a tiny random Llama (fast start, decisions are noise) and score news "
        "with VADER.",
    ),
    tickers: str | None = typer.Option(
        None,
        help="Restrict the universe to these tickers, e.g. ACME,GOOGL (default "
        "RLMF_FEATURES_TICKERS, else any ticker you publish).",
    ),
    page_port: int = typer.Option(
        8010, help="Serve the live page (`rlmf report`, refreshed) on 127.0.0.1:PORT; 0: off."
    ),
) -> None:
    """Start the broker and every service; restart one that dies; Ctrl-C or `rlmf down` stops
    all. Resumes where the last run in STATE_DIR stopped unless --fresh.

    Missing model folders and the version-0 policy teacher are made first."""
    json_logging.configure("up", json_format=False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll otherwise
    state = StateDir(state_dir)
    if running(state.read_run()):
        typer.echo(
            f"error: an rlmf up already runs from {state_dir} (`rlmf down` stops it)", err=True
        )
        raise typer.Exit(2)
    if fresh:
        state.clear()
        clear_ledger(state)
    try:
        teacher = _prepare_teacher(default_models_dir(), tiny, fresh)
    except (ModelFilesError, OSError, ValueError) as exc:
        typer.echo(f"error: cannot prepare the models: {exc}", err=True)
        raise typer.Exit(2) from exc
    log_dir.mkdir(parents=True, exist_ok=True)
    service_env = _service_env(teacher, state, tiny)
    universe = tickers if tickers is not None else os.environ.get("RLMF_FEATURES_TICKERS", "")
    env: dict[str, str] = {"RLMF_FEATURES_TICKERS": universe}
    try:
        _apply_feast(service_env["features"] | env, log_dir)
    except (FeastApplyError, OSError) as exc:
        typer.echo(f"error: cannot prepare the Feast store: {exc}", err=True)
        raise typer.Exit(2) from exc
    # SIGINT as well as SIGTERM only sets the event: a KeyboardInterrupt raised in the middle of
    # starting or stopping would skip the rest of the shutdown, the broker's included.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    embedded = page = None
    try:
        if not no_broker:
            embedded = EmbeddedBroker(port=port, log_path=log_dir / "broker.log").start()
            env |= {"RLMF_BUS_BOOTSTRAP": embedded.bootstrap, "RLMF_BUS_GROUP_PROTOCOL": "manual"}
        bootstrap = env.get("RLMF_BUS_BOOTSTRAP") or BusSettings().bootstrap
        state.write_run(_run_info(bootstrap, embedded is not None, universe, teacher, log_dir))
        page = _start_page(state, page_port)
        failed = _supervise(env, service_env, log_dir, stop)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        if page:
            page.stop()
        if embedded:
            embedded.stop()
        state.mark_stopped()
    if failed:
        raise typer.Exit(1)


def _start_page(state: StateDir, port: int) -> LivePage | None:
    """The live page on 127.0.0.1:port; a port already taken costs the page, not the run."""
    if port == 0:
        return None
    from services.up.page import LivePage

    try:
        page = LivePage(state, port).start()
    except OSError as exc:
        typer.echo(f"live page not started: cannot listen on 127.0.0.1:{port} ({exc})", err=True)
        return None
    typer.echo(f"live page: {page.url} (`rlmf report` writes the same page to files)")
    return page


def _supervise(
    env: dict[str, str],
    service_env: dict[str, dict[str, str]],
    log_dir: Path,
    stop: threading.Event,
) -> dict[str, str]:
    """Run every service until `stop` is set, then stop them all. Returns the services that
    could not start or kept dying, with the reason of each (empty after a clean run)."""
    names = available_services()
    typer.echo(f"starting: {', '.join(names) or 'no services yet'} (logs in {log_dir}/)")
    specs = [service_spec(name, service_env.get(name, {}) | env) for name in names]
    supervisor = Supervisor(specs, log_dir=log_dir, stop_event=stop)
    try:
        if not stop.is_set():
            supervisor.start_all()
            threading.Thread(target=_announce_ready, args=(names, stop), daemon=True).start()
        supervisor.watch()
    except RuntimeError as exc:  # a service kept dying and the supervisor gave up on it
        typer.echo(f"error: {exc}; stopping everything", err=True)
        return {"supervisor": str(exc)}
    finally:
        codes = supervisor.stop()
        typer.echo(f"stopped: {codes}")
    for name, reason in supervisor.failed.items():
        typer.echo(f"{name} could not start (not restarted): {reason}", err=True)
    return supervisor.failed


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    _mount_groups()
    app()


_mount_groups()


if __name__ == "__main__":
    main()
