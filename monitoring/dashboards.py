"""Grafana dashboards for RLMF, built with grafana-foundation-sdk and written as JSON into
charts/rlmf/dashboards/ (the chart ships each as a ConfigMap for Grafana's sidecar).

Run `python -m monitoring.dashboards` after changing a panel and commit the JSON; a test fails
when the committed files differ from what this module generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT_DIR = Path(__file__).resolve().parents[1] / "charts" / "rlmf" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and the legend Grafana draws for each of its series."""

    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = field(default_factory=tuple)

    def queries(self) -> list[str]:
        """Every PromQL expression of the dashboard (the Prometheus test runs each one)."""
        return [q.expr for _, panels in self.rows for p in panels for q in p.queries]


def _p(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> PanelSpec:
    return PanelSpec(title, unit, tuple(Query(e, legend) for e, legend in queries), description)


def _histogram_p99(metric: str, by: str, matchers: str = "") -> str:
    """p99 of a Prometheus histogram; `matchers` like '{service="sentiment"}'."""
    return f"histogram_quantile(0.99, sum by (le, {by}) (rate({metric}_bucket{matchers}[{RATE}])))"


PIPELINE = DashboardSpec(
    uid="rlmf-pipeline",
    title="RLMF / Pipeline throughput and lag",
    description="Messages through every topic, consumer lag, dead letters and readiness.",
    rows=(
        (
            "Throughput",
            (
                _p(
                    "Consumed per second",
                    "ops",
                    (
                        f"sum by (service, topic) (rate(rlmf_messages_consumed_total[{RATE}]))",
                        "{{service}} <- {{topic}}",
                    ),
                ),
                _p(
                    "Produced per second",
                    "ops",
                    (
                        f"sum by (service, topic) (rate(rlmf_messages_produced_total[{RATE}]))",
                        "{{service}} -> {{topic}}",
                    ),
                ),
            ),
        ),
        (
            "Features and trading",
            (
                _p(
                    "Feast push latency p99",
                    "s",
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(rlmf_features_push_seconds_bucket[{RATE}])))",
                        "push p99",
                    ),
                ),
                _p(
                    "Bars traded per second",
                    "ops",
                    (
                        f"sum by (ticker, mode) (rate(rlmf_simulator_bars_total[{RATE}]))",
                        "{{ticker}} {{mode}}",
                    ),
                ),
            ),
        ),
        (
            "Health",
            (
                _p(
                    "Consumer lag",
                    "short",
                    ("max by (service, topic) (rlmf_consumer_lag)", "{{service}} {{topic}}"),
                    description="Messages behind the end of the partition "
                    "(alert: RLMFConsumerLagHigh).",
                ),
                _p(
                    "Dead letters per second",
                    "ops",
                    (
                        "sum by (service, topic, reason) "
                        f"(rate(rlmf_messages_dead_lettered_total[{RATE}]))",
                        "{{service}} {{topic}} {{reason}}",
                    ),
                ),
                _p(
                    "Handler latency p99",
                    "s",
                    (
                        _histogram_p99("rlmf_handler_latency_seconds", "service, topic"),
                        "{{service}} {{topic}}",
                    ),
                ),
                _p("Ready", "short", ("min by (service) (rlmf_ready)", "{{service}}")),
                _p(
                    "Duplicates dropped and broker retries",
                    "ops",
                    (
                        f"sum by (service) (rate(rlmf_messages_duplicate_total[{RATE}]))",
                        "duplicates {{service}}",
                    ),
                    (
                        f"sum by (service, operation) (rate(rlmf_broker_retries_total[{RATE}]))",
                        "retries {{service}} {{operation}}",
                    ),
                ),
            ),
        ),
    ),
)

SENTIMENT = DashboardSpec(
    uid="rlmf-sentiment",
    title="RLMF / Sentiment",
    description="News ingested and enriched per second, the sentiment scores, the latency.",
    rows=(
        (
            "News in",
            (
                _p(
                    "News items by source and outcome",
                    "ops",
                    (
                        f"sum by (source, outcome) (rate(rlmf_ingest_items_total[{RATE}]))",
                        "{{source}} {{outcome}}",
                    ),
                ),
                _p(
                    "Summaries by cache hit",
                    "ops",
                    (
                        f"sum by (cached) (rate(rlmf_sentiment_summaries_total[{RATE}]))",
                        "cached={{cached}}",
                    ),
                ),
            ),
        ),
        (
            "Sentiment",
            (
                _p(
                    "News enriched per second",
                    "ops",
                    (
                        f'sum(rate(rlmf_messages_produced_total{{topic="news.enriched.v1"}}[{RATE}]))',
                        "enriched",
                    ),
                    (
                        f'sum(rate(rlmf_messages_consumed_total{{service="sentiment"}}[{RATE}]))',
                        "raw consumed",
                    ),
                ),
                _p(
                    "Share of news by sentiment band",
                    "percentunit",
                    (
                        f'sum by (model) (rate(rlmf_sentiment_score_bucket{{le="-0.2"}}[{RATE}])) '
                        f"/ sum by (model) (rate(rlmf_sentiment_score_count[{RATE}]))",
                        "negative (<= -0.2) {{model}}",
                    ),
                    (
                        "1 - sum by (model) "
                        f'(rate(rlmf_sentiment_score_bucket{{le="0.2"}}[{RATE}])) '
                        f"/ sum by (model) (rate(rlmf_sentiment_score_count[{RATE}]))",
                        "positive (> 0.2) {{model}}",
                    ),
                    # The histogram has negative buckets, so prometheus_client exports no _sum
                    # (OpenMetrics forbids it) and a mean cannot be computed from it.
                    description="Scores in [-1, 1] from the rlmf_sentiment_score histogram.",
                ),
                _p(
                    "Sentiment handler latency p99",
                    "s",
                    (
                        _histogram_p99(
                            "rlmf_handler_latency_seconds", "topic", '{service="sentiment"}'
                        ),
                        "{{topic}}",
                    ),
                ),
            ),
        ),
    ),
)

POLICY = DashboardSpec(
    uid="rlmf-policy",
    title="RLMF / Policy decisions and latency",
    description="Decisions by action and model version (teacher and canary student), latency.",
    rows=(
        (
            "Decisions",
            (
                _p(
                    "Decisions per second by action and model version",
                    "ops",
                    (
                        "sum by (action, model_version) "
                        f"(rate(rlmf_policy_decisions_total[{RATE}]))",
                        "{{action}} {{model_version}}",
                    ),
                ),
                _p(
                    "Fallbacks to hold",
                    "ops",
                    (
                        f"sum by (reason) (rate(rlmf_simulator_policy_fallbacks_total[{RATE}]))",
                        "{{reason}}",
                    ),
                ),
            ),
        ),
        (
            "Serving model",
            (
                _p(
                    "Model served (version, parent, base)",
                    "short",
                    (
                        "max by (version, parent_version, base_model) (rlmf_policy_model_info)",
                        "{{version}} (from {{parent_version}})",
                    ),
                ),
            ),
        ),
        (
            "Latency",
            (
                _p(
                    "Server predict latency p99 (KServe)",
                    "s",
                    (_histogram_p99("request_predict_seconds", "model_name"), "{{model_name}}"),
                    description="KServe's own predict histogram; the served model version is in "
                    "rlmf_policy_model_info.",
                ),
                _p(
                    "Forward pass p99 and batch size",
                    "s",
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(rlmf_policy_batch_seconds_bucket[{RATE}])))",
                        "forward pass p99",
                    ),
                    (
                        f"sum(rate(rlmf_policy_batch_size_sum[{RATE}])) "
                        f"/ sum(rate(rlmf_policy_batch_size_count[{RATE}]))",
                        "mean batch size",
                    ),
                ),
                _p(
                    "Caller latency p99 (simulator)",
                    "s",
                    (
                        f"histogram_quantile(0.99, sum by (le) "
                        f"(rate(rlmf_simulator_policy_latency_seconds_bucket[{RATE}])))",
                        "p99",
                    ),
                    description="What the simulator waits for (alert: RLMFPolicyLatencyP99High).",
                ),
            ),
        ),
    ),
)

PORTFOLIO = DashboardSpec(
    uid="rlmf-portfolio",
    title="RLMF / Portfolio vs Buy & Hold",
    description="The simulated portfolio's value beside Buy & Hold on the same window.",
    rows=(
        (
            "Value",
            (
                _p(
                    "Portfolio value vs Buy & Hold",
                    "currencyUSD",
                    ("sum by (ticker) (rlmf_portfolio_value)", "policy {{ticker}}"),
                    (
                        "sum by (ticker) (rlmf_portfolio_buy_and_hold_value)",
                        "buy & hold {{ticker}}",
                    ),
                ),
                _p(
                    "Snapshots and fills per second",
                    "ops",
                    (
                        "sum by (topic) "
                        f'(rate(rlmf_messages_produced_total{{service="simulator"}}[{RATE}]))',
                        "{{topic}}",
                    ),
                ),
            ),
        ),
    ),
)

TRAINING = DashboardSpec(
    uid="rlmf-training",
    title="RLMF / Training and promotions",
    description="Market feedback for the trainer, promotions and rollbacks, artifact checks.",
    rows=(
        (
            "Training",
            (
                _p(
                    "Market feedback published",
                    "short",
                    ('sum(rlmf_messages_produced_total{topic="market.feedback.v1"})', "feedback"),
                ),
                _p(
                    "Promotions by outcome",
                    "short",
                    ("sum by (outcome) (rlmf_promotions_total)", "{{outcome}}"),
                    description="promoted, rejected, failed, rolled_back "
                    "(alert: RLMFPromotionFailed).",
                ),
                _p(
                    "Policy reloads by outcome",
                    "short",
                    ("sum by (outcome) (rlmf_policy_reloads_total)", "{{outcome}}"),
                    ("max(rlmf_policy_reload_failed)", "last reload refused"),
                    description="A refused reload (hash mismatch, bad files) keeps the old model "
                    "serving (alert: RLMFPolicyReloadRefused).",
                ),
                _p(
                    "Artifact hash mismatches",
                    "short",
                    ("sum by (service) (rlmf_artifact_hash_mismatch_total)", "{{service}}"),
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (PIPELINE, SENTIMENT, POLICY, PORTFOLIO, TRAINING)


def build(spec: DashboardSpec) -> Dashboard:
    """The grafana-foundation-sdk builder of one dashboard: rows of time series, two per line."""
    board = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["rlmf", "generated"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for row_title, panels in spec.rows:
        board = board.with_row(Row(row_title))
        for panel in panels:
            board = board.with_panel(_timeseries(panel))
    return board


def _timeseries(panel: PanelSpec) -> Timeseries:
    ts = (
        Timeseries()
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
    )
    for i, query in enumerate(panel.queries):
        ts = ts.with_target(
            PromQuery().expr(query.expr).legend_format(query.legend).ref_id(chr(ord("A") + i))
        )
    return ts


def render(spec: DashboardSpec) -> str:
    """The dashboard as stable, pretty JSON (sorted keys, trailing newline) for a clean diff."""
    data = json.loads(JSONEncoder(sort_keys=True).encode(build(spec).build()))
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_all(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in DASHBOARDS:
        path = out_dir / f"{spec.uid.removeprefix('rlmf-')}.json"
        path.write_text(render(spec))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON files go")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
