"""The worker of the bus kill tests: copies NewsItems from one topic to another, keeps a journal
of its batches, and on request stops dead between "outputs flushed" and "offsets committed".

Run as `python -m tests.integration.bus_kill_worker IN OUT JOURNAL [--delay S]
[--arm-file A --stopped-file S]`.

- Every batch with handled inputs is appended to JOURNAL, once its outputs are flushed and
  before its offsets are committed, as one JSON line: a list of [partition, offset, envelope
  id] of the inputs handled; so a batch handled twice (re-delivered) shows up twice.
- With --arm-file: once that file exists, the next batch with handled inputs is not
  committed. Its inputs are written to --stopped-file and the worker blocks until it is
  killed, so the test kills it at the one moment where at-least-once delivery must re-deliver
  the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from services.common.bus import ConsumerLoop, Incoming, Outgoing
from services.common.http_server import HealthApp
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.service import run_consumer_service

HandledInput = tuple[int, int, str]  # partition, offset, envelope id


class BatchJournal:
    """Remembers the inputs of the batch in hand and records each batch before its commit."""

    def __init__(self, journal: Path, arm_file: Path | None, stopped_file: Path | None) -> None:
        self.journal = journal
        self.arm_file = arm_file
        self.stopped_file = stopped_file
        self.batch: list[HandledInput] = []

    def handled(self, message: Incoming) -> None:
        self.batch.append((message.partition, message.offset, message.envelope.id))

    def before_commit(self) -> None:
        """The loop's hook: the batch's outputs are on the broker, its offsets not committed."""
        if not self.batch:
            # Every input was a duplicate (re-read after a rebalance) and dropped: nothing was
            # produced, so stopping here would prove nothing.
            return
        line = json.dumps(self.batch) + "\n"
        # One append-mode write per line, so a reader sees whole lines (it skips a partial one).
        with self.journal.open("a") as journal:
            journal.write(line)
        if self.arm_file is not None and self.arm_file.exists():
            self._stop_before_commit()
        self.batch = []

    def _stop_before_commit(self) -> None:
        assert self.stopped_file is not None
        partial = self.stopped_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.batch))
        os.replace(partial, self.stopped_file)  # the test never reads a half-written file
        # Block the consuming thread for good: the test SIGKILLs this process now.
        threading.Event().wait()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("in_topic")
    parser.add_argument("out_topic")
    parser.add_argument("journal", type=Path)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per message")
    parser.add_argument("--arm-file", type=Path)
    parser.add_argument("--stopped-file", type=Path)
    args = parser.parse_args(argv)
    if (args.arm_file is None) != (args.stopped_file is None):
        parser.error("give both --arm-file and --stopped-file, or neither")
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])
    journal = BatchJournal(args.journal, args.arm_file, args.stopped_file)

    def handle(message: Incoming) -> list[Outgoing]:
        time.sleep(args.delay)  # slows the worker so a rebalance finds work left to move
        item = message.payload
        enriched = pb.EnrichedNews(item=item, summary=item.headline, sentiment=0.0)
        journal.handled(message)
        out = Outgoing(args.out_topic, enriched, message.envelope.key, message.envelope.event_time)
        return [out]

    def build() -> ConsumerLoop:
        return ConsumerLoop(
            service="echo",
            topics=[args.in_topic],
            handle=handle,
            group_id=f"echo-{args.in_topic}",
            create_topics=[args.out_topic],
            payload_types={args.in_topic: pb.NewsItem},
            before_commit=journal.before_commit,
        )

    return run_consumer_service("echo", build, HealthApp("echo"))


if __name__ == "__main__":
    sys.exit(main())
