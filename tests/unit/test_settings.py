"""Settings come from RLMF_ environment variables, with a clear error for bad values."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from pydantic import ValidationError

from services.common.settings import BusSettings, HttpSettings, LogSettings


def test_bus_settings_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMF_BUS_BOOTSTRAP", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("RLMF_BUS_MAX_POLL_INTERVAL_MS", "2500")
    monkeypatch.setenv("RLMF_BUS_GROUP_PROTOCOL", "manual")
    monkeypatch.setenv("RLMF_HTTP_PORT", "9100")
    monkeypatch.setenv("RLMF_LOG_LEVEL", "DEBUG")
    bus = BusSettings()
    assert bus.bootstrap == "kafka-0:9093,kafka-1:9093"
    assert bus.max_poll_interval_ms == 2500 and bus.group_protocol == "manual"
    assert HttpSettings().port == 9100
    assert LogSettings().level == "DEBUG"


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RLMF_BUS_BOOTSTRAP", "RLMF_BUS_GROUP_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    assert BusSettings().bootstrap == "127.0.0.1:9092"
    assert BusSettings().group_protocol == "group"


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMF_BUS_GROUP_PROTOCOL", "sometimes")
    with pytest.raises(ValidationError, match="group_protocol"):
        BusSettings()
    monkeypatch.setenv("RLMF_BUS_GROUP_PROTOCOL", "group")
    monkeypatch.setenv("RLMF_BUS_PARTITIONS", "three")
    with pytest.raises(ValidationError, match="partitions"):
        BusSettings()


def _clear_trainer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in list(os.environ):
        if var.upper().startswith("RLMF_TRAINER_"):
            monkeypatch.delenv(var)


def test_trainer_nests_the_recipe_and_gate_with_a_cycles_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.policy.artifacts import teacher_config
    from services.trainer.gate import GateConfig
    from services.trainer.ppo import PPOArgs
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__PPO__LEARNING_RATE", "0.001")
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__MF_EPOCHS", "3")
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__STUDENT__TRAINABLE_TOP_K", "2")
    monkeypatch.setenv("RLMF_TRAINER_GATE__MARGIN", "0.2")
    monkeypatch.setenv("RLMF_TRAINER_SEED", "7")
    settings = TrainerSettings()
    recipe = settings.recipe
    assert recipe.ppo.learning_rate == 0.001 and settings.gate.margin == 0.2
    # A cycle's budget, not FLAG-Trader's full run; one seed for the whole cycle.
    assert (recipe.ppo.total_timesteps, recipe.ppo.seed) == (400, 7)
    assert recipe.ppo.minibatch_size == PPOArgs().minibatch_size
    assert recipe.mf_epochs == 3 and recipe.mf_history
    # the student's other fields stay teacher_config's, not the bare wrapper's
    assert recipe.student == dataclasses.replace(teacher_config(), trainable_top_k=2)
    assert settings.gate.entropy_floor == GateConfig().entropy_floor


def test_one_default_student_shape_the_teachers(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.policy.artifacts import teacher_config
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    assert TrainerSettings().recipe.student == teacher_config()
    assert teacher_config().trainable_top_k == 1


def test_trainer_old_names_still_work(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo and older deployments set RLMF_TRAINER_PPO_STEPS, RLMF_TRAINER_PPO__<FIELD>,
    RLMF_TRAINER_MF_EPOCHS and the like; callers pass ppo_steps=..., ppo={...}: all land in
    the recipe, with a warning that names the new setting."""
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_PPO_STEPS", "40")
    monkeypatch.setenv("RLMF_TRAINER_PPO_MINIBATCH_SIZE", "8")
    monkeypatch.setenv("RLMF_TRAINER_GATE_ENTROPY_FLOOR", "0.01")
    monkeypatch.setenv("RLMF_TRAINER_PPO__NUM_STEPS", "10")
    monkeypatch.setenv("RLMF_TRAINER_MF_EPOCHS", "4")
    monkeypatch.setenv("RLMF_TRAINER_TRAINABLE_TOP_K", "2")
    with caplog.at_level(logging.WARNING):
        settings = TrainerSettings(
            ppo_gradient_accumulation_steps=2, gate_margin=-1.0, mf_history=False, rm_steps=3
        )
    ppo, gate, recipe = settings.recipe.ppo, settings.gate, settings.recipe
    assert (ppo.total_timesteps, ppo.minibatch_size, ppo.num_steps) == (40, 8, 10)
    assert ppo.gradient_accumulation_steps == 2
    assert (recipe.mf_epochs, recipe.mf_history, recipe.rm_steps) == (4, False, 3)
    assert recipe.student.trainable_top_k == 2 and recipe.student.state_head
    assert (gate.entropy_floor, gate.margin) == (0.01, -1.0)
    assert "RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS" in caplog.text
    assert "RLMF_TRAINER_RECIPE__MF_EPOCHS" in caplog.text
    old_group = TrainerSettings(ppo={"total_timesteps": 80}, seed=3).recipe.ppo
    assert (old_group.total_timesteps, old_group.seed) == (80, 3)


def test_trainer_new_name_wins_over_its_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_PPO_STEPS", "40")
    monkeypatch.setenv("RLMF_TRAINER_PPO__TOTAL_TIMESTEPS", "80")
    assert TrainerSettings().recipe.ppo.total_timesteps == 80  # old nested over old flat
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__PPO__TOTAL_TIMESTEPS", "120")
    assert TrainerSettings().recipe.ppo.total_timesteps == 120


def test_the_recipe_hash_follows_every_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import RecipeSettings

    _clear_trainer_env(monkeypatch)
    base = RecipeSettings().sha256()
    assert RecipeSettings().sha256() == base
    assert RecipeSettings(mf_epochs=9).sha256() != base
    assert RecipeSettings(ppo={"total_timesteps": 401}).sha256() != base
    assert RecipeSettings(student={"trainable_top_k": 2}).sha256() != base


@pytest.mark.parametrize(("eval_days", "folds"), [(59, 1), (30, 2)])
def test_a_held_out_length_the_gate_would_refuse_is_refused_here(
    monkeypatch: pytest.MonkeyPatch, eval_days: int, folds: int
) -> None:
    """eval_days counts every fold's held-out bars; the gate needs min_holdout_bars of them."""
    from services.trainer.gate import GateConfig
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    with pytest.raises(ValidationError, match="min_holdout_bars 60"):
        TrainerSettings(eval_days=eval_days, walk_forward_folds=folds)
    assert TrainerSettings(eval_days=60, walk_forward_folds=folds).eval_days == 60
    # a smaller minimum, or no bootstrap (the margin test alone), accepts fewer
    assert TrainerSettings(eval_days=eval_days, gate=GateConfig(min_holdout_bars=eval_days))
    assert TrainerSettings(eval_days=eval_days, gate=GateConfig(bootstrap=False))


def test_trainer_refuses_a_ppo_shape_ppo_would_refuse_mid_cycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_RECIPE__PPO__MINIBATCH_SIZE", "10")  # 8 accumulation steps
    with pytest.raises(ValidationError, match="multiple of gradient_accumulation_steps"):
        TrainerSettings()


def test_trainer_refuses_a_negative_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_MF_COEF", "-1")
    with pytest.raises(ValidationError, match="mf_coef"):
        TrainerSettings()
