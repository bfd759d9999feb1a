"""A state folder as a short `rlmf up` leaves it, written by the services' own writers: the
simulator's `Trader` trades two tickers with the ledger on (its accounts saved with StateFile),
two candidates trade in its ShadowTrader (the first judged by the gate's decide_with_shadow and
retired, the second still in shadow), the trainer's bar stores, cycle record and candidate
files, and up.json naming this process.

The candidates are the sentiment rule behind the CandidateClient's two calls, in place of an
LLM on a policy server: the shadow account, its bookkeeping and messages are the simulator's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from services.common import topics
from services.common.market_state import Decision, MarketState
from services.common.up_state import RunInfo, StateDir, now
from services.market.baseline_policies import SentimentRule
from services.simulator.service import Trader
from services.simulator.shadow import ShadowTrader
from services.simulator.state_store import StateFile
from services.trainer.cycle_log import CycleLog, CycleRecord
from services.trainer.gate import GateConfig, HeldOutReturns, decide_with_shadow
from services.trainer.kafka_history import BarStore, History
from services.trainer.shadow import Candidate, ShadowFiles, ShadowJudge, Verdict, shadow_series
from services.up.files import ledger_dir
from tests.ledger_run import bars, trader

TICKERS = {"ACME": "GOOGL.csv", "BETA": "MSFT.csv"}
LIVE, FIRST_SHADOW, SECOND_SHADOW = 30, 12, 8
SECOND_NEEDED = 20


class RuleCandidate:
    """A staged candidate that decides with the sentiment rule."""

    def __init__(self, version: str) -> None:
        self.current: str | None = version
        self.rule = SentimentRule()

    def version(self) -> str | None:
        return self.current

    def decide(self, state: MarketState) -> Decision:
        decision = self.rule.decide([state])[0]
        return decision.model_copy(update={"model_version": self.current})


def _candidate(version: str, needed: int) -> Candidate:
    rng = np.random.default_rng(7)
    return Candidate(
        version=version, folder=f"/models/{version}", teacher_version="v0", needed=needed,
        staged_at=now(), backtest_student=list(rng.normal(0.001, 0.01, 30)),
        backtest_teacher=list(rng.normal(0.0, 0.01, 30)), periods_per_year=252.0,
    )  # fmt: skip


def _trade(live: Trader, judge: ShadowJudge | None, start: int, n: int) -> None:
    series = {t: bars(t, start + n, source)[start:] for t, source in TICKERS.items()}
    for k in range(n):
        for ticker, ticker_bars in series.items():
            for out in live.on_bar(ticker_bars[k]):
                if judge is not None and out.topic == topics.TRADING_SHADOW:
                    judge.add(out.payload, ticker)


def _retire(files: ShadowFiles, log: CycleLog, version: str) -> None:
    """The trainer's verdict on the first candidate: the real pooled gate, outcome retired."""
    candidate = files.read_candidate()
    assert candidate is not None and candidate.version == version
    times, series = shadow_series(files.shadow_bars(version))
    shadow = HeldOutReturns(series.student, series.teacher, candidate.periods_per_year)
    decision = decide_with_shadow(candidate.backtest(), shadow, GateConfig(bootstrap=False))
    verdict = Verdict(candidate, decision, "retired", decision.reason, len(times), times[0],
                      times[-1]).to_dict()  # fmt: skip
    files.verdict(version).write_text(__import__("json").dumps(verdict))
    log.add_verdict(verdict)
    files.candidate.unlink()


def _stage(files: ShadowFiles, log: CycleLog, live: Trader, version: str, needed: int) -> None:
    window = bars("ACME", LIVE)
    first, last = window[0].time.isoformat(), window[-1].time.isoformat()
    log.add(CycleRecord(last[:10], "kafka", ["ACME"], first, last, LIVE, "candidate", version,
                        "v0", 0.04))  # fmt: skip
    files.write_candidate(_candidate(version, needed))
    live.shadow = ShadowTrader(RuleCandidate(version))  # type: ignore[arg-type]


def _trainer_bars(state: StateDir, total: int) -> None:
    for ticker, source in TICKERS.items():
        store = BarStore(History(state.trainer, ticker).bars_path)
        for bar in bars(ticker, total, source):
            store.add(bar.cutoff, (bar.open, bar.high, bar.low, bar.close, bar.volume))
        store.save()


def write_up_state(root: Path) -> tuple[StateDir, Trader]:
    """The state folder, and the simulator's trader to trade more bars with (`trade_more`)."""
    state = StateDir(root)
    files, log = ShadowFiles(state.trainer), CycleLog(state.trainer / "cycles.jsonl")
    live = trader(ledger_dir(state), policy="random")
    _trade(live, None, 0, LIVE)
    _stage(files, log, live, "cand-1", needed=10_000)  # the judge must not act: no promoter
    judge = ShadowJudge(files, GateConfig(), promoter=None, on_promoted=print)  # type: ignore[arg-type]
    _trade(live, judge, LIVE, FIRST_SHADOW)
    _retire(files, log, "cand-1")
    _stage(files, log, live, "cand-2", needed=SECOND_NEEDED)
    _trade(live, judge, LIVE + FIRST_SHADOW, SECOND_SHADOW)
    StateFile(state.simulator_state).save(live.export_state())
    _trainer_bars(state, LIVE + FIRST_SHADOW + SECOND_SHADOW)
    models = root / "models"
    models.mkdir()
    (models / "current").write_text("v0\n")
    info = RunInfo(pid=os.getpid(), pgid=os.getpgid(0), bootstrap="127.0.0.1:9092",
                   embedded_broker=True, tickers=list(TICKERS), models_root=str(models),
                   log_dir=str(root / "logs"), bars_needed=184, started_at=now())  # fmt: skip
    state.write_run(info)
    return state, live


def trade_more(state: StateDir, live: Trader, n: int = 1) -> None:
    """`n` more bars per ticker, saved as the simulator saves after a flush."""
    done = LIVE + FIRST_SHADOW + SECOND_SHADOW
    _trade(live, None, done, n)
    StateFile(state.simulator_state).save(live.export_state())
