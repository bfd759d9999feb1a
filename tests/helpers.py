"""What several test modules share: waiting on a condition, a service (the policy server among
them) as a process, the broker, Redis, the news the sentiment tests publish, and the chart
rendered with Helm's engine.

Test modules import from here and never from each other."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

from services.common import envelope as envelopes
from services.common.bus import Producer, ensure_topics
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import NEWS_RAW

if TYPE_CHECKING:
    import helm_python as helm

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Waiting on a condition
# ---------------------------------------------------------------------------------------------


def _tail(process: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    """The last lines a process wrote, for a failure message."""
    if log is not None and log.exists():
        return log.read_text(errors="replace")[-3000:]
    # A pipe is read only once the process has ended: reading a live one would block.
    if process is not None and process.poll() is not None and process.stderr is not None:
        return process.stderr.read().decode(errors="replace")[-3000:]
    return ""


def wait_until(
    condition: Callable[[], T],
    timeout_s: float = 30.0,
    what: str = "the condition",
    *,
    interval_s: float = 0.2,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> T:
    """Call `condition` until it returns something truthy and return that.

    Fails at once when `process` exits first (a dead service never becomes ready), and after
    `timeout_s` otherwise, with the tail of `log` (or of the process's stderr) in the message.
    An exception raised by `condition` is not retried: it is a bug, not "not yet"."""

    def check() -> T:
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"exited {process.returncode} before {what}:\n{_tail(process, log)}"
            )
        return condition()

    def timed_out(state: RetryCallState) -> T:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{_tail(None, log)}")

    retrying = Retrying(
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(interval_s),
        retry=retry_if_result(lambda result: not result),
        retry_error_callback=timed_out,
    )
    return retrying(check)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether `url` answers 200; a refused or timed-out connection is "not yet"."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM, then SIGKILL when the process has not ended within `timeout_s`."""
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=5)


# ---------------------------------------------------------------------------------------------
# A service as a process (`python -m services.<name>`), and the policy server (KServe's
# ModelServer) as one
# ---------------------------------------------------------------------------------------------


def spawn_service(
    module: str,
    env: dict[str, str],
    log: Path,
    *,
    args: list[str] | None = None,
    append: bool = False,
) -> subprocess.Popen[bytes]:
    """`python -m <module> <args>` run from the repository root with this process's environment
    updated by `env`, stdout and stderr into `log`; does not wait. `append` keeps what an
    earlier process of the same test wrote there (a restarted service's log tells both runs)."""
    cmd = [sys.executable, "-m", module, *(args or [])]
    # Closed here once started: the child keeps its own copy of the descriptor.
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class PolicyServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        return stop_process(self.process)


def spawn_policy_server(
    model_dir: Path, log: Path, env: dict[str, str] | None = None
) -> PolicyServer:
    """The policy server on a free loopback port, HTTP only; does not wait for it."""
    from services.common.broker import free_port

    port = free_port()
    args = ["--model_dir", str(model_dir), "--http_port", str(port), "--enable_grpc", "false"]
    # Tiny test models gain nothing from more intra-op threads on a shared machine.
    service_env = {"RLMF_POLICY_TORCH_THREADS": "1", **(env or {})}
    process = spawn_service("services.policy", service_env, log, args=args)
    return PolicyServer(f"http://127.0.0.1:{port}", process, log)


def start_policy_server(
    model_dir: Path, log: Path, env: dict[str, str] | None = None, timeout_s: float = 180.0
) -> PolicyServer:
    """The policy server, returned once its readiness probe answers (stopped if it never does)."""
    from services.policy.client import PolicyClient

    server = spawn_policy_server(model_dir, log, env)
    try:
        wait_until(
            lambda: PolicyClient(server.url, timeout=2).ready(),
            timeout_s,
            "the policy server to be ready",
            interval_s=0.3,
            process=server.process,
            log=log,
        )
    except BaseException:
        if server.process.poll() is None:
            server.stop()
        raise
    return server


# ---------------------------------------------------------------------------------------------
# The broker: reading topics back, consumer groups, publishing news
# ---------------------------------------------------------------------------------------------


@dataclass
class Record:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Record]:
    """Every record currently in `topic`, from the beginning to the end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        # The embedded broker may report a partition's end as the start of its last record
        # batch, so reaching the reported end is not enough: keep polling until a poll after
        # it comes back empty.
        quiet_polls = 0
        while quiet_polls < 2 or any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            fetched = consumer.poll(timeout_ms=100)
            quiet_polls = 0 if fetched else quiet_polls + 1
            for tp, batch in fetched.items():
                for r in batch:
                    records.append(
                        Record(r.key, r.value, dict(r.headers or []), tp.partition, r.offset)
                    )
        return records
    finally:
        consumer.close()


def end_offsets(bus: BusSettings, topic: str) -> dict[TopicPartition, int]:
    """The true end of each partition. The embedded broker (tansu) answers ListOffsets with the
    last record batch's base offset + 1, not the high watermark, so the end is found by reading
    from there until nothing more comes."""
    ensure_topics(bus, [topic], "test")
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        for tp, offset in consumer.end_offsets(parts).items():
            consumer.seek(tp, offset)
        while consumer.poll(timeout_ms=300):
            pass
        return {tp: consumer.position(tp) for tp in parts}
    finally:
        consumer.close()


def read_all(
    bus: BusSettings, topic: str, wanted: int, match: Any, timeout_s: float = 20
) -> list[Any]:
    """Records of `topic` for which `match(record)` holds, read from the start, until `wanted`."""
    ensure_topics(bus, [topic], "test")
    consumer = KafkaConsumer(bootstrap_servers=bus.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    found: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(found) < wanted:
            for batch in consumer.poll(timeout_ms=200).values():
                found += [r for r in batch if match(r)]
    finally:
        consumer.close()
    return found


def group_at_end(bus: BusSettings, unique: str) -> str:
    """A fresh consumer group whose committed offsets are the current end of news.raw.v1, so a
    test's loop reads only what the test publishes, not every earlier test's news."""
    group = f"sentiment-test-{unique}"
    ends = end_offsets(bus, NEWS_RAW)
    consumer = KafkaConsumer(
        bootstrap_servers=bus.bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        consumer.assign(list(ends))
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in ends.items()})
    finally:
        consumer.close()
    return group


NEWS_DAY = datetime(2024, 3, 1, 9, tzinfo=UTC)


def news_item(
    unique: str, n: int, headline: str, ticker: str = "ACME", hours: int = 0
) -> pb.NewsItem:
    """A news item with an id private to the test, published `hours` after NEWS_DAY."""
    item = pb.NewsItem(
        item_id=f"s-{unique}-{n}", ticker=ticker, headline=headline, source_name="test"
    )
    envelopes.set_time(item.published_at, NEWS_DAY + timedelta(hours=hours))
    return item


def publish(bus: BusSettings, items: list[pb.NewsItem]) -> None:
    """The items on news.raw.v1, keyed by ticker, flushed."""
    producer = Producer(bus, "sentiment-test")
    for item in items:
        producer.publish(
            NEWS_RAW,
            item,
            key=item.ticker or "none",
            event_time=envelopes.to_datetime(item.published_at),
        )
    producer.close()


# ---------------------------------------------------------------------------------------------
# What pip cannot install: Debian's tools, Redis
# ---------------------------------------------------------------------------------------------


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_without(name: str, install: str) -> pytest.MarkDecorator:
    """A mark that skips a test needing the tool when it is not on PATH, decided at collection
    so that none of the test's fixtures start; never under CI, where require_tool fails it."""
    missing = shutil.which(name) is None and not under_ci()
    return pytest.mark.skipif(missing, reason=f"{name} is missing: {install}")


def require_tool(name: str, install: str) -> str:
    """The tool's path. Skip when it is not on PATH, naming the command that installs it,
    except under CI (CI=true): .ci/run installs it, so there a missing tool is a broken machine
    and its tests must fail, not pass by skipping."""
    found = shutil.which(name)
    if found:
        return found
    reason = f"{name} is missing: {install}"
    if under_ci():
        pytest.fail(f"{reason}; under CI it must be there (.ci/run installs it)")
    pytest.skip(reason)


REDIS = "127.0.0.1:6379"


def require_redis() -> None:
    """Skip when no Redis answers at REDIS, except under CI (CI=true): CI starts one, so there
    a missing Redis is a broken machine and the Redis variants must fail, not pass by skipping."""
    import redis

    host, port = REDIS.split(":")
    try:
        redis.Redis(host=host, port=int(port), socket_timeout=1).ping()
    except redis.RedisError as exc:
        reason = f"no Redis answers at {REDIS} ({exc}); the SQLite variant still runs"
        if under_ci():
            pytest.fail(f"{reason}; under CI a Redis must be running (.ci/run starts one)")
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# The chart, rendered with Helm's own engine (helm-python-sdk)
# ---------------------------------------------------------------------------------------------

CHART = REPO / "charts" / "rlmf"
# The policy's own release: same release name and values, in the policy namespace.
POLICY_CHART = REPO / "charts" / "rlmf-policy"
RELEASE, NAMESPACE = "rlmf", "trading"
POLICY_NAMESPACE = f"{NAMESPACE}-policy"
# The trainer's NetworkPolicy needs the API server's address (there is no default).
API_CIDR = {"networkPolicies": {"apiServerCidr": "10.96.0.1/32"}}
EXTERNAL = {"kafka": {"bootstrap": "kafka.data.svc:9092"}} | API_CIDR

# The value sets the chart is checked with; each renders and every manifest is validated.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "external-kafka": EXTERNAL,
    "strimzi": {"kafka": {"strimzi": {"enabled": True}, "replicationFactor": 3}} | API_CIDR,
    # Strimzi without a login (a test cluster), and KEDA scaling the consumers on lag.
    "strimzi-plain-keda": {
        "kafka": {"strimzi": {"enabled": True, "authentication": "none"}},
        "keda": {"enabled": True},
    }
    | API_CIDR,
    # An existing Kafka that wants SCRAM over TLS, with KEDA.
    "external-sasl-keda": API_CIDR
    | {
        "kafka": {
            "bootstrap": "kafka.data.svc:9093",
            "client": {
                "securityProtocol": "SASL_SSL",
                "saslMechanism": "SCRAM-SHA-512",
                "username": "rlmf",
                "passwordSecret": {"name": "kafka-rlmf", "key": "password"},
                "caSecret": {"name": "kafka-ca", "key": "ca.crt"},
                "port": 9093,
            },
        },
        "keda": {"enabled": True},
    },
    # KServe without Knative: a plain Deployment scaled by an HPA on CPU.
    "raw-deployment": EXTERNAL
    | {
        "policy": {
            "deploymentMode": "RawDeployment",
            "autoscaling": {"metric": "cpu", "target": 75},
        }
    },
    "gpu": EXTERNAL
    | {
        "sentiment": {"gpu": {"enabled": True, "count": 1}, "replicas": 2},
        "policy": {"gpu": {"enabled": True, "count": 1}},
        "trainer": {"gpu": {"enabled": True, "count": 1}},
    },
    "canary-0": EXTERNAL
    | {
        "policy": {
            "student": {"storageUri": "pvc://rlmf-models/students/s1", "canaryTrafficPercent": 0}
        }
    },
    "canary-10": EXTERNAL
    | {
        "policy": {
            "student": {"storageUri": "pvc://rlmf-models/students/s1", "canaryTrafficPercent": 10}
        }
    },
    "external-redis-no-netpol": EXTERNAL
    | {
        "feast": {"redis": {"external": "redis.data.svc:6379"}},
        "networkPolicies": {"enabled": False},
    },
    "scaled-out": EXTERNAL
    | {name: {"replicas": 3} for name in ("ingest", "sentiment", "features", "simulator")},
}


@cache
def load_chart() -> helm.Chart:
    # Imported here: only the chart tests need Helm's engine, every other test imports this file.
    import helm_python as helm

    return helm.Chart.load(str(CHART))


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce."""
    return load_chart().render(
        copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )


@cache
def load_policy_chart() -> helm.Chart:
    import helm_python as helm

    return helm.Chart.load(str(POLICY_CHART))


def render_policy_raw(values: dict[str, Any]) -> dict[str, str]:
    """The policy release (charts/rlmf-policy) rendered as docs/cluster.md installs it: the
    same release name and values file, in the policy namespace."""
    return load_policy_chart().render(
        copy.deepcopy(values), name=RELEASE, namespace=POLICY_NAMESPACE, is_install=True
    )


def render_install(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object both releases put on the cluster for one values file."""
    return documents(render_raw(values)) + documents(render_policy_raw(values))


@cache
def _render_cached(key: str) -> tuple[dict[str, Any], ...]:
    return tuple(render_install(VALUE_SETS[key]))


def render(key: str) -> list[dict[str, Any]]:
    """Every Kubernetes object the named value set installs, both releases' (a fresh copy per
    call); each carries the template it came from under `_template`."""
    return copy.deepcopy(list(_render_cached(key)))


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The objects of rendered templates, each tagged with its template under `_template`."""
    import yaml

    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc | {"_template": path})
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without the test's bookkeeping key."""
    return {k: v for k, v in doc.items() if k != "_template"}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(object name, pod spec) of every workload, the InferenceService predictor included."""
    specs = []
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append((d["metadata"]["name"], spec["template"]["spec"]))
        elif d["kind"] == "CronJob":
            specs.append((d["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((d["metadata"]["name"], spec))
        elif d["kind"] == "InferenceService":
            specs.append((d["metadata"]["name"], spec["predictor"]))
    return specs
