"""The policy behind a real kserve.ModelServer on a loopback port (a subprocess per module):
v1/v2 round trips, 400s for bad requests, micro-batching, metrics, and hot reload under load."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from services.common import topics
from services.common.market_state import ACTIONS, MarketState
from services.common.supervisor import EXIT_CONFIG
from services.market.baseline_policies import HttpPolicy
from services.policy.approval import Evidence, approve_artifact, next_sequence
from services.policy.artifact_signing import generate_key_pair
from services.policy.artifacts import (
    init_artifact,
    load_artifact,
    save_artifact,
    sha256_file,
    sign_artifact,
)
from services.policy.client import PolicyClient, PolicyClientError, request_reload
from tests.helpers import PolicyServer, spawn_policy_server, start_policy_server, wait_until

# A model server process per module (~20 s to start) and one more for the tampered artifact.
pytestmark = pytest.mark.slow

STATE = {
    "ticker": "MSFT",
    "as_of": "2024-01-02T21:00:00Z",
    "recent_closes": [100.0, 101.5],
    "cash": 1e4,
}


def _state(i: int) -> MarketState:
    return MarketState(
        ticker="MSFT",
        as_of=datetime(2024, 1, 2, 21, tzinfo=UTC),
        recent_closes=[100.0 + k for k in range(1 + i % 5)],
        cash=1000.0,
        sentiment=0.1,
    )


LIMIT = 200_000
"""The servers' body limit: far under the padded bodies below, far over every honest request."""

# Small batches and a short batching window keep the tiny model's answers quick.
POLICY_ENV = {
    "RLMF_POLICY_MAX_WAIT_MS": "30",
    "RLMF_POLICY_MAX_INSTANCES": "8",
    "RLMF_POLICY_MAX_STATE_TOKENS": "400",
    "RLMF_POLICY_MAX_REQUEST_BYTES": str(LIMIT),
}


@pytest.fixture(scope="module")
def artifacts(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policy-artifacts")
    init_artifact(tiny_llama_dir, root / "v0", "v0")
    model = load_artifact(root / "v0")
    with torch.no_grad():  # a "trained" student: a different value head
        model.value_head[2].bias.fill_(5.0)
    save_artifact(
        model, root / "v1", {"version": "v1", "parent_version": "v0", "base_model": "tiny-llama"}
    )
    approve_artifact(root / "v1", sequence=1, evidence=Evidence(stage="gate", p_value=0.01))
    unapproved = root / "v1-unapproved"  # a student the gate refused: built, never approved
    shutil.copytree(root / "v1", unapproved)
    (unapproved / "approval.json").unlink()
    bad = root / "v2-tampered"
    shutil.copytree(root / "v1", bad)
    with (bad / "model.safetensors").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    return {"v0": root / "v0", "v1": root / "v1", "bad": bad, "unapproved": unapproved}


def _reapproved(folder: Path, key: Path | None = None) -> Path:
    """`folder` approved again above every approval beside it (`rlmf policy sign --approve`):
    how an operator brings an older version back on purpose. Reloading the older version
    without it is a downgrade, refused."""
    approve_artifact(
        folder, sequence=next_sequence(folder.parent), evidence=Evidence(stage="manual"),
        signing_key=key,
    )  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def server(
    artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyServer]:
    log = tmp_path_factory.mktemp("logs") / "policy.log"
    env = POLICY_ENV | {"RLMF_POLICY_RELOAD_ROOT": str(artifacts["v0"].parent)}
    srv = start_policy_server(artifacts["v0"], log, env)
    try:
        yield srv
    finally:
        srv.stop()


def _predict(url: str, body: object, **kw: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/models/policy:predict", content=content, timeout=60, **kw)


def test_v1_round_trip(server: PolicyServer) -> None:
    r = _predict(server.url, {"instances": [STATE, {**STATE, "ticker": "GOOGL"}]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2
    version = PolicyClient(server.url).status()["model_version"]
    for p in predictions:
        assert p["action"] in ACTIONS and set(p["probabilities"]) == set(ACTIONS)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["model_version"] == version and isinstance(p["value"], float)
        assert "explanation" not in p


def test_v2_round_trip(server: PolicyServer) -> None:
    body = {
        "id": "req-7",
        "inputs": [
            {
                "name": "state",
                "shape": [2],
                "datatype": "BYTES",
                "data": [json.dumps(STATE), json.dumps({**STATE, "cash": 0})],
            }
        ],
    }
    r = httpx.post(f"{server.url}/v2/models/policy/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7"
    tensors = {o["name"]: o for o in out["outputs"]}
    assert (
        tensors["probabilities"]["shape"] == [2, 3]
        and tensors["probabilities"]["datatype"] == "FP32"
    )
    probs = tensors["probabilities"]["data"]
    assert sum(probs[:3]) == pytest.approx(1.0, abs=1e-5) and sum(probs[3:]) == pytest.approx(
        1.0, abs=1e-5
    )
    assert all(a in ACTIONS for a in tensors["action"]["data"])
    assert tensors["value"]["shape"] == [2] and len(tensors["model_version"]["data"]) == 2
    # v1 and v2 agree on the same state
    v1 = _predict(server.url, {"instances": [STATE]}).json()["predictions"][0]
    assert probs[:3] == pytest.approx([v1["probabilities"][a] for a in ACTIONS], abs=1e-6)


def test_client_decide_and_explanation(server: PolicyServer) -> None:
    with PolicyClient(server.url) as client:
        decisions = client.decide([_state(1), _state(2)], explain=True)
        status = client.status()
    assert [d.action in ACTIONS for d in decisions] == [True, True]
    assert all(isinstance(d.explanation, str) for d in decisions)
    # No reward model is configured, so best-of-n is off and the status says so.
    assert status["best_of_n_active"] is False and "greedy" in str(status["explain"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{broken", "request format"),  # KServe parses the JSON and says so
        ({"states": []}, "unknown top-level field"),
        ({"instances": "MSFT"}, "must be a list"),
        (
            {"instances": [{k: v for k, v in STATE.items() if k != "recent_closes"}]},
            "recent_closes",
        ),
        ({"instances": [{**STATE, "cash": "lots"}]}, "cash"),
        ({"instances": [{**STATE, "ticker": 7}]}, "ticker"),
        ({"instances": [STATE] * 9}, "too many instances: 9"),
        ({"instances": [{**STATE, "news_summary": "n" * 2001}]}, "news_summary"),
        ({"instances": [{**STATE, "news_summary": "word " * 390}]}, "tokens, more than 400"),
        ({"instances": [{**STATE, "recent_closes": [1.0, 0.0]}]}, "recent_closes"),
    ],
)
def test_bad_v1_requests_get_400_with_the_reason(
    server: PolicyServer, body: object, message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server.url}/v1/models/policy:predict", content=content, timeout=60)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": 3}, "inputs"),
        ({"inputs": [{"name": "state", "shape": [1], "datatype": "BYTES"}]}, "data"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["{}"]}]},
            'missing input "state"',
        ),
        (
            {"inputs": [{"name": "state", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            "datatype BYTES",
        ),
        (
            {
                "inputs": [
                    {"name": "state", "shape": [1], "datatype": "BYTES", "data": ['{"ticker": 1}']}
                ]
            },
            "instance 0",
        ),
    ],
)
def test_bad_v2_requests_get_400_with_the_reason(
    server: PolicyServer, body: object, message: str
) -> None:
    r = httpx.post(f"{server.url}/v2/models/policy/infer", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_concurrent_requests_are_micro_batched_and_metered(server: PolicyServer) -> None:
    def count(text: str, name: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    before = httpx.get(f"{server.url}/metrics").text
    threads = [
        threading.Thread(target=_predict, args=(server.url, {"instances": [STATE]}))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = httpx.get(f"{server.url}/metrics").text
    batches = count(after, "rlmf_policy_batch_size_count") - count(
        before, "rlmf_policy_batch_size_count"
    )
    states = count(after, "rlmf_policy_batch_size_sum") - count(
        before, "rlmf_policy_batch_size_sum"
    )
    assert states == 8 and batches < 8, f"{batches} batches for 8 concurrent requests"
    assert 'rlmf_policy_decisions_total{action="' in after
    assert "rlmf_policy_model_info{" in after
    assert "request_predict_seconds_bucket" in after  # KServe's own histograms


def test_every_inference_request_is_counted_and_timed_by_model_version(
    server: PolicyServer,
) -> None:
    """The canary's live check reads these two series (services/trainer/live_checks.py): each
    request to :predict or /infer counts under the version serving it, with its status code,
    and other routes (metrics, status) do not count."""

    def sample(text: str, name: str, **labels: str) -> float:
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(name + "{") and all(w in line for w in wanted)
        )

    before = httpx.get(f"{server.url}/metrics").text
    version = httpx.get(f"{server.url}/v1/models/policy:status").json()["model_version"]
    assert _predict(server.url, {"instances": [STATE]}).status_code == 200
    assert _predict(server.url, {"instances": "not a list"}).status_code == 400
    assert _predict(server.url, b" " * (LIMIT + 1)).status_code == 413
    assert httpx.get(f"{server.url}/v1/models/policy:status").status_code == 200
    after = httpx.get(f"{server.url}/metrics").text
    mine = {"model": "policy", "model_version": version}
    for code in ("200", "400", "413"):
        name = "rlmf_policy_requests_total"
        grew = sample(after, name, code=code, **mine) - sample(before, name, code=code, **mine)
        assert grew == 1, (code, grew)
    timed = sample(after, "rlmf_policy_request_seconds_count", **mine) - sample(
        before, "rlmf_policy_request_seconds_count", **mine
    )
    assert timed == 3  # the status and metrics reads are not inference: not counted


def test_reload_under_load_loses_nothing_and_switches_version(
    server: PolicyServer, artifacts: dict[str, Path]
) -> None:
    stop = threading.Event()
    seen: list[tuple[int, float, str, int]] = []  # (worker, start time, version, status)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        with PolicyClient(server.url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    seen.append((w, started, client.decide([_state(w)])[0].model_version, 200))
                except (PolicyClientError, httpx.HTTPError) as exc:
                    errors.append(exc)

    request_reload(server.url, _reapproved(artifacts["v0"]))  # known starting point
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]

    def every_worker(answered: Callable[[float, str], bool]) -> bool:
        # A worker's error ends the wait at once: the assertion below reports it.
        return bool(errors) or all(
            any(ww == w and answered(started, v) for ww, started, v, _ in seen) for w in range(4)
        )

    for t in threads:
        t.start()
    # Under load means every client is busy when the reload comes.
    wait_until(lambda: every_worker(lambda _, v: v == "v0"), 60, "a v0 answer for every client")
    result = request_reload(server.url, _reapproved(artifacts["v1"]))  # the next promotion
    swapped_at = time.monotonic()
    wait_until(
        lambda: every_worker(lambda started, _: started > swapped_at),
        60,
        "an answer to a request sent after the swap for every client",
    )
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert result == {"model_version": "v1", "previous_version": "v0"}
    versions = [v for _, _, v, _ in seen]
    assert "v0" in versions and "v1" in versions
    assert all(v == "v1" for _, started, v, _ in seen if started > swapped_at)
    for w in range(4):  # per client, the version only ever moves forward
        mine = [v for ww, _, v, _ in sorted(seen, key=lambda s: s[1]) if ww == w]
        assert mine == sorted(mine), mine

    # A folder that fails verification is refused; v1 keeps serving and the alert is raised.
    with pytest.raises(PolicyClientError, match="model.safetensors does not match") as refused:
        request_reload(server.url, artifacts["bad"])
    assert refused.value.status == 422
    assert PolicyClient(server.url).decide([_state(0)])[0].model_version == "v1"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "rlmf_policy_reload_failed 1.0" in metrics
    assert request_reload(server.url, _reapproved(artifacts["v0"]))["model_version"] == "v0"
    assert "rlmf_policy_reload_failed 0.0" in httpx.get(f"{server.url}/metrics").text


def _refused(url: str, reason: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    line = f'rlmf_policy_approval_refused_total{{reason="{reason}"}}'
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_only_an_approved_version_not_older_than_the_served_one_is_served(
    server: PolicyServer, artifacts: dict[str, Path]
) -> None:
    """A student built but never approved is refused by name, and so is a version whose
    approval is older than the one serving (a downgrade); each refusal is counted, the
    serving model stays, and the older version goes in once approved again."""
    request_reload(server.url, _reapproved(artifacts["v0"]))
    before = _refused(server.url, "unapproved"), _refused(server.url, "downgrade")
    with pytest.raises(PolicyClientError, match="not approved to serve") as unapproved:
        request_reload(server.url, artifacts["unapproved"])
    assert unapproved.value.status == 422
    approve_artifact(artifacts["v1"], sequence=1, evidence=Evidence(stage="gate"))  # old number
    with pytest.raises(PolicyClientError, match="older than sequence .* a downgrade") as older:
        request_reload(server.url, artifacts["v1"])
    assert older.value.status == 422
    assert PolicyClient(server.url).status()["model_version"] == "v0"
    assert (_refused(server.url, "unapproved"), _refused(server.url, "downgrade")) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert request_reload(server.url, _reapproved(artifacts["v1"]))["model_version"] == "v1"


def test_reload_refuses_bad_bodies_and_folders_outside_the_root(
    server: PolicyServer, tmp_path: Path
) -> None:
    url = f"{server.url}/v1/models/policy:reload"
    assert httpx.post(url, content=b"nope", timeout=30).status_code == 400
    r = httpx.post(url, json={"dir": "x"}, timeout=30)
    assert r.status_code == 400 and "model_dir" in r.json()["error"]
    with pytest.raises(PolicyClientError, match="outside the reload root") as refused:
        request_reload(server.url, tmp_path)
    assert refused.value.status == 403


def test_server_refuses_to_start_on_a_tampered_artifact(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    srv = spawn_policy_server(artifacts["bad"], tmp_path / "bad.log", POLICY_ENV)
    try:
        assert srv.process.wait(timeout=120) == EXIT_CONFIG  # a restart would not help
    finally:
        if srv.process.poll() is None:
            srv.stop()
    assert "model.safetensors does not match" in srv.log.read_text()


# --- the body limit, counted while the body streams in -------------------------------------


def test_oversized_bodies_get_413_on_v1_and_v2_whatever_part_is_large(
    server: PolicyServer,
) -> None:
    """Padding that the parsers ignore (JSON whitespace) or do not count (a v2 request's id)
    made bodies of any size answer 200; now anything over the limit is a 413."""
    padded = ('{"instances": [' + json.dumps(STATE) + "]" + " " * (2 * LIMIT) + "}").encode()
    r = _predict(server.url, padded)
    assert r.status_code == 413, r.text[:300]
    assert f"over the limit of {LIMIT}" in r.json()["error"]
    v2 = {
        "id": "x" * (2 * LIMIT),
        "inputs": [
            {"name": "state", "shape": [1], "datatype": "BYTES", "data": [json.dumps(STATE)]}
        ],
    }
    r = httpx.post(f"{server.url}/v2/models/policy/infer", json=v2, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert _predict(server.url, {"instances": [STATE]}).status_code == 200  # honest sizes pass


def test_a_streamed_body_is_cut_at_the_limit_not_read_whole(server: PolicyServer) -> None:
    """No Content-Length (chunked): the server stops reading once past the limit, answers 413
    and closes, instead of holding a 50 MiB body in memory first."""
    sent = 0
    total = 50 << 20

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"instances": [' + json.dumps(STATE).encode() + b"]"
        chunk = b" " * (64 << 10)
        while sent < total:
            sent += len(chunk)
            yield chunk
        yield b"}"

    try:
        status: int | None = httpx.post(
            f"{server.url}/v1/models/policy:predict", content=body(), timeout=60
        ).status_code
    except httpx.TransportError:
        status = None  # the server closed the connection while the client was still sending
    assert status in (413, None), status
    # What was sent before the close is the limit plus the socket buffers, not 50 MiB.
    assert sent < total // 4, f"{sent} bytes went out before the server stopped reading"
    assert _predict(server.url, {"instances": [STATE]}).status_code == 200


# --- signed artifacts and the guarded reload route ------------------------------------------

TOKEN = "reload-token-for-tests"


@pytest.fixture(scope="module")
def signed(artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """v0 and v1 signed with a fresh key; `forged` is v1 with another value head and its
    manifest hashes recomputed, as someone who can write the folder but lacks the key would."""
    keys = tmp_path_factory.mktemp("keys")
    generate_key_pair(keys / "signing.pem", keys / "public.pem")
    (keys / "token").write_text(TOKEN)
    root = tmp_path_factory.mktemp("signed-models")
    for sequence, version in enumerate(("v0", "v1")):
        shutil.copytree(artifacts[version], root / version)
        sign_artifact(root / version, keys / "signing.pem")
        approve_artifact(
            root / version, sequence=sequence, evidence=Evidence(stage="gate"),
            signing_key=keys / "signing.pem",
        )  # fmt: skip
    forged = root / "v1-forged"
    shutil.copytree(root / "v1", forged)
    with (forged / "value_head.safetensors").open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x3f")
    manifest = json.loads((forged / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(forged / rel) for rel in manifest["files"]}
    (forged / "manifest.json").write_text(json.dumps(manifest))
    (root / "just-a-folder").mkdir()
    (root / "just-a-folder" / "notes.txt").write_text("not a model")
    return {"root": root, "keys": keys, "v0": root / "v0", "v1": root / "v1", "forged": forged}


@pytest.fixture(scope="module")
def signed_server(
    signed: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyServer]:
    env = POLICY_ENV | {
        "RLMF_POLICY_ARTIFACT_PUBLIC_KEY_FILE": str(signed["keys"] / "public.pem"),
        "RLMF_POLICY_RELOAD_TOKEN_FILE": str(signed["keys"] / "token"),
        "RLMF_POLICY_RELOAD_ROOT": str(signed["root"]),
        "RLMF_POLICY_HTTP_HOST": "127.0.0.1",
    }
    srv = start_policy_server(signed["v0"], tmp_path_factory.mktemp("logs") / "signed.log", env)
    try:
        yield srv
    finally:
        srv.stop()


def _reload(url: str, folder: Path | str, token: str | None = TOKEN) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(
        f"{url}/v1/models/policy:reload",
        json={"model_dir": str(folder)},
        headers=headers,
        timeout=300,
    )


def test_a_forged_manifest_is_refused_and_the_old_model_keeps_serving(
    signed_server: PolicyServer, signed: dict[str, Path]
) -> None:
    """Recomputing the manifest's hashes was enough to swap the model; without the trainer's
    key the folder is now refused, and the signed v1 still goes in."""
    r = _reload(signed_server.url, signed["forged"])
    assert r.status_code == 422, r.text
    assert r.json()["error"].endswith("is not a signed policy artifact")
    assert PolicyClient(signed_server.url).status()["model_version"] == "v0"
    r = _reload(signed_server.url, signed["v1"])
    assert r.status_code == 200, r.text
    assert r.json() == {"model_version": "v1", "previous_version": "v0"}
    reapproved = _reapproved(signed["v0"], signed["keys"] / "signing.pem")
    assert _reload(signed_server.url, reapproved).status_code == 200


def test_an_approval_not_signed_with_the_key_is_refused(
    signed_server: PolicyServer, signed: dict[str, Path], tmp_path: Path
) -> None:
    """A signed student whose approval someone else wrote (the gate never passed it): its
    origin is the trainer's, its approval is not, and the server refuses it by name."""
    _reload(signed_server.url, _reapproved(signed["v0"], signed["keys"] / "signing.pem"))
    self_approved = signed["root"] / "v1-self-approved"
    shutil.copytree(signed["v1"], self_approved)
    generate_key_pair(tmp_path / "other.pem", tmp_path / "other.pub")
    _reapproved(self_approved, tmp_path / "other.pem")
    r = _reload(signed_server.url, self_approved)
    assert r.status_code == 422, r.text
    assert "approval.json's signature does not verify" in r.json()["error"]
    assert PolicyClient(signed_server.url).status()["model_version"] == "v0"


def test_reload_needs_the_bearer_token(
    signed_server: PolicyServer, signed: dict[str, Path]
) -> None:
    for token in (None, "wrong"):
        r = _reload(signed_server.url, signed["v1"], token)
        assert r.status_code == 401, r.text
        assert "bearer token" in r.json()["error"]
    assert PolicyClient(signed_server.url).status()["model_version"] == "v0"


def test_refusals_do_not_tell_which_paths_exist(
    signed_server: PolicyServer, signed: dict[str, Path], tmp_path: Path
) -> None:
    """Missing, an ordinary folder, and an unsigned copy read the same, bar the path; and so
    do an existing and a missing folder outside the root."""
    root = signed["root"]
    unsigned = root / "v1-unsigned"
    shutil.copytree(signed["v1"], unsigned)
    (unsigned / "manifest.sig").unlink()
    answers = {}
    for name in ("no-such-version", "just-a-folder", "v1-unsigned"):
        r = _reload(signed_server.url, root / name)
        assert r.status_code == 422, r.text
        answers[name] = r.json()["error"].replace(str(root / name), "<folder>")
    assert len(set(answers.values())) == 1, answers
    outside = [_reload(signed_server.url, p) for p in (tmp_path, tmp_path / "nothing-here")]
    assert [r.status_code for r in outside] == [403, 403]
    texts = {r.json()["error"].split(" is outside")[1] for r in outside}
    assert len(texts) == 1, texts


# --- the candidate in shadow -----------------------------------------------------------------


def _candidate(url: str, action: str, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/policy-candidate:{action}", timeout=120, **kw)


def test_a_candidate_is_served_beside_the_teacher_until_retired(
    server: PolicyServer, artifacts: dict[str, Path]
) -> None:
    """No candidate: its status is a 404 and its predict a 503 (KServe: not ready). Staged: it
    answers as its own version
    while the teacher keeps answering as itself. A tampered folder is refused and the staged
    candidate stays; retired, it is a 404 again."""
    request_reload(server.url, _reapproved(artifacts["v0"]))  # known teacher
    assert _candidate(server.url, "predict", json={"instances": [STATE]}).status_code == 503
    assert httpx.get(f"{server.url}/v1/models/policy-candidate:status").status_code == 404
    # A candidate only trades in shadow: it needs no approval.
    staged = request_reload(server.url, artifacts["unapproved"], model_name="policy-candidate")
    assert staged["model_version"] == "v1"
    shadow = _candidate(server.url, "predict", json={"instances": [STATE]})
    assert shadow.status_code == 200, shadow.text
    assert shadow.json()["predictions"][0]["model_version"] == "v1"
    live = _predict(server.url, {"instances": [STATE]})
    assert live.json()["predictions"][0]["model_version"] == "v0", "the teacher still serves"
    with pytest.raises(PolicyClientError, match="candidate refused"):
        request_reload(server.url, artifacts["bad"], model_name="policy-candidate")
    status = httpx.get(f"{server.url}/v1/models/policy-candidate:status").json()
    assert status["model_version"] == "v1"
    assert _candidate(server.url, "retire").json() == {"retired_version": "v1"}
    assert _candidate(server.url, "predict", json={"instances": [STATE]}).status_code == 503
    assert httpx.get(f"{server.url}/v1/models/policy-candidate:status").status_code == 404


def test_the_simulator_trades_a_staged_candidate_in_a_shadow_account(
    server: PolicyServer, artifacts: dict[str, Path]
) -> None:
    """The simulator's Trader on the real server: no shadow bar before a candidate is staged;
    then each bar also goes to trading.shadow.v1 with the candidate's decision and both
    accounts' returns, the shadow account starting from the live one; the live decisions stay
    the teacher's. After a restart from the saved state the shadow account continues."""
    from services.simulator.service import Trader
    from services.simulator.session import BarData
    from services.simulator.settings import SimulatorSettings

    request_reload(server.url, _reapproved(artifacts["v0"]))
    _candidate(server.url, "retire")
    settings = SimulatorSettings(
        policy_url=server.url, wait_for_features=False, policy_timeout_s=60
    )
    trader = Trader(settings, HttpPolicy(server.url, timeout_s=60), None)
    start = datetime(2024, 1, 2, 21, tzinfo=UTC)

    def bar(day: int) -> BarData:
        close = 100.0 + day
        when = start + timedelta(days=day)
        return BarData("ACME", when, close, close * 1.01, close * 0.99, close, 1000.0)

    def shadow_of(day: int) -> list[Any]:
        return [o for o in trader.on_bar(bar(day)) if o.topic == topics.TRADING_SHADOW]

    assert shadow_of(0) == [] and shadow_of(1) == []
    request_reload(server.url, artifacts["v1"], model_name="policy-candidate")
    try:
        first = shadow_of(2)
        assert len(first) == 1
        message = first[0].payload
        assert message.decision.model_version == "v1" and message.teacher_version == "v0"
        assert message.shadow_bar == 1
        live_before = trader.shadow.accounts["ACME"].session  # type: ignore[union-attr]
        assert live_before is not trader.sessions["ACME"], "a copy, not the live session"
        saved = trader.export_state()
        restarted = Trader(settings, HttpPolicy(server.url, timeout_s=60), None)
        restarted.restore(saved)
        second = [o for o in restarted.on_bar(bar(3)) if o.topic == topics.TRADING_SHADOW]
        assert second[0].payload.shadow_bar == 2, "the shadow account survived the restart"
        again = [o for o in trader.on_bar(bar(3)) if o.topic == topics.TRADING_SHADOW]
        assert second[0].payload.shadow_net_worth == pytest.approx(
            again[0].payload.shadow_net_worth
        )
    finally:
        _candidate(server.url, "retire")
    assert shadow_of(4) == [], "retired: the shadow stretch is over"
