"""The policy service process: parse KServe's flags plus ours, load the artifact, serve it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kserve import ModelServer

from services.common.service import EXIT_CONFIG
from services.policy.artifacts import ArtifactError
from services.policy.server import PolicyModel, install_routes
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """KServe's own server flags (--http_port, --grpc_port, --enable_grpc, ...) plus ours."""
    from kserve.model_server import parser as kserve_parser

    parser = argparse.ArgumentParser(parents=[kserve_parser], description="Serve the RLMF policy.")
    parser.add_argument(
        "--model_dir",
        "--model-dir",
        dest="model_dir",
        default=None,
        help="Artifact folder to serve (default RLMF_POLICY_MODEL_DIR).",
    )
    parser.set_defaults(model_name=PolicySettings().model_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {"model_name": args.model_name}
    if args.model_dir:
        overrides["model_dir"] = Path(args.model_dir)
    settings = PolicySettings(**overrides)
    model = PolicyModel(settings)
    try:
        model.load()
    except (ArtifactError, OSError, ValueError) as exc:
        log.error("cannot serve %s: %s", settings.model_dir, exc)
        print(f"error: cannot serve {settings.model_dir}: {exc}", file=sys.stderr)
        # A missing or tampered artifact stays so across restarts: say so to the supervisor.
        return EXIT_CONFIG
    from kserve.model_server import app as kserve_app

    install_routes(kserve_app, model)
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=1,
        enable_latency_logging=args.enable_latency_logging,
    )
    server.start([model])
    return 0
