"""`rlmf report` (services/up/report.py): the sentiment rule replayed on the ledger, the
shadow stretches, and the page made from a state folder the services' writers wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.common.up_state import StateDir
from services.up.report import ledger_frame, sentiment_rule_equity, stretches, write_report
from tests.ledger_run import bars, settings, trader
from tests.up_state_run import FIRST_SHADOW, LIVE, SECOND_SHADOW, write_up_state


def _ledger(folder: Path, policy: str, n: int = 60) -> Path:
    live = trader(folder, policy)
    for bar in bars("ACME", n):
        live.on_bar(bar)
    return folder / "ACME.jsonl"


def test_the_replayed_sentiment_rule_is_the_simulator_trading_the_rule(tmp_path: Path) -> None:
    """The simulator trading the sentiment rule live (its own session, next-open fills, 10 bp)
    and the report's replay of the rule on that ledger's bars and sentiment agree bar for bar."""
    frame = ledger_frame(_ledger(tmp_path, "sentiment-rule"))
    replayed = sentiment_rule_equity(frame, settings(None).execution())
    assert len(replayed) == len(frame)
    np.testing.assert_allclose(replayed, frame["net_worth"].to_numpy(float), rtol=1e-12)
    assert frame["net_worth"].nunique() > 10, "the rule traded: the check compares moving curves"


def test_the_replay_does_not_depend_on_the_live_policy(tmp_path: Path) -> None:
    rule = ledger_frame(_ledger(tmp_path / "rule", "sentiment-rule"))
    random = ledger_frame(_ledger(tmp_path / "random", "random"))
    assert not np.allclose(random["net_worth"], rule["net_worth"])
    replayed = sentiment_rule_equity(random, settings(None).execution())
    np.testing.assert_allclose(replayed, rule["net_worth"].to_numpy(float), rtol=1e-12)


def test_costs_count_in_the_replay(tmp_path: Path) -> None:
    frame = ledger_frame(_ledger(tmp_path, "sentiment-rule"))
    free = settings(None).model_copy(update={"cost_bps": 0.0}).execution()
    assert sentiment_rule_equity(frame, free)[-1] > frame["net_worth"].iloc[-1]


@pytest.fixture(scope="module")
def up_state(tmp_path_factory: pytest.TempPathFactory) -> StateDir:
    return write_up_state(tmp_path_factory.mktemp("rlmf-state"))[0]


def test_shadow_stretches_are_the_bars_each_candidate_traded(up_state: StateDir) -> None:
    frame = ledger_frame(up_state.root / "ledger" / "ACME.jsonl")
    found = stretches(frame, up_state.trainer)
    first, second = frame.index[LIVE], frame.index[LIVE + FIRST_SHADOW]
    assert [(s.version, s.outcome) for s in found] == [
        ("cand-1", "retired"),
        ("cand-2", "in shadow"),
    ]
    assert (found[0].start, found[0].end) == (first, frame.index[LIVE + FIRST_SHADOW - 1])
    assert (found[1].start, found[1].end) == (second, frame.index[-1])
    assert len(frame) == LIVE + FIRST_SHADOW + SECOND_SHADOW


def test_the_report_has_every_ticker_its_metrics_and_plots(
    up_state: StateDir, tmp_path: Path
) -> None:
    page = write_report(up_state, tmp_path / "report")
    text = page.read_text()
    for ticker in ("ACME", "BETA"):
        assert f"id='section-{ticker}'" in text
        plots = re.findall(rf"src='(plots/{ticker}-[a-z]+\.png)'", text)
        assert len(plots) == 4 and all(
            (tmp_path / "report" / p).stat().st_size > 5000 for p in plots
        )
    assert text.count("<td>sentiment rule</td>") == 2 and text.count("<td>Buy &amp; Hold</td>") == 2
    assert "cand-2" in text and "retired" in text
    assert "location.reload" not in text, "only the live page reloads itself"


def _rlmf(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "services.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_rlmf_report_writes_the_page_and_refuses_a_missing_folder(
    up_state: StateDir, tmp_path: Path
) -> None:
    done = _rlmf("report", "--state-dir", str(up_state.root), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "report.html").is_file()
    assert len(list((tmp_path / "out" / "plots").glob("*.png"))) == 8
    missing = _rlmf("report", "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no state folder" in missing.stderr


def test_up_gives_the_simulator_a_ledger_in_the_state_folder(tmp_path: Path) -> None:
    from services.cli import _service_env

    state = StateDir(tmp_path / "rlmf-state")
    simulator = _service_env(tmp_path / "v0", state, tiny=True)["simulator"]
    assert simulator["RLMF_SIMULATOR_LEDGER_DIR"] == str((state.root / "ledger").resolve())
