"""The simulator service's settings, from RLMF_SIMULATOR_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import RlmfSettings
from services.market.accounting import ExecutionConfig


class SimulatorSettings(RlmfSettings):
    """Env: RLMF_SIMULATOR_MODE, RLMF_SIMULATOR_PRICES_CSV, RLMF_SIMULATOR_POLICY_URL, ..."""

    model_config = SettingsConfigDict(env_prefix="RLMF_SIMULATOR_", extra="ignore")

    mode: Literal["replay", "live"] = "replay"
    """replay: read a CSV (or the generator), publish each bar to market.bars.v1 and trade it;
    live: consume market.bars.v1 (published by someone else) and trade each bar."""
    prices_csv: Path | None = None
    """Replay this OHLCV CSV; when unset, replay the regime-switching generator."""
    price_column: str | None = None
    """The CSV column that becomes the close, matched case-insensitively (e.g. `adj close`);
    unset: `close`."""
    scenario: str = "default"
    """Generator parameters: a shipped scenario (default, regime-shift) or a YAML path."""
    days: int = Field(default=500, ge=3)
    """Bars the generator produces."""
    seed: int = 0
    """Seed of the generator's series and of the `random` baseline policy; also part of the run
    id the output events' ids derive from."""
    ticker: str | None = None
    """Ticker of the replayed series (default: the CSV's file name, or the scenario's ticker)."""
    tickers: list[str] = Field(default_factory=list)
    """Live mode: only trade these tickers (empty: every ticker on market.bars.v1)."""
    start_bar: int = Field(default=0, ge=0)
    """Replay from this bar (0-based) of the CSV or generated series; earlier bars are skipped."""
    max_bars: int | None = None
    """Replay at most this many bars (from start_bar)."""
    speed: float = Field(default=0.0, ge=0.0)
    """Replay pace in bars per second; 0 replays as fast as the features watermark allows."""
    policy_url: str | None = None
    """KServe v1 policy server root URL; unset trades with `baseline_policy`."""
    policy_timeout_s: float = Field(default=5.0, gt=0)
    """HTTP timeout in seconds of each decision request to the policy server (the served
    model and the shadow candidate); rationale requests have their own, longer one."""
    shadow: bool = True
    """With a policy_url: ask the policy server's candidate (`candidate_model`) on every bar and,
    while one is staged, trade its decisions in a shadow account (services/simulator/shadow.py)
    published on trading.shadow.v1; the live account never sees them."""
    candidate_model: str = "policy-candidate"
    """The candidate's model name on the policy server (services/policy/candidate.py)."""
    explain_every: int = Field(default=0, ge=0)
    """Ask the policy for its rationale (SEP's explain step) on every Nth decision; 0: never."""
    baseline_policy: str = "sentiment-rule"
    """buy-and-hold | sentiment-rule | random: used when no policy_url is set."""
    wait_for_features: bool = True
    """Wait for features.ready.v1's watermark of a bar before deciding on it. Turn off when no
    features service runs (the decision then uses price-derived features only)."""
    features_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for a watermark; after it the bar is traded without fresh features (logged,
    counted in rlmf_simulator_features_wait_timeouts_total)."""
    features_source: Literal["none", "feast"] = "none"
    """feast: read each decision's features point in time from the features service's Feast
    store (RLMF_FEATURES_* settings say where); none: price-derived features only."""
    features_reader: str | None = None
    """Optional "module:function" called as f(ticker, as_of) -> dict of features (may include
    "sentiment" and "news_summary"); e.g. the features service's online-store reader."""
    group_id: str = "rlmf-simulator"
    """Kafka consumer group of live mode's market.bars.v1 consumer."""
    state_file: Path | None = None
    """Keep the account (cash, positions, price history, the decision whose feedback is
    pending, the policy's progress) in this file, replaced atomically after every flush, so
    a restart, even after SIGKILL, continues exactly (state_store.py); unset: memory only."""
    ledger_dir: Path | None = None
    """Append one JSON line per traded bar to `<ledger_dir>/<TICKER>.jsonl` (ledger.py): the
    decision, both accounts, the news seen and the candidate's shadow account, for `rlmf
    report` once the in-memory broker's topics are gone; unset: no ledger."""
    republished_bars: Literal["dead-letter", "skip"] = "dead-letter"
    """Live mode: what a bar at or before its ticker's last traded bar is. dead-letter: an
    out-of-order bar, sent to market.bars.v1.dlq with the reason; skip: a bar already traded,
    published again (a restarted `rlmf up` whose in-memory broker lost its topics, fed the same
    file again), counted in rlmf_simulator_bars_already_traded_total and left out."""
    policy_unavailable_wait_s: float = Field(default=0.0, ge=0)
    """Ask a policy server that does not answer (down, restarting) again for up to this long
    before holding; 0 holds at once. A restarted server then decides what it would have."""
    cost_bps: float = Field(default=10.0, ge=0)
    """Proportional cost in basis points of the traded notional (10 bps = 0.1 %)."""
    fixed_fee: float = Field(default=0.0, ge=0)
    """Fixed fee per executed trade, in cash units."""
    fill_at: Literal["next_open", "close"] = "next_open"
    """`next_open`: a decision made on bar t fills at bar t+1's open; `close`: at bar t's close."""
    initial_cash: float = Field(default=10_000.0, gt=0)
    """Cash, in cash units, each ticker's trading session starts with (the policy's account and
    its buy-and-hold benchmark)."""

    def execution(self) -> ExecutionConfig:
        return ExecutionConfig(
            initial_cash=self.initial_cash,
            cost_bps=self.cost_bps,
            fixed_fee=self.fixed_fee,
            fill_at=self.fill_at,
        )
