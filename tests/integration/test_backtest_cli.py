"""`rlmf backtest` end to end: metrics.json, the report's PNGs, news, errors, and policies served
over HTTP by a real kserve.ModelServer (and by servers that time out or answer garbage)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI, Request

from services.common.broker import free_port
from services.common.http_server import BackgroundServer
from services.market.backtest import run_backtest
from services.market.baseline_policies import POLICY_FALLBACKS, HttpPolicy
from services.market.market_data import load_prices_csv
from services.market.report import PLOTS

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def backtest(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from services.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "backtest", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_backtest_writes_metrics_and_a_report_with_plots(tmp_path: Path) -> None:
    # 800 real bars keep the two subprocess runs short; the CLI reads them like any file.
    prices = tmp_path / "GOOGL.csv"
    lines = (REPO / "data/GOOGL.csv").read_text().splitlines()[:801]
    prices.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bt"
    done = backtest(
        "--prices",
        str(prices),
        "--policy",
        "random",
        "--seed",
        "3",
        "--cost-bps",
        "5",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "backtest" in done.stderr  # the tqdm progress bar
    metrics = json.loads((out / "metrics.json").read_text())
    for column in ("strategy", "buy_and_hold"):
        assert {"cumulative_return", "sharpe", "annual_volatility", "max_drawdown"} <= set(
            metrics[column]
        )
    run = metrics["run"]
    assert run["data_sha256"] == hashlib.sha256(prices.read_bytes()).hexdigest()
    assert run["seed"] == 3 and run["periods_per_year"] == 252 and run["settings"]["cost_bps"] == 5
    assert run["model_versions"] == ["baseline:random:3"]
    html = (out / "report.html").read_text()
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
        assert f'src="{name}"' in html
    # Seeded: the same command gives the same numbers.
    again = tmp_path / "bt2"
    assert (
        backtest(
            "--prices",
            str(prices),
            "--policy",
            "random",
            "--seed",
            "3",
            "--cost-bps",
            "5",
            "--out",
            str(again),
        ).returncode
        == 0
    )
    assert json.loads((again / "metrics.json").read_text())["strategy"] == metrics["strategy"]


def test_news_drives_the_sentiment_rule(tmp_path: Path) -> None:
    prices = load_prices_csv(REPO / "data/GOOGL.csv").iloc[:120]
    news = pd.DataFrame(
        {
            "time": prices.index[::10] + pd.Timedelta(hours=15),
            "ticker": "GOOGL",
            "sentiment": [0.9 if i % 2 == 0 else -0.9 for i in range(12)],
            "summary": [f"headline {i}" for i in range(12)],
        }
    )
    csv = tmp_path / "GOOGL.csv"
    prices.to_csv(csv, index_label="date")
    news.to_csv(tmp_path / "news.csv", index=False)
    done = backtest(
        "--prices",
        str(csv),
        "--policy",
        "sentiment-rule",
        "--news",
        str(tmp_path / "news.csv"),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "o/metrics.json").read_text())
    assert (
        metrics["strategy"]["n_trades"] == 12
    )  # a buy after each positive day, a sell after each negative


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_bad_prices_file_exits_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("date,close\n2024-01-02,10\n2024-01-01,11\n2024-01-03,12\n")
    done = backtest("--prices", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "row 3" in done.stderr and "sorted" in done.stderr
    unknown = backtest(
        "--prices", "data/GOOGL.csv", "--policy", "no-such-policy", "--out", str(tmp_path / "o")
    )
    assert unknown.returncode == 2 and "is not a baseline" in unknown.stderr


KSERVE_MODEL = textwrap.dedent(
    """
    import sys
    import kserve

    class Momentum(kserve.Model):
        def __init__(self):
            super().__init__("policy")
            self.ready = True

        def predict(self, payload, headers=None):
            out = []
            explain = (payload.get("parameters") or {}).get("explain", False)
            for s in payload["instances"]:
                c = s["recent_closes"]
                a = "hold" if len(c) < 2 else ("buy" if c[-1] > c[-2] else "sell")
                p = {k: (0.8 if k == a else 0.1) for k in ("sell", "hold", "buy")}
                out.append({"action": a, "probabilities": p, "value": 0.0,
                            "explanation": "momentum" if explain else None,
                            "model_version": "momentum-v1"})
            return {"predictions": out}

    if __name__ == "__main__":
        kserve.ModelServer(http_port=int(sys.argv[1]), enable_grpc=False).start([Momentum()])
    """
)


@pytest.fixture(scope="module")
def kserve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    script = tmp_path_factory.mktemp("kserve") / "momentum.py"
    script.write_text(KSERVE_MODEL)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/models/policy", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
            if proc.poll() is not None:
                raise RuntimeError(f"kserve server died: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        else:
            raise RuntimeError("kserve server did not become ready in 60s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow  # starts a KServe policy server process
def test_policy_server_url_over_kserve_v1(kserve_url: str) -> None:
    prices = load_prices_csv(REPO / "data/GOOGL.csv").iloc[:60]
    result = run_backtest(prices, HttpPolicy(kserve_url, timeout_s=10), ticker="GOOGL")
    decisions = result.strategy.decisions
    assert {d.model_version for d in decisions} == {"momentum-v1"} and not any(
        d.fallback_reason for d in decisions
    )
    closes = prices["close"].to_numpy()
    expected = ["hold"] + ["buy" if closes[t] > closes[t - 1] else "sell" for t in range(1, 59)]
    assert [d.action for d in decisions] == expected


@pytest.fixture(scope="module")
def bad_server() -> Iterator[str]:
    app = FastAPI()

    @app.post("/v1/models/slow:predict")
    def slow(request: Request) -> dict[str, object]:
        time.sleep(1.5)
        return {"predictions": []}

    @app.post("/v1/models/garbage:predict")
    def garbage() -> dict[str, object]:
        return {"predictions": [{"action": "moon", "model_version": "x"}]}

    @app.post("/v1/models/short:predict")
    def short() -> dict[str, object]:
        return {"predictions": []}

    server = BackgroundServer(app, "127.0.0.1", free_port())
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.mark.slow  # a server process per case
@pytest.mark.parametrize(
    "model,reason", [("slow", "timeout"), ("garbage", "bad_answer"), ("short", "bad_answer")]
)
def test_policy_failures_hold_with_a_metric(bad_server: str, model: str, reason: str) -> None:
    prices = load_prices_csv(REPO / "data/GOOGL.csv").iloc[:4]
    before = POLICY_FALLBACKS.labels(reason)._value.get()
    policy = HttpPolicy(bad_server, timeout_s=0.5, model_name=model)
    result = run_backtest(prices, policy, ticker="GOOGL")
    assert [d.action for d in result.strategy.decisions] == ["hold"] * 3
    assert all(d.fallback_reason.startswith(reason) for d in result.strategy.decisions)
    assert POLICY_FALLBACKS.labels(reason)._value.get() == before + 3
    assert result.metrics["strategy"]["n_trades"] == 0


@pytest.mark.slow  # starts a KServe policy server process
def test_policy_rationale_asked_for_on_every_nth_decision(kserve_url: str) -> None:
    prices = load_prices_csv(REPO / "data/GOOGL.csv").iloc[:31]
    policy = HttpPolicy(kserve_url, timeout_s=10, explain_every=10)
    decisions = run_backtest(prices, policy, ticker="GOOGL").strategy.decisions
    explained = [i for i, d in enumerate(decisions) if d.explanation]
    assert explained == [9, 19, 29]  # the 10th, 20th and 30th calls asked for it
    assert all(decisions[i].explanation == "momentum" for i in explained)
