"""The regime-switching generator: seeded, follows its AR(1) law per regime, forced shifts, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.market.market_data import load_prices_csv
from services.market.regime_market import MarketParams, generate_market, load_params
from services.simulator.market_cli import app


def test_same_seed_same_market_other_seed_differs() -> None:
    params = load_params("default")
    a, shifts_a = generate_market(params, 300, seed=7)
    b, shifts_b = generate_market(params, 300, seed=7)
    c, _ = generate_market(params, 300, seed=8)
    assert a.equals(b) and shifts_a == shifts_b
    assert not np.allclose(a["close"], c["close"])


def test_regime_shift_scenario_switches_once_on_day_250() -> None:
    frame, shifts = generate_market(load_params("regime-shift"), 400, seed=1)
    assert shifts == [(frame.index[250], "calm_bull", "volatile_bear")]
    assert set(frame["regime"].iloc[:250]) == {"calm_bull"} and set(frame["regime"].iloc[250:]) == {
        "volatile_bear"
    }


def test_shifts_match_the_regime_column_and_bars_are_consistent() -> None:
    frame, shifts = generate_market(load_params("default"), 2000, seed=0)
    changes = frame.index[1:][frame["regime"].to_numpy()[1:] != frame["regime"].to_numpy()[:-1]]
    assert [s[0] for s in shifts] == list(changes) and len(shifts) > 2
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert frame.attrs["periods_per_year"] == 252


def test_returns_follow_the_ar1_law_of_each_regime() -> None:
    shipped = load_params("regime-shift").model_dump()
    params = MarketParams.model_validate(
        {**shipped, "forced_shifts": [{"day": 10_000, "regime": "volatile_bear"}]}
    )
    frame, _ = generate_market(params, 20_000, seed=2)
    o = np.diff(np.log(frame["close"].to_numpy()))
    regime = frame["regime"].to_numpy()[1:]
    for name in ("calm_bull", "volatile_bear"):
        p = params.regimes[name]
        x, y = o[:-1][regime[1:] == name], o[1:][regime[1:] == name]
        phi = np.polyfit(x, y, 1)[0]
        resid = y - p.phi * x
        assert phi == pytest.approx(p.phi, abs=0.04)  # ~4 standard errors at 10,000 samples
        assert resid.mean() == pytest.approx(p.mu, abs=3 * p.sigma / np.sqrt(len(y)))
        assert resid.std() == pytest.approx(p.sigma, rel=0.05)


def test_invalid_params_are_rejected_with_the_reason() -> None:
    base = load_params("default").model_dump()
    bad_row = {**base, "transitions": {**base["transitions"], "bull": {"bull": 0.5, "bear": 0.2}}}
    with pytest.raises(ValidationError, match="must be non-negative and sum to 1"):
        MarketParams.model_validate(bad_row)
    with pytest.raises(ValidationError, match="phi"):
        MarketParams.model_validate(
            {**base, "regimes": {**base["regimes"], "bull": {"mu": 0, "phi": 1.2, "sigma": 0.01}}}
        )


def test_cli_writes_a_csv_the_loader_reads(tmp_path: Path) -> None:
    out = tmp_path / "syn.csv"
    result = CliRunner().invoke(
        app,
        ["generate", "--out", str(out), "--days", "300", "--seed", "5", "--params", "regime-shift"],
    )
    assert result.exit_code == 0, result.output
    df = load_prices_csv(out)
    expected, _ = generate_market(load_params("regime-shift"), 300, seed=5)
    assert len(df) == 300 and np.allclose(df["close"], expected["close"])
    assert "shift" in result.output and (tmp_path / "syn.shifts.csv").read_text().count("\n") == 2
