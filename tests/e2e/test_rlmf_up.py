"""End to end: docs/demo.md's "Stream your own market", its first steps as a new user types them.

`rlmf up` runs in a fresh folder (with --tiny, so the policy is quick to build and to serve),
30 bars of a CSV are published under a ticker no service has seen, and the test reads the bus:
a decision per bar, made after that bar's features watermark, feedback after each decision,
and then `rlmf down` stops everything `up` started, the broker included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import free_port, port_open
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import DEFAULT_PORTS
from tests.helpers import read_topic, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
RLMF = Path(sys.executable).parent / "rlmf"
TICKER = "ACME"
BARS = 30
# `up` gives every service its default HTTP port (the policy's gRPC port beside it).
UP_PORTS = [*DEFAULT_PORTS.values(), 8081]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc: the broker and every service)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _decode(records: list, kind: type) -> list:
    return [envelopes.decode(r.value, kind).payload for r in records if r.key == TICKER.encode()]


def _metric(name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{DEFAULT_PORTS['simulator']}/metrics", timeout=5).text
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(f"{name}{{") and f'ticker="{TICKER}"' in line
    ]
    return sum(values)


def test_rlmf_up_trades_published_bars_with_features_and_stops_cleanly(workdir: Path) -> None:
    busy = [p for p in UP_PORTS if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"`rlmf up` needs its default ports; in use here: {busy}")
    prices = workdir / "acme.csv"
    pd.read_csv(REPO / "data" / "GOOGL.csv").tail(BARS).to_csv(prices, index=False)
    bootstrap = f"127.0.0.1:{free_port()}"
    log = workdir / "up.out"
    # One torch thread per process: six processes share the machine's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLMF_POLICY_TORCH_THREADS": "1"}
    up_argv = [str(RLMF), "up", "--tiny", "--tickers", TICKER, "--port", bootstrap.split(":")[1]]
    with log.open("wb") as out:
        up = subprocess.Popen(up_argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: "ready: every service" in log.read_text(errors="replace"),
            240,
            "`rlmf up` to say every service is ready",
            interval_s=1,
            process=up,
            log=log,
        )
        publish = [str(RLMF), "market", "publish", "--prices", str(prices), "--speed", "5"]
        publish += ["--ticker", TICKER, "--bootstrap", bootstrap]
        subprocess.run(publish, cwd=workdir, env=env, check=True, timeout=120)

        def all_decisions() -> list[pb.Decision]:
            got = _decode(read_topic(bootstrap, topics.TRADING_DECISIONS), pb.Decision)
            return got if len(got) >= BARS else []

        decisions = wait_until(
            all_decisions,
            120,
            f"{BARS} decisions for {TICKER}",
            interval_s=2,
            process=up,
            log=workdir / "rlmf-logs" / "simulator.log",
        )
        # Every bar waited for its watermark and read its features: no timeout, no read error.
        assert _metric("rlmf_simulator_features_wait_timeouts_total") == 0
        assert _metric("rlmf_simulator_feature_read_errors_total") == 0
        assert _metric("rlmf_simulator_bars_total") == BARS
        assert {d.model_version for d in decisions} == {"v0"}, "decided by the served teacher"
        feedback = _decode(read_topic(bootstrap, topics.MARKET_FEEDBACK), pb.MarketFeedback)
        # Feedback for bar t is published once bar t+1 is known: all but the last bar.
        assert len(feedback) == BARS - 1
        # The state each decision saw carries the features service's features (from Feast).
        assert all("bars_seen" in f.state for f in feedback), feedback[-1].state
    finally:
        started = _children(up.pid)
        # `rlmf down` from another terminal: it finds `up` in the state folder and stops it.
        down = subprocess.run([str(RLMF), "down"], cwd=workdir, env=env, timeout=120, check=False)
        code = up.wait(timeout=60)
    assert down.returncode == 0
    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "could not start" not in output, output[-3000:]
    left = [pid for pid in started if Path(f"/proc/{pid}").exists()]
    assert started and not left, f"still running after `rlmf up` stopped: {left}"
    assert not port_open("127.0.0.1", int(bootstrap.split(":")[1])), "the broker still answers"
