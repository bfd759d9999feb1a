"""The ingest service as a process (`python -m services.ingest`) and the `rlmf ingest` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from services.common.broker import free_port
from services.common.settings import BusSettings
from services.ingest.news_generator import generate_news
from tests.helpers import http_ok, wait_until

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def test_service_replays_files_polls_feeds_serves_http_and_stops_cleanly(
    bus_settings: BusSettings, unique: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RLMF_HTTP_PORT": str(port),
        "RLMF_INGEST_FILES": json.dumps([str(DATA / "news_sample.jsonl")]),
        "RLMF_INGEST_TICKERS_FILE": str(DATA / "tickers.csv"),
        "RLMF_INGEST_FEEDS": json.dumps([str(DATA / "feed.xml")]),
        "RLMF_LOG_JSON_FORMAT": "true",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/readyz"), 60, "/readyz", process=process)
        item = {
            "id": f"p-{unique}",
            "headline": f"Acme news {unique}",
            "published_at": "2024-03-05T10:00:00Z",
        }
        answer = httpx.post(f"{base}/v1/news", json=item, timeout=10)
        assert answer.status_code == 202 and answer.json()["accepted"] == [f"p-{unique}"]
        assert httpx.post(f"{base}/v1/news", content=b"{", timeout=10).status_code == 400
        exposed = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'rlmf_ingest_items_total{outcome="published",source="file"} 4.0' in exposed
        assert 'rlmf_ingest_items_total{outcome="duplicate",source="file"} 1.0' in exposed
        assert 'rlmf_ingest_items_total{outcome="rejected",source="http"} 1.0' in exposed
        assert 'rlmf_ingest_items_total{outcome="published",source="feed"} 2.0' in exposed
        assert 'rlmf_ingest_items_total{outcome="rejected",source="feed"} 3.0' in exposed
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, process.stderr.read().decode() if process.stderr else ""


@pytest.mark.slow  # the client's connection timeouts take ~30 s
def test_service_stops_with_code_2_when_the_broker_is_missing() -> None:
    env = {
        **os.environ,
        "RLMF_BUS_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "RLMF_BUS_RETRY_ATTEMPTS": "1",
        "RLMF_HTTP_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.ingest"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"broker is unavailable" in done.stderr + done.stdout


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_cli_generates_synthetic_news_and_publishes_it(
    bus_settings: BusSettings, tmp_path: Path
) -> None:
    closes = 100 + np.cumsum(np.random.default_rng(4).normal(size=20))
    dates = pd.date_range("2024-01-01", periods=20, freq="D").strftime("%Y-%m-%d")
    pd.DataFrame({"Date": dates, "Close": closes}).to_csv(tmp_path / "prices.csv", index=False)
    out = tmp_path / "news.jsonl"
    rlmf = str(Path(sys.executable).with_name("rlmf"))
    generated = subprocess.run(
        [
            rlmf,
            "ingest",
            "generate",
            "--prices",
            str(tmp_path / "prices.csv"),
            "--ticker",
            "acme",
            "--informativeness",
            "1",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "wrote 19 synthetic items" in generated.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["synthetic"] and r["tickers"] == ["ACME"] for r in records)
    # The CLI writes what the library generates; at informativeness 1 each agrees with the move.
    frame = pd.DataFrame({"close": closes}, index=pd.to_datetime(dates, utc=True))
    expected = generate_news(frame, "ACME", 1.0, seed=3)
    assert [r["headline"] for r in records] == [i.headline for i in expected]
    assert [i.sentiment for i in expected] == list(np.sign(np.diff(closes)).astype(int))

    published = subprocess.run(
        [rlmf, "ingest", "publish", "--file", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    stats = json.loads(published.stdout.strip().splitlines()[-1])
    assert stats["received"] == 19 and stats["rejected"] == 0
    assert stats["received"] == stats["published"] + stats["duplicates"]
