"""The sentiment service as a process and the `rlmf sentiment score` CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from services.common.broker import free_port
from services.common.settings import BusSettings
from tests.helpers import http_ok, wait_until

REPO = Path(__file__).resolve().parents[2]
RLMF = str(Path(sys.executable).with_name("rlmf"))


def test_service_is_ready_and_stops_cleanly_on_sigterm(bus_settings: BusSettings) -> None:
    port = free_port()
    env = {**os.environ, "RLMF_HTTP_PORT": str(port), "RLMF_SENTIMENT_BACKEND": "lexicon"}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.sentiment"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 60, "/readyz", process=process
        )
        assert "rlmf_ready" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, process.stderr.read().decode() if process.stderr else ""


@pytest.mark.slow  # a CLI process loading a model: ~20 s
def test_cli_scores_a_csv_keeping_its_columns(tmp_path: Path, tiny_llama_dir: Path) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["Acme profit soars, great results", "Acme fraud, terrible losses"],
        }
    ).to_csv(source, index=False)
    for backend, extra in (("lexicon", []), ("llm", ["--model-dir", str(tiny_llama_dir)])):
        out = tmp_path / f"{backend}.csv"
        subprocess.run(
            [
                RLMF,
                "sentiment",
                "score",
                "--in",
                str(source),
                "--out",
                str(out),
                "--backend",
                backend,
                *extra,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        table = pd.read_csv(out)
        assert list(table.columns) == ["id", "text", "sentiment", "label", "summary"]
        assert table["sentiment"].between(-1, 1).all() and table["summary"].notna().all()
    lexicon = pd.read_csv(tmp_path / "lexicon.csv")
    assert lexicon["sentiment"][0] > 0 > lexicon["sentiment"][1]


@pytest.mark.slow  # over 2.5 s of processes and broker round trips
def test_cli_names_the_problem_with_a_bad_csv(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("headline\nAcme up\n")
    done = subprocess.run(
        [
            RLMF,
            "sentiment",
            "score",
            "--in",
            str(bad),
            "--out",
            str(tmp_path / "o.csv"),
            "--backend",
            "lexicon",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "needs a `text` column" in done.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text('text\nAcme up\n"  "\n')
    done = subprocess.run(
        [
            RLMF,
            "sentiment",
            "score",
            "--in",
            str(empty),
            "--out",
            str(tmp_path / "o.csv"),
            "--backend",
            "lexicon",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "empty text on CSV line(s) [3]" in done.stderr
