"""Transient broker trouble is retried, consumer groups work on the embedded broker, log lines
written while handling a message carry its trace id, and a consumer SIGKILLed with outputs out
and offsets not committed re-delivers (alone, or as a group member whose partitions move)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from services.common import envelope as envelopes
from services.common import json_logging
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import ConsumerLoop, Outgoing, Producer, ensure_topics
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from tests.helpers import read_topic, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 1, 2, 21, 0, tzinfo=UTC)


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_producer_waits_out_a_broker_that_is_not_up_yet() -> None:
    port = free_port()
    late = EmbeddedBroker(port=port)
    starter = threading.Timer(1.5, late.start)
    starter.start()
    try:
        settings = BusSettings(bootstrap=late.bootstrap, retry_attempts=20, retry_max_wait_s=1.0)
        producer = Producer(settings, "test")  # the first attempts fail: nothing listens yet
        ids = [
            producer.publish("late.topic", pb.NewsItem(item_id=str(i)), key="MSFT", event_time=NOW)
            for i in range(10)
        ]
        producer.close()
        values = [
            envelopes.decode(r.value, pb.NewsItem).id
            for r in read_topic(late.bootstrap, "late.topic")
        ]
        assert sorted(values) == sorted(ids)
    finally:
        starter.join()
        late.stop()


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_consumer_group_protocol_joins_and_commits(bus_settings: BusSettings, unique: str) -> None:
    # Group mode (the cluster default): the embedded broker completes a join only when the
    # rebalance timeout (max_poll_interval_ms) runs out, so it is kept short here.
    settings = bus_settings.model_copy(
        update={"group_protocol": "group", "max_poll_interval_ms": 2000, "session_timeout_ms": 2000}
    )
    in_topic, out_topic = f"g.in.{unique}", f"g.out.{unique}"

    def handle(message):  # type: ignore[no-untyped-def]
        out = pb.EnrichedNews(item=message.payload)
        return [Outgoing(out_topic, out, message.envelope.key, message.envelope.event_time)]

    def loop() -> ConsumerLoop:
        return ConsumerLoop(
            service="group-test",
            topics=[in_topic],
            settings=settings,
            handle=handle,
            create_topics=[out_topic],
            payload_types={in_topic: pb.NewsItem},
        )

    first = loop()
    producer = Producer(settings, "test")
    for i in range(20):
        producer.publish(in_topic, pb.NewsItem(item_id=str(i)), key="MSFT", event_time=NOW)
    producer.close()
    started = time.monotonic()
    first.run(max_messages=20, idle_timeout_s=15)
    assert first.stats.handled == 20, f"joined and handled only {first.stats.handled} in time"
    assert time.monotonic() - started < 15
    second = loop()  # same group: the committed offsets mean nothing is handled again
    second.run(idle_timeout_s=4)
    assert second.stats.consumed == 0
    assert len(read_topic(settings.bootstrap, out_topic)) == 20


def test_log_lines_carry_the_trace_id_of_the_message(
    bus_settings: BusSettings, unique: str
) -> None:
    in_topic, out_topic = f"l.in.{unique}", f"l.out.{unique}"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_logging.JsonFormatter("log-test"))
    logger = logging.getLogger("log-test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def handle(message):  # type: ignore[no-untyped-def]
        logger.info("handling %s", message.payload.item_id)
        return []

    loop = ConsumerLoop(
        service="log-test",
        topics=[in_topic],
        settings=bus_settings,
        handle=handle,
        create_topics=[out_topic],
        payload_types={in_topic: pb.NewsItem},
    )
    producer = Producer(bus_settings, "test")
    producer.publish(
        in_topic, pb.NewsItem(item_id="x"), key="MSFT", event_time=NOW, trace_id="trace-42"
    )
    producer.close()
    loop.run(idle_timeout_s=1.5)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and lines[0]["msg"] == "handling x"
    assert lines[0]["trace_id"] == "trace-42" and lines[0]["service"] == "log-test"


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-batch: a re-delivery must actually happen, and nothing may be lost
# ---------------------------------------------------------------------------------------------

# The workers' pauses per message. The worker to be killed is slow (1.2 s a batch of 40), so
# its partitions still hold work when the test arms its stop, yet well under the 2 s poll
# interval, so no group member is dropped for being slow.
VICTIM_DELAY_S = 0.03
SURVIVOR_DELAY_S = 0.01

Position = tuple[int, int]  # partition, offset of an input


@dataclass
class Worker:
    """A `tests.integration.bus_kill_worker` process and the files it writes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    journal: Path
    stopped_file: Path

    def batches(self) -> list[list[tuple[int, int, str]]]:
        """The batches it flushed, in order (a line still being written is left out)."""
        if not self.journal.exists():
            return []
        text = self.journal.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [[tuple(entry) for entry in json.loads(line)] for line in complete.splitlines()]

    def positions(self, from_batch: int = 0) -> set[Position]:
        return {(p, offset) for batch in self.batches()[from_batch:] for p, offset, _ in batch}

    def stopped_batch(self) -> list[tuple[int, int, str]]:
        """Waits for the batch it stopped on before committing, and returns that batch."""
        wait_until(
            self.stopped_file.exists,
            timeout_s=240,
            what=f"{self.name} to stop between flushing a batch and committing it",
            process=self.process,
            log=self.log,
        )
        return [tuple(entry) for entry in json.loads(self.stopped_file.read_text())]

    def sigkill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def _spawn_worker(
    settings: BusSettings,
    in_topic: str,
    out_topic: str,
    protocol: str,
    state: Path,
    name: str,
    *,
    delay_s: float = 0.0,
    stoppable: bool = False,
) -> Worker:
    """A worker; a `stoppable` one stops before committing the first batch after `_arm`."""
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": settings.bootstrap,
        "RLMF_BUS_GROUP_PROTOCOL": protocol,
        "RLMF_BUS_MAX_RECORDS": "40",
        "RLMF_BUS_POLL_TIMEOUT_MS": "100",
        # Group mode: the embedded broker completes a join only when the rebalance timeout
        # runs out, and notices a dead member after the session timeout; both kept short.
        "RLMF_BUS_MAX_POLL_INTERVAL_MS": "2000",
        "RLMF_BUS_SESSION_TIMEOUT_MS": "4000",
        "RLMF_HTTP_PORT": str(free_port()),
    }
    log, journal = state / f"{name}.log", state / f"{name}.journal"
    stopped_file = state / f"{name}.stopped"
    argv = [sys.executable, "-m", "tests.integration.bus_kill_worker", in_topic, out_topic]
    argv += [str(journal), "--delay", str(delay_s)]
    if stoppable:
        argv += ["--arm-file", str(_arm_file(state)), "--stopped-file", str(stopped_file)]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Worker(name, process, log, journal, stopped_file)


def _arm_file(state: Path) -> Path:
    return state / "arm"


def _arm(state: Path) -> None:
    """From now on a stoppable worker stops before committing its next batch."""
    _arm_file(state).touch()


def _wait_for_a_batch(worker: Worker) -> None:
    wait_until(
        worker.batches,
        timeout_s=240,
        what=f"{worker.name} to handle a batch",
        process=worker.process,
        log=worker.log,
    )


def _committed_by_partition(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets `group` committed on `topic`'s partitions (0 where it committed none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in parts}
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Offsets `group` committed on `topic`, summed over its partitions (the topic is fresh,
    so this is how many of its messages the group has marked done)."""
    return sum(_committed_by_partition(bootstrap, group, topic).values())


def _output_ids(bootstrap: str, topic: str) -> list[str]:
    return [envelopes.decode(r.value, pb.EnrichedNews).id for r in read_topic(bootstrap, topic)]


def _assert_out_but_not_committed(
    bootstrap: str, group: str, in_topic: str, out_topic: str, batch: list[tuple[int, int, str]]
) -> None:
    """The state a SIGKILL must survive: the batch's outputs are on the broker, and the group's
    committed offsets do not cover a single one of its inputs."""
    assert batch, "the worker stopped on an empty batch"
    outputs = set(_output_ids(bootstrap, out_topic))
    assert {envelopes.derived_id(i, out_topic, 0) for _, _, i in batch} <= outputs
    committed = _committed_by_partition(bootstrap, group, in_topic)
    assert all(committed[p] <= offset for p, offset, _ in batch), (committed, batch)


def _wait_for_redelivery(worker: Worker, batch: list[tuple[int, int, str]], after: int) -> None:
    """Waits until `worker` handled every input of `batch` again, in its batches from `after`."""
    wanted = {(p, offset) for p, offset, _ in batch}
    wait_until(
        lambda: wanted <= worker.positions(after),
        timeout_s=240,
        what=f"{worker.name} to be re-delivered the killed worker's uncommitted batch",
        process=worker.process,
        log=worker.log,
    )


def _wait_for_all_outputs(bootstrap: str, out_topic: str, count: int, worker: Worker) -> None:
    wait_until(
        lambda: len(set(_output_ids(bootstrap, out_topic))) >= count,
        timeout_s=240,
        what=f"all {count} outputs from {worker.name}",
        process=worker.process,
        log=worker.log,
    )


def _publish_news(settings: BusSettings, topic: str, count: int) -> list[str]:
    producer = Producer(settings, "test")
    # One key per message, so the inputs spread over every partition (the group test needs a
    # share for each member).
    ids = [
        producer.publish(
            topic, pb.NewsItem(item_id=f"n{i}", ticker="MSFT"), key=f"n{i}", event_time=NOW
        )
        for i in range(count)
    ]
    producer.close()
    return ids


def _assert_nothing_lost_and_batch_duplicated(
    bootstrap: str, out_topic: str, ids: list[str], batch: list[tuple[int, int, str]]
) -> None:
    """Every input has its output; the re-delivered batch's outputs are there twice with the
    same event ids, so downstream de-duplication by id drops them."""
    outputs = Counter(_output_ids(bootstrap, out_topic))
    assert set(outputs) == {envelopes.derived_id(i, out_topic, 0) for i in ids}
    assert all(outputs[envelopes.derived_id(i, out_topic, 0)] >= 2 for _, _, i in batch)
    assert outputs.total() - len(outputs) >= len(batch)


@pytest.mark.slow  # two worker processes, a kill and a restart: about 10 s
def test_sigkill_with_uncommitted_outputs_redelivers_and_loses_nothing(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    in_topic, out_topic = f"k.in.{unique}", f"k.out.{unique}"
    group = f"echo-{in_topic}"  # the worker's group
    ensure_topics(bus_settings, [in_topic, out_topic])
    ids = _publish_news(bus_settings, in_topic, 300)
    bootstrap = bus_settings.bootstrap
    # Slowed down, so that work is left when the test arms the stop after its first batch.
    worker = _spawn_worker(
        bus_settings,
        in_topic,
        out_topic,
        "manual",
        tmp_path,
        "killed",
        delay_s=VICTIM_DELAY_S,
        stoppable=True,
    )
    try:
        _wait_for_a_batch(worker)  # so the kill comes after a committed batch, mid-stream
        _arm(tmp_path)
        batch = worker.stopped_batch()
        _assert_out_but_not_committed(bootstrap, group, in_topic, out_topic, batch)
    finally:
        worker.sigkill()
    restarted = _spawn_worker(bus_settings, in_topic, out_topic, "manual", tmp_path, "restarted")
    try:
        _wait_for_redelivery(restarted, batch, after=0)
        _wait_for_all_outputs(bootstrap, out_topic, 300, restarted)
    finally:
        assert stop_process(restarted.process, timeout_s=60) == 0
    _assert_nothing_lost_and_batch_duplicated(bootstrap, out_topic, ids, batch)
    assert _committed(bootstrap, group, in_topic) == 300


@pytest.mark.slow  # two group members, a kill and a rebalance: about 20 s
def test_group_member_sigkilled_mid_batch_its_partitions_move_and_nothing_is_lost(
    bus_settings: BusSettings, unique: str, tmp_path: Path
) -> None:
    in_topic, out_topic = f"r.in.{unique}", f"r.out.{unique}"
    group = f"echo-{in_topic}"
    ensure_topics(bus_settings, [in_topic, out_topic])
    ids = _publish_news(bus_settings, in_topic, 600)
    bootstrap = bus_settings.bootstrap
    victim = _spawn_worker(
        bus_settings,
        in_topic,
        out_topic,
        "group",
        tmp_path,
        "victim",
        delay_s=VICTIM_DELAY_S,
        stoppable=True,
    )
    survivor = _spawn_worker(
        bus_settings, in_topic, out_topic, "group", tmp_path, "survivor", delay_s=SURVIVOR_DELAY_S
    )
    try:
        for member in (victim, survivor):  # both hold partitions: the group has formed
            _wait_for_a_batch(member)
        _arm(tmp_path)
        batch = victim.stopped_batch()
        survivor.process.send_signal(signal.SIGSTOP)  # it commits nothing while we look
        try:
            _assert_out_but_not_committed(bootstrap, group, in_topic, out_topic, batch)
            before_kill = len(survivor.batches())
            victim.sigkill()
        finally:
            survivor.process.send_signal(signal.SIGCONT)
        # No restart: the group must notice the dead member and hand its partitions to the
        # survivor, which re-reads them from the last committed offsets.
        _wait_for_redelivery(survivor, batch, after=before_kill)
        _wait_for_all_outputs(bootstrap, out_topic, 600, survivor)
    finally:
        if victim.process.poll() is None:
            victim.sigkill()
        if survivor.process.poll() is None:
            stop_process(survivor.process, timeout_s=60)
    assert survivor.process.returncode == 0
    _assert_nothing_lost_and_batch_duplicated(bootstrap, out_topic, ids, batch)
    assert _committed(bootstrap, group, in_topic) == 600
