"""Chaos, the suite's one fast representative of bench/chaos.py (which SIGKILLs every service of
`rlmf demo --quick` in turn, seven demos, too long for the suite).

A replaying simulator decides every bar through a real policy server (a tiny random Llama
artifact); the policy server is SIGKILLed at one seeded bar and restarted on the same port,
the simulator at another seeded bar and restarted from its state file. Every decision, fill,
snapshot (so the net-worth series) and feedback must equal a run without kills, computed
in-process over the same bars against the same server; nothing may be dead-lettered and no
decision may be a fallback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import free_port
from services.common.settings import BusSettings
from services.policy.artifacts import init_artifact, teacher_config
from services.policy.client import PolicyClient
from services.simulator.service import OUTPUT_TOPICS, Trader, build_policy, replay_bars
from services.simulator.settings import SimulatorSettings
from tests.helpers import read_topic, stop_process, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BARS = 40
EXPLAIN_EVERY = 6
"""The policy explains every 6th call: that count must survive the simulator's restart."""
POLICY_WAIT_S = 240
"""How long the simulator waits for a policy server that does not answer."""


def _start_policy(artifact: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.policy", "--model_dir", str(artifact)]
    cmd += ["--http_port", str(port), "--enable_grpc", "false"]
    env = {**os.environ, "RLMF_POLICY_TORCH_THREADS": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: PolicyClient(url, timeout=2).ready(),
        180,
        "the policy server to be ready",
        process=process,
        log=log,
    )
    return process


def _settings(ticker: str, url: str, state_file: Path) -> SimulatorSettings:
    return SimulatorSettings(
        mode="replay",
        days=BARS,
        seed=4,
        ticker=ticker,
        policy_url=url,
        policy_timeout_s=60,
        explain_every=EXPLAIN_EVERY,
        wait_for_features=False,
        state_file=state_file,
        policy_unavailable_wait_s=POLICY_WAIT_S,
    )


def _start_simulator(
    settings: SimulatorSettings, bus: BusSettings, state_file: Path, log: Path
) -> Any:
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": bus.bootstrap,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_HTTP_PORT": str(free_port()),
        "RLMF_SIMULATOR_MODE": "replay",
        "RLMF_SIMULATOR_DAYS": str(BARS),
        "RLMF_SIMULATOR_SEED": str(settings.seed),
        "RLMF_SIMULATOR_TICKER": str(settings.ticker),
        "RLMF_SIMULATOR_POLICY_URL": str(settings.policy_url),
        "RLMF_SIMULATOR_POLICY_TIMEOUT_S": str(settings.policy_timeout_s),
        "RLMF_SIMULATOR_EXPLAIN_EVERY": str(EXPLAIN_EVERY),
        "RLMF_SIMULATOR_WAIT_FOR_FEATURES": "false",
        "RLMF_SIMULATOR_STATE_FILE": str(state_file),
        "RLMF_SIMULATOR_POLICY_UNAVAILABLE_WAIT_S": str(POLICY_WAIT_S),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.simulator"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _unique(bus: BusSettings, ticker: str, topic: str) -> dict[str, Any]:
    """id -> payload of the ticker's records on `topic`, re-deliveries dropped."""
    out = {}
    for r in read_topic(bus.bootstrap, topic):
        if r.key == ticker.encode():
            env = envelopes.decode(r.value, topics.payload_type(topic))
            out.setdefault(env.id, env.payload)
    return out


@pytest.fixture
def policy_artifact(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    artifact = tmp_path / "policy" / "v0"
    init_artifact(tiny_llama_dir, artifact, "v0", teacher_config(0))
    return artifact


def test_policy_and_simulator_sigkilled_at_seeded_bars_change_nothing(
    bus_settings: BusSettings, unique: str, tmp_path: Path, policy_artifact: Path
) -> None:
    rng = random.Random(0)  # the kill bars, seeded as bench/chaos.py seeds its runs
    kill_policy_at, kill_simulator_at = rng.randint(5, 15), rng.randint(20, BARS - 5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ticker = f"C{unique.upper()}"
    state_file = tmp_path / "simulator-state.json"
    settings = _settings(ticker, url, state_file)
    policy_log, simulator_log = tmp_path / "policy.log", tmp_path / "simulator.log"
    policy = _start_policy(policy_artifact, port, policy_log)
    simulator = _start_simulator(settings, bus_settings, state_file, simulator_log)

    def decided(n: int) -> bool:
        return len(_unique(bus_settings, ticker, topics.TRADING_DECISIONS)) >= n

    try:
        wait_until(lambda: decided(kill_policy_at), 240, "decisions", process=simulator)
        policy.send_signal(signal.SIGKILL)
        policy.wait()
        policy = _start_policy(policy_artifact, port, policy_log)  # the same port, as a pod's
        wait_until(lambda: decided(kill_simulator_at), 240, "decisions", process=simulator)
        simulator.send_signal(signal.SIGKILL)
        simulator.wait()
        simulator = _start_simulator(settings, bus_settings, state_file, simulator_log)
        assert simulator.wait(timeout=480) == 0, simulator_log.read_text()[-3000:]

        # The run without kills, against the same (restarted) server.
        trader = Trader(settings, build_policy(settings), None)
        want = {o.id: o.payload for bar in replay_bars(settings) for o in trader.on_bar(bar)}
    finally:
        for process in (simulator, policy):
            if process.poll() is None:
                stop_process(process)
    got = {}
    for topic in OUTPUT_TOPICS:
        got |= _unique(bus_settings, ticker, topic)
    assert sorted(got) == sorted(want)
    differing = [i for i in want if got[i] != want[i]]
    assert not differing, f"{len(differing)} outputs differ, e.g. {got[differing[0]]}"
    decisions = _unique(bus_settings, ticker, topics.TRADING_DECISIONS).values()
    assert len(decisions) == BARS and not [d for d in decisions if d.fallback_reason]
    assert sum(bool(d.explanation) for d in decisions) == BARS // EXPLAIN_EVERY
    assert len(_unique(bus_settings, ticker, topics.MARKET_BARS)) == BARS
    for topic in (topics.MARKET_BARS, *OUTPUT_TOPICS):
        assert not _unique(bus_settings, ticker, topics.dlq(topic)), topic
