"""Settings come from RLMF_ environment variables, with a clear error for bad values."""

from __future__ import annotations

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


def test_trainer_nests_ppo_and_gate_with_a_cycles_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.trainer.gate import GateConfig
    from services.trainer.ppo import PPOArgs
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_PPO__LEARNING_RATE", "0.001")
    monkeypatch.setenv("RLMF_TRAINER_GATE__MARGIN", "0.2")
    monkeypatch.setenv("RLMF_TRAINER_SEED", "7")
    settings = TrainerSettings()
    assert settings.ppo.learning_rate == 0.001 and settings.gate.margin == 0.2
    # A cycle's budget, not FLAG-Trader's full run; one seed for the whole cycle.
    assert (settings.ppo.total_timesteps, settings.ppo.seed) == (400, 7)
    assert settings.ppo.minibatch_size == PPOArgs().minibatch_size
    assert settings.gate.entropy_floor == GateConfig().entropy_floor


def test_trainer_flat_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo and older deployments set RLMF_TRAINER_PPO_STEPS and the like; callers pass
    ppo_steps=... ."""
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_PPO_STEPS", "40")
    monkeypatch.setenv("RLMF_TRAINER_PPO_MINIBATCH_SIZE", "8")
    monkeypatch.setenv("RLMF_TRAINER_GATE_ENTROPY_FLOOR", "0.01")
    monkeypatch.setenv("RLMF_TRAINER_PPO__NUM_STEPS", "10")
    settings = TrainerSettings(ppo_gradient_accumulation_steps=2, gate_margin=-1.0)
    ppo, gate = settings.ppo, settings.gate
    assert (ppo.total_timesteps, ppo.minibatch_size, ppo.num_steps) == (40, 8, 10)
    assert ppo.gradient_accumulation_steps == 2
    assert (gate.entropy_floor, gate.margin) == (0.01, -1.0)


def test_trainer_nested_name_wins_over_its_flat_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_PPO_STEPS", "40")
    monkeypatch.setenv("RLMF_TRAINER_PPO__TOTAL_TIMESTEPS", "80")
    assert TrainerSettings().ppo.total_timesteps == 80


def test_trainer_refuses_a_negative_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import TrainerSettings

    _clear_trainer_env(monkeypatch)
    monkeypatch.setenv("RLMF_TRAINER_MF_COEF", "-1")
    with pytest.raises(ValidationError, match="mf_coef"):
        TrainerSettings()
