"""`rlmf policy ...`: make the version-0 artifact, sign, approve and verify one, run the server,
ask for decisions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

GROUP_NAME = "policy"
app = typer.Typer(
    no_args_is_help=True, help="The FLAG-Trader policy: artifacts and the KServe server."
)

SIGNING_KEY_ENV = "RLMF_TRAINER_ARTIFACT_SIGNING_KEY_FILE"
"""The trainer's key setting: a pod of the trainer image with the Secret mounted has it set."""


def _signing_key_option(required_with: str) -> Path | None:
    return typer.Option(
        None,
        envvar=SIGNING_KEY_ENV,
        help=f"Ed25519 private key (PEM) that signs{required_with} ({SIGNING_KEY_ENV}).",
    )


@app.command()
def keygen(
    out_dir: Path = typer.Option(Path("keys"), help="Folder for private.pem and public.pem."),
    force: bool = typer.Option(False, help="Replace existing key files."),
) -> None:
    """Write a new Ed25519 key pair: private.pem (owner-only) signs, public.pem verifies."""
    from services.policy.artifact_signing import generate_key_pair

    private, public = out_dir / "private.pem", out_dir / "public.pem"
    existing = [p for p in (private, public) if p.exists()]
    if existing and not force:
        typer.echo(f"error: {existing[0]} exists; a new key would orphan every signature "
                   "made with it (--force replaces it)", err=True)  # fmt: skip
        raise typer.Exit(2)
    generate_key_pair(private, public)
    typer.echo(f"{private} (private: the trainer's Secret only)\n{public} (public)")


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
    sign: bool = typer.Option(False, help="Sign the manifest and the approval (--signing-key)."),
    signing_key: Path | None = _signing_key_option(" with --sign"),
    point_current: bool = typer.Option(
        False, "--current", help="Name the new folder in its parent's `current` file."
    ),
) -> None:
    """Turn a plain Hugging Face folder into the version-0 teacher artifact, approved to serve
    (with --sign, its manifest and approval signed)."""
    from services.policy.approval import ApprovalError
    from services.policy.artifacts import ArtifactError, init_artifact, teacher_config

    if sign and signing_key is None:
        typer.echo(f"error: --sign needs --signing-key or {SIGNING_KEY_ENV}", err=True)
        raise typer.Exit(2)

    recipe = teacher_config()
    config = dataclasses.replace(
        recipe,
        trainable_top_k=recipe.trainable_top_k if trainable_top_k is None else trainable_top_k,
        state_head=recipe.state_head if state_head is None else state_head,
        train_lm_layers=(recipe.train_lm_layers if train_lm_layers is None else train_lm_layers)
        or use_lora,
        use_lora=use_lora,
    )
    key = signing_key if sign else None
    try:
        manifest = init_artifact(base, out, version, config, overwrite=overwrite, signing_key=key)
    except (ArtifactError, ApprovalError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if point_current:
        _point_current(out)
    signed = ", signed and approved" if key else ", approved (unsigned)"
    typer.echo(f"{out} version {manifest.version} ({len(manifest.files)} files{signed})")


def _point_current(folder: Path) -> None:
    """`current` beside `folder` names it: where the trainer finds its teacher."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".current-", dir=folder.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(folder.name + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder.parent / "current")


@app.command()
def sign(
    folder: Path = typer.Argument(..., help="Artifact folder."),
    signing_key: Path | None = _signing_key_option(" the manifest"),
    approve: bool = typer.Option(
        False,
        help="Also approve it to serve (stage manual), numbered above every approval beside it: "
        "how an operator brings an older version back on purpose.",
    ),
) -> None:
    """Sign an artifact's manifest (after checking every file against it)."""
    from services.policy.approval import ApprovalError, Evidence, approve_artifact, next_sequence
    from services.policy.artifacts import ArtifactError, sign_artifact, verify_artifact

    if signing_key is None:
        typer.echo(f"error: no key: --signing-key or {SIGNING_KEY_ENV}", err=True)
        raise typer.Exit(2)
    try:
        manifest = verify_artifact(folder)  # never vouch for a folder whose files do not match
        sign_artifact(folder, signing_key)
        if approve:
            record = approve_artifact(
                folder,
                sequence=next_sequence(folder.parent),
                evidence=Evidence(stage="manual"),
                signing_key=signing_key,
            )
    except (ArtifactError, ApprovalError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    approved = f", approved as sequence {record.sequence}" if approve else ""
    typer.echo(f"signed {folder} version {manifest.version}{approved}")


@app.command()
def verify(
    folder: Path = typer.Argument(..., help="Artifact folder."),
    public_key: Path | None = typer.Option(
        None, help="Also check the manifest's and the approval's signatures with this key."
    ),
) -> None:
    """Check every file's sha256 against the manifest, and say whether it is approved."""
    from services.policy.approval import ApprovalError, read_approval
    from services.policy.artifact_signing import SigningError, load_public_key
    from services.policy.artifacts import MANIFEST, ArtifactError, verify_artifact

    try:
        key = load_public_key(public_key) if public_key is not None else None
        manifest = verify_artifact(folder, key)
    except (ArtifactError, SigningError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    signed = " (signature verified)" if key is not None else ""
    typer.echo(
        f"ok: {folder} version {manifest.version}, {len(manifest.files)} files verified{signed}"
    )
    try:
        record = read_approval(folder, (folder / MANIFEST).read_bytes(), key)
    except ApprovalError as exc:
        typer.echo(f"not approved: {exc}")
        return
    typer.echo(f"approved: sequence {record.sequence}, stage {record.evidence.stage}")


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
