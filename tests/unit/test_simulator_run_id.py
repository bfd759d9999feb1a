"""The simulator's run id (services/simulator/service.run_id), which every event id it
publishes derives from: the same market gives the same ids wherever its file lies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.market.regime_market import scenario_text
from services.simulator.service import run_id
from services.simulator.settings import SimulatorSettings

PRICES = Path(__file__).resolve().parents[2] / "data" / "MSFT.csv"


def _settings(prices: Path, seed: int = 7) -> SimulatorSettings:
    return SimulatorSettings(prices_csv=prices, seed=seed)


def test_the_same_prices_file_in_two_folders_names_the_same_run(tmp_path: Path) -> None:
    here, there = tmp_path / "a" / "MSFT.csv", tmp_path / "b" / "MSFT.csv"
    for copy in (here, there):
        copy.parent.mkdir()
        shutil.copy(PRICES, copy)
    assert run_id(_settings(here)) == run_id(_settings(there))
    assert str(tmp_path) not in run_id(_settings(here)), "the path would differ between clones"


def test_an_edited_file_or_another_seed_names_another_run(tmp_path: Path) -> None:
    copy = tmp_path / "MSFT.csv"
    shutil.copy(PRICES, copy)
    before = run_id(_settings(copy))
    assert run_id(_settings(copy, seed=8)) != before
    copy.write_text(copy.read_text() + "\n")
    assert run_id(_settings(copy)) != before, "consumers would drop the edited run as duplicates"


def test_a_shipped_scenario_is_named_by_its_shipped_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = run_id(SimulatorSettings(scenario="regime-shift", seed=3))
    assert shipped.startswith("replay:regime-shift@") and shipped.endswith(":3")
    monkeypatch.chdir(tmp_path)
    Path("regime-shift").write_text("initial_regime: stray\n")
    assert run_id(SimulatorSettings(scenario="regime-shift", seed=3)) == shipped, (
        "a stray file named like a shipped scenario is not what the simulator replays"
    )
    assert run_id(SimulatorSettings(scenario="default", seed=3)) != shipped


def test_a_scenario_yaml_is_named_by_its_content(tmp_path: Path) -> None:
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(scenario_text("default"))
    before = run_id(SimulatorSettings(scenario=str(yaml_file)))
    assert before.startswith("replay:mine.yaml@") and str(tmp_path) not in before
    yaml_file.write_text(scenario_text("regime-shift"))
    assert run_id(SimulatorSettings(scenario=str(yaml_file))) != before
