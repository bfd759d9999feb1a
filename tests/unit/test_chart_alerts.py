"""The chart's PrometheusRule checked by promtool (Debian's `prometheus` package): `check rules`
on the rendered groups and `test rules` with monitoring/rules_test.yaml, which holds a firing
and a quiet case for every alert (without promtool they skip, except under CI). Not run here:
Alertmanager routing (no cluster)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, of_kind, render, require_tool

RULES_TEST = REPO / "monitoring" / "rules_test.yaml"


def _promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The rendered rule groups as a plain Prometheus rules file beside the unit tests."""
    (rule,) = of_kind(render("external-kafka"), "PrometheusRule")
    (tmp_path / "rlmf-rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(RULES_TEST, tmp_path / "rules_test.yaml")
    return tmp_path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules(rules_dir: Path) -> None:
    result = _run("check", "rules", str(rules_dir / "rlmf-rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    result = _run("test", "rules", str(rules_dir / "rules_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    (rule,) = of_kind(render("external-kafka"), "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    cases = [
        c for t in yaml.safe_load(RULES_TEST.read_text())["tests"] for c in t["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert firing == alerts, f"alerts without a firing test: {alerts - firing}"
    # Alerts whose quiet case is another series in the same test (dead letters, target down)
    # are checked by exp_alerts listing only the offending series.
    assert alerts - quiet <= {"RLMFDeadLetterRateHigh", "RLMFTargetDown"}


def test_unit_tests_catch_a_changed_threshold(rules_dir: Path) -> None:
    """A mutation check: with the lag threshold raised, the firing case must fail."""
    path = rules_dir / "rlmf-rules.yaml"
    path.write_text(
        path.read_text().replace("(rlmf_consumer_lag) > 1000", "(rlmf_consumer_lag) > 5000")
    )
    result = _run("test", "rules", str(rules_dir / "rules_test.yaml"))
    assert result.returncode != 0
    assert "RLMFConsumerLagHigh" in result.stdout + result.stderr


def test_thresholds_come_from_values() -> None:
    from tests.helpers import EXTERNAL, render_raw

    values = EXTERNAL | {
        "monitoring": {"prometheusRule": {"enabled": True, "consumerLagMessages": 77}}
    }
    text = render_raw(values)["rlmf/templates/prometheusrule.yaml"]
    assert "(rlmf_consumer_lag) > 77" in text


def test_promotion_alerts_read_a_metric_something_scraped_exports() -> None:
    """rlmf_promotions_total lived only in the trainer's CronJob, which nothing scrapes: the
    promotion watcher exports it, and the chart gives the watcher a ServiceMonitor."""
    from prometheus_client import REGISTRY

    from services.promotion_watcher import metrics
    from tests.helpers import named

    docs = render("external-kafka")
    monitor = named(docs, "ServiceMonitor", "rlmf-promotion-watcher")
    service = named(docs, "Service", "rlmf-promotion-watcher")
    deployment = named(docs, "Deployment", "rlmf-promotion-watcher")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["python", "-m", "services.promotion_watcher"]
    (rule,) = of_kind(docs, "PrometheusRule")
    promotion = next(g for g in rule["spec"]["groups"] if g["name"] == "rlmf.promotion")
    failed = next(r for r in promotion["rules"] if r["alert"] == "RLMFPromotionFailed")
    assert "rlmf_promotions_total" in failed["expr"]
    metrics.start_at_zero()  # what the watcher does before it consumes
    assert REGISTRY.get_sample_value("rlmf_promotions_total", {"outcome": "failed"}) is not None
