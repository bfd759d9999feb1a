"""The ingest process SIGKILLed mid-stream and restarted with the same settings and inputs loses
nothing: the distinct news.raw.v1 events (ids and payloads) equal an uninterrupted run's.

Sixty seeded items arrive the two ways that survive a crash: a news file (RLMF_INGEST_FILES,
replayed whole at every start) and `POST /v1/news` from a client that resends each item until
it is acknowledged, as a real client does. The kill lands after a seeded number of
acknowledgements and a seeded moment into the next request, while the client keeps streaming.
What the restart publishes again (the file, and an item the killed process sent but never
answered) carries the same event ids, so downstream de-duplication drops it; the test counts
those re-publications. The restarted process's own counters reconcile: received = published +
duplicates + rejected."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.common import envelope as envelopes
from services.common.broker import free_port
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW
from tests.helpers import end_offsets, http_ok, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]

FILE_ITEMS = 20
HTTP_ITEMS = 40
TICKERS = ("ACME", "GLBX", "INTC", "MSFT")
WORDS = ("shares", "rise", "fall", "after", "profit", "warning", "contract", "outlook", "deal")
CLIENT_TIMEOUT_S = 30.0
"""Longer than the service's 10 s ack timeout, so a live service always answers in time."""
RETRY_S = 0.2
"""The client's pause before resending after a refused or cut-off connection."""
GIVE_UP_S = 90.0
"""How long the client resends one item before the test fails (covers a restart under load)."""

Payload = tuple[str, int, bytes]
"""What an event carries apart from its id: key, event time (ns) and the NewsItem's bytes.
Produce time and trace id differ between publications by design, so they are left out."""


# ---------------------------------------------------------------------------------------------
# The seeded news
# ---------------------------------------------------------------------------------------------


def seeded_items(rng: random.Random, unique: str) -> list[dict[str, Any]]:
    """FILE_ITEMS + HTTP_ITEMS distinct items, one or two tickers each, in March 2024."""
    items = []
    for n in range(FILE_ITEMS + HTTP_ITEMS):
        words = " ".join(rng.choices(WORDS, k=4))
        items.append(
            {
                "id": f"chaos-{unique}-{n:03d}",
                # The number keeps every headline distinct: no item is a duplicate of another.
                "headline": f"Story {n} {words}",
                "body": " ".join(rng.choices(WORDS, k=12)),
                "source": "chaos-wire",
                "published_at": f"2024-03-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:00Z",
                "tickers": sorted(rng.sample(TICKERS, k=rng.randint(1, 2))),
            }
        )
    return items


def event_ids_of(items: list[dict[str, Any]]) -> set[str]:
    """The news.raw.v1 event ids of `items`: one per item and ticker, derived from both."""
    return {envelopes.derived_id(i["id"], t) for i in items for t in i["tickers"]}


# ---------------------------------------------------------------------------------------------
# The service process and the client
# ---------------------------------------------------------------------------------------------


def spawn_ingest(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "services.ingest"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass(frozen=True)
class Answer:
    sent_at: float
    """time.monotonic() before the request was sent: a request sent before the restarted
    process was spawned can only have been answered by the killed one, and one sent after it
    only by the restarted one."""
    item_id: str
    status: int
    events: tuple[str, ...] = ()


class RetryingClient(threading.Thread):
    """Posts each item alone, in order, resending it until the service answers 202."""

    def __init__(self, base: str, items: list[dict[str, Any]], signal_after: int) -> None:
        super().__init__(name="news-client", daemon=True)
        self.base = base
        self.items = items
        self.signal_after = signal_after
        self.answers: list[Answer] = []
        self.sending_next = threading.Event()
        """Set once `signal_after` items were acknowledged, as the next one is first sent."""
        self.pause = threading.Event()  # never set: waited on for the client's backoff
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=CLIENT_TIMEOUT_S) as http:
                for number, item in enumerate(self.items):
                    if number == self.signal_after:
                        self.sending_next.set()
                    self._post_until_acknowledged(http, item)
        except BaseException as exc:  # reported by the test through `failure`
            self.failure = exc

    def _post_until_acknowledged(self, http: httpx.Client, item: dict[str, Any]) -> None:
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            sent_at = time.monotonic()
            try:
                response = http.post("/v1/news", json=item)
            except httpx.TransportError:
                # Refused while the service is down, or cut off by the kill: send it again.
                self.pause.wait(RETRY_S)
                continue
            events = tuple(response.json().get("events", ()))
            self.answers.append(Answer(sent_at, item["id"], response.status_code, events))
            if response.status_code == 202:
                return
            assert response.status_code == 503, f"{item['id']}: {response.text}"
            self.pause.wait(float(response.headers["Retry-After"]))
        raise TimeoutError(f"{item['id']} was not acknowledged within {GIVE_UP_S}s")

    def finish(self, timeout_s: float) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "the client did not finish"
        if self.failure is not None:
            raise AssertionError("the client failed") from self.failure


# ---------------------------------------------------------------------------------------------
# What a run published, and the service's counters
# ---------------------------------------------------------------------------------------------


@dataclass
class Published:
    """The run's events of our items, in the order read: event id -> each copy's payload."""

    copies: dict[str, list[Payload]] = field(default_factory=dict)

    def distinct(self) -> dict[str, Payload]:
        return {event_id: payloads[0] for event_id, payloads in self.copies.items()}

    def republished(self) -> Counter[str]:
        """Event id -> how many extra copies of it there are."""
        return Counter({e: len(p) - 1 for e, p in self.copies.items() if len(p) > 1})


def published_since(
    bus: BusSettings, start: dict[TopicPartition, int], item_prefix: str
) -> Published:
    """Every news.raw.v1 event after `start` whose item id starts with `item_prefix`."""
    end = end_offsets(bus, NEWS_RAW)
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    published = Published()
    deadline = time.monotonic() + 30
    try:
        while any(consumer.position(tp) < end[tp] for tp in start):
            assert time.monotonic() < deadline, "could not read news.raw.v1 to its end"
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    envelope = envelopes.decode(record.value, pb.NewsItem)
                    news = envelope.payload
                    assert isinstance(news, pb.NewsItem)
                    if news.item_id.startswith(item_prefix):
                        payload = (
                            envelope.key,
                            int(envelope.event_time.timestamp() * 1e9),
                            news.SerializeToString(deterministic=True),
                        )
                        published.copies.setdefault(envelope.id, []).append(payload)
    finally:
        consumer.close()
    return published


def item_counts(base: str) -> Counter[str]:
    """rlmf_ingest_items_total by outcome, summed over sources, from the process's /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rlmf_ingest_items_total":
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    env: dict[str, str]
    base: str
    http_items: list[dict[str, Any]]
    logs: Path


def make_setup(items: list[dict[str, Any]], folder: Path) -> Setup:
    """The first FILE_ITEMS items in a news file the service replays, the rest for HTTP; the
    same environment (and so the same port and file) for every process of the test."""
    news_file = folder / "news.jsonl"
    news_file.write_text("".join(json.dumps(i) + "\n" for i in items[:FILE_ITEMS]))
    port = free_port()
    env = {
        **os.environ,  # RLMF_BUS_* from the bus_settings fixture
        "RLMF_HTTP_PORT": str(port),
        "RLMF_INGEST_FILES": json.dumps([str(news_file)]),
        "RLMF_INGEST_RETRY_AFTER_S": "1",
    }
    return Setup(env, f"http://127.0.0.1:{port}", items[FILE_ITEMS:], folder)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's service processes; any still running at the end is stopped."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            stop_process(process)


def wait_ready(setup: Setup, process: subprocess.Popen[bytes], log: Path) -> None:
    """/readyz answers 200 once the file is replayed and the broker is connected."""
    ready = f"{setup.base}/readyz"
    wait_until(lambda: http_ok(ready), 90, "ingest /readyz", process=process, log=log)


def stop_cleanly(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text(errors="replace")[-3000:]


def run_without_kill(
    setup: Setup, bus: BusSettings, prefix: str, processes: list[subprocess.Popen[bytes]]
) -> Published:
    start = end_offsets(bus, NEWS_RAW)
    log = setup.logs / "ingest-no-kill.log"
    process = spawn_ingest(setup.env, log)
    processes.append(process)
    client = RetryingClient(setup.base, setup.http_items, signal_after=len(setup.http_items))
    client.start()
    client.finish(GIVE_UP_S * 2)
    wait_ready(setup, process, log)
    stop_cleanly(process, log)
    return published_since(bus, start, prefix)


@dataclass
class KilledRun:
    published: Published
    client: RetryingClient
    restarted_at: float
    restarted_counts: Counter[str]


def run_with_kill(
    setup: Setup,
    bus: BusSettings,
    prefix: str,
    kill_after: int,
    kill_delay_s: float,
    processes: list[subprocess.Popen[bytes]],
) -> KilledRun:
    start = end_offsets(bus, NEWS_RAW)
    first_log, second_log = setup.logs / "ingest-killed.log", setup.logs / "ingest-restarted.log"
    first = spawn_ingest(setup.env, first_log)
    processes.append(first)
    client = RetryingClient(setup.base, setup.http_items, signal_after=kill_after)
    client.start()
    reached = client.sending_next.wait(GIVE_UP_S)
    assert reached, f"the client never reached the kill point: {client.failure!r}"
    # A seeded moment into the next request's round trip (parse, publish, broker
    # acknowledgement, answer: 1-3 ms on loopback), so the kill lands at different steps of it.
    time.sleep(kill_delay_s)  # the chaos moment itself, not a wait for a condition
    first.kill()  # SIGKILL while the client keeps streaming: no handler, no flush, no close
    assert first.wait(timeout=15) == -signal.SIGKILL

    restarted_at = time.monotonic()
    second = spawn_ingest(setup.env, second_log)  # same settings, same port, same file
    processes.append(second)
    client.finish(GIVE_UP_S * 2)
    wait_ready(setup, second, second_log)
    counts = item_counts(setup.base)
    stop_cleanly(second, second_log)
    return KilledRun(published_since(bus, start, prefix), client, restarted_at, counts)


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # three service processes per seed: 4 s each warm, over 30 s under load
@pytest.mark.parametrize("seed", [11, 29, 47])
def test_sigkill_mid_stream_then_restart_publishes_every_item_with_the_same_event_ids(
    seed: int,
    bus_settings: BusSettings,
    unique: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    rng = random.Random(seed)
    items = seeded_items(rng, unique)
    kill_after = rng.randint(5, HTTP_ITEMS - 10)
    kill_delay_s = rng.uniform(0.0, 0.003)
    setup = make_setup(items, tmp_path)
    prefix = f"chaos-{unique}-"

    baseline = run_without_kill(setup, bus_settings, prefix, processes)
    # The uninterrupted run: every item's events, each exactly once.
    assert set(baseline.copies) == event_ids_of(items)
    assert not baseline.republished()

    killed = run_with_kill(setup, bus_settings, prefix, kill_after, kill_delay_s, processes)
    answers = killed.client.answers
    to_killed = [a for a in answers if a.sent_at < killed.restarted_at]
    to_restarted = [a for a in answers if a.sent_at >= killed.restarted_at]
    acknowledged_before = [a for a in to_killed if a.status == 202]
    # The kill landed mid-stream: at or after the seeded point, before the client was done.
    assert kill_after <= len(acknowledged_before) < HTTP_ITEMS

    # Nothing lost, nothing altered: the distinct events and their payloads are the baseline's,
    # and every event the service acknowledged is among them.
    assert killed.published.distinct() == baseline.distinct()
    acknowledged = {e for a in answers if a.status == 202 for e in a.events}
    assert acknowledged <= set(killed.published.copies)

    # Re-publications carry the same event ids, so downstream drops them: the file the restart
    # replays, and at most the one item the killed process sent without answering (the client
    # resent it). An item acknowledged before the kill is never sent again.
    republished = killed.published.republished()
    assert max(republished.values(), default=0) == 1
    assert not set(republished) & {e for a in acknowledged_before for e in a.events}
    from_file = set(republished) & event_ids_of(items[:FILE_ITEMS])
    in_flight = [i for i in setup.http_items if event_ids_of([i]) & set(republished)]
    assert len(in_flight) <= 1
    assert {i["id"] for i in in_flight} <= {a.item_id for a in to_restarted if a.status == 202}

    # The restarted process's own counts: the whole file again, and every request it answered.
    counts = killed.restarted_counts
    assert counts["received"] == FILE_ITEMS + len(to_restarted), counts
    assert counts["published"] == FILE_ITEMS + sum(a.status == 202 for a in to_restarted)
    assert counts["rejected"] == sum(a.status != 202 for a in to_restarted), counts
    assert counts["duplicate"] == 0, counts
    assert counts["received"] == counts["published"] + counts["duplicate"] + counts["rejected"]
    print(
        f"seed {seed}: killed after {len(acknowledged_before)} acknowledged HTTP items "
        f"(seeded point {kill_after} + {kill_delay_s * 1000:.1f} ms); "
        f"{sum(republished.values())} events re-published "
        f"({len(from_file)} of the file's, {len(republished) - len(from_file)} of an item in "
        f"flight); restarted process {dict(counts)}"
    )
