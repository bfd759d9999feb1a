"""PPO's wall-clock budget, its progress reports and the run's own episode cap."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytest

from services.trainer import checkpoint, ppo
from services.trainer.ppo import PPOArgs, Progress
from tests.tiny_ppo import UptrendEnv, _agents, _encode

# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _args(**overrides: Any) -> PPOArgs:
    """Four iterations of 40 steps (UptrendEnv's episodes are 20 steps)."""
    fields: dict[str, Any] = dict(
        total_timesteps=160, num_steps=40, minibatch_size=8, gradient_accumulation_steps=2
    )
    return PPOArgs(**{**fields, **overrides})


def _train(args: PPOArgs, **kwargs: Any) -> ppo.PPOResult:
    agent, teacher = _agents(0)
    return ppo.train(agent, teacher, UptrendEnv(), _encode, args, **kwargs)


def test_a_spent_budget_stops_after_one_iteration_checkpointed(tmp_path) -> None:
    # checkpoint_every 10: only the budget's stop makes iteration 1 write one
    args = _args(checkpoint_every=10)
    result = _train(args, checkpoint_dir=tmp_path, deadline=time.monotonic())
    assert result.stopped_by_budget
    assert (result.iterations_done, result.iterations_run, result.global_step) == (1, 1, 40)
    saved = checkpoint.load_latest(tmp_path)
    assert saved is not None and saved["iteration"] == 1
    # a rerun without a budget resumes there and finishes the run
    rest = _train(_args(checkpoint_every=10), checkpoint_dir=tmp_path)
    assert (rest.resumed_from, rest.iterations_done, rest.global_step) == (1, 4, 160)
    assert not rest.stopped_by_budget


@pytest.mark.parametrize("budget_s", [None, 3600.0])
def test_without_a_binding_budget_total_timesteps_bounds_the_run(budget_s: float | None) -> None:
    deadline = None if budget_s is None else time.monotonic() + budget_s
    result = _train(_args(), deadline=deadline)
    assert (result.iterations_done, result.global_step) == (4, 160)
    assert not result.stopped_by_budget and result.elapsed_s > 0
    # the last iteration's rate: by iterations (1 - 3/4), a few seconds of an hour change nothing
    assert result.metrics["charts/learning_rate"] == pytest.approx(5e-5 / 4, rel=1e-2)


def test_annealing_follows_the_iterations_alone() -> None:
    args = PPOArgs(total_timesteps=400, num_steps=40, learning_rate=1.0).derive()  # 10 iterations
    assert ppo.annealed_lr(args, 1) == 1.0
    assert ppo.annealed_lr(args, 3) == pytest.approx(0.8)
    assert ppo.annealed_lr(args, 10) == pytest.approx(0.1)


def test_a_cap_that_does_not_bind_changes_no_weight() -> None:
    """The wall clock is a safety cap: a run under a generous one trains the same weights,
    bit for bit, as a run without one (the learning rate anneals by iterations alone)."""

    def weights(deadline: float | None) -> list[Any]:
        agent, teacher = _agents(0)
        ppo.train(agent, teacher, UptrendEnv(), _encode, _args(), deadline=deadline)
        return [p.detach().clone() for p in agent.parameters() if p.requires_grad]

    capped, free = weights(time.monotonic() + 3600.0), weights(None)
    assert all(a.equal(b) for a, b in zip(capped, free, strict=True))


class _FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_budget_estimates_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(ppo, "time", fake)
    args = PPOArgs(total_timesteps=400, num_steps=40).derive()  # at most 10 iterations
    clock = ppo._RunClock(args, {"episode_returns": []}, 0, 100.0, None, 30.0)
    fake.now = 25.0
    # 40 steps in 25 s = 1.6 steps/s; 75 s left -> 120 more steps: 160, iteration 4's end
    assert clock.estimate(40) == (160, pytest.approx(75.0))
    # mid-rollout, 45 steps at 25 s: 1.8 steps/s, 135 more reach step 180, inside iteration 5,
    # which then runs to its end: 200 steps, (200 - 45) / 1.8 s left
    assert clock.estimate(45) == (200, pytest.approx(155 / 1.8))
    # past the deadline: the running iteration is the last
    fake.now = 120.0
    assert clock.estimate(130)[0] == 160 and clock.out_of_time()


def test_progress_reports_every_iteration_with_sane_fields() -> None:
    reports: list[Progress] = []
    _train(_args(), progress=reports.append, progress_every_s=math.inf)
    assert [p.iteration for p in reports] == [1, 2, 3, 4]  # iteration ends only
    assert [p.global_step for p in reports] == [40, 80, 120, 160]
    assert all(p.eta_s >= 0 and p.total_steps == 160 for p in reports)
    assert [p.elapsed_s for p in reports] == sorted(p.elapsed_s for p in reports)
    assert reports[-1].fraction_done == 1.0 and reports[-1].eta_s == 0.0
    first = reports[0]
    assert all(math.isfinite(x) for x in (first.pg_loss, first.v_loss, first.entropy))
    assert math.isfinite(first.mf_loss) and math.isfinite(first.approx_kl)
    assert math.isfinite(first.mean_episode_return)  # two 20-step episodes ended in iteration 1


def test_progress_reports_mid_rollout_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    reports: list[Progress] = []

    def both(p: Progress) -> None:
        reports.append(p)
        ppo.log_progress(p)

    with caplog.at_level(logging.INFO, logger=ppo.__name__):
        _train(_args(total_timesteps=40), progress=both, progress_every_s=0.0)
    steps = [p.global_step for p in reports]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == 40
    assert set(range(1, 41)) <= set(steps)  # every rollout step reported (every_s is 0)
    assert math.isnan(reports[0].pg_loss)  # no update has run yet
    assert all(p.eta_s >= 0 for p in reports)
    lines = [r.getMessage() for r in caplog.records if "eta" in r.getMessage()]
    assert len(lines) == len(reports)
    assert "step 40/40 (100%)" in lines[-1]


@pytest.mark.parametrize(("cap", "episodes"), [(10, 4), (65, 0)])
def test_the_run_caps_episodes_at_its_own_max_episode_steps(cap: int, episodes: int) -> None:
    agent, teacher = _agents(0)
    env = UptrendEnv(max_episode_steps=1000)  # the env's own limit never binds here
    args = _args(total_timesteps=40, max_episode_steps=cap)
    result = ppo.train(agent, teacher, env, _encode, args)
    assert len(result.episode_returns) == episodes


def test_a_stop_request_checkpoints_after_the_iteration_and_a_rerun_resumes(tmp_path) -> None:
    args = _args(checkpoint_every=10)
    asked: list[int] = []

    def stop_requested() -> bool:
        asked.append(1)
        return True  # SIGTERM arrived during the first iteration

    stopped = _train(args, checkpoint_dir=tmp_path, stop_requested=stop_requested)
    assert stopped.interrupted and not stopped.stopped_by_budget
    assert stopped.iterations_done == 1 and asked == [1]
    saved = checkpoint.load_latest(tmp_path)
    assert saved is not None and saved["iteration"] == 1
    resumed = _train(args, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 1 and resumed.iterations_done == args.num_iterations
    assert not resumed.interrupted
