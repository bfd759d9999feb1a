"""How the simulator asks its policy: a failure becomes hold, an unreachable policy server can
be waited for, and the policy's own progress can be saved and restored across a restart."""

from __future__ import annotations

import logging
import time
from typing import Any

from services.common.market_state import Decision, MarketState
from services.market.baseline_policies import (
    POLICY_FALLBACKS,
    HttpPolicy,
    Policy,
    RandomPolicy,
    hold_decision,
)

log = logging.getLogger(__name__)

# HttpPolicy's fallback reasons that mean "the server did not answer" (down, restarting, not
# loaded yet): worth waiting for. A bad answer would be as bad the second time.
UNAVAILABLE = ("http_error", "timeout")


class PolicyCaller:
    """Wraps a `Policy` for the simulator, one state at a time."""

    def __init__(self, policy: Policy, unavailable_wait_s: float = 0.0) -> None:
        self.policy = policy
        self.unavailable_wait_s = unavailable_wait_s

    @property
    def name(self) -> str:
        return str(getattr(self.policy, "name", "?"))

    def decide(self, state: MarketState) -> Decision:
        """The policy's decision; a server that does not answer is asked again until
        `unavailable_wait_s` has passed (each retry is the same call: it keeps the HTTP
        policy's explain-every-Nth count), then any failure becomes hold."""
        deadline = time.monotonic() + self.unavailable_wait_s
        progress = self.get_state()
        delay = 0.2
        while True:
            decision = self._ask(state)
            unavailable = decision.fallback_reason.startswith(UNAVAILABLE)
            if not unavailable or time.monotonic() + delay > deadline:
                return decision
            log.warning("policy %s unavailable; asking again in %.1fs", self.name, delay)
            self.set_state(progress)
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def _ask(self, state: MarketState) -> Decision:
        try:
            return self.policy.decide([state])[0]
        except Exception as exc:  # noqa: BLE001 - a policy bug must not stop trading; it is logged and counted
            POLICY_FALLBACKS.labels("policy_error").inc()
            log.warning("policy %s raised %s: %s; holding", self.name, type(exc).__name__, exc)
            return hold_decision(f"policy_error: {exc}"[:500])

    def get_state(self) -> dict[str, Any]:
        """The policy's progress as JSON-able data. The baselines in services/market keep it in
        attributes with no accessor, so it is read here, for the two that have any."""
        if isinstance(self.policy, HttpPolicy):
            return {"calls": self.policy._calls}
        if isinstance(self.policy, RandomPolicy):
            return {"rng": self.policy.rng.bit_generator.state}
        return {}

    def set_state(self, saved: dict[str, Any]) -> None:
        if isinstance(self.policy, HttpPolicy) and "calls" in saved:
            self.policy._calls = int(saved["calls"])
        elif isinstance(self.policy, RandomPolicy) and "rng" in saved:
            self.policy.rng.bit_generator.state = saved["rng"]
