"""The Redis password never lands in the rendered feature_store.yaml.

The applied repo folder sits on the models volume other pods mount, so the file holds a
`${RLMF_FEATURES_REDIS_PASSWORD}` placeholder that Feast expands from the environment when it
loads the config. Pure config loading: nothing here connects to Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from feast.repo_config import load_repo_config
from pydantic import SecretStr

from services.features.repo import feature_store, write_config
from services.features.settings import REDIS_PASSWORD_ENV, FeaturesSettings

SECRET = "s3cret-Redis-pw"
ADDRESS = "rlmf-redis:6379,db=2"


@pytest.fixture
def no_password_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No password variable; whatever the test or the code sets is removed afterwards."""
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "")  # records the original state for undo
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    return monkeypatch


def _cluster_settings(data_dir: Path) -> FeaturesSettings:
    """The password, if any, comes from the environment (as on the cluster)."""
    return FeaturesSettings(store="cluster", data_dir=data_dir, redis_address=ADDRESS)


def test_the_written_config_holds_no_password_and_feast_expands_it_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_PASSWORD_ENV, SECRET)
    settings = _cluster_settings(tmp_path)
    assert settings.redis_password is not None, "the setting comes from the environment"

    config = write_config(settings)

    assert SECRET not in config.read_text()
    loaded = load_repo_config(tmp_path, config)
    assert loaded.online_store.connection_string == f"{ADDRESS},password={SECRET}"
    store = feature_store(settings)
    assert store.config.online_store.connection_string == loaded.online_store.connection_string


def test_a_password_given_in_code_reaches_feast_through_the_environment(
    tmp_path: Path, no_password_env: pytest.MonkeyPatch
) -> None:
    settings = FeaturesSettings(
        store="cluster", data_dir=tmp_path, redis_address=ADDRESS, redis_password=SecretStr(SECRET)
    )

    config = write_config(settings)
    store = feature_store(settings)

    assert SECRET not in config.read_text()
    assert store.config.online_store.connection_string.endswith(f",password={SECRET}")
    assert os.environ[REDIS_PASSWORD_ENV] == SECRET


def test_without_a_password_the_connection_string_is_the_address(
    tmp_path: Path, no_password_env: pytest.MonkeyPatch
) -> None:
    settings = _cluster_settings(tmp_path)

    config = write_config(settings)

    assert REDIS_PASSWORD_ENV not in config.read_text()
    assert feature_store(settings).config.online_store.connection_string == ADDRESS


def test_a_reader_without_the_variable_is_told_so(
    tmp_path: Path, no_password_env: pytest.MonkeyPatch
) -> None:
    no_password_env.setenv(REDIS_PASSWORD_ENV, SECRET)
    write_config(_cluster_settings(tmp_path))
    no_password_env.delenv(REDIS_PASSWORD_ENV)

    with pytest.raises(RuntimeError, match=REDIS_PASSWORD_ENV):
        feature_store(_cluster_settings(tmp_path))
