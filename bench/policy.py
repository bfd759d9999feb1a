"""Policy bench on the real SmolLM2-135M-Instruct: one JSON line on stdout, progress on stderr.

Measured in one run, on the same states, the compared modes alternating so that load from other
processes on a shared machine falls on both alike:
  1. bare model, batch 1, no prefix cache       -> decisions/s, p50/p99 latency
  2. bare model, batch 1, prefix cache          -> same; ratio to 1 (target >= 2x)
  3. bare model, a batch of 8 (= 8 clients), prefix cache -> decisions/s
  4. kserve.ModelServer (subprocess, loopback), 8 concurrent clients of 1 state each, micro-batching
     on -> decisions/s, p50/p99 request latency; ratio to 3 (target >= 0.7x)
  5. shadow trading: the server with a day cache and a candidate staged beside the teacher; per
     bar (a new day each), what the simulator asks: plain = the teacher's decision; shadow = the
     teacher's, the candidate's status and the candidate's decision on its own account -> the
     shadow/plain time per bar (the candidate reuses the teacher's frozen-base work for the day)
Iterations are few (a 135M model runs ~0.3-0.6 s per decision on 2 CPU cores); see "iterations".
Env: BENCH_POLICY_ITERS (batch-1 decisions per mode, default 6), BENCH_POLICY_ROUNDS
(rounds of 8 concurrent decisions per mode, default 2), BENCH_POLICY_THREADS (torch threads for the
bare model and the server; default: torch's own, or 1 when the load average already reaches the
core count, because two OpenMP threads spinning against other work ruin every figure).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.broker import free_port  # noqa: E402
from services.common.market_state import MarketState  # noqa: E402
from services.common.model_files import prepare_smollm2  # noqa: E402
from services.policy.actor_critic import LLMActorCritic  # noqa: E402
from services.policy.artifacts import init_artifact, load_artifact  # noqa: E402
from services.policy.client import PolicyClient  # noqa: E402

CONCURRENCY = 8


def log(msg: str) -> None:
    print(f"[bench/policy] {msg}", file=sys.stderr, flush=True)


def make_states(n: int, seed: int = 0) -> list[MarketState]:
    """Realistic states: 20 closes of a seeded random walk, 5 features, a news summary."""
    gen = torch.Generator().manual_seed(seed)
    states = []
    for i in range(n):
        steps = torch.randn(20, generator=gen) * 0.01
        closes = (400.0 * torch.cumprod(1 + steps, 0)).tolist()
        states.append(
            MarketState(
                ticker="MSFT",
                as_of=datetime(2024, 1, 2, 21, tzinfo=UTC) + timedelta(days=i),
                recent_closes=closes,
                position=float(i % 7),
                cash=5000.0 + 13 * i,
                features={
                    "rsi_14": 40 + i % 30,
                    "vol_20": 0.012,
                    "ret_5": 0.003 * (i % 5 - 2),
                    "macd": 0.5,
                    "sma_ratio": 1.01,
                },
                news_summary="Microsoft shares moved after the company reported cloud revenue "
                "ahead of estimates, while analysts flagged rising capital spending.",
                sentiment=round(0.1 * (i % 11 - 5), 2),
            )
        )
    return states


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def choose_threads() -> tuple[int, str]:
    """BENCH_POLICY_THREADS if set; else 1 when other work already oversubscribes the cores
    (measured here: two OpenMP threads spinning against other processes made every mode ~20x
    slower and the cache ratio meaningless), else torch's default."""
    if os.environ.get("BENCH_POLICY_THREADS"):
        return int(os.environ["BENCH_POLICY_THREADS"]), "BENCH_POLICY_THREADS"
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load >= cores:
        return 1, f"load average {load:.1f} >= {cores} cores at start"
    return torch.get_num_threads(), "torch default"


def summary(latencies: list[float], decisions: int, wall: float) -> dict[str, float]:
    return {
        "decisions_per_s": round(decisions / wall, 3),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


def batch1_pair(model: LLMActorCritic, states: list[MarketState]) -> tuple[dict, dict]:
    """Batch 1 without and with the prefix cache, alternating state by state, so load from
    other processes on a shared machine falls on both modes alike."""
    model.decide(states[:1], use_prefix_cache=False)  # warm-up
    model.decide(states[:1], use_prefix_cache=True)  # warm-up, builds the prefix cache
    times: dict[bool, list[float]] = {False: [], True: []}
    for state in states:
        for cached in (False, True):
            start = time.perf_counter()
            model.decide([state], use_prefix_cache=cached)
            times[cached].append(time.perf_counter() - start)
    off, on = (summary(times[c], len(states), sum(times[c])) for c in (False, True))
    return off, on


def start_server(
    artifact: Path, log_file: IO[bytes], extra: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {
        **os.environ,
        **(extra or {}),
        "RLMF_POLICY_MAX_BATCH": str(CONCURRENCY),
        "RLMF_POLICY_MAX_WAIT_MS": "20",
        "RLMF_POLICY_TORCH_THREADS": str(torch.get_num_threads()),
    }
    cmd = [sys.executable, "-m", "services.policy", "--model_dir", str(artifact)]
    cmd += ["--http_port", str(port), "--enable_grpc", "false"]
    cmd += ["--enable_latency_logging", "false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not PolicyClient(url, timeout=2).ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("policy server did not become ready")
        time.sleep(0.5)
    return url, proc


def served_round(url: str, states: list[MarketState]) -> tuple[list[float], float]:
    """8 clients send one state each at the same moment; returns latencies and wall time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(state: MarketState) -> None:
        with PolicyClient(url, timeout=300) as pc:
            t = time.perf_counter()
            pc.decide([state])
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(s,)) for s in states]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def concurrent_pair(
    model: LLMActorCritic, url: str, states: list[MarketState], rounds: int
) -> tuple[dict, dict]:
    """Bare model on a batch of 8 vs the server answering 8 concurrent clients, round by round
    alternating (the server idles while the bare model runs and the other way round)."""
    model.decide(states[:CONCURRENCY])
    served_round(url, states[:CONCURRENCY])  # warm-up
    bare_lat, bare_wall, srv_lat, srv_wall = [], 0.0, [], 0.0
    for r in range(rounds):
        group = states[r * CONCURRENCY : (r + 1) * CONCURRENCY]
        t = time.perf_counter()
        model.decide(group)
        elapsed = time.perf_counter() - t
        bare_lat += [elapsed] * len(group)  # every decision of the batch waits for all of it
        bare_wall += elapsed
        lat, wall = served_round(url, group)
        srv_lat += lat
        srv_wall += wall
    n = rounds * CONCURRENCY
    return summary(bare_lat, n, bare_wall), summary(srv_lat, n, srv_wall)


def shadow_pair(url: str, states: list[MarketState]) -> tuple[dict, dict]:
    """Per bar, plain (the teacher) against shadow (the teacher, the candidate's status, the
    candidate), alternating bar by bar on fresh days: each mode pays its own frozen-base pass."""
    predict = f"{url}/v1/models/policy:predict"
    candidate = f"{url}/v1/models/policy-candidate"
    times: dict[str, list[float]] = {"plain": [], "shadow": []}
    with httpx.Client(timeout=300) as client:

        def ask(endpoint: str, state: MarketState) -> None:
            body = {"instances": [state.model_dump(mode="json")]}
            client.post(endpoint, json=body).raise_for_status()

        for i, state in enumerate(states):
            mode = "plain" if i % 2 == 0 else "shadow"
            start = time.perf_counter()
            ask(predict, state)
            if mode == "shadow":
                client.get(f"{candidate}:status").raise_for_status()
                own = state.model_copy(update={"position": 0.0, "cash": 10_000.0})
                ask(f"{candidate}:predict", own)
            times[mode].append(time.perf_counter() - start)
    plain, shadow = (summary(times[m], len(times[m]), sum(times[m])) for m in times)
    return plain, shadow


def stage_candidate(url: str, teacher: Path) -> Path:
    """A student artifact beside the teacher (another value head), staged as the candidate."""
    from services.policy.artifacts import save_artifact
    from services.policy.client import request_reload

    model = load_artifact(teacher)
    with torch.no_grad():
        for p in model.value_head.parameters():
            p.add_(0.01)
    student = teacher.parent / "v1"
    save_artifact(model, student, {"version": "v1", "parent_version": "v0",
                                   "base_model": "SmolLM2-135M-Instruct"})  # fmt: skip
    request_reload(url, student, model_name="policy-candidate")
    return student


def mean_batch(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    count = sum(float(x.split()[-1]) for x in lines if x.startswith("rlmf_policy_batch_size_count"))
    total = sum(float(x.split()[-1]) for x in lines if x.startswith("rlmf_policy_batch_size_sum"))
    return round(total / count, 2) if count else 0.0


def main() -> None:
    torch.manual_seed(0)
    iters = int(os.environ.get("BENCH_POLICY_ITERS", "6"))
    rounds = int(os.environ.get("BENCH_POLICY_ROUNDS", "2"))
    threads, threads_reason = choose_threads()
    torch.set_num_threads(threads)
    log(f"torch threads: {threads} ({threads_reason})")
    base = prepare_smollm2(REPO / "models")
    states = make_states(max(iters, CONCURRENCY * max(rounds, 1)))
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        artifact = Path(tmp) / "v0"
        log("writing a v0 artifact from SmolLM2")
        init_artifact(base, artifact)
        model = load_artifact(artifact)
        ids, _ = model.encode(states[:1])
        prefix_tokens = model.prefix_cache().ids.shape[1]
        log(f"batch 1, {iters} decisions each, without/with prefix cache (alternating)")
        uncached, cached = batch1_pair(model, states[:iters])
        with tempfile.TemporaryFile() as server_log:
            log("starting the policy server")
            url, proc = start_server(artifact, server_log)
            try:
                log(f"{rounds} rounds: bare batch of {CONCURRENCY} vs {CONCURRENCY} clients")
                bare, server = concurrent_pair(model, url, states, rounds)
                server["mean_batch"] = mean_batch(url)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            shadow_states = make_states(2 * iters, seed=1)
            log(f"shadow: {iters} bars plain and {iters} with a candidate (alternating)")
            day_cache = {"RLMF_POLICY_DAY_CACHE_DIR": str(Path(tmp) / "day-cache"),
                         "RLMF_POLICY_RELOAD_ROOT": tmp}  # fmt: skip
            url, proc = start_server(artifact, server_log, day_cache)
            try:
                stage_candidate(url, artifact)
                plain, shadow = shadow_pair(url, shadow_states)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    result = {
        "bench": "policy",
        "model": "SmolLM2-135M-Instruct",
        "device": "cpu (no GPU lent to this task)",
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": round(os.getloadavg()[0], 1),
        "torch_threads": torch.get_num_threads(),
        "torch_threads_reason": threads_reason,
        "dtype": "float32",
        "prompt_tokens": int(ids.shape[1]),
        "prefix_tokens": int(prefix_tokens),
        "iterations": {
            "batch1_per_mode": iters,
            "concurrent_rounds": rounds,
            "decisions_per_concurrent_mode": CONCURRENCY * rounds,
        },
        "batch1_uncached": uncached,
        "batch1_prefix_cached": cached,
        "bare_batch8_cached": bare,
        "served_8_clients": server,
        "ratios": {
            "prefix_cache_speedup_batch1": round(
                cached["decisions_per_s"] / uncached["decisions_per_s"], 2
            ),
            "served_vs_bare_same_concurrency": round(
                server["decisions_per_s"] / bare["decisions_per_s"], 2
            ),
            "shadow_vs_plain_time_per_bar": round(
                plain["decisions_per_s"] / shadow["decisions_per_s"], 2
            ),
        },
        "served_plain_per_bar": plain,
        "served_with_shadow_per_bar": shadow,
        "targets": {"prefix_cache_speedup_batch1": 2.0, "served_vs_bare_same_concurrency": 0.7},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
