"""Grafana dashboards: the committed JSON equals what monitoring/dashboards.py generates
(grafana-foundation-sdk), and the chart ships each as a ConfigMap for Grafana's sidecar."""

from __future__ import annotations

import json
from pathlib import Path

from monitoring import dashboards
from tests.helpers import CHART, EXTERNAL, of_kind, render, render_raw


def test_regenerating_gives_no_diff(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in dashboards.write_all(tmp_path)}
    committed = {p.name: p.read_text() for p in (CHART / "dashboards").glob("*.json")}
    assert set(fresh) == set(committed), "run: python -m monitoring.dashboards"
    for name, text in fresh.items():
        assert committed[name] == text, f"{name} is stale: run python -m monitoring.dashboards"


def test_dashboards_cover_the_issue() -> None:
    titles = {d.title for d in dashboards.DASHBOARDS}
    assert titles == {
        "RLMF / Pipeline throughput and lag",
        "RLMF / Sentiment",
        "RLMF / Policy decisions and latency",
        "RLMF / Portfolio vs Buy & Hold",
        "RLMF / Training and promotions",
    }
    for spec in dashboards.DASHBOARDS:
        board = json.loads(dashboards.render(spec))
        panels = [p for p in board["panels"] if p["type"] == "timeseries"]
        assert panels and all(p["targets"] for p in panels), spec.uid
        exprs = [t["expr"] for p in panels for t in p["targets"]]
        assert exprs == spec.queries()
        assert board["templating"]["list"][0]["type"] == "datasource"


def test_chart_ships_each_dashboard_for_the_sidecar() -> None:
    maps = [
        d
        for d in of_kind(render("external-kafka"), "ConfigMap")
        if "-dashboard-" in d["metadata"]["name"]
    ]
    assert len(maps) == len(dashboards.DASHBOARDS)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "RLMF"
        ((filename, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / filename).read_text())


def test_dashboards_can_be_switched_off() -> None:
    values = EXTERNAL | {"monitoring": {"dashboards": {"enabled": False}}}
    assert "dashboard-" not in render_raw(values)["rlmf/templates/dashboards.yaml"]
