"""HTTP clients of the policy server: decisions over KServe v1, and the trainer's reload call."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.common.market_state import MarketState
from services.policy.actor_critic import PolicyDecision


class PolicyClientError(RuntimeError):
    """The server answered with an error; `status` is its HTTP status, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"policy server answered {status}: {message}")
        self.status = status


def _error(response: httpx.Response) -> PolicyClientError:
    try:
        body = response.json()
        message = body.get("error") or body.get("detail") or response.text
    except ValueError:
        message = response.text
    return PolicyClientError(response.status_code, str(message))


class PolicyClient:
    """`PolicyClient("http://127.0.0.1:8080").decide(states)` -> one PolicyDecision per state."""

    def __init__(self, base_url: str, timeout: float = 30.0, model_name: str = "policy") -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def decide(self, states: list[MarketState], explain: bool = False) -> list[PolicyDecision]:
        body = {
            "instances": [s.model_dump(mode="json") for s in states],
            "parameters": {"explain": explain},
        }
        response = self._http.post(f"/v1/models/{self.model_name}:predict", json=body)
        if response.status_code != 200:
            raise _error(response)
        predictions = response.json()["predictions"]
        if len(predictions) != len(states):
            raise PolicyClientError(200, f"{len(predictions)} predictions for {len(states)} states")
        return [PolicyDecision.model_validate(p) for p in predictions]

    def status(self) -> dict[str, object]:
        response = self._http.get(f"/v1/models/{self.model_name}:status")
        if response.status_code != 200:
            raise _error(response)
        return response.json()

    def ready(self) -> bool:
        try:
            response = self._http.get(f"/v1/models/{self.model_name}")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and bool(response.json().get("ready"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def request_reload(
    url: str, folder: str | Path, timeout: float = 300.0, model_name: str = "policy"
) -> dict[str, str]:
    """Ask the server at `url` to load, verify and swap in the artifact at `folder`.

    Returns {"model_version", "previous_version"}; raises PolicyClientError if refused (422:
    the folder failed verification and the old model keeps serving).
    """
    response = httpx.post(
        f"{url.rstrip('/')}/v1/models/{model_name}:reload",
        json={"model_dir": str(Path(folder).resolve())},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise _error(response)
    return response.json()
