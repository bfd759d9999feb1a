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
