"""The trainer with real parts: a tiny random Llama actor-critic in the simulator's env, a real
`rlmf trainer cycle` process killed mid-PPO and resumed, and embedded promotion switching a live
kserve policy server's model_version, with models.promotions.v1 on the real broker."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from services.common import envelope
from services.common.market_state import MarketState
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.state_block import state_block
from services.common.topics import MODELS_PROMOTIONS
from services.market.accounting import RewardConfig
from services.market.backtest import run_policy
from services.market.baseline_policies import RandomPolicy
from services.market.envs import DiscreteTradingEnv
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.artifacts import init_artifact
from services.policy.client import PolicyClient
from services.policy.folder_policy import FolderPolicy
from services.trainer import ppo
from services.trainer.cycle import CycleError, run_cycle, set_current
from services.trainer.datasets import FeedbackRecord
from services.trainer.gate import GateConfig
from services.trainer.plan import student_version
from services.trainer.promotion import EmbeddedPromoter
from services.trainer.settings import TrainerSettings
from tests.helpers import start_policy_server, wait_until

REPO = Path(__file__).resolve().parents[2]


# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
# Whole cycles (training, evaluation, artifacts) and subprocesses: minutes on 2 cores.
pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.slow]


def _uptrend(days: int = 120) -> pd.DataFrame:
    close = 100 * 1.01 ** np.arange(days)
    index = pd.bdate_range("2024-01-01", periods=days, tz="UTC", name="time")
    frame = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 1e6}, index=index
    )
    frame.attrs["periods_per_year"] = 252.0
    return frame


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_ppo_learns_to_buy_a_steady_uptrend(tiny_llama_dir: Path) -> None:
    config = ActorCriticConfig(trainable_top_k=2, seed=0)
    torch.manual_seed(0)
    agent = LLMActorCritic.from_pretrained(tiny_llama_dir, config, "student")
    teacher = LLMActorCritic.from_pretrained(tiny_llama_dir, config, "teacher")
    prices = _uptrend()
    # Trivially learnable: reward = the day's change in net worth, no trading penalties.
    env = DiscreteTradingEnv(
        prices,
        start=0,
        end=100,
        max_episode_steps=20,
        random_start=True,
        reward_config=RewardConfig(stability_coef=0.0, cost_coef=0.0),
    )
    # Pure RL (mf_coef 0): PPO alone must find `buy`, from the env's reward only.
    args = ppo.PPOArgs(
        total_timesteps=160,
        num_steps=40,
        learning_rate=3e-3,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        update_epochs=2,
        kl_coef=0.0,
        mf_coef=0.0,
        seed=0,
    )
    result = ppo.train(agent, teacher, env, lambda s: agent.encode([s]), args)
    agent.mark_weights_changed()

    def cumulative_return(policy: object) -> float:
        run = run_policy(DiscreteTradingEnv(prices, start=100, end=119), policy, seed=0)  # type: ignore[arg-type]
        return float(run.equity[-1] / run.equity[0] - 1)

    trained = cumulative_return(FolderPolicy(agent, Path("student")))
    random = float(np.mean([cumulative_return(RandomPolicy(seed)) for seed in range(5)]))
    before = cumulative_return(FolderPolicy(teacher, Path("teacher")))
    # Buy & Hold earns 1.01**19 - 1 ~ 20.8% minus costs; random trading about half of that.
    assert trained > random + 0.05 and trained > 0.15, (trained, random, before)
    assert result.update_tokens > 0


@pytest.fixture
def teacher_models(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    init_artifact(tiny_llama_dir, models / "v0", "v0", ActorCriticConfig(trainable_top_k=2))
    set_current(models, models / "v0")
    return models


def _env(models: Path, work: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RLMF_TRAINER_MODELS_DIR": str(models),
        "RLMF_TRAINER_WORK_DIR": str(work),
        "RLMF_TRAINER_MARKET_DAYS": "100",
        "RLMF_TRAINER_TRAIN_DAYS": "40",
        "RLMF_TRAINER_EVAL_DAYS": "10",
        # too few for the bootstrap (the settings refuse fewer than the gate's minimum): these
        # tests are about resuming; the gate has tests of its own
        "RLMF_TRAINER_GATE__MIN_HOLDOUT_BARS": "10",
        "RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS": "120",
        "RLMF_TRAINER_RECIPE__PPO__MINIBATCH_SIZE": "8",
        "RLMF_TRAINER_RECIPE__PPO__GRADIENT_ACCUMULATION_STEPS": "2",
        "RLMF_TRAINER_TORCH_THREADS": "1",
        "RLMF_TRAINER_PROMOTION": "none",
        "RLMF_TRAINER_PUBLISH": "false",
        "RLMF_LOG_JSON_FORMAT": "false",
        **extra,
    }


def test_killed_cycle_resumes_and_never_touches_the_teacher(
    teacher_models: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    env = _env(teacher_models, work)
    teacher_before = _tree_hashes(teacher_models / "v0")
    cmd = [sys.executable, "-m", "services.cli", "trainer", "cycle"]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while not list(work.glob("cycles/*/ppo/ckpt-*.pt")):
            assert first.poll() is None, "the cycle ended before its first PPO checkpoint"
            assert time.monotonic() < deadline, "no PPO checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up: the hard case
        first.wait(timeout=10)
    assert not [p for p in teacher_models.iterdir() if p.name.startswith("s")], (
        "artifact before the end"
    )

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] >= 1
    assert result["teacher_version"] == "v0"
    assert _tree_hashes(teacher_models / "v0") == teacher_before
    student = Path(result["artifact_path"])
    manifest = json.loads((student / "manifest.json").read_text())
    assert manifest["parent_version"] == "v0" and manifest["version"] == result["student_version"]
    assert not [p.name for p in teacher_models.iterdir() if ".staging-" in p.name]
    assert not list(work.glob("cycles/*/ppo/ckpt-*.pt")), (
        "checkpoints are cleared after the artifact"
    )
    for key in (
        "sharpe",
        "max_drawdown",
        "cumulative_return",
        "prediction_accuracy",
        "policy_entropy",
    ):
        assert key in result["student_metrics"] and key in result["teacher_metrics"]
    assert "sharpe" in result["buy_and_hold_metrics"]
    # walk-forward: the held-out decisions start after the training window, its purge and its
    # embargo, so every held-out outcome comes after everything trained on
    assert result["window_start"] < result["window_end"] < result["eval_start"] < result["eval_end"]
    window = manifest["training_window"]
    assert window["end"].replace("Z", "+00:00") == result["window_end"]


def _feedback(prices: pd.DataFrame, decided: int, realised: int) -> FeedbackRecord:
    """A market.feedback.v1 record for a decision on bar `decided`, its move known at `realised`."""
    times, closes = prices.index, prices["close"].tolist()
    state = MarketState(
        ticker="SYN", as_of=times[decided], recent_closes=closes[max(0, decided - 5) : decided + 1]
    )
    return FeedbackRecord(
        ticker="SYN",
        decision_time=times[decided].to_pydatetime(),
        realised_time=times[realised].to_pydatetime(),
        state=state_block(state),
        action="hold",
        reward=0.0,
        realised_return=closes[realised] / closes[decided] - 1,
        model_version="v0",
    )


def _window_of_80_bars(models: Path, tmp_path: Path, **budget: Any) -> TrainerSettings:
    """A cycle over 80 bars: PPO trains on bars 38..67 (outcomes known by bar 68's close),
    bar 68 is purged, the gate holds out 69..78 (scored on 70..79)."""
    recipe = budget.pop("recipe", {})
    return TrainerSettings(
        models_dir=models,
        work_dir=tmp_path / "work",
        train_days=30,
        eval_days=10,
        embargo_days=0,
        expanding_window=False,
        recipe={"mf_history": False, **recipe},
        # 10 held-out bars are too few for the bootstrap (it refuses under 60): these tests are
        # about what a cycle trains on and saves; the gate has tests of its own
        gate=GateConfig(min_holdout_bars=5),
        promotion="none",
        **budget,
    )


def test_cycle_trains_on_the_windows_market_feedback_and_nothing_later(
    teacher_models: Path, tmp_path: Path
) -> None:
    prices = _uptrend(80)
    settings = _window_of_80_bars(
        teacher_models,
        tmp_path,
        ppo_steps=40,
        ppo_minibatch_size=8,
        ppo_gradient_accumulation_steps=2,
        ppo_mf_minibatch_size=8,
    )
    # 80 bars: PPO trains on bars 38..67, bar 68 is purged, the gate holds out 69..78.
    on_time = [_feedback(prices, t, t + 1) for t in range(30, 79)]
    # decided inside the window, but the outcome is only known after its end: never D_MF
    late = [_feedback(prices, t, 70 + t % 5) for t in range(60, 65)]
    result = run_cycle(settings, prices=prices, feedback=[*on_time, *late])
    assert result.window_end == prices.index[68].to_pydatetime()
    # decisions on bars 38..67 (outcomes on 39..68); not 30..37 (before), 68.. or the late ones
    assert result.training["mf/feedback_examples"] == 30
    assert all(math.isfinite(v) for v in result.training.values()), result.training


def test_sft_and_reward_model_stages_run_and_the_reward_model_travels_with_the_student(
    teacher_models: Path, tmp_path: Path
) -> None:
    """With sft_steps and rm_steps on: SFT trains on the answers the market proved right, SEP
    reflection turns the wrong ones into pairs for the reward model, and the reward model is
    saved inside the student's artifact (hashed with it) for the policy's best-of-n."""
    from services.policy.artifacts import REWARD_MODEL, verify_artifact

    prices = _uptrend(80)
    settings = _window_of_80_bars(
        teacher_models,
        tmp_path,
        ppo_steps=20,
        ppo_num_steps=10,
        ppo_minibatch_size=10,
        ppo_gradient_accumulation_steps=1,
        sft_steps=2,
        rm_steps=2,
        max_pairs=8,
        max_sft_examples=8,
        explain_tokens=4,
        reflection_tries=3,
    )
    # Every other record is right (SFT rows); the rest are wrong with each of the three
    # realised labels, so a reflection resolves whichever action the tiny model favours.
    kinds = [
        ("buy", 0.01),
        ("sell", 0.01),
        ("buy", 0.01),
        ("buy", -0.01),
        ("buy", 0.01),
        ("buy", 0.0),
    ]
    records = [
        dataclasses.replace(_feedback(prices, t, t + 1), action=action, realised_return=move)
        for t, (action, move) in zip(range(40, 69), itertools.cycle(kinds), strict=False)
    ]
    result = run_cycle(settings, prices=prices, feedback=records)
    assert result.training["sft/steps"] == 2 and math.isfinite(result.training["sft/loss"])
    # 29 records decided on bars 40..68, outcomes known by the window's end (bar 69)
    assert result.training["rm/wrong"] == 14 and result.training["rm/pairs"] > 0
    assert all(math.isfinite(v) for v in result.training.values()), result.training
    artifact = Path(result.artifact_path)
    manifest = verify_artifact(artifact)
    assert (artifact / REWARD_MODEL / "config.json").is_file()
    assert f"{REWARD_MODEL}/config.json" in manifest.files


def test_a_teacher_file_swapped_after_the_cycles_check_never_reaches_the_reward_model(
    teacher_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reward model starts from the teacher's weights, read after the cycle verified the
    teacher: a file swapped on the shared volume in between is caught by a second check of a
    private copy, and the cycle stops naming the file instead of training on it."""
    from services.trainer import sep_stages

    prices = _uptrend(80)
    settings = _window_of_80_bars(
        teacher_models, tmp_path, ppo_steps=10, ppo_num_steps=10, ppo_minibatch_size=10,
        ppo_gradient_accumulation_steps=1, rm_steps=1, max_pairs=2, explain_tokens=2,
        reflection_tries=1,
    )  # fmt: skip
    real_pairs = sep_stages.preference_pairs

    def pairs_after_a_swap(*args: Any, **kwargs: Any) -> Any:
        with (teacher_models / "v0" / "model.safetensors").open("r+b") as f:
            f.seek(-8, 2)
            f.write(b"\x00" * 8)
        return real_pairs(*args, **kwargs)

    monkeypatch.setattr(sep_stages, "preference_pairs", pairs_after_a_swap)
    records = [
        dataclasses.replace(_feedback(prices, t, t + 1), action="buy", realised_return=-0.01)
        for t in range(40, 69)
    ]
    with pytest.raises(CycleError, match="model.safetensors does not match its manifest hash"):
        run_cycle(settings, prices=prices, feedback=records)


def _promotions(bootstrap: str, student_version: str) -> list[pb.ModelPromotion]:
    return [payload for _, payload in _promotion_envelopes(bootstrap, student_version)]


def _promotion_envelopes(
    bootstrap: str, student_version: str
) -> list[tuple[str, pb.ModelPromotion]]:
    """(envelope id, payload) of every models.promotions.v1 message about `student_version`."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        MODELS_PROMOTIONS,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        group_id=None,
    )
    try:
        found = [envelope.decode(r.value, pb.ModelPromotion) for r in consumer]
    finally:
        consumer.close()
    return [(e.id, e.payload) for e in found if e.payload.student_version == student_version]


def test_embedded_promotion_switches_the_live_servers_model_version(
    teacher_models: Path, tmp_path: Path, bus_settings: object, broker: str
) -> None:
    from services.common.bus import Producer, ensure_topics

    policy = start_policy_server(teacher_models / "v0", tmp_path / "policy.log")
    url, server = policy.url, policy.process
    ensure_topics(bus_settings, [MODELS_PROMOTIONS], "test")  # type: ignore[arg-type]
    producer = Producer(bus_settings, "trainer-test")  # type: ignore[arg-type]
    try:
        assert PolicyClient(url).status()["model_version"] == "v0"
        settings = TrainerSettings(
            models_dir=teacher_models,
            work_dir=tmp_path / "work",
            market_days=80,
            train_days=30,
            eval_days=10,
            embargo_days=0,
            expanding_window=False,
            recipe={
                "mf_history": False,
                "ppo": {
                    "total_timesteps": 40,
                    "minibatch_size": 8,
                    "gradient_accumulation_steps": 2,
                },
            },
            # an accept-anything gate: this test is about the promotion path, the gate has its own
            gate=GateConfig(
                margin=-1e9, entropy_floor=0.0, max_drawdown_worsening=1.0, bootstrap=False
            ),
            promotion="embedded",
        )
        result = run_cycle(settings, promoter=EmbeddedPromoter(url), producer=producer)
        assert result.promoted, result.reason
        assert PolicyClient(url).status()["model_version"] == result.student_version
        assert (teacher_models / "current").read_text().strip() == result.student_version
        # approved apart from its origin, before the server was asked (it serves no other)
        approval = json.loads((Path(result.artifact_path) / "approval.json").read_text())
        assert approval["version"] == result.student_version
        assert approval["parent_version"] == "v0" and approval["sequence"] == 1
        assert approval["evidence"]["stage"] == "gate"
        ((event_id, message),) = _promotion_envelopes(broker, result.student_version)
        assert message.promoted and message.teacher_version == "v0"
        # the decision's id is derived from it: a re-run's republication is a duplicate
        assert event_id == envelope.derived_id(
            result.student_version, "v0", "promoted", "promotion"
        )
        # what made the student travels with the decision (run.json compares two runs by it)
        assert message.inputs_sha256 == result.inputs_sha256 and len(result.inputs_sha256) == 64
        assert message.torch_threads == result.torch_threads >= 1
        assert message.student_metrics["prediction_accuracy"] == pytest.approx(
            result.student_metrics["prediction_accuracy"]
        )
        assert "sharpe" in message.buy_and_hold_metrics

        # the next cycle's teacher is the promoted student; a strict gate refuses and says why
        strict = settings.model_copy(
            update={"gate": dataclasses.replace(settings.gate, margin=1e9)}
        )
        refused = run_cycle(strict, promoter=EmbeddedPromoter(url), producer=producer)
        assert refused.teacher_version == result.student_version and not refused.promoted
        assert "does not beat" in refused.reason
        assert not (Path(refused.artifact_path) / "approval.json").exists(), "signed, unapproved"
        assert PolicyClient(url).status()["model_version"] == result.student_version
        (message,) = _promotions(broker, refused.student_version)
        assert not message.promoted and message.reason == refused.reason
    finally:
        producer.close()
        server.terminate()
        server.wait(timeout=15)


def test_a_budgeted_cycle_stops_on_time_and_learns_from_every_labelled_training_bar(
    teacher_models: Path, tmp_path: Path, bus_settings: object, broker: str
) -> None:
    """RLMF_TRAINER_CYCLE_MINUTES, the cycle's safety cap: PPO stops after the iteration in
    which it ran out (no error, the cycle goes on to the gate) and the result, and its
    models.promotions.v1 record, say budget_cut; with mf_history every training bar but the
    last joins D_MF labelled by its own next move, none of them later than the window."""
    from services.common.bus import Producer, ensure_topics

    prices = _uptrend(80)
    settings = _window_of_80_bars(
        teacher_models, tmp_path, recipe={"ppo": {"total_timesteps": 10_000}, "mf_history": True}
    ).model_copy(update={"cycle_minutes": 0.001})
    ensure_topics(bus_settings, [MODELS_PROMOTIONS], "test")  # type: ignore[arg-type]
    producer = Producer(bus_settings, "trainer-test")  # type: ignore[arg-type]
    try:
        result = run_cycle(settings, prices=prices, producer=producer)
    finally:
        producer.close()
    assert result.training["ppo/stopped_by_budget"] == 1.0
    assert result.training["ppo/iterations"] == 1.0
    assert result.budget_cut and result.to_dict()["budget_cut"] is True
    (message,) = _promotions(broker, result.student_version)
    assert message.budget_cut and message.ppo_iterations == 1
    # training bars 38..67: the labels of 38..66 are moves known inside the window
    assert result.training["mf/history_examples"] == 29
    assert result.training["mf/feedback_examples"] == 29
    assert result.sharpe_test["holdout_bars"] == 10


def test_a_cycle_stopped_on_request_checkpoints_and_the_next_run_resumes_it(
    teacher_models: Path, tmp_path: Path
) -> None:
    """The trainer service's SIGTERM: PPO stops after its iteration, checkpointed, no artifact
    yet; the same cycle run again resumes from that iteration and finishes."""
    from services.trainer.cycle import CycleInterrupted

    prices = _uptrend(80)
    settings = _window_of_80_bars(teacher_models, tmp_path, ppo_steps=40, ppo_num_steps=10)
    with pytest.raises(CycleInterrupted, match="resumes"):
        run_cycle(settings, prices=prices, stop_requested=lambda: True)
    assert not [p for p in teacher_models.iterdir() if p.name.startswith("s")]
    result = run_cycle(settings, prices=prices)
    assert result.resumed_from == 1


def test_sigterm_to_the_cycle_command_checkpoints_exits_0_and_the_rerun_resumes(
    teacher_models: Path, tmp_path: Path
) -> None:
    """The CronJob's `rlmf trainer cycle` gets SIGTERM when its pod stops: it checkpoints PPO after
    the running iteration and exits 0; the next run resumes from that checkpoint."""
    work = tmp_path / "work"
    env = _env(teacher_models, work)
    cmd = [sys.executable, "-m", "services.cli", "trainer", "cycle"]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(
        lambda: bool(list(work.glob("cycles/*/ppo/ckpt-*.pt"))) or first.poll() is not None,
        timeout_s=120,
        what="a PPO checkpoint",
    )
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert "cycle interrupted" in err and "resumes" in err
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.strip().splitlines()[-1])["resumed_from"] >= 1


def test_the_same_seed_inputs_and_threads_give_the_same_student(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Reproducibility: two cycles from the same teacher, on the same bars, seed, thread count
    and a step budget (not a wall-clock one, whose iteration count depends on the machine's
    speed) save byte-identical students and say so by the same inputs_sha256 and iterations."""
    prices = _uptrend(80)
    runs = []
    for name in ("first", "second"):
        models = tmp_path / name / "models"
        init_artifact(tiny_llama_dir, models / "v0", "v0", ActorCriticConfig(trainable_top_k=2))
        set_current(models, models / "v0")
        settings = _window_of_80_bars(
            models, tmp_path / name, ppo_steps=40, ppo_num_steps=10, ppo_minibatch_size=8
        )
        result = run_cycle(settings, prices=prices)
        files = _tree_hashes(Path(result.artifact_path))
        runs.append((result, {k: v for k, v in files.items() if k.endswith(".safetensors")}))
    (first, first_weights), (second, second_weights) = runs
    assert first.inputs_sha256 == second.inputs_sha256
    assert first.torch_threads == second.torch_threads == 1
    assert first.training["ppo/iterations"] == second.training["ppo/iterations"]
    assert not first.budget_cut and not second.budget_cut  # steps, not the clock, decided
    assert first_weights and first_weights == second_weights
    assert first.student_metrics == second.student_metrics


def test_a_walk_forward_cycle_trains_a_student_per_fold_and_gates_on_all_their_bars(
    teacher_models: Path, tmp_path: Path
) -> None:
    """RLMF_TRAINER_WALK_FORWARD_FOLDS: 20 held-out bars in 2 folds. Fold 1's student learns
    from the bars before 59 and trades 59..68; the served student learns up to 67 and trades
    69..78; the gate decides on all 20 bars, and only the served student is saved."""
    prices = _uptrend(80)
    settings = _window_of_80_bars(
        teacher_models, tmp_path, ppo_steps=40, ppo_num_steps=10, ppo_minibatch_size=8
    ).model_copy(update={"eval_days": 20, "walk_forward_folds": 2})
    result = run_cycle(settings, prices=prices)
    assert result.training["gate/walk_forward_folds"] == 2
    assert result.sharpe_test["holdout_bars"] == 20
    assert result.window_end == prices.index[68].to_pydatetime()  # the served student's cut-off
    assert result.eval_start == prices.index[59].to_pydatetime()  # the first fold's first bar
    assert result.eval_end == prices.index[79].to_pydatetime()
    saved = [p.name for p in teacher_models.iterdir() if p.name.startswith("s")]
    assert saved == [result.student_version]
    # The fold's student left no checkpoints behind: the work folder holds only evaluations.
    assert not list((tmp_path / "work").glob("cycles/*/fold-1/ppo/ckpt-*.pt"))


def test_one_student_learns_from_every_ticker_and_the_gate_pools_them_by_bar(
    teacher_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Streamed tickers beside the cycle's own: ACME has bars before and after SYN's window,
    NEW only its last 15. The student learns from SYN and ACME over SYN's stretch of time (no
    ACME bar after SYN's last), the gate pools their held-out returns bar by bar (10 bars, not
    20), and NEW, with too few bars in the stretch, is left out."""
    prices = _uptrend(80)
    wider = pd.bdate_range(prices.index[0] - pd.offsets.BDay(5), periods=95, tz="UTC")
    down = 100 * 0.995 ** np.arange(95)
    acme = pd.DataFrame(
        {"open": down, "high": down, "low": down, "close": down, "volume": 1e6},
        index=wider.rename("time"),
    )
    acme.attrs["periods_per_year"] = 252.0
    settings = _window_of_80_bars(
        teacher_models,
        tmp_path,
        ppo_steps=40,
        ppo_num_steps=10,
        ppo_minibatch_size=8,
        recipe={"mf_history": True},
    ).model_copy(update={"gate": GateConfig(min_holdout_bars=5, bootstrap=True)})
    with caplog.at_level(logging.INFO, logger="services.trainer.peers"):
        result = run_cycle(
            settings, prices=prices, peers={"ACME": acme, "NEW": _uptrend(80).iloc[-15:]}
        )
    assert result.tickers == ["SYN", "ACME"]
    left_out = [r for r in caplog.records if r.getMessage().startswith("NEW left out")]
    assert len(left_out) == 1, "the peers are aligned once per cycle"
    # each ticker's training bars 38..67 labelled (the last one's move is after the cut-off)
    assert result.training["mf/history_examples"] == 2 * 29
    assert result.sharpe_test["holdout_bars"] == 10  # the same 10 bars, both tickers on each
    assert result.eval_end == prices.index[79].to_pydatetime()
    assert result.window_end == prices.index[68].to_pydatetime()
    # the student's version names its tickers: a single-ticker student of the same window
    # and seed is another student
    assert result.student_version != student_version(
        "v0", prices.index[68], settings.seed, settings.recipe.sha256()
    )
