"""A saved LLM policy folder as a backtest policy: a plain model folder and a versioned artifact,
both decided by services.policy's actor-critic (the tiny random Llama keeps this fast)."""

from __future__ import annotations

from pathlib import Path

from services.common.market_state import ACTIONS
from services.market.backtest import run_backtest
from services.market.baseline_policies import make_policy
from services.market.market_data import load_prices_csv
from services.policy.folder_policy import FolderPolicy, load_folder_policy

REPO = Path(__file__).resolve().parents[2]


def test_plain_and_artifact_folders_decide_every_bar(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from services.policy.artifacts import init_artifact

    prices = load_prices_csv(REPO / "data" / "GOOGL.csv").iloc[:12]
    artifact = tmp_path / "teacher"
    init_artifact(tiny_llama_dir, artifact, version="v0-test")
    for folder, version in ((tiny_llama_dir, tiny_llama_dir.name), (artifact, "v0-test")):
        policy = make_policy(str(folder), folder_loader=load_folder_policy)
        assert isinstance(policy, FolderPolicy)
        result = run_backtest(prices, policy, ticker="GOOGL")
        decisions = result.strategy.decisions
        assert len(decisions) == 11 and {d.model_version for d in decisions} == {version}
        for d in decisions:
            assert d.action in ACTIONS and abs(sum(d.probabilities.values()) - 1) < 1e-5
