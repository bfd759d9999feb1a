"""Policies the backtest and the simulator service can trade with, behind one `Policy` protocol.

- built-in baselines: `buy-and-hold`, `sentiment-rule`, `random` (seeded);
- `HttpPolicy`: the policy server over KServe v1 (`POST {url}/v1/models/policy:predict`);
  a timeout, an HTTP error or an answer that does not validate becomes `hold`, with a metric,
  a log line and `fallback_reason` set, never an exception;
- a saved LLM policy folder, through the `folder_loader` a caller passes to `make_policy`
  (services.policy.folder_policy: the market library never imports a service).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import httpx
import numpy as np
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from services.common.market_state import ACTIONS, Action, Decision, MarketState

log = logging.getLogger(__name__)

POLICY_FALLBACKS = Counter(
    "rlmf_simulator_policy_fallbacks_total",
    "Decisions that fell back to hold because the policy failed",
    ["reason"],
)
POLICY_LATENCY = Histogram(
    "rlmf_simulator_policy_latency_seconds",
    "Time one policy request took",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@runtime_checkable
class Policy(Protocol):
    """Anything that turns states into one decision each, in order."""

    name: str

    def decide(self, states: list[MarketState]) -> list[Decision]: ...


def _one_hot(action: str) -> dict[str, float]:
    return {a: 1.0 if a == action else 0.0 for a in ACTIONS}


class BuyAndHold:
    """Buy with all cash at the first decision, then hold."""

    name = "buy-and-hold"

    def decide(self, states: list[MarketState]) -> list[Decision]:
        out = []
        for s in states:
            action: Action = "buy" if s.cash > 0 and s.position == 0 else "hold"
            out.append(
                Decision(
                    action=action,
                    probabilities=_one_hot(action),
                    model_version="baseline:buy-and-hold",
                )
            )
        return out


class SentimentRule:
    """Buy when the day's news sentiment is above `threshold`, sell below -threshold, else hold."""

    name = "sentiment-rule"

    def __init__(self, threshold: float = 0.2) -> None:
        self.threshold = threshold

    def decide(self, states: list[MarketState]) -> list[Decision]:
        out = []
        for s in states:
            score = s.sentiment or 0.0
            action: Action = (
                "buy" if score > self.threshold else "sell" if score < -self.threshold else "hold"
            )
            out.append(
                Decision(
                    action=action,
                    probabilities=_one_hot(action),
                    explanation=f"sentiment {score:+.2f} vs threshold {self.threshold}",
                    model_version="baseline:sentiment-rule",
                )
            )
        return out


class RandomPolicy:
    """Uniformly random actions from a seeded generator (same seed, same decisions)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def decide(self, states: list[MarketState]) -> list[Decision]:
        picks = self.rng.integers(0, len(ACTIONS), size=len(states))
        probs = {a: 1.0 / len(ACTIONS) for a in ACTIONS}
        return [
            Decision(
                action=cast(Action, ACTIONS[int(i)]),
                probabilities=probs,
                model_version=f"baseline:random:{self.seed}",
            )
            for i in picks
        ]


class HttpPolicy:
    """A KServe v1 client of the policy server; failures fall back to hold."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        model_name: str = "policy",
        client: httpx.Client | None = None,
        explain_every: int = 0,
        explain_timeout_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = self.url
        self.endpoint = f"{self.url}/v1/models/{model_name}:predict"
        self.client = client or httpx.Client(timeout=timeout_s)
        # SEP's explain step costs a short generation, so it is asked for on every Nth call
        # only (0: never), with its own, longer timeout.
        self.explain_every = explain_every
        self.explain_timeout_s = explain_timeout_s
        self._calls = 0

    def decide(self, states: list[MarketState]) -> list[Decision]:
        if not states:
            return []
        self._calls += 1
        explain = self.explain_every > 0 and self._calls % self.explain_every == 0
        body: dict[str, Any] = {"instances": [s.model_dump(mode="json") for s in states]}
        extra: dict[str, Any] = {}
        if explain:
            body["parameters"] = {"explain": True}
            extra["timeout"] = self.explain_timeout_s
        try:
            with POLICY_LATENCY.time():
                response = self.client.post(self.endpoint, json=body, **extra)
            response.raise_for_status()
            predictions = response.json()["predictions"]
            if not isinstance(predictions, list) or len(predictions) != len(states):
                raise ValueError(f"expected {len(states)} predictions, got {predictions!r:.200}")
            return [Decision.model_validate(p) for p in predictions]
        except httpx.TimeoutException as exc:
            return self._fallback("timeout", exc, len(states))
        except httpx.HTTPError as exc:
            return self._fallback("http_error", exc, len(states))
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            return self._fallback("bad_answer", exc, len(states))

    def _fallback(self, reason: str, exc: BaseException, n: int) -> list[Decision]:
        POLICY_FALLBACKS.labels(reason).inc(n)
        log.warning("policy %s failed (%s: %.300s); holding", self.endpoint, reason, exc)
        return [hold_decision(f"{reason}: {exc}"[:500]) for _ in range(n)]

    def close(self) -> None:
        self.client.close()


def hold_decision(reason: str, model_version: str = "fallback") -> Decision:
    """The decision used whenever the policy could not answer."""
    return Decision(
        action="hold",
        probabilities=_one_hot("hold"),
        model_version=model_version,
        fallback_reason=reason,
    )


BASELINES = ("buy-and-hold", "sentiment-rule", "random")


def make_policy(
    spec: str,
    seed: int = 0,
    timeout_s: float = 5.0,
    folder_loader: Callable[[str], Policy] | None = None,
) -> Policy:
    """A policy from a baseline name, an http(s) URL or, given `folder_loader` (the policy
    service's `load_folder_policy`; the market library never imports a service), a folder.

    Raises:
        ValueError: `spec` is none of those.
    """
    if spec == "buy-and-hold":
        return BuyAndHold()
    if spec == "sentiment-rule":
        return SentimentRule()
    if spec == "random":
        return RandomPolicy(seed)
    if spec.startswith(("http://", "https://")):
        return HttpPolicy(spec, timeout_s)
    if folder_loader is not None and Path(spec).is_dir():
        return folder_loader(spec)
    raise ValueError(
        f"policy {spec!r} is not a baseline ({', '.join(BASELINES)}), an http(s) URL"
        + (" or a folder" if folder_loader is not None else "")
    )
