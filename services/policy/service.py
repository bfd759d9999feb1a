"""The policy service process: parse KServe's flags plus ours, load the artifact, serve it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kserve import ModelServer
from pydantic import ValidationError

from services.common.service import EXIT_CONFIG
from services.policy.approval import ApprovalError
from services.policy.artifact_signing import SigningError
from services.policy.artifacts import ArtifactError
from services.policy.candidate import CandidateModel
from services.policy.candidate_pointer import CandidatePointer
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


class BoundModelServer(ModelServer):
    """KServe's ModelServer, bound to `host`: KServe itself always binds 0.0.0.0."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._host = host

    def setup_event_loop(self) -> None:
        # start() calls this once it has built the REST server and before that server binds,
        # so the address set here is the one uvicorn binds (KServe has no option for it).
        if self._rest_server is not None:
            self._rest_server.config.host = self._host
        super().setup_event_loop()


def _fail(settings_dir: object, exc: Exception) -> int:
    log.error("cannot serve %s: %s", settings_dir, exc)
    print(f"error: cannot serve {settings_dir}: {exc}", file=sys.stderr)
    # A missing or tampered artifact, or a bad setting, stays so across restarts: say so to
    # the supervisor.
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {"model_name": args.model_name}
    if args.model_dir:
        overrides["model_dir"] = Path(args.model_dir)
    try:
        settings = PolicySettings(**overrides)
    except ValidationError as exc:
        return _fail(overrides.get("model_dir", "the policy"), exc)
    try:
        model = PolicyModel(settings)
        model.load()
        candidate = CandidateModel(settings, model)
        from kserve.model_server import app as kserve_app

        install_routes(kserve_app, model, candidate)
    except (ArtifactError, ApprovalError, SigningError, OSError, ValueError) as exc:
        return _fail(settings.model_dir, exc)
    enable_grpc = args.enable_grpc and not settings.loopback_only
    if args.enable_grpc and not enable_grpc:
        log.warning("gRPC is off: KServe's gRPC server binds every address, and this one "
                    "serves unsigned artifacts on loopback only")  # fmt: skip
    server = BoundModelServer(
        settings.bind_host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=enable_grpc,
        workers=1,
        enable_latency_logging=args.enable_latency_logging,
    )
    server.register_model(candidate)  # not ready (404s) until a student is staged in shadow
    if settings.candidate_pointer is not None:
        CandidatePointer(candidate, settings.candidate_pointer, settings.candidate_poll_s).start()
    server.start([model])
    return 0
