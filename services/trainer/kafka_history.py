"""The trainer's own copy of the market: market.bars.v1 and market.feedback.v1 read from Kafka
under the trainer's consumer group into a store on its volume (cluster mode).

Each run reads what arrived since the last one (the group's committed offsets), so the store
grows across CronJob runs; a Job retried after a crash re-reads from the last commit and the
store drops what it already holds. Bad messages go to the topics' .dlq twins with the reason.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from services.common.bar_messages import is_history
from services.common.bus import ConsumerLoop, Incoming, Outgoing, ValidationFailed
from services.common.envelope import to_datetime
from services.common.settings import BusSettings
from services.common.topics import MARKET_BARS, MARKET_FEEDBACK
from services.trainer.datasets import FeedbackLog, record_from_incoming

log = logging.getLogger(__name__)

SERVICE = "trainer"
COLUMNS = ("time", "open", "high", "low", "close", "volume")


class NoMarketData(ValueError):
    """The trainer has no bars to train on; the message says where it looked."""


@dataclass
class BarStore:
    """One ticker's bars by end time, kept as a CSV the market library reads
    (services.market.market_data.load_prices_csv checks it like any price file)."""

    path: Path
    rows: dict[datetime, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> BarStore:
        store = cls(path)
        if path.is_file():
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    store.rows[datetime.fromisoformat(row["time"])] = tuple(
                        float(row[name]) for name in COLUMNS[1:]
                    )
        return store

    def add(self, end: datetime, values: tuple[float, ...]) -> bool:
        """Keep one bar; a re-delivered bar (same end time) is dropped. True when new."""
        if end in self.rows:
            return False
        self.rows[end] = values
        return True

    def save(self) -> None:
        """Write atomically (temp file + rename): a killed run leaves the previous file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bars-", dir=self.path.parent)
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for end in sorted(self.rows):
                writer.writerow([end.isoformat(), *self.rows[end]])
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self.rows)


def bar_values(incoming: Incoming) -> tuple[datetime, tuple[float, ...]]:
    """Validate one market.bars.v1 message: (end time, OHLCV); ValidationFailed says what is
    wrong (the loop sends it to market.bars.v1.dlq)."""
    bar = incoming.payload
    if not bar.HasField("end"):
        raise ValidationFailed(f"bar of {bar.ticker!r} has no end time")
    prices = {name: getattr(bar, name) for name in ("open", "high", "low", "close")}
    for name, value in prices.items():
        if not math.isfinite(value) or value <= 0:
            raise ValidationFailed(f"bar of {bar.ticker!r}: {name} = {value} is not a price")
    if bar.high < bar.low:
        raise ValidationFailed(f"bar of {bar.ticker!r}: high {bar.high} < low {bar.low}")
    if not math.isfinite(bar.volume) or bar.volume < 0:
        raise ValidationFailed(f"bar of {bar.ticker!r}: volume {bar.volume} is not a count")
    return to_datetime(bar.end), (bar.open, bar.high, bar.low, bar.close, bar.volume)


@dataclass
class SyncCounts:
    """What one sync read: consumed = bars + feedback + other tickers + duplicates +
    dead-lettered (the loop's own counts hold the last two)."""

    bars: int = 0
    feedback: int = 0
    other_tickers: int = 0
    duplicates_in_store: int = 0


@dataclass(frozen=True)
class History:
    """Where the store lies under the trainer's work dir (on its volume in the cluster)."""

    root: Path
    ticker: str

    @property
    def bars_path(self) -> Path:
        return self.root / "history" / f"{self.ticker}.csv"

    @property
    def feedback_path(self) -> Path:
        return self.root / "history" / f"{self.ticker}-feedback.jsonl"

    def feedback(self) -> FeedbackLog:
        return FeedbackLog(self.feedback_path)

    def sync(
        self, bus: BusSettings, group_id: str, idle_timeout_s: float = 5.0
    ) -> tuple[SyncCounts, ConsumerLoop]:
        """Read both topics from the group's committed offsets until `idle_timeout_s` passes
        with nothing new; the store is written before each batch's offsets are committed."""
        bars, feedback, counts = BarStore.open(self.bars_path), self.feedback(), SyncCounts()

        def one(incoming: Incoming) -> bool:
            """Keep one message; True when it added a bar (the CSV needs writing)."""
            if incoming.topic == MARKET_FEEDBACK:
                record = record_from_incoming(incoming)  # ValidationFailed -> .dlq
                if record.ticker != self.ticker:
                    counts.other_tickers += 1
                elif feedback.add(record):  # appended to its JSONL file at once
                    counts.feedback += 1
                else:
                    counts.duplicates_in_store += 1
                return False
            end, values = bar_values(incoming)
            if incoming.payload.ticker != self.ticker:
                counts.other_tickers += 1
            elif bars.add(end, values):
                counts.bars += 1
                return True
            else:
                counts.duplicates_in_store += 1
            return False

        def handle_batch(batch: Sequence[Incoming]) -> list[list[Outgoing] | Exception]:
            answers: list[list[Outgoing] | Exception] = []
            added = False
            for incoming in batch:
                try:
                    added = one(incoming) or added
                    answers.append([])
                except ValidationFailed as exc:  # the loop dead-letters it with this reason
                    answers.append(exc)
            if added:
                bars.save()  # on disk before the loop commits this batch's offsets
            return answers

        loop = ConsumerLoop(
            service=SERVICE,
            topics=[MARKET_BARS, MARKET_FEEDBACK],
            settings=bus,
            handle_batch=handle_batch,
            group_id=group_id,
        )
        loop.run(idle_timeout_s=idle_timeout_s)
        log.info(
            "read %d new bars and %d feedback records of %s (store: %d bars)",
            counts.bars, counts.feedback, self.ticker, len(bars),
        )  # fmt: skip
        return counts, loop

    def bar_count(self) -> int:
        return len(BarStore.open(self.bars_path)) if self.bars_path.is_file() else 0

    def prices(self) -> pd.DataFrame:
        """The stored bars as the market library's price frame; NoMarketData when empty."""
        from services.market.market_data import load_prices_csv

        if not self.bars_path.is_file() or not BarStore.open(self.bars_path).rows:
            raise NoMarketData(
                f"no bars of {self.ticker} in {self.bars_path}: nothing has been read from "
                f"{MARKET_BARS} yet (is the market source publishing, and is "
                "RLMF_TRAINER_TICKER a ticker it publishes?)"
            )
        return load_prices_csv(self.bars_path)


class StreamHistory:
    """Every ticker's bars as the embedded trainer consumes market.bars.v1 (`rlmf up`), each kept
    in the store the CronJob's `History.sync` writes, so a cycle reads streamed bars the way the
    cluster's cycle does. Saved per batch, before the loop commits the batch's offsets.

    The consumer's thread adds bars while a cycle's thread reads them: one lock guards both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stores = {
            path.stem: BarStore.open(path) for path in sorted((root / "history").glob("*.csv"))
        }
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self.duplicates = 0
        self._history_file = root / "history" / "history-end.json"
        self.history_end: dict[str, str] = (
            json.loads(self._history_file.read_text()) if self._history_file.is_file() else {}
        )
        """Per ticker, the end of its newest bar published as history (`--history`)."""

    def add(self, incoming: Incoming) -> bool:
        """Keep one market.bars.v1 message (ValidationFailed for a malformed one); True when it
        was a new bar, False for a re-published one (same ticker and end time)."""
        end, values = bar_values(incoming)
        ticker = incoming.payload.ticker
        with self._lock:
            if is_history(incoming.envelope.source) and end.isoformat() > self.history_end.get(
                ticker, ""
            ):
                self.history_end[ticker] = end.isoformat()
                self._dirty.add("")  # "" : the history-end file
            store = self.stores.setdefault(ticker, BarStore(History(self.root, ticker).bars_path))
            if not store.add(end, values):
                self.duplicates += 1
                return False
            self._dirty.add(ticker)
            return True

    def save(self) -> None:
        with self._lock:
            for ticker in sorted(self._dirty):
                if ticker:
                    self.stores[ticker].save()
            if "" in self._dirty:
                self._history_file.parent.mkdir(parents=True, exist_ok=True)
                self._history_file.write_text(json.dumps(self.history_end))
            self._dirty.clear()

    def bar_counts(self) -> dict[str, int]:
        with self._lock:
            return {ticker: len(store) for ticker, store in sorted(self.stores.items())}

    def training_ticker(self, preferred: str | None) -> str | None:
        """The ticker a cycle trains on: `preferred` when given, else the one with the most
        bars (the first in name order on a tie); None before any bar arrived."""
        if preferred:
            return preferred
        counts = self.bar_counts()
        return min(counts, key=lambda t: (-counts[t], t)) if counts else None

    def prices(self, ticker: str) -> pd.DataFrame:
        """`ticker`'s bars so far (NoMarketData when none), read as the cluster's cycle reads
        its store; bars of the batch in hand are written first."""
        self.save()
        return History(self.root, ticker).prices()
