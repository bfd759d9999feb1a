"""A real Prometheus (Debian's `prometheus`) scrapes an embedded run of the services, and every
Grafana dashboard query (monitoring/dashboards.py) and every alert expression is run against it.

The run: the real broker (`broker` fixture) and, as subprocesses, ingest (HTTP push), sentiment
(LLM backend on the tiny random Llama), features, the simulator in live mode, the promotion
watcher and the policy behind KServe's ModelServer (a tiny Llama artifact), each serving
/metrics on a loopback port that Prometheus scrapes every second. The test posts one news item
a day to ingest and publishes daily bars for one fresh ticker (plus one malformed bar and one
re-delivered bar), waits until
the simulator has traded (and asks the policy to reload a tampered artifact, which it refuses),
then runs each query over the run's time range. The chart's `helm test` script then runs against
the same run.

A query must return data when every series it selects exists. A selector with no series at all
is allowed only if it is listed in PENDING with the reason (a metric another service has not
defined yet, or an event this run does not provoke); the test writes what returned data and
what was missing to prometheus-report.json in its tmp dir and prints it.

Without prometheus on PATH the test skips, naming the install command, except under CI.
Not run here: Kubernetes service discovery (ServiceMonitors) and Grafana itself - no cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from monitoring import dashboards
from services.common import topics
from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.envelope import set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from tests.helpers import of_kind, render, require_tool, skip_without

REPO = Path(__file__).resolve().parents[2]
SCRAPE_S = 1
PROMETHEUS_INSTALL = "apt-get install prometheus"
needs_prometheus = skip_without("prometheus", PROMETHEUS_INSTALL)
BARS = 12
TEST_TICKER = "ZTEST"  # the chart's tests.ticker
# Five service processes, a model server and Prometheus: over a minute to start.
pytestmark = pytest.mark.slow

# Selectors with no series in this run, and why. Everything else a dashboard or alert asks
# for must return data.
PENDING: dict[str, str] = {
    'kube_deployment_status_replicas_unavailable{namespace="trading-policy", '
    'deployment=~"rlmf-policy-predictor.*"}': "kube-state-metrics runs in a cluster only",
    "rlmf_broker_retries_total": "only on a transient broker error; this run provokes none",
    "rlmf_simulator_policy_fallbacks_total": "only when the policy fails; this run provokes none",
}

_NOT_METRICS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "humanize",
}  # fmt: skip


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (metric name plus its {matchers})."""
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    found = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, matchers, call = m.group(1), m.group(2) or "", m.group(3)
        if call or name in _NOT_METRICS:
            continue
        found.append(name + matchers)
    return found


def test_selector_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, topic) "
        '(rate(rlmf_x_bucket{service="s"}[$__rate_interval])))'
    )
    assert selectors(expr) == ['rlmf_x_bucket{service="s"}']
    assert selectors("max by (service) (rlmf_ready) == 0") == ["rlmf_ready"]


# ---------------------------------------------------------------------------------------------
# The embedded run
# ---------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path, port: int) -> Proc:
    log = logs / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env={**os.environ, **env},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Proc(name, port, process, log, env)


def _wait_metrics(procs: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        for proc in list(waiting):
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited {proc.process.returncode}:\n{proc.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=1).status_code == 200:
                    waiting.remove(proc)
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    if waiting:
        raise RuntimeError(f"no /metrics from {[p.name for p in waiting]}: {waiting[0].tail()}")


def _stop(procs: list[Proc]) -> None:
    for proc in procs:
        proc.process.terminate()
    for proc in procs:
        try:
            proc.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=5)


@pytest.fixture(scope="module")
def policy_artifact(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.policy.artifacts import init_artifact

    folder = tmp_path_factory.mktemp("prom-policy") / "v0"
    init_artifact(tiny_llama_dir, folder, "v0")
    return folder


@dataclass
class Run:
    ticker: str
    procs: list[Proc]
    prometheus: str
    started: float
    prometheus_started: float
    timings: dict[str, float]


class Kubelet(threading.Thread):
    """Calls every service's /readyz each second as a kubelet's readiness probe does: the
    services set rlmf_ready when /readyz is asked, not on their own."""

    def __init__(self, procs: list[Proc]) -> None:
        super().__init__(name="kubelet", daemon=True)
        self.procs, self.stop = procs, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SCRAPE_S):
            for proc in self.procs:
                if proc.name == "policy":
                    continue  # KServe's readiness lives at /v2/health/ready, not /readyz
                # A probe that fails is what a kubelet sees too; the metric says so.
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=1)


def _prometheus(procs: list[Proc], tmp: Path) -> subprocess.Popen[bytes]:
    binary = require_tool("prometheus", PROMETHEUS_INSTALL)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {"job_name": f"rlmf-{p.name}", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{p.port}"]}]}
            for p in procs
        ],
    }  # fmt: skip
    # The chart's own alert rules, so the test can see one fire on the services' real metrics.
    (rule,) = of_kind(render("external-kafka"), "PrometheusRule")
    (tmp / "rlmf-rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config["rule_files"] = [str(tmp / "rlmf-rules.yaml")]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{free_port()}", "--log.level=warn"],
        stdout=(tmp / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def _feed(bus: BusSettings, ticker: str, ingest_port: int) -> None:
    """BARS daily bars for `ticker` on market.bars.v1 and one news item a day posted to ingest's
    HTTP API, then one malformed bar (dead-lettered) and one re-delivery of the first bar's
    envelope (dropped as a duplicate)."""
    day0 = datetime(2024, 3, 1, 21, tzinfo=UTC)
    news = [
        {"id": f"{ticker}-{d}", "headline": f"{ticker} shares steady on day {d}",
         "body": "Analysts expect steady demand.", "source": "prometheus-test",
         "published_at": (day0 + timedelta(days=d, hours=-3)).isoformat(),
         "tickers": [ticker], "synthetic": True}
        for d in range(BARS)
    ]  # fmt: skip
    answer = httpx.post(f"http://127.0.0.1:{ingest_port}/v1/news", json=news, timeout=30)
    assert answer.status_code == 202, answer.text
    producer = Producer(bus, "prometheus-test")
    try:
        first = None
        for d in range(BARS):
            end = day0 + timedelta(days=d)
            close = 100.0 + d
            bar = pb.Bar(ticker=ticker, open=close - 0.5, high=close + 1, low=close - 1,
                         close=close, volume=1e6)  # fmt: skip
            set_time(bar.start, end - timedelta(hours=6, minutes=30))
            set_time(bar.end, end)
            bar_id = producer.publish(topics.MARKET_BARS, bar, key=ticker, event_time=end)
            first = first or (bar, end, bar_id)
        producer.send_raw(topics.MARKET_BARS, b"\x00not an envelope", key=ticker, headers=[])
        bar, end, bar_id = first
        producer.publish(topics.MARKET_BARS, bar, key=ticker, event_time=end, id=bar_id)
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="module")
def run(
    broker: str,
    policy_artifact: Path,
    tiny_llama_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    require_tool("prometheus", PROMETHEUS_INSTALL)  # before any service starts
    tmp = tmp_path_factory.mktemp("prometheus")
    # Ingest accepts tickers of 1-5 letters; a fresh one keeps this run apart on the shared broker.
    ticker = "".join(random.Random(time.time_ns()).choices(string.ascii_uppercase, k=5))
    bus_env = {"RLMF_BUS_BOOTSTRAP": broker, "RLMF_BUS_GROUP_PROTOCOL": "manual",
               "RLMF_BUS_POLL_TIMEOUT_MS": "100", "RLMF_LOG_LEVEL": "WARNING"}  # fmt: skip
    bus = BusSettings(bootstrap=broker, group_protocol="manual")
    ensure_topics(bus, topics.all_topics_with_dlq(), "prometheus-test")
    ports = {
        name: free_port()
        for name in ("ingest", "sentiment", "features", "simulator", "policy", "watcher")
    }
    procs = [
        _spawn("ingest", ["-m", "services.ingest"],
               bus_env | {"RLMF_HTTP_PORT": str(ports["ingest"])}, tmp, ports["ingest"]),
        _spawn("sentiment", ["-m", "services.sentiment"],
               bus_env | {"RLMF_HTTP_PORT": str(ports["sentiment"]),
                          "RLMF_SENTIMENT_MODEL_DIR": str(tiny_llama_dir),
                          "RLMF_SENTIMENT_FALLBACK_TO_LEXICON": "false",
                          "RLMF_SENTIMENT_SUMMARY_MAX_NEW_TOKENS": "4"},
               tmp, ports["sentiment"]),
        _spawn("policy", ["-m", "services.policy", "--model_dir", str(policy_artifact),
                          "--http_port", str(ports["policy"]), "--enable_grpc", "false"],
               bus_env | {"RLMF_POLICY_MAX_WAIT_MS": "5"}, tmp, ports["policy"]),
        _spawn("features", ["-m", "services.features"],
               bus_env | {"RLMF_HTTP_PORT": str(ports["features"]),
                          "RLMF_FEATURES_TICKERS": f"{ticker},{TEST_TICKER}",
                          "RLMF_FEATURES_DATA_DIR": str(tmp / "feast"),
                          "RLMF_FEATURES_PROJECT": f"prom_{ticker.lower()}"},
               tmp, ports["features"]),
        _spawn("simulator", ["-m", "services.simulator"],
               bus_env | {"RLMF_HTTP_PORT": str(ports["simulator"]), "RLMF_SIMULATOR_MODE": "live",
                          "RLMF_SIMULATOR_TICKERS": json.dumps([ticker]),
                          "RLMF_SIMULATOR_GROUP_ID": f"sim-{ticker}",
                          "RLMF_SIMULATOR_FEATURES_TIMEOUT_S": "5",
                          "RLMF_SIMULATOR_POLICY_URL": f"http://127.0.0.1:{ports['policy']}"},
               tmp, ports["simulator"]),
        # The promotion watcher exports rlmf_promotions_total (every outcome from 0) from
        # models.promotions.v1: the promotion panels and alerts have series without a cycle.
        _spawn("promotion-watcher", ["-m", "services.promotion_watcher"],
               bus_env | {"RLMF_HTTP_PORT": str(ports["watcher"]),
                          "RLMF_WATCHER_GROUP_ID": f"watcher-{ticker}"},
               tmp, ports["watcher"]),
    ]  # fmt: skip
    kubelet = Kubelet(procs)
    t0 = time.monotonic()
    # Prometheus starts with the services and scrapes them as they come up, as in a cluster.
    prometheus = _prometheus(procs, tmp)
    try:
        url = _wait_prometheus(prometheus, tmp)
        _wait_metrics(procs, timeout_s=150)
        timings = {"services_up_s": round(time.monotonic() - t0, 1)}
        kubelet.start()
        started = time.time()
        _feed(bus, ticker, ports["ingest"])
        yield Run(ticker, procs, url, started, t0, timings)
    finally:
        kubelet.stop.set()
        _stop(procs)
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=15)


def _wait_prometheus(process: subprocess.Popen[bytes], tmp: Path) -> str:
    config = tmp / "prometheus.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {config.read_text()[-2000:]}")
        address = next(a for a in process.args if str(a).startswith("--web.listen-address="))
        url = "http://" + str(address).split("=", 1)[1]
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("prometheus did not become ready in 30 s")


def _query_range(run: Run, expr: str) -> list[dict[str, object]]:
    expr = expr.replace("$__rate_interval", f"{4 * SCRAPE_S}s")
    response = httpx.get(
        f"{run.prometheus}/api/v1/query_range",
        params={
            "query": expr,
            "start": run.started - 5,
            "end": time.time(),
            "step": f"{SCRAPE_S}s",
        },
        timeout=10,
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _latest(run: Run, expr: str) -> float:
    result = _query_range(run, expr)
    return float(result[0]["values"][-1][1]) if result else 0.0


def _wait_traded(run: Run, timeout_s: float) -> None:
    """Until the simulator has traded the bars and sentiment has enriched the news, as seen by
    Prometheus, then two more scrapes."""
    deadline = time.monotonic() + timeout_s
    decisions = f'service="simulator",topic="{topics.TRADING_DECISIONS}"'
    traded = f"sum(rlmf_messages_produced_total{{{decisions}}})"
    enriched = f'sum(rlmf_messages_produced_total{{topic="{topics.NEWS_ENRICHED}"}})'
    while time.monotonic() < deadline:
        for proc in run.procs:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        if _latest(run, traded) >= BARS - 2 and _latest(run, enriched) >= BARS:
            time.sleep(3 * SCRAPE_S)
            return
        time.sleep(0.5)
    tails = "\n".join(
        f"--- {p.name}\n{p.tail()}" for p in run.procs if p.name in ("simulator", "sentiment")
    )
    raise AssertionError(
        f"not traded and enriched in {timeout_s}s (decisions {_latest(run, traded)}, "
        f"enriched {_latest(run, enriched)}):\n{tails}"
    )


# ---------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------


def _all_queries() -> dict[str, str]:
    """Every dashboard query and alert expression, named by where it comes from."""
    queries = {
        f"{spec.uid}: {expr}": expr for spec in dashboards.DASHBOARDS for expr in spec.queries()
    }
    (rule,) = of_kind(render("external-kafka"), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            # The condition's left side: the series the alert watches, without its threshold.
            watched = re.split(r"\s*(==|>|<)\s*[0-9.]+\s*$", alert["expr"])[0]
            # The release's and the policy's namespaces exist on a cluster only.
            watched = watched.replace(
                'namespace=~"trading|trading-policy", job=~"rlmf-.*"', 'job=~"rlmf-.*"'
            )
            queries[f"alert {alert['alert']}: {watched}"] = watched
    return queries


def _check(run: Run, expr: str) -> dict[str, object]:
    result = _query_range(run, expr)
    if result:
        return {"data": True, "series": len(result)}
    return {
        "data": False,
        "missing": [s for s in selectors(expr) if not _query_range(run, f"count({s})")],
    }


def _refused_reload(run: Run, artifact: Path, tmp: Path) -> None:
    """Promote a tampered copy of the artifact: the policy must refuse it and keep serving."""
    from services.policy.client import PolicyClientError, request_reload

    # Beside the artifact: the policy's reload root is its model folder's parent by default.
    bad = artifact.parent / f"tampered-{tmp.name}"
    shutil.copytree(artifact, bad)
    with (bad / "model.safetensors").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    policy = next(p for p in run.procs if p.name == "policy")
    with pytest.raises(PolicyClientError):
        request_reload(f"http://127.0.0.1:{policy.port}", bad, timeout=60)


@pytest.mark.timeout(240)
@needs_prometheus
def test_every_dashboard_query_returns_data(
    run: Run, policy_artifact: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    _refused_reload(run, policy_artifact, tmp_path)
    _wait_traded(run, timeout_s=90)
    run.timings["traded_s"] = round(time.monotonic() - t0, 1)
    queries = _all_queries()
    with ThreadPoolExecutor(max_workers=4) as pool:
        report = dict(
            zip(queries, pool.map(lambda e: _check(run, e), queries.values()), strict=True)
        )
    run.timings["queries_s"] = round(time.monotonic() - t0 - run.timings["traded_s"], 1)
    run.timings["services_up_to_report_s"] = round(time.monotonic() - run.prometheus_started, 1)
    (tmp_path / "prometheus-report.json").write_text(
        json.dumps(report | {"timings": run.timings}, indent=2)
    )
    print(json.dumps(report | {"timings": run.timings}, indent=2))
    print(f"prometheus test timings: {run.timings}", file=sys.stderr)

    with_data = [n for n, r in report.items() if r["data"]]
    failures = [n for n, r in report.items() if not r["data"] and not r["missing"]]
    assert not failures, f"every selector has series but the query returned nothing: {failures}"
    unexplained = {s for r in report.values() for s in r.get("missing", []) if s not in PENDING}
    assert not unexplained, f"selectors without series and not in PENDING: {unexplained}"
    assert len(with_data) >= len(report) // 2, "fewer than half the queries returned data"
    stale = set(PENDING) - {s for r in report.values() for s in r.get("missing", [])}
    assert not stale, f"these now return data: remove them from PENDING: {stale}"
    # The Prometheus part (trading and the queries) is bounded; service start-up (torch,
    # Feast imports) is reported in the timings and bounded by _wait_metrics.
    assert run.timings["traded_s"] + run.timings["queries_s"] < 60, run.timings


# ---------------------------------------------------------------------------------------------
# The chart's topics Job script, run as the Job runs it, against the real broker
# ---------------------------------------------------------------------------------------------


def test_topics_job_script_creates_topics_idempotently(broker: str, tmp_path: Path) -> None:
    from kafka import KafkaAdminClient

    docs = render("external-kafka")
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "rlmf-topics"]
    script = tmp_path / "create_topics.py"
    script.write_text(cm["data"]["create_topics.py"])
    suffix = f"{os.getpid()}.{int(time.time() * 1000) % 10**8}"
    wanted = [f"{t}.jobtest{suffix}" for t in cm["data"]["topics.txt"].split()]
    listing = tmp_path / "topics.txt"
    listing.write_text("\n".join(wanted) + "\n")
    env = {**os.environ, "RLMF_BUS_BOOTSTRAP": broker, "RLMF_TOPICS_PARTITIONS": "2"}

    def job() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), str(listing)], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    first, second = job(), job()
    assert first.returncode == 0, first.stderr
    assert f"created {len(wanted)} topic(s), 0 already there" in first.stdout
    assert (
        second.returncode == 0
        and f"created 0 topic(s), {len(wanted)} already there" in second.stdout
    )
    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}
    finally:
        admin.close()
    assert described == dict.fromkeys(wanted, 2)
    no_kafka = {k: v for k, v in env.items() if k != "RLMF_BUS_BOOTSTRAP"}
    missing = subprocess.run(
        [sys.executable, str(script), str(listing)],
        capture_output=True, text=True, env=no_kafka, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "RLMF_BUS_BOOTSTRAP is not set" in missing.stderr


@needs_prometheus
def test_helm_test_script_passes_on_the_embedded_run(run: Run, tmp_path: Path) -> None:
    """The chart's `helm test` pod script, rendered from the chart, against the running services."""
    docs = render("external-kafka")
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == "rlmf-test-pipeline"]
    (pod,) = of_kind(docs, "Pod")
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["RLMF_TEST_TICKER"] == TEST_TICKER
    script = tmp_path / "pipeline_test.py"
    script.write_text(cm["data"]["pipeline_test.py"])
    bootstrap = next(p for p in run.procs if p.name == "ingest").env["RLMF_BUS_BOOTSTRAP"]
    result = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env, "RLMF_BUS_BOOTSTRAP": bootstrap, "RLMF_TEST_TIMEOUT_S": "60"},
        cwd=REPO, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: news and bar for {TEST_TICKER}" in result.stdout


def _firing(run: Run) -> set[str]:
    alerts = httpx.get(f"{run.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


@needs_prometheus
def test_reload_refused_alert_fires_on_real_metrics(
    run: Run, policy_artifact: Path, tmp_path: Path
) -> None:
    """The chart's RLMFPolicyReloadRefused fires in this Prometheus once the policy refuses a
    tampered artifact (the alert has no `for`, so a few evaluations suffice)."""
    _refused_reload(run, policy_artifact, tmp_path)
    deadline = time.monotonic() + 20
    while "RLMFPolicyReloadRefused" not in _firing(run) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "RLMFPolicyReloadRefused" in _firing(run)
