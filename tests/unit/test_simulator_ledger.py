"""The simulator's per-bar ledger (services/simulator/ledger.py), written by the real `Trader`."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.simulator.ledger import Ledger, read_ledger
from services.simulator.settings import SimulatorSettings
from tests.ledger_run import bars, trader


def test_every_traded_bar_is_one_line_with_the_accounts_and_the_news(tmp_path: Path) -> None:
    live = trader(tmp_path)
    for bar in bars("ACME", 12):
        live.on_bar(bar)
    rows = read_ledger(tmp_path / "ACME.jsonl")
    assert [r["time"] for r in rows] == [b.time.isoformat() for b in bars("ACME", 12)]
    session = live.sessions["ACME"]
    last = rows[-1]
    assert last["net_worth"] == session.book.cash + session.book.position * last["close"]
    assert last["buy_and_hold_net_worth"] > 0 and last["model_version"] == "baseline:sentiment-rule"
    assert {r["action"] for r in rows} == {"buy", "sell", "hold"}, "the reader's sentiment swings"
    assert all(r["sentiment"] in (0.6, -0.5, 0.1, 0.3, -0.3) for r in rows)
    assert any(r["news_summary"] for r in rows) and not all(r["news_summary"] for r in rows)
    assert all(r["shadow"] is None for r in rows), "no candidate was staged"
    assert sum(r["probabilities"][r["action"]] for r in rows) == len(rows)


def test_a_bar_traded_again_after_a_restart_replaces_its_line(tmp_path: Path) -> None:
    """A kill after the ledger lines of bars 11 and 12 but before the state was saved: the
    restarted simulator resumes after bar 10 and trades them again (here with another policy,
    as a policy whose answer changed would); the ledger keeps one line per bar, the new ones."""
    series = bars("ACME", 20)
    first = trader(tmp_path, "random")
    for bar in series[:10]:
        first.on_bar(bar)
    saved = first.export_state()
    for bar in series[10:12]:
        first.on_bar(bar)
    restarted = trader(tmp_path, "sentiment-rule")
    restarted.restore(saved)
    for bar in series[10:]:
        restarted.on_bar(bar)
    rows = read_ledger(tmp_path / "ACME.jsonl")
    assert [r["time"] for r in rows] == [b.time.isoformat() for b in series]
    policies = [r["model_version"].split(":")[1] for r in rows]
    assert policies == ["random"] * 10 + ["sentiment-rule"] * 10
    session = restarted.sessions["ACME"]
    assert rows[-1]["net_worth"] == session.book.cash + session.book.position * rows[-1]["close"]


def test_a_torn_last_line_is_cut_and_the_bar_written_again(tmp_path: Path) -> None:
    series = bars("ACME", 6)
    first = trader(tmp_path)
    for bar in series[:5]:
        first.on_bar(bar)
    path = tmp_path / "ACME.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[: whole.rfind(b"\n", 0, len(whole) - 1) + 1] + b'{"time": "20')
    saved_after_four = trader(None)
    for bar in series[:4]:
        saved_after_four.on_bar(bar)
    restarted = trader(tmp_path)
    restarted.restore(saved_after_four.export_state())
    for bar in series[4:]:
        restarted.on_bar(bar)
    assert [r["time"] for r in read_ledger(path)] == [b.time.isoformat() for b in series]


def test_tickers_have_files_of_their_own_and_unset_means_no_ledger(tmp_path: Path) -> None:
    both = trader(tmp_path / "ledger")
    for a, b in zip(bars("ACME", 3), bars("BETA", 3, "MSFT.csv"), strict=True):
        both.on_bar(a)
        both.on_bar(b)
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == ["ACME.jsonl", "BETA.jsonl"]
    assert Ledger(tmp_path / "ledger").last_time("BETA") == bars("BETA", 3, "MSFT.csv")[-1].time
    none = trader(None)
    none.on_bar(bars("ACME", 1)[0])
    assert none.ledger is None


def test_the_setting_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLMF_SIMULATOR_LEDGER_DIR", str(tmp_path))
    assert SimulatorSettings().ledger_dir == tmp_path
