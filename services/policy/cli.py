"""`rlmf policy ...`: make the version-0 artifact, verify one, run the server, ask for decisions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

GROUP_NAME = "policy"
app = typer.Typer(
    no_args_is_help=True, help="The FLAG-Trader policy: artifacts and the KServe server."
)


@app.command()
def init(
    base: Path = typer.Option(Path("models/SmolLM2-135M-Instruct"), help="Plain HF model folder."),
    out: Path = typer.Option(Path("models/policy/v0"), help="Artifact folder to write."),
    version: str = typer.Option("v0", help="Version recorded in the manifest."),
    trainable_top_k: int | None = typer.Option(
        None, help="Top decoder layers above the split (default: the recipe's, teacher_config)."
    ),
    state_head: bool | None = typer.Option(
        None, help="A linear head on the split's last state (default: the recipe's)."
    ),
    train_lm_layers: bool | None = typer.Option(
        None, help="Also train those layers' weights (default: the recipe's)."
    ),
    use_lora: bool = typer.Option(False, help="Train LoRA adapters on those layers instead."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder."),
) -> None:
    """Turn a plain Hugging Face folder into the version-0 teacher artifact."""
    from services.policy.artifacts import ArtifactError, init_artifact, teacher_config

    recipe = teacher_config()
    config = dataclasses.replace(
        recipe,
        trainable_top_k=recipe.trainable_top_k if trainable_top_k is None else trainable_top_k,
        state_head=recipe.state_head if state_head is None else state_head,
        train_lm_layers=(recipe.train_lm_layers if train_lm_layers is None else train_lm_layers)
        or use_lora,
        use_lora=use_lora,
    )
    try:
        manifest = init_artifact(base, out, version, config, overwrite=overwrite)
    except ArtifactError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{out} version {manifest.version} ({len(manifest.files)} files)")


@app.command()
def verify(folder: Path = typer.Argument(..., help="Artifact folder.")) -> None:
    """Check every file's sha256 against the manifest."""
    from services.policy.artifacts import ArtifactError, verify_artifact

    try:
        manifest = verify_artifact(folder)
    except ArtifactError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"ok: {folder} version {manifest.version}, {len(manifest.files)} files verified")


KSERVE_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=KSERVE_ARGS)
def run(
    ctx: typer.Context,
    model_dir: Path = typer.Option(None, help="Artifact folder (default RLMF_POLICY_MODEL_DIR)."),
    http_port: int = typer.Option(8080, help="HTTP port."),
    grpc_port: int = typer.Option(8081, help="gRPC port (with --enable_grpc true)."),
) -> None:
    """Run the KServe model server; extra flags go to KServe's own parser."""
    from services.policy.service import main

    argv = ["--http_port", str(http_port), "--grpc_port", str(grpc_port), *ctx.args]
    if model_dir is not None:
        argv += ["--model_dir", str(model_dir)]
    raise typer.Exit(main(argv))


# The verb before `run`: kept, hidden and deprecated, for one release.
app.command("serve", context_settings=KSERVE_ARGS, hidden=True, deprecated=True)(run)


@app.command()
def decide(
    state_file: Path = typer.Argument(..., help="JSON file: one MarketState or a list of them."),
    url: str = typer.Option("http://127.0.0.1:8080", help="Policy server."),
    explain: bool = typer.Option(False, help="Ask for a rationale."),
) -> None:
    """Ask a running server for decisions and print them as JSON lines."""
    from services.common.market_state import MarketState
    from services.policy.client import PolicyClient, PolicyClientError

    raw = json.loads(state_file.read_text())
    states = [MarketState.model_validate(s) for s in (raw if isinstance(raw, list) else [raw])]
    try:
        with PolicyClient(url) as client:
            for decision in client.decide(states, explain=explain):
                typer.echo(decision.model_dump_json())
    except PolicyClientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
