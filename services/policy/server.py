"""The policy as a KServe model server: v1 and v2 predict, micro-batching, and hot reload.

`load()` verifies and loads the artifact and only then sets `ready`; `preprocess` parses v1 and
v2 payloads (InvalidInput -> 400); `predict` runs the micro-batched model; `postprocess` shapes
the answer. Two routes are added beside KServe's own:

  POST /v1/models/<name>:reload  {"model_dir": "..."}  load + verify beside the old, then swap
  GET  /v1/models/<name>:status                        version, manifest, explain mode

Reload is guarded three ways: a bearer token (or, without one, loopback clients only), the
reload root, and the artifact's signature (with a public key). A caller learns nothing about a
folder that is not a verified artifact: missing, unreadable and unsigned all read the same.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from services.common import metrics as common_metrics
from services.common.body_limit import BodyLimitMiddleware
from services.common.device import resolve_placement
from services.common.market_state import MarketState
from services.policy import metrics
from services.policy.actor_critic import LLMActorCritic, PolicyDecision
from services.policy.approval import Approval, ApprovalError, check_sequence, read_approval
from services.policy.artifact_signing import load_public_key
from services.policy.artifacts import (
    MANIFEST,
    REWARD_MODEL,
    ArtifactError,
    UnverifiedArtifact,
    load_verified,
    verified_copy,
)
from services.policy.batcher import MicroBatcher
from services.policy.explain import ExplainConfig, Explainer, RewardScorer, SequenceClassifierScorer
from services.policy.openapi import RELOAD_DOC, STATUS_DOC, document_api
from services.policy.protocol import (
    Limits,
    ParsedRequest,
    parse_v1,
    parse_v2,
    v1_response,
    v2_response,
)
from services.policy.settings import PolicySettings, is_loopback

log = logging.getLogger(__name__)


class ReloadRefused(RuntimeError):
    """A reload's folder failed to load or verify; the old model is still serving.

    `public` is what the caller is told: the reason, unless the folder was never shown to be
    an artifact (then only that, so the route does not tell which paths exist)."""

    def __init__(self, detail: str, public: str) -> None:
        super().__init__(detail)
        self.public = public


@dataclass(frozen=True)
class ServedModel:
    """What one load serves: the model, and the explainer the server calls after it decided."""

    model: LLMActorCritic
    explainer: Explainer
    approval: Approval | None = None
    """The approval it serves under (approval.py); None for a candidate, which only trades in
    shadow."""


class PolicyModel(Model):
    """The FLAG-Trader policy behind KServe's v1/v2 data plane."""

    def __init__(self, settings: PolicySettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.limits = Limits(
            settings.max_instances, settings.max_request_bytes, settings.max_features
        )
        self._current: ServedModel | None = None
        self._scorer: RewardScorer | None = None
        self._public_key = (
            load_public_key(settings.artifact_public_key_file)
            if settings.artifact_public_key_file is not None
            else None
        )
        approval_key_file = settings.approval_public_key_file or settings.artifact_public_key_file
        self._approval_key = (
            load_public_key(approval_key_file) if approval_key_file is not None else None
        )
        self._served_sequence: int | None = None
        """The sequence of the last approval served: nothing older is served after it."""
        self._reload_lock = asyncio.Lock()
        self._batcher: MicroBatcher[MarketState, PolicyDecision] = MicroBatcher(
            self._run_batch, settings.max_batch, settings.max_wait_ms / 1000
        )

    # --- loading ------------------------------------------------------------------------------

    def load(self) -> bool:
        """Load and verify the artifact at settings.model_dir; ready only if that succeeded.

        Raises:
            ArtifactError: the folder is missing or fails verification.
        """
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        torch.manual_seed(self.settings.seed)
        self._scorer = self._load_scorer()
        self._swap(self._load_verified(self.settings.model_dir))
        self.ready = True
        return self.ready

    def _load_scorer(self) -> RewardScorer | None:
        folder = self.settings.reward_model_dir
        if folder is None:
            if self.settings.best_of_n > 1:
                log.warning(
                    "no reward model configured (RLMF_POLICY_REWARD_MODEL_DIR): best-of-n is "
                    "off unless the artifact carries its own (%s/)",
                    REWARD_MODEL,
                )
            return None
        return SequenceClassifierScorer(folder)

    def _load_verified(self, folder: Path) -> ServedModel:
        """Verify hashes (and the signature, with a public key) into a private copy, load that
        copy, attach the explainer, and warm up (prefix cache + one decision), so the model is
        complete before anyone can see it. An artifact that carries its own reward model (a
        cycle trained one beside it) ranks explanations with that one."""
        placement = resolve_placement(self.settings.device, self.settings.dtype)
        with verified_copy(folder, self._public_key, self.settings.staging_dir) as (manifest, copy):
            approval = self._approval(folder, (copy / MANIFEST).read_bytes())
            model = load_verified(copy, manifest, dtype=placement.dtype, shown=folder)
            scorer = self._scorer
            if (copy / REWARD_MODEL).is_dir():
                scorer = SequenceClassifierScorer(copy / REWARD_MODEL)
                log.info("best-of-n ranks with the reward model inside %s", folder)
        model.to(placement.device)
        if self.settings.day_cache_dir is not None:
            model.attach_day_cache(
                self.settings.day_cache_memory_mb << 20, self.settings.day_cache_dir
            )
        explainer = Explainer(
            ExplainConfig(
                self.settings.explain_max_tokens, self.settings.best_of_n, seed=self.settings.seed
            ),
            scorer,
        )
        model.prefix_cache()
        return ServedModel(model, explainer, approval)

    def _approval(self, folder: Path, manifest_bytes: bytes) -> Approval | None:
        """The folder's approval of its verified manifest, signed (with a public key) and not
        older than the last one served; checked before the weights are read.

        Raises:
            ApprovalError: unapproved, badly signed, or a downgrade (counted by reason).
        """
        try:
            record = read_approval(folder, manifest_bytes, self._approval_key)
        except ApprovalError:
            metrics.APPROVAL_REFUSED.labels("unapproved").inc()
            raise
        try:
            check_sequence(folder, record, self._served_sequence)
        except ApprovalError:
            metrics.APPROVAL_REFUSED.labels("downgrade").inc()
            raise
        return record

    def _swap(self, served: ServedModel) -> None:
        # One reference assignment: a batch already running keeps the model it started with.
        self._current = served
        if served.approval is not None:
            self._served_sequence = served.approval.sequence
            metrics.APPROVAL_SEQUENCE.set(served.approval.sequence)
        model = served.model
        metrics.BEST_OF_N_ACTIVE.set(1 if served.explainer.best_of_n_active else 0)
        manifest = getattr(model, "manifest", None)
        metrics.MODEL_INFO.info(
            {
                "version": model.model_version,
                "parent_version": str(getattr(manifest, "parent_version", None) or ""),
                "base_model": str(getattr(manifest, "base_model", "")),
            }
        )
        log.info("serving policy version %s", model.model_version)

    @property
    def current(self) -> LLMActorCritic:
        return self.served.model

    @property
    def served(self) -> ServedModel:
        if self._current is None:
            raise RuntimeError("policy model not loaded")
        return self._current

    async def reload(self, folder: Path) -> dict[str, str]:
        """Load + verify `folder` beside the serving model, then swap it in.

        Raises:
            ReloadRefused: the folder failed; the old model keeps serving and the alert is raised.
        """
        async with self._reload_lock:
            previous = self.current.model_version
            loop = asyncio.get_running_loop()
            try:
                served = await loop.run_in_executor(None, self._load_verified, folder)
            # Any failure (bad hash, unreadable weights, wrong shapes) must leave the old model
            # serving and raise the alert, so nothing is let through to a 500 here.
            except Exception as exc:
                metrics.RELOADS.labels("refused").inc()
                metrics.RELOAD_FAILED.set(1)
                if isinstance(exc, ArtifactError):
                    common_metrics.ARTIFACT_HASH_MISMATCH.labels("policy").inc()
                log.error("reload of %s refused, still serving %s: %s", folder, previous, exc)
                public = str(exc)
                if isinstance(exc, UnverifiedArtifact):
                    signed = "signed " if self._public_key is not None else ""
                    public = f"{folder} is not a {signed}policy artifact"
                raise ReloadRefused(str(exc), public) from exc
            self._swap(served)
            metrics.RELOADS.labels("ok").inc()
            metrics.RELOAD_FAILED.set(0)
            return {"model_version": served.model.model_version, "previous_version": previous}

    def stop(self) -> None:
        self._batcher.close()
        super().stop()

    # --- the data plane hooks -----------------------------------------------------------------

    def validate(self, payload: Any) -> Any:
        """preprocess already validated; KServe's generic check does not know our payload type."""
        return payload

    def preprocess(
        self, payload: dict[str, Any] | bytes | InferRequest, headers: dict[str, str] | None = None
    ) -> ParsedRequest:
        """Parse a v1 body or a v2 InferRequest into market states.

        Returns:
            ParsedRequest with the states, the explain flag, the protocol and the request id.
        Raises:
            InvalidInput: missing fields, wrong types, too many instances, oversized text.
        """
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        try:
            if isinstance(payload, InferRequest):
                parsed = parse_v2(payload, self.limits)
            else:
                parsed = parse_v1(payload, self.limits)
            self._check_lengths(parsed.states)
        except InvalidInput:
            metrics.BAD_REQUESTS.labels(protocol).inc()
            raise
        return parsed

    def _check_lengths(self, states: list[MarketState]) -> None:
        counts = self.current.suffix_token_counts(states)
        for i, count in enumerate(counts):
            if count > self.settings.max_state_tokens:
                raise InvalidInput(
                    f"instance {i}: state is {count} tokens,"
                    f" more than {self.settings.max_state_tokens}"
                    " (shorten news_summary or send fewer features)"
                )

    async def predict(
        self, payload: ParsedRequest, headers: dict[str, str] | None = None
    ) -> tuple[ParsedRequest, list[PolicyDecision]]:
        """Decide for the parsed states, micro-batched with concurrent requests.

        Returns:
            (the request, one decision per state).
        """
        decisions = await self._batcher.submit(payload.states, payload.explain)
        return payload, decisions

    def postprocess(
        self,
        result: tuple[ParsedRequest, list[PolicyDecision]],
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """v1: {"predictions": [...]}; v2: an InferResponse with named output tensors."""
        request, decisions = result
        if request.protocol == "v2":
            return v2_response(self.name, request.request_id, decisions, request.explain)
        return v1_response(decisions)

    def _run_batch(self, states: list[MarketState], explain: object) -> list[PolicyDecision]:
        """Runs on the batcher's worker thread with whichever model is current at batch start."""
        served = self.served
        with metrics.BATCH_LATENCY.time():
            decisions = served.model.decide(states, use_prefix_cache=self.settings.use_prefix_cache)
            if explain:
                decisions = served.explainer.explain_decisions(served.model, states, decisions)
        metrics.BATCH_SIZE.observe(len(states))
        for d in decisions:
            metrics.DECISIONS.labels(d.action, d.model_version).inc()
        return decisions

    def status(self) -> dict[str, Any]:
        model, explainer = self.served.model, self.served.explainer
        manifest = getattr(model, "manifest", None)
        return {
            "model_version": model.model_version,
            "manifest": manifest.model_dump(mode="json", exclude={"files"}) if manifest else None,
            "explain": explainer.status,
            "best_of_n_active": explainer.best_of_n_active,
            "micro_batching": {
                "max_batch": self.settings.max_batch,
                "max_wait_ms": self.settings.max_wait_ms,
            },
            "prefix_cache": self.settings.use_prefix_cache,
        }


def read_reload_token(settings: PolicySettings) -> str | None:
    """The reload route's bearer token from RLMF_POLICY_RELOAD_TOKEN_FILE (None when unset).

    Raises:
        ValueError: the file is unreadable or empty (a guard that silently fell open is worse
            than a server that does not start).
    """
    path = settings.reload_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read RLMF_POLICY_RELOAD_TOKEN_FILE {path}: {exc}") from exc
    if not token:
        raise ValueError(f"RLMF_POLICY_RELOAD_TOKEN_FILE {path} is empty")
    return token


async def _stage(candidate: Any, folder: Path) -> JSONResponse:
    """Stage `folder` as the candidate; a folder that fails verification is refused (422) and
    whatever was staged before stays."""
    try:
        return JSONResponse(await candidate.stage(folder))
    except (ArtifactError, OSError, ValueError) as exc:
        metrics.RELOADS.labels("refused").inc()
        log.error("candidate %s refused: %s", folder, exc)
        return _error(f"candidate refused: {folder} is not a verified policy artifact", 422)


def _error(text: str, status: int, **headers: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status, headers=headers or None)


def _is_loopback_client(request: Request) -> bool:
    return request.client is not None and is_loopback(request.client.host)


def _reload_gate(request: Request, token: str | None) -> JSONResponse | None:
    """401/403 unless the caller may reload: the bearer token when one is set, else loopback."""
    if token is None:
        if _is_loopback_client(request):
            return None
        return _error(
            "reload is open to loopback clients only: this server has no "
            "RLMF_POLICY_RELOAD_TOKEN_FILE",
            403,
        )
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(supplied.encode(), token.encode()):
        return None
    return _error(
        "reload needs the bearer token (Authorization: Bearer <token>)",
        401,
        **{"WWW-Authenticate": "Bearer"},
    )


def _reload_folder(raw: str, root: Path) -> Path | None:
    """`raw` as an absolute folder inside `root`, or None. Checked on the path as written and
    again with links followed, without telling the two apart (or what exists)."""
    if "\x00" in raw:
        return None
    try:
        written = Path(os.path.normpath(root / raw))
        resolved = written.resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    if written.is_relative_to(root) and resolved.is_relative_to(root):
        return resolved
    return None


async def _reload_body(request: Request) -> str | JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error('body must be JSON: {"model_dir": "..."}', 400)
    if not isinstance(body, dict) or not isinstance(body.get("model_dir"), str):
        return _error('missing string field "model_dir"', 400)
    return str(body["model_dir"])


def _versions(*models: Any) -> Callable[[str], str | None]:
    """The version each named model serves now (None: no such model, or none loaded)."""

    def version_of(name: str) -> str | None:
        for served in models:
            if served is not None and served.name == name and served.ready:
                return str(served.current.model_version)
        return None

    return version_of


def install_routes(app: FastAPI, model: PolicyModel, candidate: Any = None) -> None:
    """Add the reload (when enabled) and status routes, the streaming body limit, the OpenAPI
    document of what the routes answer, and turn FastAPI's 422 body errors into 400s. With a
    `candidate` (services/policy/candidate.py), its :reload stages a student in shadow and its
    :retire (reload enabled, same guard) takes it out."""
    token = read_reload_token(model.settings)
    root = model.settings.reload_folder_root
    if model.settings.artifact_public_key_file is None:
        log.warning(
            "artifact signatures are not checked (no RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE): "
            "serving on %s only; reloads only from inside %s",
            model.settings.bind_host,
            root,
        )

    async def reload_route(name: str, request: Request) -> JSONResponse:
        if name not in (model.name, candidate.name if candidate else model.name):
            return _error(f"no model named {name}", 404)
        refused = _reload_gate(request, token)
        if refused is not None:
            return refused
        raw = await _reload_body(request)
        if isinstance(raw, JSONResponse):
            return raw
        folder = _reload_folder(raw, root)
        if folder is None:
            return _error(f"{raw} is outside the reload root {root}", 403)
        if candidate is not None and name == candidate.name:
            return await _stage(candidate, folder)
        try:
            result = await model.reload(folder)
        except ReloadRefused as exc:
            served = model.current.model_version
            return _error(f"reload refused, still serving {served}: {exc.public}", 422)
        return JSONResponse(result)

    async def retire_route(name: str, request: Request) -> JSONResponse:
        if candidate is None or name != candidate.name:
            return _error(f"no candidate named {name}", 404)
        refused = _reload_gate(request, token)
        if refused is not None:
            return refused
        return JSONResponse(candidate.retire())

    async def status_route(name: str) -> JSONResponse:
        if candidate is not None and name == candidate.name:
            if not candidate.staged:
                return _error("no candidate in shadow", 404)
            return JSONResponse(candidate.status())
        if name != model.name:
            return JSONResponse({"error": f"no model named {name}"}, status_code=404)
        return JSONResponse(model.status())

    async def bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.BAD_REQUESTS.labels("v2").inc()
        # FastAPI reports each alternative of the body's Union; the raw-bytes one is noise here.
        problems = [
            f"{'.'.join(str(p) for p in err['loc'][2:]) or 'body'}: {err['msg']}"
            for err in exc.errors()
            if "bytes" not in err.get("loc", ())[:2]
        ]
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, status_code=400)

    async def repository_route(model_name: str) -> JSONResponse:
        # KServe's model repository API would load or unload any model unauthenticated.
        return _error(
            f"the model repository API is off; POST /v1/models/{model.name}:reload swaps models",
            403,
        )

    for action in ("load", "unload"):
        # Added before KServe adds its own at start, so these are the ones that match.
        app.add_api_route(
            f"/v2/repository/models/{{model_name}}/{action}", repository_route, methods=["POST"]
        )
    if model.settings.reload_enabled:
        app.add_api_route("/v1/models/{name}:reload", reload_route, methods=["POST"], **RELOAD_DOC)
        app.add_api_route("/v1/models/{name}:retire", retire_route, methods=["POST"])
    app.add_api_route("/v1/models/{name}:status", status_route, methods=["GET"], **STATUS_DOC)
    app.add_exception_handler(RequestValidationError, bad_body)  # type: ignore[arg-type]
    # Counted while the body streams in: KServe's v1 route and FastAPI's v2 body parsing both
    # read the whole body before our own checks would see it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=model.settings.max_request_bytes)
    # Outermost, so every inference request counts, a refused body (413) included.
    app.add_middleware(metrics.RequestMetricsMiddleware, version_of=_versions(model, candidate))
    document_api(app)
