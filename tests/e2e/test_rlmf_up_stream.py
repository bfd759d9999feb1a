"""End to end: the loop closes on the user's own stream (docs/demo.md, "Stream your own market").

`rlmf up --tiny` in a fresh folder; two tickers are published with 50 bars of history each and
one with a news file. The trainer learns one student from both tickers' streamed bars (its
warm-up cycle as of the last history bar, data source kafka), the student the gate passes
trades in shadow on the next live bars (trading.shadow.v1) and is then promoted or retired.
Then the whole process group is SIGKILLed, `up` restarts without --fresh and the same files
are published again with new bars: the accounts continue from where they were, no bar is
traded twice and the served model is the one served before the kill.

The gate is opened wide here (no bootstrap, a margin nobody misses) and the windows are short:
this tests the path a student takes, not whether a tiny random model has skill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import free_port, port_open
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import DEFAULT_PORTS
from tests.e2e.test_rlmf_up import UP_PORTS
from tests.helpers import read_topic, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
RLMF = Path(sys.executable).parent / "rlmf"
HISTORY, FIRST_LIVE, LATER = 50, 5, 30
"""Bars of history, live bars published before the candidate exists, and after it."""
SHADOW_BARS = 5
FIRST_DAY = "2009-05-22"
"""data/GOOGL.csv's first day."""

TRAINER_ENV = {
    # One walk-forward split needs 20 + 1 + 1 + 10 + 1 = 33 bars: the history has them.
    "RLMF_TRAINER_TRAIN_DAYS": "20",
    "RLMF_TRAINER_EVAL_DAYS": "10",
    "RLMF_TRAINER_EMBARGO_DAYS": "1",
    "RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS": "10",
    "RLMF_TRAINER_GATE__BOOTSTRAP": "false",
    "RLMF_TRAINER_GATE__MARGIN": "-1000",
    "RLMF_TRAINER_GATE__ENTROPY_FLOOR": "0",
    "RLMF_TRAINER_GATE__MAX_DRAWDOWN_WORSENING": "100",
    "RLMF_TRAINER_SHADOW_BARS": str(SHADOW_BARS),
    "RLMF_TRAINER_GATE__MIN_SHADOW_BARS": str(SHADOW_BARS),
    "RLMF_TRAINER_CYCLE_EVERY_DAYS": "10000",  # the warm-up is this run's only cycle
    "RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS": "40",
    "RLMF_TRAINER_RECIPE__PPO__NUM_STEPS": "20",
    "RLMF_TRAINER_RECIPE__PPO__MINIBATCH_SIZE": "10",
    "RLMF_TRAINER_RECIPE__PPO__GRADIENT_ACCUMULATION_STEPS": "1",
    "RLMF_TRAINER_TORCH_THREADS": "1",
}


def _csv(workdir: Path, source: str, name: str, bars: int) -> Path:
    """The first `bars` rows of data/<source> from GOOGL's first day on: MSFT's file starts in
    1986, and tickers pooled into one student must trade over the same stretch of time."""
    path = workdir / name
    frame = pd.read_csv(REPO / "data" / source)
    frame[frame.iloc[:, 0] >= FIRST_DAY].head(bars).to_csv(path, index=False)
    return path


def _news(workdir: Path, prices: Path, ticker: str) -> Path:
    """One headline a day for the history, published at midday (before the day's close)."""
    days = pd.read_csv(prices).iloc[:, 0].head(HISTORY)
    path = workdir / f"{ticker.lower()}-news.jsonl"
    with path.open("w") as out:
        for i, day in enumerate(days):
            tone = "beats estimates" if i % 3 else "misses estimates"
            item = {"published_at": f"{str(day)[:10]}T12:00:00Z", "ticker": ticker,
                    "headline": f"{ticker} {tone} on day {i}"}  # fmt: skip
            out.write(json.dumps(item) + "\n")
    return path


class Up:
    """One `rlmf up --tiny` in its own process group (so SIGKILL of the group is total)."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None, name: str) -> None:
        """`port`: the embedded broker's; None: the broker RLMF_BUS_BOOTSTRAP names."""
        self.workdir, self.env, self.log = workdir, env, workdir / f"{name}.out"
        broker = ["--no-broker"] if port is None else ["--port", str(port)]
        argv = [str(RLMF), "up", "--tiny", *broker]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(
            lambda: "ready: every service" in self.log.read_text(errors="replace"),
            300,
            "`rlmf up` to say every service is ready",
            interval_s=1,
            process=self.process,
            log=self.log,
        )

    def rlmf(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [str(RLMF), *args], cwd=self.workdir, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"rlmf {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.rlmf("status", "--json")))

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def _shadow_decisions(bootstrap: str) -> list[pb.ShadowDecision]:
    records = read_topic(bootstrap, topics.TRADING_SHADOW)
    return [envelopes.decode(r.value, pb.ShadowDecision).payload for r in records]


def _decisions(bootstrap: str, ticker: str) -> list[pb.Decision]:
    records = read_topic(bootstrap, topics.TRADING_DECISIONS)
    decoded = [envelopes.decode(r.value, pb.Decision).payload for r in records]
    return [d for d in decoded if d.ticker == ticker]


def test_up_learns_from_the_stream_shadows_the_candidate_and_resumes_after_sigkill(
    workdir: Path,
) -> None:
    busy = [p for p in UP_PORTS if port_open("127.0.0.1", p)]
    if busy:
        pytest.skip(f"`rlmf up` needs its default ports; in use here: {busy}")
    total = HISTORY + FIRST_LIVE + LATER
    first = {"ACME": _csv(workdir, "GOOGL.csv", "acme-1.csv", HISTORY + FIRST_LIVE),
             "BETA": _csv(workdir, "MSFT.csv", "beta-1.csv", HISTORY)}  # fmt: skip
    full = {"ACME": _csv(workdir, "GOOGL.csv", "acme.csv", total),
            "BETA": _csv(workdir, "MSFT.csv", "beta.csv", total)}  # fmt: skip
    news = _news(workdir, full["ACME"], "ACME")
    env = {**os.environ, **TRAINER_ENV, "OMP_NUM_THREADS": "1", "RLMF_POLICY_TORCH_THREADS": "1"}
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    up = Up(workdir, env, port, "up-1")
    try:
        # BETA's history alone, then ACME's history and a few live bars: ACME's first live
        # bar starts the warm-up cycle, whose one student learns from both tickers.
        up.rlmf("market", "publish", "--prices", str(first["BETA"]), "--ticker", "BETA",
                "--history", str(HISTORY), "--as-fast-as-possible")  # fmt: skip
        up.rlmf(
            "market",
            "publish",
            "--prices",
            str(first["ACME"]),
            "--ticker",
            "ACME",
            "--history",
            str(HISTORY),
            "--news",
            str(news),
            "--as-fast-as-possible",
        )

        def candidate() -> dict[str, Any] | None:
            status = up.status()
            return status["shadow"] or next(
                (c for c in status["cycles"] if c["outcome"] not in ("running", "candidate")), None
            )

        staged = wait_until(
            candidate,
            400,
            "the warm-up cycle's candidate",
            interval_s=3,
            process=up.process,
            log=workdir / "rlmf-logs" / "trainer.log",
        )
        assert "version" in staged, f"the wide-open gate refused the student: {staged}"
        cycle = up.status()["cycles"][0]
        assert cycle["data_source"] == "kafka" and cycle["tickers"] == ["ACME", "BETA"], cycle
        history = pd.read_csv(full["ACME"]).iloc[:HISTORY, 0]
        assert str(history.iloc[0])[:10] <= cycle["bars_from"][:10]
        # The trainer keys bars by their end: the last history bar ends a day after it starts.
        last_history_end = pd.Timestamp(history.iloc[-1], tz="UTC") + pd.Timedelta(days=1)
        assert pd.Timestamp(cycle["bars_to"]) <= last_history_end, "it trained past history"

        # The rest of the file, published again whole: the traded bars are skipped.
        for ticker, path in full.items():
            up.rlmf("market", "publish", "--prices", str(path), "--ticker", ticker, "--speed", "2")

        def verdict() -> dict[str, Any] | None:
            cycles = up.status()["cycles"]
            return cycles[0] if cycles[0]["outcome"] in ("promoted", "retired") else None

        judged = wait_until(
            verdict,
            300,
            "the candidate's shadow verdict",
            interval_s=3,
            process=up.process,
            log=workdir / "rlmf-logs" / "trainer.log",
        )
        shadow = [
            s for s in _shadow_decisions(bootstrap) if s.decision.model_version == staged["version"]
        ]
        assert len({(s.decision.ticker, s.shadow_bar) for s in shadow}) >= SHADOW_BARS
        assert {s.teacher_version for s in shadow} == {"v0"}, "the teacher kept the live account"
        assert judged["shadow"]["shadow_bars"] == SHADOW_BARS
        # The promotion watcher runs under up: both decisions are there to scrape.
        watcher = f"http://127.0.0.1:{DEFAULT_PORTS['promotion-watcher']}/metrics"
        scraped = wait_until(
            lambda: (
                (t := httpx.get(watcher, timeout=5).text)
                and f'rlmf_promotions_total{{outcome="{judged["outcome"]}"}} 1.0' in t
                and t
            ),
            60,
            "the watcher to count the verdict",
        )
        assert 'rlmf_promotions_total{outcome="candidate"} 1.0' in scraped

        def all_traded() -> dict[str, Any] | None:
            status = up.status()
            done = all(t["decisions"] == total - HISTORY for t in status["tickers"].values())
            return status if done and len(status["tickers"]) == 2 else None

        before = wait_until(all_traded, 300, "every live bar traded", interval_s=3)
        for ticker in full:
            assert len(_decisions(bootstrap, ticker)) == total - HISTORY, "a bar traded twice"
            assert before["tickers"][ticker]["bars"] == total
        served = before["served"]["version"]
        assert served == (judged["student_version"] if judged["outcome"] == "promoted" else "v0")
    finally:
        up.kill()

    # Restart without --fresh (a new in-memory broker), the same files again plus 5 new bars.
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    up = Up(workdir, env, port, "up-2")
    try:
        resumed = up.status()
        assert resumed["served"]["version"] == served
        for ticker in full:
            assert resumed["tickers"][ticker]["decisions"] == total - HISTORY
            assert resumed["tickers"][ticker]["net_worth"] == before["tickers"][ticker]["net_worth"]
        policy = f"http://127.0.0.1:{DEFAULT_PORTS['policy']}/v1/models/policy:status"
        assert httpx.get(policy, timeout=10).json()["model_version"] == served
        more = {"ACME": _csv(workdir, "GOOGL.csv", "acme-more.csv", total + 5),
                "BETA": _csv(workdir, "MSFT.csv", "beta-more.csv", total + 5)}  # fmt: skip
        for ticker, path in more.items():
            up.rlmf("market", "publish", "--prices", str(path), "--ticker", ticker,
                    "--as-fast-as-possible")  # fmt: skip

        def continued() -> dict[str, Any] | None:
            status = up.status()
            done = all(t["decisions"] == total - HISTORY + 5 for t in status["tickers"].values())
            return status if done else None

        wait_until(continued, 300, "the 5 new bars traded after the restart", interval_s=3)
        for ticker in more:
            assert len(_decisions(bootstrap, ticker)) == 5, "only the new bars were traded"
    finally:
        up.process.send_signal(signal.SIGINT)
        up.process.wait(timeout=90)
