"""The policy as a KServe model server: v1 and v2 predict, micro-batching, and hot reload.

`load()` verifies and loads the artifact and only then sets `ready`; `preprocess` parses v1 and
v2 payloads (InvalidInput -> 400); `predict` runs the micro-batched model; `postprocess` shapes
the answer. Two routes are added beside KServe's own:

  POST /v1/models/<name>:reload  {"model_dir": "..."}  load + verify beside the old, then swap
  GET  /v1/models/<name>:status                        version, manifest, explain mode
"""

from __future__ import annotations

import asyncio
import logging
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
from services.common.device import resolve_placement
from services.common.market_state import MarketState
from services.policy import metrics
from services.policy.actor_critic import LLMActorCritic, PolicyDecision
from services.policy.artifacts import REWARD_MODEL, ArtifactError, load_artifact
from services.policy.batcher import MicroBatcher
from services.policy.explain import ExplainConfig, Explainer, RewardScorer, SequenceClassifierScorer
from services.policy.protocol import (
    Limits,
    ParsedRequest,
    parse_v1,
    parse_v2,
    v1_response,
    v2_response,
)
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)


class ReloadRefused(RuntimeError):
    """A reload's folder failed to load or verify; the old model is still serving."""


@dataclass(frozen=True)
class ServedModel:
    """What one load serves: the model, and the explainer the server calls after it decided."""

    model: LLMActorCritic
    explainer: Explainer


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
        """Verify hashes, load, attach the explainer, and warm up (prefix cache + one decision),
        so the model is complete before anyone can see it. An artifact that carries its own
        reward model (a cycle trained one beside it) ranks explanations with that one."""
        placement = resolve_placement(self.settings.device, self.settings.dtype)
        model = load_artifact(folder, dtype=placement.dtype)
        model.to(placement.device)
        if self.settings.day_cache_dir is not None:
            model.attach_day_cache(
                self.settings.day_cache_memory_mb << 20, self.settings.day_cache_dir
            )
        scorer = self._scorer
        if (folder / REWARD_MODEL).is_dir():
            scorer = SequenceClassifierScorer(folder / REWARD_MODEL)
            log.info("best-of-n ranks with the reward model inside %s", folder)
        explainer = Explainer(
            ExplainConfig(
                self.settings.explain_max_tokens, self.settings.best_of_n, seed=self.settings.seed
            ),
            scorer,
        )
        model.prefix_cache()
        return ServedModel(model, explainer)

    def _swap(self, served: ServedModel) -> None:
        # One reference assignment: a batch already running keeps the model it started with.
        self._current = served
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
                raise ReloadRefused(str(exc)) from exc
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


def install_routes(app: FastAPI, model: PolicyModel) -> None:
    """Add the reload and status routes, and turn FastAPI's 422 body errors into 400s."""

    async def reload_route(name: str, request: Request) -> JSONResponse:
        if name != model.name:
            return JSONResponse({"error": f"no model named {name}"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(
                {"error": 'body must be JSON: {"model_dir": "..."}'}, status_code=400
            )
        if not isinstance(body, dict) or not isinstance(body.get("model_dir"), str):
            return JSONResponse({"error": 'missing string field "model_dir"'}, status_code=400)
        folder = Path(body["model_dir"]).resolve()
        root = model.settings.reload_root
        if root is not None and not folder.is_relative_to(root.resolve()):
            return JSONResponse(
                {"error": f"{folder} is outside the reload root {root}"}, status_code=403
            )
        try:
            result = await model.reload(folder)
        except ReloadRefused as exc:
            return JSONResponse(
                {"error": f"reload refused, still serving {model.current.model_version}: {exc}"},
                status_code=422,
            )
        return JSONResponse(result)

    async def status_route(name: str) -> JSONResponse:
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

    app.add_api_route("/v1/models/{name}:reload", reload_route, methods=["POST"])
    app.add_api_route("/v1/models/{name}:status", status_route, methods=["GET"])
    app.add_exception_handler(RequestValidationError, bad_body)  # type: ignore[arg-type]
