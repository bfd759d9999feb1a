"""RLMFPromotionFailed fires in a real Prometheus from an actual failed promotion.

The chain, all real but the cluster: the cluster promoter meets Helm busy with another
operation (a recorded fake of helm-python-sdk: no cluster here) and ends `failed`; the
trainer's own publish_decision puts that cycle's ModelPromotion on models.promotions.v1 of the
real embedded broker; the promotion watcher (`python -m services.promotion_watcher`, a
process) consumes it and exports rlmf_promotions_total; a real Prometheus (Debian's
`prometheus`) scrapes the watcher every second and evaluates the chart's rendered
PrometheusRule. A rejected promotion first must leave the alert quiet.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.common.broker import free_port
from services.common.bus import Producer, ensure_topics
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.topics import MARKET_FEEDBACK, MODELS_PROMOTIONS, dlq
from tests.helpers import (
    REPO,
    http_ok,
    of_kind,
    render,
    require_tool,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.slow  # a service process and Prometheus: several seconds


@dataclass
class Stack:
    watcher: subprocess.Popen[bytes]
    watcher_url: str
    prometheus: subprocess.Popen[bytes]
    prometheus_url: str
    log: Path


def _prometheus_config(tmp: Path, watcher_port: int) -> Path:
    (rule,) = of_kind(render("external-kafka"), "PrometheusRule")
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "rlmf-promotion-watcher", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{watcher_port}"]}]}
        ],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    return tmp / "prometheus.yml"


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[Stack]:
    binary = require_tool("prometheus", "apt-get install prometheus")
    bus = BusSettings(bootstrap=broker, group_protocol="manual")
    ensure_topics(bus, [MODELS_PROMOTIONS, MARKET_FEEDBACK, dlq(MODELS_PROMOTIONS)], "test")
    watcher_port, prom_port = free_port(), free_port()
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": broker,
        "RLMF_BUS_GROUP_PROTOCOL": "manual",
        "RLMF_BUS_POLL_TIMEOUT_MS": "100",
        # Only what this test publishes: other tests' promotions lie earlier on the topic.
        "RLMF_BUS_AUTO_OFFSET_RESET": "latest",
        "RLMF_WATCHER_GROUP_ID": f"watcher-{uuid.uuid4().hex[:8]}",
        "RLMF_HTTP_PORT": str(watcher_port),
        "RLMF_LOG_JSON_FORMAT": "false",
    }
    log = tmp_path / "watcher.log"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "services.promotion_watcher"], cwd=REPO, env=env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    config = _prometheus_config(tmp_path, watcher_port)
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # Queries before Prometheus listens are refused, not "not yet": wait for its readiness.
        wait_until(lambda: http_ok(f"http://127.0.0.1:{prom_port}/-/ready"), 60,
                   "Prometheus to be ready", process=prometheus,
                   log=tmp_path / "prometheus.log")  # fmt: skip
        yield Stack(
            watcher, f"http://127.0.0.1:{watcher_port}", prometheus,
            f"http://127.0.0.1:{prom_port}", log,
        )  # fmt: skip
    finally:
        stop_process(watcher)
        stop_process(prometheus)


def _failed_cycle() -> Any:
    """A cycle whose gate passed and whose cluster promotion met Helm busy: its real outcome."""
    from services.trainer.canary import CanaryConfig
    from services.trainer.cycle import CycleResult, _outcome
    from services.trainer.promotion import HELM_BUSY, ClusterPromoter

    class BusyHelm:
        def upgrade(self, *_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(f"UPGRADE FAILED: {HELM_BUSY}")

        def rollback(self, *_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("nothing to roll back: nothing changed")

    class ReadyIsvc:
        def get_namespaced_custom_object(self, *_args: str) -> Any:
            mode = {"serving.kserve.io/deploymentMode": "Knative"}
            return {"metadata": {"generation": 3, "annotations": mode},
                    "status": {"observedGeneration": 3}}  # fmt: skip

        def patch_namespaced_custom_object(self, *_args: Any, **_kwargs: Any) -> Any:
            raise AssertionError("nothing to pin: nothing changed")

    promoter = ClusterPromoter(
        release="rlmf", chart="charts/rlmf", namespace="default",
        storage_uri=lambda f: f"pvc://rlmf-models/{f.name}", canary=CanaryConfig(),
        helm=BusyHelm(), k8s=ReadyIsvc(), live_check=lambda *_a: None,  # type: ignore[arg-type,return-value]
        teacher_version=lambda _folder: "v0",  # the student's manifest names it; none here
    )  # fmt: skip
    outcome = promoter.promote(Path("/models/s20240301-abc"), "s20240301-abc")
    assert outcome.stage == "helm_busy"
    return _cycle("s20240301-abc", promoted=False, outcome=_outcome(True, outcome),
                  reason=outcome.detail, result_type=CycleResult)  # fmt: skip


def _cycle(version: str, *, promoted: bool, outcome: str, reason: str, result_type: Any) -> Any:
    t = datetime(2024, 3, 1, 21, tzinfo=UTC)
    return result_type(
        student_version=version, teacher_version="v0", promoted=promoted, reason=reason,
        failed_guards=[] if outcome != "rejected" else ["metric"], student_metrics={},
        teacher_metrics={}, buy_and_hold_metrics={}, artifact_path=f"/models/{version}",
        window_start=t, window_end=t, eval_start=t, eval_end=t, outcome=outcome,
    )  # fmt: skip


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5)
    if answer.status_code == 503:  # Prometheus is still starting (TSDB not ready): ask again
        return []
    answer.raise_for_status()
    return list(answer.json()["data"]["result"])


def _firing(stack: Stack) -> list[dict[str, str]]:
    answer = httpx.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=5).json()
    return [
        a["labels"]
        for a in answer["data"]["alerts"]
        if a["labels"]["alertname"] == "RLMFPromotionFailed" and a["state"] == "firing"
    ]


def _publish(bus: BusSettings, cycle: Any) -> None:
    from services.trainer.promotions_topic import publish_decision

    producer = Producer(bus, "trainer")
    try:
        publish_decision(producer, cycle)
    finally:
        producer.close()


def _watcher_reads(stack: Stack, bus: BusSettings) -> None:
    """Publish feedback probes until the watcher counts one: its positions (at the end of the
    topics when it started) are resolved, so what follows is read."""
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    producer = Producer(bus, "test")

    def seen() -> bool:
        feedback = pb.MarketFeedback(ticker="ZTEST", action="buy", realised_return=0.01,
                                     model_version=probe, state="s")  # fmt: skip
        producer.publish(MARKET_FEEDBACK, feedback, key="ZTEST", event_time=datetime.now(UTC))
        producer.flush()
        return probe in httpx.get(f"{stack.watcher_url}/metrics", timeout=2).text

    try:
        wait_until(seen, 60, "the watcher to read the topics", interval_s=0.5,
                   process=stack.watcher, log=stack.log)  # fmt: skip
    finally:
        producer.close()


def test_failed_promotion_fires_rlmf_promotion_failed(stack: Stack, broker: str) -> None:
    from services.trainer.cycle import CycleResult

    bus = BusSettings(bootstrap=broker, group_protocol="manual")
    wait_until(lambda: _query(stack, 'rlmf_promotions_total{outcome="failed"} == 0'), 60,
               "Prometheus to scrape the watcher's zero", process=stack.watcher,
               log=stack.log)  # fmt: skip
    _watcher_reads(stack, bus)

    # A rejection by the gate is no failure: counted, and quiet.
    rejected = _cycle("s20240229-rej", promoted=False, outcome="rejected",
                      reason="gate: below the teacher", result_type=CycleResult)  # fmt: skip
    _publish(bus, rejected)
    wait_until(lambda: _query(stack, 'rlmf_promotions_total{outcome="rejected"} == 1'), 30,
               "Prometheus to see the rejection", log=stack.log)  # fmt: skip
    assert not _firing(stack)

    _publish(bus, _failed_cycle())
    firing = wait_until(lambda: _firing(stack), 30, "RLMFPromotionFailed to fire", log=stack.log)
    assert firing[0]["outcome"] == "failed" and firing[0]["severity"] == "critical"
